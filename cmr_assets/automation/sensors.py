"""Sensors and schedules: annotations trickle in, labels follow, models retrain when labels settle.

- `annotation_files_sensor`: new annotation files -> `relabel` (ingest, aggregate, agreement, split);
  cheap, so it follows answers within a tick; never more than one relabel run waiting in the queue.
- `labels_settled_sensor`: -> `retrain_models` for the strategies whose training labels changed since
  their newest registered model, once the inbox has been quiet (see `cmr_assets.automation.retrain`).
- `new_scans_sensor`: new files under `data/scans/` -> `ingest_new_scans`, one run per bucket (partition)
  whose files changed, at most `INGEST_RUNS_PER_TICK` runs (bucket ranges) per tick.

Defaults (documented in the README): the sensors and the nightly schedule are RUNNING once the
Dagster daemon runs (`make ui` starts it); switch any of them in the UI (Automation tab) or with
`dagster sensor stop NAME` / `dagster schedule stop NAME`.
"""

import json
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np

from cmr_assets.automation.file_cursor import (
    FileStamp,
    folder_state,
    format_cursor,
    new_file_count,
    parse_cursor,
    scan_folder,
)
from cmr_assets.automation.retrain import (
    LANE_TAG,
    RetrainPolicyResource,
    current_label_hashes,
    inbox_quiet_for,
    last_trained,
    retrain_request,
    runs_in_flight,
    strategies_to_retrain,
)
from cmr_assets.domain import STRATEGIES
from cmr_assets.duckdb_io import read_only, table_exists
from cmr_assets.ingest.partitions import bucket_of
from cmr_assets.resources import DataPathsResource, MlflowResource

ANNOTATION_PATTERNS = ("*.jsonl",)
DICOM_PATTERNS = ("*",)

# Relabel: what follows answers closely (DuckDB only, seconds). Retrain: the models and the report.
RELABEL_SELECTION = dg.AssetSelection.assets("raw_annotations_single", "raw_annotations_ranking", "labels_single",
                                             "labels_ranking", "observer_agreement", "dataset_split")
# the archive-wide filter follows a new champion by its own automation condition (inference/assets.py)
RETRAIN_SELECTION = (dg.AssetSelection.assets("model_single", "model_ranking").downstream()
                     - dg.AssetSelection.assets("archive_filter"))
NEW_SCANS_SELECTION = dg.AssetSelection.assets("raw_scans", "slices")
INGEST_RUNS_PER_TICK = 4  # the run queue's default limit (deploy/dagster-postgres/dagster.yaml)

relabel_job = dg.define_asset_job(
    "relabel", selection=RELABEL_SELECTION, tags={LANE_TAG: "relabel"},
    description="Ingest new annotation files, re-aggregate labels and agreement, assign newly labelled scans "
                "to the split. Models are retrained separately (`retrain_models`), when labels settle.",
)
ingest_new_scans_job = dg.define_asset_job(
    "ingest_new_scans", selection=NEW_SCANS_SELECTION,
    description="Ingest DICOM that appeared under the scans folder (already ingested scans are skipped).",
)
retrain_job = dg.define_asset_job(
    "retrain_models", selection=RETRAIN_SELECTION, tags={LANE_TAG: "retrain"},
    description="Retrain the models on the current labels and re-evaluate (one such run at a time).",
)


def _database_busy(error: duckdb.Error) -> dg.SkipReason:
    """The pipeline holds DuckDB's write lock: look again next tick."""
    return dg.SkipReason(f"database busy ({type(error).__name__}); will look again")


def _folder_sensor_tick(context: dg.SensorEvaluationContext, folder: Path, patterns: tuple[str, ...], what: str,
                        already_done: Callable[[list[FileStamp]], list[FileStamp]] | None = None,
                        stamps: list[FileStamp] | None = None) -> dg.RunRequest | dg.SkipReason:
    """One run per changed listing; `already_done` drops files whose work is already stored."""
    stamps = scan_folder(folder, patterns) if stamps is None else stamps
    before = parse_cursor(context.cursor)
    if not stamps and before is None:
        return dg.SkipReason(f"no {what} in {folder}")
    now = folder_state(stamps)
    if before is not None and now.digest == before.digest:
        return dg.SkipReason(f"no new {what} in {folder}")
    if already_done is not None:
        try:
            done = set(already_done(stamps))
        except duckdb.Error as error:
            return _database_busy(error)
        if all(s in done for s in stamps):
            context.update_cursor(format_cursor(now))
            return dg.SkipReason(f"all {now.n_files} {what} are already ingested")
    new = new_file_count(now, before)
    context.update_cursor(format_cursor(now))
    context.log.info(f"{what}: {now.n_files} files, {new} new or changed")
    return dg.RunRequest(run_key=now.digest, tags={"cmr/new_files": str(new)})


