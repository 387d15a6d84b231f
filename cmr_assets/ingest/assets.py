"""Ingestion as assets: the raw DICOM inventory and the de-identified slices.

`raw_scans` follows `synthetic_cohort` (cmr_assets/synthetic/assets.py), named here by its key so that
ingestion does not import the synthetic package.
"""


from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource

from cmr_assets.duckdb_io import read_table
from cmr_assets.figures import montage
from cmr_assets.ingest.dicom_files import inventory
from cmr_assets.ingest.ingestion import ingest_folder
from cmr_assets.ingest.partitions import BUCKET_KEYS
from cmr_assets.metadata import picture, table
from cmr_assets.partitioned_tables import PartitionStore
from cmr_assets.resources import DataPathsResource
from cmr_assets.settings import DataPaths

GROUP = "ingest"
SCAN_BUCKETS = dg.StaticPartitionsDefinition(list(BUCKET_KEYS))
# a backfill (UI "Materialize all", the archive filter's automation) runs 4 buckets per run: 4 runs
# spread over workers, without paying a run's start-up (tens of seconds of imports) 16 times
BUCKETS_PER_RUN = dg.BackfillPolicy.multi_run(max_partitions_per_run=4)
# a run over every bucket at once (the demo, `cmr-assets ingest`): one process, one worker pool
ALL_BUCKETS_TAGS = {"dagster/asset_partition_range_start": BUCKET_KEYS[0],
                    "dagster/asset_partition_range_end": BUCKET_KEYS[-1]}


class ScanSourceConfig(dg.Config):
    """Which folder to ingest; empty means the project's scans folder (`$CMR_DATA_DIR/scans`)."""

    source_dir: str = ""
    workers: int = 2


def _source_dir(config: ScanSourceConfig, paths: DataPaths) -> Path:
    return Path(config.source_dir).expanduser().resolve() if config.source_dir else paths.scans


@dg.asset(group_name=GROUP, deps=["synthetic_cohort"], kinds={"dicom"})
def raw_scans(context: dg.AssetExecutionContext, config: ScanSourceConfig,
              data_paths: DataPathsResource) -> dg.MaterializeResult:
    """The inventory of the DICOM source folder (files and bytes by top-level folder); no pixels read."""
    paths = data_paths.paths()
    source = _source_dir(config, paths)
    if not source.is_dir():
        raise dg.Failure(f"scan source folder {source} does not exist")
    found = inventory(source)
    context.log.info(f"{found.files} files ({found.bytes / 1e6:.1f} MB) under {source}")
    return dg.MaterializeResult(
        metadata={"files": found.files, "megabytes": round(found.bytes / 1e6, 1),
                  "top_level_folders": found.top_level_folders, "source": dg.MetadataValue.path(str(source))},
        data_version=dg.DataVersion(f"{found.files}-{found.bytes}"),
    )


def _slice_montage(paths: DataPaths, slices: pd.DataFrame, n_scans: int = 2) -> bytes | None:
    """Base -> apex montage of the first scans, from the de-identified arrays."""
    if slices.empty:
        return None
    images, titles = [], []
    for scan_id in sorted(slices["scan_id"].unique())[:n_scans]:
        rows = slices[slices["scan_id"] == scan_id].sort_values("slice_from_base")
        stack = np.load(paths.root / rows["array_path"].iloc[0])
        images += list(stack)
        titles += [f"{scan_id[:6]} #{i}" for i in rows["slice_from_base"]]
    return montage(images, titles, ncols=8)


@dg.asset(group_name=GROUP, deps=[raw_scans], partitions_def=SCAN_BUCKETS, backfill_policy=BUCKETS_PER_RUN,
          kinds={"dicom", "parquet"})
def slices(context: dg.AssetExecutionContext, config: ScanSourceConfig, data_paths: DataPathsResource,
           duckdb: DuckDBResource) -> dg.MaterializeResult:
    """De-identified slices, base -> apex, end-diastolic phase: PNGs, arrays and the rows of `scans`,
    `slices` and `rejected_files`, one Parquet file per bucket of the source folder (`partitions.py`).

    Partition runs share no writer, so many run at once. Incremental: scans already stored are
    skipped; every rejected file is recorded with its reason.
    """
    paths = data_paths.paths()
    buckets = context.partition_keys
    report = ingest_folder(_source_dir(config, paths), paths, duckdb.get_connection, workers=config.workers,
                           log=context.log.info, buckets=buckets)
    store = PartitionStore(paths)
    stored = store.read("slices", "scan_id, slice_from_base, array_path")
    rejected = store.read("rejected_files", "reason")
    by_reason = rejected.groupby("reason").size().rename("files").sort_values(ascending=False).reset_index()
    metadata: dict[str, int | float | dg.MetadataValue] = {
        key: value for key, value in report.as_dict().items() if isinstance(value, int | float)}
    metadata.update({"buckets": dg.MetadataValue.text(", ".join(buckets)), "slices_total": len(stored),
                     "scans_total": int(stored["scan_id"].nunique()), "rejections_by_reason": table(by_reason)})
    png = _slice_montage(paths, stored)
    if png is not None:
        metadata["montage"] = picture(png, "slices base to apex")
    return dg.MaterializeResult(metadata=metadata)


@dg.asset_check(asset=slices, description="Every slice row has its PNG and its row in the scan's array.")
def every_slice_has_its_image(data_paths: DataPathsResource, duckdb: DuckDBResource) -> dg.AssetCheckResult:
    paths = data_paths.paths()
    with duckdb.get_connection() as con:
        rows = read_table(con, "slices", "slice_id, png_path, array_path, array_index")
    missing_png = [s for s, p in zip(rows["slice_id"], rows["png_path"], strict=True) if not (paths.root / p).exists()]
    bad_array = []
    for array_path, group in rows.groupby("array_path"):
        file = paths.root / array_path
        n = np.load(file, mmap_mode="r").shape[0] if file.exists() else -1
        bad_array += [s for s, i in zip(group["slice_id"], group["array_index"], strict=True) if not 0 <= i < n]
    return dg.AssetCheckResult(passed=not missing_png and not bad_array,
                               metadata={"slices": len(rows), "missing_png": len(missing_png),
                                         "missing_array_rows": len(bad_array),
                                         "examples": ", ".join((missing_png + bad_array)[:5])})


@dg.asset_check(asset=slices, description="Positions strictly increase base -> apex within every scan.")
def positions_monotone_within_scan(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    with duckdb.get_connection() as con:
        offenders = con.execute("""
            SELECT scan_id FROM (
                SELECT scan_id, position_mm - lag(position_mm) OVER (PARTITION BY scan_id ORDER BY slice_from_base)
                    AS step FROM slices)
            WHERE step <= 0 GROUP BY scan_id""").fetchall()
    return dg.AssetCheckResult(passed=not offenders, metadata={"scans_not_monotone": len(offenders)})


ingest_assets = [raw_scans, slices]
ingest_checks = [every_slice_has_its_image, positions_monotone_within_scan]
