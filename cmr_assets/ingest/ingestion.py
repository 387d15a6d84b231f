"""Ingest any folder of DICOM into the slice store: the one function the CLI and Dagster call.

Why: one orchestration path (discover -> headers in a process pool -> group/validate/order ->
skip scans already stored -> decode the chosen phase, normalise, write images -> write rows) so
the command line, the Dagster assets (one partition or all) and the tests all get the same behaviour.

Behaviour:
- Partitions: with `buckets`, only the files of those hash buckets (`partitions.py`) are read. Rows
  go to the Parquet file of their (source folder, bucket) partition (`partitioned_tables.py`), not to
  the DuckDB file, so partition runs on several processes or machines never wait on one writer;
  `database` (optional) has its `scans` / `slices` / `rejected_files` tables rebuilt from the files
  at the start and the end (one short transaction each, only when the files changed).
- Incremental and idempotent: a series whose keyed `scan_id` is already stored (in any partition)
  is skipped before any pixel is decoded; a partition's file keeps its rows and gains the new ones;
  `rejected_files` is unique on (source_root_hash, path, reason), so re-running a folder adds nothing.
- Bad input never stops the run: every unusable file gets a `rejected_files` row (path relative to
  the source folder, reason); a series rejected as a whole gives each of its files a
  "series rejected: ..." reason.
- An empty source folder is not an error: it records one row (path ".", reason "empty folder: no
  files found") and returns a zero-count report; an empty bucket records nothing. A missing source
  folder raises FileNotFoundError / NotADirectoryError naming it.
- Parallelism: up to `workers` processes working, this one included (`worker_pool`,
  `parallel_map`), one per `MIN_FILES_PER_WORKER` files (a small folder is read in this process
  alone: a spawned worker's start-up would cost more than it saves). The pool is started before
  the header pass and serves both passes.
- One read per file for the header (its first 64 KiB, or 4 KiB inflated), and one more read only
  for the chosen phase, straight at the pixel data the header pass located; pixels are never held
  beyond the scan being rendered, and results in flight are bounded by `parallel_map`'s windows,
  so memory grows only with the headers (~1 KB per file, see docs/benchmarks.md).
- Logs carry counts, rates, relative paths and reasons only (never tag values).
- Each new scan's heart box (`heart_crop.py`) costs six more decodes: end-diastole and the phase
  nearest end-systole at three mid-stack positions. A systolic image that does not decode costs
  the box (stored NULL: the app shows the full view), never the scan.

Public API:
- `IngestReport` (dataclass; `as_dict()` for metadata)
- `ingest_folder(source_dir, paths, database=None, workers=2, log=None, buckets=None) -> IngestReport`,
  where `database` is a DuckDB file path or a zero-argument callable returning a connection or a
  context manager yielding one (e.g. Dagster's `DuckDBResource.get_connection`), opened twice, briefly.
- `connect(database)`: that short-lived connection, as a context manager.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import duckdb

from cmr_assets.ingest.deid import (
    load_or_create_key,
    patient_group_for,
    scan_id_for,
    source_root_hash,
    study_key_for,
)
from cmr_assets.ingest.dicom_files import (
    REJECT_EMPTY_FOLDER,
    FileRejection,
    discover_files,
    parallel_map,
    read_headers,
    worker_pool,
)
from cmr_assets.ingest.heart_crop import stack_heart_box
from cmr_assets.ingest.partitions import bucket_of, files_in_buckets
from cmr_assets.ingest.pixels import REJECT_SERIES_DECODE, SeriesDecodeError, decode_image, render_series
from cmr_assets.ingest.slice_store import scan_rows, write_scan_files
from cmr_assets.ingest.stack_geometry import SeriesPlan, plan_all_series
from cmr_assets.partitioned_tables import PartitionStore, PartitionWriter, sync_partitioned_tables
from cmr_assets.settings import DataPaths

logger = logging.getLogger(__name__)

Database = Path | str | Callable[[], Any]
SCANS_PER_FLUSH = 200  # the first flush of a run's rows to its partition files; later ones double
SCANS_PER_LOG = 100
MIN_FILES_PER_WORKER = 1000  # below this, starting spawned workers costs more than it saves


@dataclass
class IngestReport:
    """Counts and rates of one ingestion run."""

    files_seen: int = 0
    dicom_files: int = 0
    series_found: int = 0
    scans_new: int = 0
    scans_skipped_existing: int = 0
    slices_new: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    rejected_rows_new: int = 0
    seconds: float = 0.0
    files_per_s: float = 0.0
    slices_per_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def connect(database: Database) -> Iterator[duckdb.DuckDBPyConnection]:
    """A short-lived connection from a DuckDB file path or a connection factory."""
    if isinstance(database, str | Path):
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(duckdb.connect(str(database))) as con:
            yield con
        return
    opened = database()
    if isinstance(opened, duckdb.DuckDBPyConnection):
        with contextlib.closing(opened) as con:
            yield con
        return
    with opened as con:
        yield con


def _render_and_write(source_dir: Path, plan: SeriesPlan, scan_id: str, paths_root: Path,
                      ingested_at: datetime, study_key: str | None = None,
                      patient_group: str | None = None) -> tuple[dict, list[dict]] | list[FileRejection]:
    """Worker: decode one planned scan, write its images, return its rows (or why it failed)."""
    try:
        rendered = render_series(source_dir, plan)
    except SeriesDecodeError as exc:
        bad = exc.rejection
        paths = dict.fromkeys(h.path for position in plan.positions for h in position.files)
        others = [FileRejection(path, REJECT_SERIES_DECODE, f"{bad.path} ({bad.detail})")
                  for path in paths if path != bad.path]
        return [bad, *others]
    try:
        heart = stack_heart_box(plan.positions, partial(decode_image, source_dir), plan.pixel_spacing)
    except SeriesDecodeError:  # an undecodable systolic image costs the crop, not the scan
        heart = None
    files = write_scan_files(DataPaths(paths_root), scan_id, rendered)
    return scan_rows(scan_id, rendered, files, ingested_at, study_key, heart, patient_group)


def _store_new_scans(tasks: list[tuple], buckets: list[str], pool: Executor | None, writer: PartitionWriter,
                     report: IngestReport, log: Callable[[str], None]) -> list[FileRejection]:
    """Render and write each new scan (in the pool), its rows to its partition (`buckets[i]` for
    `tasks[i]`); returns decode rejections. Rows are flushed after `SCANS_PER_FLUSH` scans, then each
    time as many again as were stored before (each flush rewrites the partitions that grew, so the
    doubling keeps the rewriting linear in the scans stored)."""
    rejections: list[FileRejection] = []
    started = time.perf_counter()
    unflushed, flushed = 0, 0
    for done, (outcome, bucket) in enumerate(zip(parallel_map(_render_and_write, tasks, pool), buckets,
                                                 strict=True), start=1):
        if isinstance(outcome, list):
            rejections.extend(outcome)
            log(f"scan rejected: {outcome[0].path}: {outcome[0].reason}")
        else:
            writer.add("scans", bucket, [outcome[0]])
            writer.add("slices", bucket, outcome[1])
            report.scans_new += 1
            report.slices_new += len(outcome[1])
            unflushed += 1
        if unflushed >= max(SCANS_PER_FLUSH, flushed) or (done == len(tasks) and unflushed):
            writer.flush()
            flushed, unflushed = flushed + unflushed, 0
        if done % SCANS_PER_LOG == 0 or done == len(tasks):
            rate = report.slices_new / max(time.perf_counter() - started, 1e-9)
            log(f"slices: {done}/{len(tasks)} new scans processed, {report.slices_new} slices, {flushed} scans "
                f"stored ({rate:.0f} slices/s)")
    return rejections


def _sync(database: Database, paths: DataPaths) -> None:
    with connect(database) as con:
        sync_partitioned_tables(con, paths)


def _record_rejections(writer: PartitionWriter, rejections: list[FileRejection], now: datetime) -> int:
    """Each rejection into its file's partition, once per (source, path, reason), also across a
    pre-partition database's rows (the `legacy` file); returns how many rows were new."""
    store, source = writer.store, writer.group
    legacy = store.read("rejected_files", "source_root_hash, path, reason", [store.legacy_file("rejected_files")])
    recorded = set(legacy.itertuples(index=False, name=None))
    for r in rejections:
        if (source, r.path, r.reason) not in recorded:
            writer.add("rejected_files", bucket_of(r.path),
                       [{"source_root_hash": source, "path": r.path, "reason": r.reason, "rejected_at": now}])
    writer.flush()
    return writer.new_rejections


