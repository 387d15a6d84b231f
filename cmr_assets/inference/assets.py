"""The archive-wide filter as an asset: the ranking champion's keep/remove decision for every ingested
slice, in the `slice_decisions` table (`inference.archive`), redone for what changed when new scans
are ingested or a retrain registers a model (eager automation; `archive_filter_sensor` evaluates it)."""

import time
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource
from mlflow.exceptions import MlflowException

from cmr_assets.domain import CHAMPION, REGISTERED_MODEL_NAMES
from cmr_assets.duckdb_io import append_rows, read_table, transaction
from cmr_assets.figures import archive_decisions_png
from cmr_assets.inference.archive import decide_scans, decision_summary, scans_to_decide
from cmr_assets.metadata import picture
from cmr_assets.resources import DataPathsResource, MlflowResource
from cmr_assets.tables import ensure_decision_table
from cmr_assets.training.dataset import load_slice_images

GROUP = "inference"
FILTER_STRATEGY = "ranking"  # the model `cmr-assets filter` uses by default


class ArchiveFilterConfig(dg.Config):
    """`scans_per_chunk`: scans read, decided and written together (one short write each; a progress line)."""

    scans_per_chunk: int = 200


@dg.asset(group_name=GROUP, deps=["slices", f"model_{FILTER_STRATEGY}"], pool="duckdb", kinds={"duckdb", "pytorch"},
          automation_condition=dg.AutomationCondition.eager())
def archive_filter(context: dg.AssetExecutionContext, config: ArchiveFilterConfig, data_paths: DataPathsResource,
                   duckdb: DuckDBResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """Every ingested slice through the champion and the filter's decision rule (monotone step along
    each stack, OOD slices kept), into `slice_decisions`; scans already decided by this champion
    version are left as they are."""
    if config.scans_per_chunk < 1:
        raise dg.Failure(f"archive_filter: scans_per_chunk must be >= 1, got {config.scans_per_chunk}")
    name = REGISTERED_MODEL_NAMES[FILTER_STRATEGY]
    try:
        version = mlflow.client().get_model_version_by_alias(name, CHAMPION).version
    except MlflowException as error:  # the registry says why: no such model or alias
        raise dg.Failure(f"archive_filter: no {CHAMPION} of {name} to filter with ({error})") from error
    with duckdb.get_connection() as con:
        ensure_decision_table(con)
        slices = read_table(con, "slices", "slice_id, scan_id, slice_from_base, array_path, array_index")
        decided = read_table(con, "slice_decisions", "slice_id, model_version")
    todo = scans_to_decide(slices, decided, str(version)) if not slices.empty else []
    root = data_paths.paths().root
    started = time.perf_counter()
    if todo:
        model = mlflow.load_model(f"models:/{name}/{version}")
        context.log.info(f"archive_filter: {len(todo)} of {slices['scan_id'].nunique()} scans to decide with "
                         f"{name} v{version}")
    for start in range(0, len(todo), config.scans_per_chunk):
        chunk = todo[start:start + config.scans_per_chunk]
        rows = slices[slices["scan_id"].isin(chunk)]
        decisions = decide_scans(rows, load_slice_images(root, rows), model, name, str(version), datetime.now(UTC))
        with duckdb.get_connection() as con, transaction(con):
            con.execute("DELETE FROM slice_decisions WHERE scan_id IN (SELECT unnest(?::VARCHAR[]))", [chunk])
            append_rows(con, "slice_decisions", decisions)
        done, seconds = start + len(chunk), time.perf_counter() - started
        context.log.info(f"archive_filter: {done}/{len(todo)} scans ({len(rows)} slices in this chunk), "
                         f"{done / max(seconds, 1e-9):.1f} scans/s")
    with duckdb.get_connection() as con:
        everything = read_table(con, "slice_decisions")
    summary = decision_summary(everything) if not everything.empty else {}
    metadata: dict[str, Any] = {"registered_model": name, "model_version": str(version),
                                   "scans_decided_now": len(todo), **summary}
    if not everything.empty:
        metadata["decisions_by_position"] = picture(archive_decisions_png(everything), "decisions by position")
        metadata["by_reason"] = dg.MetadataValue.md(_reason_table(everything))
    return dg.MaterializeResult(metadata=metadata)


def _reason_table(decisions: pd.DataFrame) -> str:
    counts = decisions.groupby("reason").size().sort_values(ascending=False)
    return "\n".join(["| reason | slices |", "|---|---|", *[f"| {r} | {n} |" for r, n in counts.items()]])


archive_filter_sensor = dg.AutomationConditionSensorDefinition(
    "archive_filter_sensor", target=[archive_filter], default_status=dg.DefaultSensorStatus.RUNNING,
    description="Runs archive_filter after new scans are ingested or a model is registered.",
)

inference_assets = [archive_filter]
