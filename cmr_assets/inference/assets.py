"""The archive-wide filter as an asset: the ranking champion's keep/remove decision for every ingested
slice, in the `slice_decisions` table (`inference.archive`), partitioned like ingestion (one Parquet
file per bucket, `partitioned_tables.py`, so bucket runs share no writer), redone for what changed
when new scans are ingested or a retrain registers a model (eager automation; `archive_filter_sensor`
evaluates it)."""

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource
from mlflow.exceptions import MlflowException

from cmr_assets.domain import CHAMPION, REGISTERED_MODEL_NAMES
from cmr_assets.figures import archive_decisions_png
from cmr_assets.inference.archive import decide_scans, decision_summary, scans_to_decide
from cmr_assets.inference.class_prior import check_lv_share, lv_share_from_env
from cmr_assets.ingest.assets import BUCKETS_PER_RUN, SCAN_BUCKETS
from cmr_assets.metadata import picture
from cmr_assets.partitioned_tables import PartitionStore, sync_partitioned_tables
from cmr_assets.resources import DataPathsResource, MlflowResource
from cmr_assets.training.dataset import load_slice_images

GROUP = "inference"
FILTER_STRATEGY = "ranking"  # the model `cmr-assets filter` uses by default
DECISIONS_GROUP = "archive_filter"  # the decisions' files: <data>/tables/slice_decisions/archive_filter/<bucket>


class ArchiveFilterConfig(dg.Config):
    """`scans_per_chunk`: scans read, decided and written together (one short write each; a progress line).
    `lv_share`: the share of LV slices expected per stack, the filter's class prior (None:
    `$CMR_FILTER_LV_SHARE` or 0.5; see `inference.class_prior`). `redecide`: decide every scan of the
    bucket(s) again, not only new scans and those of an earlier champion (after changing `lv_share`)."""

    scans_per_chunk: int = 200
    lv_share: float | None = None
    redecide: bool = False


def _decide_bucket(context: dg.AssetExecutionContext, store: PartitionStore, bucket: str,
                   champion: Callable[[], Any], name: str, version: str, config: ArchiveFilterConfig,
                   lv_share: float) -> int:
    """Decide the bucket's scans that this version has not decided; the bucket's file is rewritten after
    each chunk (its other rows kept), so an interrupted run keeps its progress. Returns scans decided."""
    slices = store.read("slices", "slice_id, scan_id, slice_from_base, array_path, array_index",
                        store.bucket_files("slices", bucket))
    decided = store.read_partition("slice_decisions", DECISIONS_GROUP, bucket)
    todo = scans_to_decide(slices, decided, version, config.redecide) if len(slices) else []
    scans_per_chunk = config.scans_per_chunk
    kept = decided[~decided["scan_id"].isin(todo)]
    started = time.perf_counter()
    for start in range(0, len(todo), scans_per_chunk):
        chunk = todo[start:start + scans_per_chunk]
        rows = slices[slices["scan_id"].isin(chunk)]
        decisions = decide_scans(rows, load_slice_images(store.paths.root, rows), champion(), name, version,
                                 datetime.now(UTC), lv_share)
        kept = pd.concat([frame for frame in (kept, decisions) if len(frame)], ignore_index=True)
        store.write_partition("slice_decisions", DECISIONS_GROUP, bucket, kept)
        done, seconds = start + len(chunk), time.perf_counter() - started
        context.log.info(f"archive_filter bucket {bucket}: {done}/{len(todo)} scans ({len(rows)} slices in this "
                         f"chunk), {done / max(seconds, 1e-9):.1f} scans/s")
    return len(todo)


@dg.asset(group_name=GROUP, deps=["slices", f"model_{FILTER_STRATEGY}"], partitions_def=SCAN_BUCKETS,
          backfill_policy=BUCKETS_PER_RUN, kinds={"parquet", "pytorch"},
          automation_condition=dg.AutomationCondition.eager())
def archive_filter(context: dg.AssetExecutionContext, config: ArchiveFilterConfig, data_paths: DataPathsResource,
                   duckdb: DuckDBResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """Every ingested slice of the bucket(s) through the champion and the filter's decision rule
    (class prior, monotone step along each stack, OOD slices kept), into `slice_decisions`; scans
    already decided by this champion version are left as they are unless `redecide`."""
    if config.scans_per_chunk < 1:
        raise dg.Failure(f"archive_filter: scans_per_chunk must be >= 1, got {config.scans_per_chunk}")
    try:
        lv_share = lv_share_from_env() if config.lv_share is None else check_lv_share(config.lv_share, "lv_share")
    except ValueError as error:
        raise dg.Failure(f"archive_filter: {error}") from error
    name = REGISTERED_MODEL_NAMES[FILTER_STRATEGY]
    try:
        version = str(mlflow.client().get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as error:  # the registry says why: no such model or alias
        raise dg.Failure(f"archive_filter: no {CHAMPION} of {name} to filter with ({error})") from error
    paths = data_paths.paths()
    store = PartitionStore(paths)
    champion = functools.cache(lambda: mlflow.load_model(f"models:/{name}/{version}"))  # only if work
    decided_now = sum(_decide_bucket(context, store, bucket, champion, name, version, config, lv_share)
                      for bucket in context.partition_keys)
    context.log.info(f"archive_filter: {decided_now} scans decided with {name} v{version} in bucket(s) "
                     f"{', '.join(context.partition_keys)}")
    with duckdb.get_connection() as con:  # the decisions into the DuckDB file too (one short write)
        sync_partitioned_tables(con, paths)
    everything = store.read("slice_decisions")
    summary = decision_summary(everything) if not everything.empty else {}
    metadata: dict[str, Any] = {"registered_model": name, "model_version": version, "lv_share": lv_share,
                                "scans_decided_now": decided_now, **summary}
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
