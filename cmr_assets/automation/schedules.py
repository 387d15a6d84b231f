"""Nightly retraining, only when a strategy's labels changed since the model in use (its `champion`)."""


import dagster as dg
import duckdb
import pandas as pd

from cmr_assets.automation.sensors import retrain_job
from cmr_assets.duckdb_io import read_table
from cmr_assets.resources import DataPathsResource, MlflowResource
from cmr_assets.settings import REGISTERED_MODEL_NAMES
from cmr_assets.training.dataset import label_hash, labelled_rows

STRATEGIES = ("ranking", "single")


def training_label_hash(slices: pd.DataFrame, split: pd.DataFrame, labels: pd.DataFrame,
                        label_column: str = "label") -> str:
    """The `label_hash` a model trained now would log: its train + val rows and their targets."""
    return label_hash(*(labelled_rows(slices, split, labels, which, label_column) for which in ("train", "val")))


def strategies_to_retrain(current: dict[str, str | None], in_use: dict[str, str | None]) -> list[str]:
    """Strategies whose current label hash differs from the champion's (or that have no champion)."""
    return [s for s, h in current.items() if h is not None and h != in_use.get(s)]


def _champion_label_hash(mlflow: MlflowResource, strategy: str) -> str | None:
    client = mlflow.client()
    try:
        version = client.get_model_version_by_alias(REGISTERED_MODEL_NAMES[strategy], "champion")
    except Exception:  # no registered model or no champion yet: any labels count as new
        return None
    return client.get_run(version.run_id).data.params.get("label_hash")


@dg.schedule(cron_schedule="0 2 * * *", job=retrain_job, default_status=dg.DefaultScheduleStatus.RUNNING,
             execution_timezone="UTC")
def nightly_retrain_schedule(context: dg.ScheduleEvaluationContext, data_paths: DataPathsResource,
                             mlflow: MlflowResource):
    """At 02:00 UTC retrain both models and re-evaluate, unless no strategy's labels changed."""
    try:
        with duckdb.connect(str(data_paths.paths().duckdb), read_only=True) as con:
            slices = read_table(con, "slices", "slice_id, scan_id, array_path, array_index")
            split = read_table(con, "dataset_split")
            tables = {s: read_table(con, f"labels_{s}") for s in STRATEGIES}
        current = {s: training_label_hash(slices, split, labels) if min(len(slices), len(split), len(labels)) else None
                   for s, labels in tables.items()}
    except duckdb.Error as error:
        return dg.SkipReason(f"database not readable now ({error}); next night")
    changed = strategies_to_retrain(current, {s: _champion_label_hash(mlflow, s) for s in STRATEGIES})
    if not changed:
        return dg.SkipReason("labels unchanged since the champion models were trained")
    return dg.RunRequest(run_key=f"retrain-{context.scheduled_execution_time:%Y%m%d}-{'-'.join(changed)}",
                         tags={"cmr/labels_changed": ",".join(changed)})
