"""The Dagster definitions load, hold the graph PRODUCT.md describes, and serialise DuckDB writers and training."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from cmr_assets.definitions import PIPELINE_JOB, defs
from cmr_assets.settings import PROJECT_ROOT

GROUPS = {
    "ingest": {"synthetic_cohort", "raw_scans", "slices"},
    "labelling": {"labelling_tasks_single", "labelling_tasks_ranking",
                  "simulated_annotations_single", "simulated_annotations_ranking"},
    "labels": {"reference_labels", "raw_annotations_single", "raw_annotations_ranking", "labels_single",
               "labels_ranking", "observer_agreement", "strategy_sensitivity"},
    "training": {"dataset_split", "model_single", "model_ranking"},
    "evaluation": {"evaluation_report", "strategy_repeats", "learning_curves"},
    "inference": {"archive_filter"},
}
PRODUCT_GRAPH = {"synthetic_cohort", "raw_scans", "slices", "labelling_tasks_single", "labelling_tasks_ranking",
                 "raw_annotations_single", "raw_annotations_ranking", "labels_single", "labels_ranking",
                 "observer_agreement", "dataset_split", "model_single", "model_ranking", "evaluation_report"}


def asset_nodes() -> dict:
    graph = defs.resolve_asset_graph()
    return {key.to_user_string(): graph.get(key) for key in graph.get_all_asset_keys()}


def test_every_asset_sits_in_its_group_and_the_product_graph_is_complete() -> None:
    nodes = asset_nodes()
    assert set(nodes) >= PRODUCT_GRAPH
    groups: dict[str, set[str]] = {}
    for name, node in nodes.items():
        groups.setdefault(node.group_name, set()).add(name)
    assert groups == GROUPS


def test_lineage_edges_of_the_product_graph() -> None:
    graph = defs.resolve_asset_graph()

    def parents(name: str) -> set[str]:
        return {key.to_user_string() for key in graph.get(dg.AssetKey(name)).parent_keys}

    assert "synthetic_cohort" in parents("raw_scans") and "raw_scans" in parents("slices")
    assert {"labels_single", "labels_ranking"} <= parents("observer_agreement")
    assert "labels_ranking" in parents("dataset_split")
    assert {"dataset_split", "labels_single"} <= parents("model_single")
    assert {"dataset_split", "labels_ranking"} <= parents("model_ranking")
    assert {"model_single", "model_ranking", "strategy_repeats", "learning_curves"} <= parents("evaluation_report")
    assert {"slices", "model_ranking"} <= parents("archive_filter")
    assert defs.resolve_asset_graph().get(dg.AssetKey("archive_filter")).automation_condition is not None


def test_pipeline_job_covers_every_asset() -> None:
    job = defs.resolve_job_def(PIPELINE_JOB)
    assert {key.to_user_string() for key in job.asset_layer.executable_asset_keys} == set(asset_nodes())


def test_duckdb_writers_use_the_duckdb_pool_and_models_the_gpu_pool() -> None:
    for name, node in asset_nodes().items():
        pool = node.assets_def.op.pool
        if name in ("model_single", "model_ranking"):
            assert pool == "gpu", name
        elif "duckdb" in node.assets_def.specs_by_key[dg.AssetKey(name)].kinds:
            assert pool == "duckdb", name


def test_automation_is_registered_and_running_by_default() -> None:
    sensors = {s.name: s for s in defs.get_repository_def().sensor_defs}
    assert set(sensors) == {"annotation_files_sensor", "labels_settled_sensor", "new_scans_sensor",
                            "archive_filter_sensor"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in sensors.values())
    schedule = defs.resolve_schedule_def("nightly_retrain_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


@pytest.mark.timeout(120)
def test_dagster_cli_validates_the_workspace(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "CMR_DATA_DIR": str(tmp_path / "data"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    dagster = Path(sys.executable).parent / "dagster"
    result = subprocess.run([str(dagster), "definitions", "validate", "-w", "workspace.yaml"], cwd=PROJECT_ROOT,
                            env=env, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_job_runs_in_one_process() -> None:
    """A process per step would import torch and MLflow again for each step (tens of seconds)."""
    jobs = [job.name for job in defs.resolve_all_job_defs()]
    assert "cmr_pipeline" in jobs and "ingest_new_scans" in jobs
    assert {defs.resolve_job_def(name).executor_def.name for name in jobs} == {"in_process"}