def _plan_bucket(plan: SeriesPlan) -> str:
    """A scan's partition: the bucket of its first file (a series keeps to one top-level folder)."""
    return bucket_of(min(h.path for position in plan.positions for h in position.files))


def ingest_folder(
    source_dir: Path,
    paths: DataPaths,
    database: Database | None = None,
    workers: int = 2,
    log: Callable[[str], None] | None = None,
    buckets: Sequence[str] | None = None,
) -> IngestReport:
    """Ingest every short-axis cine MR stack under `source_dir` (only the files of `buckets`, when
    given) that is not stored yet; with `database`, its tables are brought up to date before and after."""
    log = log or logger.info
    source_dir = Path(source_dir).resolve()
    if not source_dir.exists():
        raise FileNotFoundError(f"source folder does not exist: {source_dir}")
    if not source_dir.is_dir():
        raise NotADirectoryError(f"source is not a folder: {source_dir}")
    started = time.perf_counter()
    now = datetime.now(UTC).replace(tzinfo=None)
    paths.ensure()
    key = load_or_create_key(paths.secret)
    report = IngestReport()

    source = source_root_hash(source_dir, key)
    store = PartitionStore(paths)
    if database is not None:  # before anything is read: moves a pre-partition database's rows to Parquet
        _sync(database, paths)
    files = discover_files(source_dir)
    if buckets is not None:
        files = files_in_buckets(source_dir, files, buckets)
    report.files_seen = len(files)
    scope = "the source folder" if buckets is None else f"bucket(s) {', '.join(buckets)}"
    log(f"discovery: {len(files)} files in {scope}")
    with worker_pool(min(workers, len(files) // MIN_FILES_PER_WORKER)) as pool:
        if files:
            headers, rejections = read_headers(source_dir, files, pool, log)
        elif buckets is None:
            headers, rejections = [], [FileRejection(".", REJECT_EMPTY_FOLDER, "no files found")]
        else:  # an empty bucket is no error
            headers, rejections = [], []
        report.dicom_files = len({h.path for h in headers})
        report.series_found = len({h.series_uid for h in headers})
        plans, plan_rejections = plan_all_series(headers)
        rejections.extend(plan_rejections)
        log(f"grouping: {report.series_found} series, {len(plans)} short-axis stacks, "
            f"{len(rejections)} files rejected so far")

        stored = set(store.read("scans", "scan_id")["scan_id"])
        scan_ids = {plan.scan_key: scan_id_for(plan.scan_key, key) for plan in plans}
        new_plans = [plan for plan in plans if scan_ids[plan.scan_key] not in stored]
        tasks = [(source_dir, plan, scan_ids[plan.scan_key], paths.root, now, study_key_for(plan.study_uid, key),
                  patient_group_for(plan.patient_id, plan.study_uid, plan.scan_key, key)) for plan in new_plans]
        report.scans_skipped_existing = len(plans) - len(tasks)
        if report.scans_skipped_existing:
            log(f"incremental: {report.scans_skipped_existing} scans already stored, skipped")
        writer = PartitionWriter(store, source)
        rejections.extend(_store_new_scans(tasks, [_plan_bucket(plan) for plan in new_plans], pool, writer,
                                           report, log))
    report.rejected_rows_new = _record_rejections(writer, rejections, now)
    if database is not None:
        _sync(database, paths)
    report.rejected = dict(sorted(Counter(r.kind for r in rejections).items()))
    report.seconds = time.perf_counter() - started
    report.files_per_s = report.files_seen / max(report.seconds, 1e-9)
    report.slices_per_s = report.slices_new / max(report.seconds, 1e-9)
    log(f"done: {report.scans_new} new scans, {report.slices_new} slices, {report.scans_skipped_existing} "
        f"skipped, {len(rejections)} rejected files in {report.seconds:.1f} s "
        f"({report.files_per_s:.0f} files/s, {report.slices_per_s:.0f} slices/s); "
        f"by reason: {report.rejected}")
    return report
