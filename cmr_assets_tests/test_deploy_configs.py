"""The shipped deployment configs parse, match Dagster's instance schema, and the definitions load under them.

dagster-postgres and dagster-k8s are not installed by default, so the Postgres instance is checked
against Dagster's own instance schema (which includes the Postgres storage shape), and building the
instance is expected to stop exactly at the missing `dagster_postgres` package, nothing earlier.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.instance.config import dagster_instance_config
from dagster_shared.check import CheckError

from cmr_assets.definitions import build_definitions
from cmr_assets.settings import PROJECT_ROOT, DataPaths

DEPLOY = PROJECT_ROOT / "deploy"
INSTANCE_FILES = [PROJECT_ROOT / ".dagster_home" / "dagster.yaml", DEPLOY / "dagster-postgres" / "dagster.yaml"]


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture
def cluster_env(monkeypatch, tmp_path) -> dict[str, str]:
    """deploy/cluster.env in the environment, with the shared data volume replaced by a tmp folder."""
    env = {**read_env_file(DEPLOY / "cluster.env"), "CMR_DATA_DIR": str(tmp_path / "cmr-data")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yaml")) + INSTANCE_FILES
    assert len(files) >= 4
    for path in files:
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


@pytest.mark.parametrize("instance_file", INSTANCE_FILES, ids=lambda p: p.parent.name)
def test_instance_files_match_dagsters_schema(instance_file: Path, tmp_path: Path, cluster_env) -> None:
    shutil.copy(instance_file, tmp_path / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None
    assert config["concurrency"]["pools"]["default_limit"] == 1  # duckdb = 1 and gpu = 1
    tag_limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    limits = {(item["key"], item["value"]): item["limit"] for item in tag_limits}
    assert limits == {("cmr/lane", "retrain"): 1, ("cmr/lane", "relabel"): 1}


def test_postgres_instance_reads_credentials_from_env_and_queues_runs(tmp_path: Path, cluster_env) -> None:
    shutil.copy(DEPLOY / "dagster-postgres" / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    db = config["storage"]["postgres"]["postgres_db"]
    assert {db[k]["env"] for k in ("hostname", "port", "db_name", "username", "password")} <= set(cluster_env)
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"


def test_a_schema_error_would_be_caught(tmp_path: Path) -> None:
    text = (DEPLOY / "dagster-postgres" / "dagster.yaml").read_text().replace("db_name:", "database:")
    (tmp_path / "dagster.yaml").write_text(text)
    with pytest.raises(dg.DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path))


def test_postgres_instance_stops_only_at_the_missing_package(tmp_path: Path, cluster_env) -> None:
    try:
        import dagster_postgres  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("dagster-postgres installed: building the instance would connect to Postgres")
    shutil.copy(DEPLOY / "dagster-postgres" / "dagster.yaml", tmp_path / "dagster.yaml")
    with pytest.raises(CheckError, match="Couldn't import module dagster_postgres .*DagsterPostgresStorage"):
        dg.DagsterInstance.from_config(str(tmp_path))


def test_helm_values_run_the_project_definitions_on_kubernetes() -> None:
    values = yaml.safe_load((DEPLOY / "k8s" / "values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "cmr_assets.definitions"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    mounts = {m["mountPath"] for m in values["runLauncher"]["config"]["k8sRunLauncher"]["volumeMounts"]}
    assert read_env_file(DEPLOY / "cluster.env")["CMR_DATA_DIR"] in mounts
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"


def test_mlflow_server_settings() -> None:
    env = read_env_file(DEPLOY / "mlflow" / "mlflow.env")
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")  # the driver psycopg2-binary brings
    assert env["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    script = (DEPLOY / "mlflow" / "serve.sh").read_text()
    assert "--backend-store-uri" in script and "--artifacts-destination" in script


def test_definitions_load_under_the_cluster_environment(cluster_env) -> None:
    defs = build_definitions()
    assert defs.resolve_job_def("cmr_pipeline") is not None
    resources = defs.resources
    assert resources["mlflow"].resolved_tracking_uri() == cluster_env["MLFLOW_TRACKING_URI"]
    assert resources["mlflow"].resolved_artifact_location() == cluster_env["MLFLOW_ARTIFACT_ROOT"]
    assert resources["data_paths"].paths() == DataPaths(Path(cluster_env["CMR_DATA_DIR"]))
    assert resources["duckdb"].database == str(Path(cluster_env["CMR_DATA_DIR"]) / "cmr.duckdb")