def ingested_annotation_files(database: Path) -> Callable[[list[FileStamp]], list[FileStamp]]:
    """The files that annotation ingestion already read in full (same name and size in `annotation_files`)."""
    def done(stamps: list[FileStamp]) -> list[FileStamp]:
        if not database.exists():
            return []
        with read_only(database) as con:
            if not table_exists(con, "annotation_files"):
                return []
            sizes = dict(con.execute("SELECT source_file, size FROM annotation_files").fetchall())
        return [s for s in stamps if sizes.get(s.path) == s.size]
    return done


@dg.sensor(job=relabel_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def annotation_files_sensor(context: dg.SensorEvaluationContext,
                            data_paths: DataPathsResource) -> dg.RunRequest | dg.SkipReason:
    """New annotation files -> ingest them and re-aggregate labels (one run per batch of files).

    Files already ingested (e.g. the demo's, when the daemon first starts) start no run. While a
    relabel run waits in the queue no other is requested (it will read every file when it starts);
    the cursor stays, so the files are looked at again next tick.
    """
    if runs_in_flight(context.instance, relabel_job.name, [dg.DagsterRunStatus.QUEUED,
                                                           dg.DagsterRunStatus.NOT_STARTED]):
        return dg.SkipReason("a relabel run is already queued; it reads every file when it starts")
    paths = data_paths.paths()
    # the same entries ingestion looks at: the folder's own `*.jsonl`, symlinks listed (not followed)
    stamps = scan_folder(paths.annotations_incoming, ANNOTATION_PATTERNS, recursive=False, follow_symlinks=False)
    return _folder_sensor_tick(context, paths.annotations_incoming, ANNOTATION_PATTERNS, "annotation files",
                               ingested_annotation_files(paths.duckdb), stamps)


def retrain_due(context: dg.SensorEvaluationContext | dg.ScheduleEvaluationContext, data_paths: DataPathsResource,
                mlflow: MlflowResource, quiet_s: float | None, run_key_prefix: str,
                tags: dict[str, str] | None = None) -> dg.RunRequest | dg.SkipReason:
    """The shared retrain decision of the sensor (`quiet_s` set) and the nightly schedule (None)."""
    if runs_in_flight(context.instance, retrain_job.name):
        return dg.SkipReason("a retrain run is already queued or running")
    if runs_in_flight(context.instance, relabel_job.name):
        return dg.SkipReason("labels are being updated (relabel run queued or running)")
    paths = data_paths.paths()
    stamps = scan_folder(paths.annotations_incoming, ANNOTATION_PATTERNS, recursive=False, follow_symlinks=False)
    try:
        done = set(ingested_annotation_files(paths.duckdb)(stamps))
    except duckdb.Error as error:
        return _database_busy(error)
    if any(s not in done for s in stamps):
        return dg.SkipReason("annotation files not yet ingested; relabel first")
    if quiet_s is not None:
        quiet_for = inbox_quiet_for([s.mtime_ns for s in stamps])
        if quiet_for < quiet_s:
            return dg.SkipReason(f"annotators still at work: inbox quiet for {quiet_for:.0f} s of {quiet_s:.0f} s")
    trained = {s: last_trained(mlflow, s) for s in STRATEGIES}
    try:
        current = current_label_hashes(paths.duckdb, {s: t.soft_labels for s, t in trained.items()})
    except duckdb.Error as error:
        return _database_busy(error)
    changed = strategies_to_retrain(current, {s: t.label_hash for s, t in trained.items()})
    if not changed:
        return dg.SkipReason("training labels unchanged since the newest registered models were trained")
    failed = [s for s in changed if labels_check_failed(context.instance, s)]
    if failed and failed == changed:
        return dg.SkipReason(f"blocking label check failed for {', '.join(failed)}: fix the labels first")
    return retrain_request([s for s in changed if s not in failed], current, run_key_prefix, tags)


def labels_check_failed(instance: dg.DagsterInstance, strategy: str) -> bool:
    """Whether the latest evaluation of the blocking `labels_<strategy>_sane` check failed."""
    key = dg.AssetCheckKey(dg.AssetKey(f"labels_{strategy}"), f"labels_{strategy}_sane")
    record = instance.get_latest_asset_check_evaluation_record(key)
    if record is None or record.event is None:
        return False
    evaluation = record.event.dagster_event.asset_check_evaluation_data if record.event.dagster_event else None
    return evaluation is not None and not evaluation.passed


@dg.sensor(job=retrain_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def labels_settled_sensor(context: dg.SensorEvaluationContext, data_paths: DataPathsResource,
                          mlflow: MlflowResource,
                          retrain_policy: RetrainPolicyResource) -> dg.RunRequest | dg.SkipReason:
    """Retrain the strategies whose training labels changed, once the annotation inbox is quiet and
    no retrain is queued or running (run key = the label hashes: one run per label state)."""
    return retrain_due(context, data_paths, mlflow, retrain_policy.quiet_minutes * 60, "settled")


def changed_buckets(stamps: list[FileStamp], cursor: str | None) -> tuple[list[str], str, dict[str, int]]:
    """The ingestion buckets whose files changed since `cursor` (new, grown, touched; a bucket whose
    files all went needs no run), the cursor to store (a digest per bucket) and each bucket's file count."""
    by_bucket: dict[str, list[FileStamp]] = {}
    for stamp in stamps:
        by_bucket.setdefault(bucket_of(stamp.path), []).append(stamp)
    now = {bucket: folder_state(files).digest for bucket, files in sorted(by_bucket.items())}
    before = json.loads(cursor).get("buckets", {}) if cursor else {}  # an older, whole-folder cursor: all
    changed = [bucket for bucket, digest in now.items() if before.get(bucket) != digest]
    return changed, json.dumps({"buckets": now}), {bucket: len(files) for bucket, files in by_bucket.items()}


def bucket_ranges(buckets: list[str], max_runs: int) -> list[tuple[str, str]]:
    """The changed buckets (sorted keys) as at most `max_runs` contiguous key ranges of about equal
    length; a range may cover unchanged buckets between changed ones (ingestion skips what is stored)."""
    groups = [list(group) for group in np.array_split(buckets, min(max_runs, len(buckets))) if len(group)]
    return [(group[0], group[-1]) for group in groups]


@dg.sensor(job=ingest_new_scans_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def new_scans_sensor(context: dg.SensorEvaluationContext,
                     data_paths: DataPathsResource) -> list[dg.RunRequest] | dg.SkipReason:
    """New files under the scans folder -> incremental ingestion of the buckets that changed
    (`ingest/partitions.py`): one run per bucket, or per range of buckets when more than
    `INGEST_RUNS_PER_TICK` changed (the first tick sees every bucket as changed); those runs share
    no writer, so the run queue may run them side by side."""
    paths = data_paths.paths()
    stamps = scan_folder(paths.scans, DICOM_PATTERNS)
    changed, cursor, counts = changed_buckets(stamps, context.cursor)
    if not changed:
        return dg.SkipReason(f"no new files under {paths.scans}")
    context.update_cursor(cursor)
    context.log.info(f"files under scans/: {len(changed)} bucket(s) changed: {', '.join(changed)}")
    digest = folder_state(stamps).digest
    requests = []
    for first, last in bucket_ranges(changed, INGEST_RUNS_PER_TICK):
        files = sum(n for bucket, n in counts.items() if first <= bucket <= last)
        tags = {"cmr/bucket_files": str(files)}
        if first == last:
            requests.append(dg.RunRequest(run_key=f"{first}-{digest}", partition_key=first, tags=tags))
        else:
            requests.append(dg.RunRequest(run_key=f"{first}-{last}-{digest}", tags={
                **tags, "dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}))
    return requests
