"""Sensors and schedules: annotations trickle in, models retrain, new scans are picked up.

Defaults (documented in the README): both sensors and the nightly schedule are RUNNING once the
Dagster daemon runs (`make ui` starts it); switch any of them in the UI (Automation tab) or with
`dagster sensor stop NAME` / `dagster schedule stop NAME`.
"""

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import duckdb

from cmr_assets.automation.file_cursor import (
    FileStamp,
    folder_state,
    format_cursor,
    new_file_count,
    parse_cursor,
    scan_folder,
)
from cmr_assets.resources import DataPathsResource

ANNOTATION_PATTERNS = ("*.jsonl",)
DICOM_PATTERNS = ("*",)

# Everything that must be refreshed when labels change: ingestion of annotation files, labels,
# agreement, both models and the evaluation report.
RELABEL_SELECTION = dg.AssetSelection.assets("raw_annotations_single", "raw_annotations_ranking").downstream()
RETRAIN_SELECTION = dg.AssetSelection.assets("model_single", "model_ranking").downstream()
NEW_SCANS_SELECTION = dg.AssetSelection.assets("raw_scans", "slices")

relabel_job = dg.define_asset_job(
    "relabel_and_retrain", selection=RELABEL_SELECTION,
    description="Ingest new annotation files, re-aggregate labels, retrain both models, re-evaluate.",
)
ingest_new_scans_job = dg.define_asset_job(
    "ingest_new_scans", selection=NEW_SCANS_SELECTION,
    description="Ingest DICOM that appeared under the scans folder (already ingested scans are skipped).",
)
retrain_job = dg.define_asset_job(
    "retrain_models", selection=RETRAIN_SELECTION,
    description="Retrain both models on the current labels and re-evaluate.",
)


def _folder_sensor_tick(context: dg.SensorEvaluationContext, folder, patterns, what: str,
                        already_done: Callable[[list[FileStamp]], list[FileStamp]] | None = None,
                        stamps: list[FileStamp] | None = None):
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
        except duckdb.Error as error:  # the pipeline holds the write lock: look again next tick
            return dg.SkipReason(f"database busy ({type(error).__name__}); will look again")
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
        with duckdb.connect(str(database), read_only=True) as con:
            if not con.execute("SELECT count(*) FROM information_schema.tables "
                               "WHERE table_name = 'annotation_files'").fetchall()[0][0]:
                return []
            sizes = dict(con.execute("SELECT source_file, size FROM annotation_files").fetchall())
        return [s for s in stamps if sizes.get(s.path) == s.size]
    return done


@dg.sensor(job=relabel_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def annotation_files_sensor(context: dg.SensorEvaluationContext, data_paths: DataPathsResource):
    """New annotation files -> ingest them, re-aggregate labels, retrain, re-evaluate (one run per batch of files).

    Files already ingested (e.g. the demo's, when the daemon first starts) start no run.
    """
    paths = data_paths.paths()
    # the same entries ingestion looks at: the folder's own `*.jsonl`, symlinks listed (not followed)
    stamps = scan_folder(paths.annotations_incoming, ANNOTATION_PATTERNS, recursive=False, follow_symlinks=False)
    return _folder_sensor_tick(context, paths.annotations_incoming, ANNOTATION_PATTERNS, "annotation files",
                               ingested_annotation_files(paths.duckdb), stamps)


@dg.sensor(job=ingest_new_scans_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def new_scans_sensor(context: dg.SensorEvaluationContext, data_paths: DataPathsResource):
    """New files under the scans folder -> incremental ingestion (existing scans are not reprocessed)."""
    paths = data_paths.paths()
    return _folder_sensor_tick(context, paths.scans, DICOM_PATTERNS, "files under scans/")
