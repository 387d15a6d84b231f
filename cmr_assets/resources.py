"""Dagster resources, in one place: runtime paths, DuckDB and MLflow."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import mlflow
from dagster_duckdb import DuckDBResource

from cmr_assets import mlflow_store, settings
from cmr_assets.domain import REGISTERED_MODEL_NAMES
from cmr_assets.partitioned_tables import sync_partitioned_tables
from cmr_assets.promotion import promote_if_better
from cmr_assets.settings import DataPaths, data_dir


class DataPathsResource(dg.ConfigurableResource):
    """The runtime data folder (`CMR_DATA_DIR`, default `data/`)."""

    root: str = ""

    def paths(self) -> DataPaths:
        return DataPaths(Path(self.root).resolve() if self.root else data_dir()).ensure()


class ProjectDuckDBResource(DuckDBResource):
    """DuckDB on the project's database, whose partitioned tables (`partitioned_tables.py`) every
    connection first brings up to date with the Parquet files of its data root (a no-op unless
    partition runs wrote since), so each asset reads what every partition run stored."""

    data_root: str

    @contextmanager
    def get_connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with super().get_connection() as con:
            sync_partitioned_tables(con, DataPaths(Path(self.data_root)))
            yield con


def duckdb_resource(paths: DataPaths | None = None) -> DuckDBResource:
    """A DuckDB resource on the database of `paths` (definitions pass the `data_paths` resource's, so
    both follow one root; default `$CMR_DATA_DIR/cmr.duckdb`); connections are opened per use and kept short."""
    paths = (paths or DataPaths.default()).ensure()
    return ProjectDuckDBResource(database=str(paths.duckdb), data_root=str(paths.root))


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking + registry settings; the logic lives in `cmr_assets.mlflow_store`.

    Empty fields fall back to `cmr_assets.settings` (`MLFLOW_TRACKING_URI` / `MLFLOW_ARTIFACT_ROOT`,
    else `mlflow/mlflow.db` and `mlflow/artifacts` in the project).
    """

    tracking_uri: str = ""
    artifact_location: str = ""
    experiment_name: str = settings.MLFLOW_EXPERIMENT
    ui_url: str = "http://127.0.0.1:5000"  # where `make ui` serves the MLflow UI, for links in asset metadata

    def run_url(self, run_id: str) -> str:
        """A link to the run in the MLflow UI."""
        experiment_id = self.client().get_run(run_id).info.experiment_id
        return f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_version_url(self, registered_model: str, version: str) -> str:
        """A link to a registered model version in the MLflow UI."""
        return f"{self.ui_url.rstrip('/')}/#/models/{registered_model}/versions/{version}"

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or settings.mlflow_tracking_uri()

    def resolved_artifact_location(self) -> str:
        return self.artifact_location or settings.mlflow_artifact_root()

    def client(self) -> mlflow.MlflowClient:
        """A client on this store, after checking the store is reachable (clear error naming the URI)."""
        mlflow_store.check_tracking_store(self.resolved_tracking_uri())
        return mlflow.MlflowClient(tracking_uri=self.resolved_tracking_uri())

    def log_trained_model(self, **kwargs: Any) -> mlflow_store.LoggedModel:
        """`mlflow_store.log_trained_model` on this store (pass strategy, model, params, ... by name)."""
        return mlflow_store.log_trained_model(
            tracking_uri=self.resolved_tracking_uri(), artifact_location=self.resolved_artifact_location(),
            experiment_name=self.experiment_name, **kwargs)

    def promote_if_better(self, strategy: str, new_version: str | int, new_val_macro_f1: float,
                          split_hash: str, rescore: Any = None) -> dict[str, Any]:
        """`promotion.promote_if_better` for the strategy's registered model."""
        return promote_if_better(self.client(), REGISTERED_MODEL_NAMES[strategy],
                                                 new_version, new_val_macro_f1, split_hash, rescore)

    def newest_label_hash(self, strategy: str) -> str | None:
        """`label_hash` of the strategy's newest registered version (None when none is registered)."""
        return self.newest_training_params(strategy).get("label_hash")

    def newest_training_params(self, strategy: str) -> dict[str, str]:
        """Training params of the strategy's newest registered version (empty when none is registered)."""
        return mlflow_store.newest_version_params(self.client(), REGISTERED_MODEL_NAMES[strategy])

    def log_evaluation_run(self, **kwargs: Any) -> str:
        """`mlflow_store.log_evaluation_run` on this store (pass report, report_files, pictures)."""
        return mlflow_store.log_evaluation_run(
            tracking_uri=self.resolved_tracking_uri(), artifact_location=self.resolved_artifact_location(),
            experiment_name=self.experiment_name, **kwargs)

    def log_run(self, **kwargs: Any) -> str:
        """`mlflow_store.log_run` on this store: a plain run (pass run_name, params, metrics, ...)."""
        return mlflow_store.log_run(
            tracking_uri=self.resolved_tracking_uri(), artifact_location=self.resolved_artifact_location(),
            experiment_name=self.experiment_name, **kwargs)

    def load_champion(self, strategy: str) -> Any:
        """The `champion` torch module of a strategy's registered model."""
        return mlflow_store.load_champion(REGISTERED_MODEL_NAMES[strategy],
                                             tracking_uri=self.resolved_tracking_uri())

    def load_model(self, model_uri: str) -> Any:
        """The torch module behind any `models:/` or `runs:/` URI on this store."""
        return mlflow_store.load_champion(model_uri, tracking_uri=self.resolved_tracking_uri())
