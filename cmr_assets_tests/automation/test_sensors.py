"""The folder sensors, evaluated as the daemon evaluates them: one run per new batch, cursor-driven, restartable."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest

from cmr_assets.automation.file_cursor import FileStamp
from cmr_assets.automation.sensors import (
    annotation_files_sensor,
    bucket_ranges,
    changed_buckets,
    new_scans_sensor,
)
from cmr_assets.definitions import defs
from cmr_assets.ingest.partitions import bucket_of
from cmr_assets.labelling.annotation_format import write_annotation_file
from cmr_assets.labelling.annotation_ingest import ingest_annotation_files, read_raw_annotations
from cmr_assets.resources import DataPathsResource
from cmr_assets.settings import DataPaths
from cmr_assets_tests.labelling.test_annotation_ingest import ROSTER, single


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def tick(sensor: dg.SensorDefinition, data_paths: DataPaths, instance: dg.DagsterInstance,
         cursor: str | None) -> tuple[dg.RunRequest | dg.SkipReason, str | None]:
    """One evaluation with a fresh context (as after a daemon restart): the result and the saved cursor."""
    context = dg.build_sensor_context(cursor=cursor, instance=instance,
                                      resources={"data_paths": DataPathsResource(root=str(data_paths.root))})
    return sensor(context), context.cursor


def touch(path: Path, mtime_s: int) -> Path:
    os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))
    return path


def selected_keys(job_name: str) -> set[str]:
    job = defs.resolve_job_def(job_name)
    return {key.to_user_string() for key in job.asset_layer.executable_asset_keys}


def test_annotation_sensor_relabels_without_training() -> None:
    assert annotation_files_sensor.job_name == "relabel"
    keys = selected_keys("relabel")
    assert keys == {"raw_annotations_single", "raw_annotations_ranking", "labels_single", "labels_ranking",
                    "observer_agreement", "dataset_split"}
    assert selected_keys("retrain_models") == {"model_single", "model_ranking", "evaluation_report"}
    assert defs.resolve_job_def("retrain_models").tags["cmr/lane"] == "retrain"
    assert defs.resolve_job_def("relabel").tags["cmr/lane"] == "relabel"


def test_new_annotation_file_triggers_exactly_one_run_then_skips(data_paths, instance) -> None:
    result, cursor = tick(annotation_files_sensor, data_paths, instance, None)
    assert isinstance(result, dg.SkipReason) and cursor is None
    touch(write_annotation_file([single()], data_paths.annotations_incoming, "single", "sim-expert-1"), 1_000)
    result, cursor = tick(annotation_files_sensor, data_paths, instance, None)
    assert isinstance(result, dg.RunRequest) and result.run_key and cursor
    assert result.job_name in (None, "relabel") and result.tags["cmr/new_files"] == "1"
    again, same_cursor = tick(annotation_files_sensor, data_paths, instance, cursor)
    assert isinstance(again, dg.SkipReason) and same_cursor == cursor


def test_restarted_sensor_resumes_from_its_cursor(data_paths, instance) -> None:
    incoming = data_paths.annotations_incoming
    touch(write_annotation_file([single()], incoming, "single", "sim-expert-1"), 1_000)
    first, cursor = tick(annotation_files_sensor, data_paths, instance, None)
    # the daemon stops; two more files arrive; it restarts
    touch(write_annotation_file([single("s-000002", "scan1-01")], incoming, "single", "sim-expert-1"), 1_500)
    touch(write_annotation_file([single("s-000003", annotator="sim-expert-2")], incoming, "single",
                                "sim-expert-2"), 2_000)
    (incoming / "notes.txt").write_text("not an annotation file")  # ignored: not *.jsonl
    resumed, new_cursor = tick(annotation_files_sensor, data_paths, instance, cursor)
    assert isinstance(first, dg.RunRequest) and isinstance(resumed, dg.RunRequest)
    assert resumed.tags["cmr/new_files"] == "2" and resumed.run_key != first.run_key
    assert new_cursor != cursor
    assert isinstance(tick(annotation_files_sensor, data_paths, instance, new_cursor)[0], dg.SkipReason)


def test_malformed_file_still_triggers_one_run_and_ingestion_rejects_it_not_the_valid_one(
        data_paths, instance, tmp_path) -> None:
    incoming = data_paths.annotations_incoming
    valid = touch(write_annotation_file([single(), single("s-000002", "scan1-01")], incoming, "single",
                                        "sim-expert-1"), 1_000)
    (incoming / "broken.jsonl").write_text('{"not": "a record"\n[]\n', encoding="utf-8")
    touch(incoming / "broken.jsonl", 1_000)
    result, _ = tick(annotation_files_sensor, data_paths, instance, None)
    assert isinstance(result, dg.RunRequest) and result.tags["cmr/new_files"] == "2"

    with duckdb.connect(str(tmp_path / "cmr.duckdb")) as con:
        tasks = pd.DataFrame({"task_id": ["s-000001", "s-000002"], "annotator_id": ["sim-expert-1"] * 2,
                              "slice_id": ["scan0-00", "scan1-01"], "kind": ["primary"] * 2})
        con.register("tasks_frame", tasks)
        con.execute("CREATE TABLE tasks_single AS SELECT * FROM tasks_frame")
        con.execute("CREATE TABLE tasks_ranking (batch_id VARCHAR, annotator_id VARCHAR, slice_ids VARCHAR[])")
        report = ingest_annotation_files(incoming, con, ROSTER)
        rejected = con.sql("SELECT source_file, line, reason FROM rejected_annotations ORDER BY line").df()
        single_rows, _ = read_raw_annotations(con)
    assert (report.files_read, report.single_added, report.rejected_added) == (2, 2, 2)
    assert set(single_rows["source_file"]) == {valid.name}
    assert (rejected["source_file"] == "broken.jsonl").all() and rejected["line"].tolist() == [1, 2]
    assert rejected["reason"].str.len().gt(0).all()


def test_new_scans_sensor_requests_one_run_per_bucket_that_changed(data_paths, instance, series_writer) -> None:
    assert new_scans_sensor.job_name == "ingest_new_scans"
    assert selected_keys("ingest_new_scans") == {"raw_scans", "slices"}
    for path in series_writer(data_paths.scans / "export1"):
        touch(path, 1_000)
    first, cursor = tick(new_scans_sensor, data_paths, instance, None)
    (request,) = first
    assert request.partition_key == bucket_of("export1/IM1.dcm") and request.tags["cmr/bucket_files"] == "12"
    assert isinstance(tick(new_scans_sensor, data_paths, instance, cursor)[0], dg.SkipReason)
    others = [f"export{k}" for k in range(2, 40) if bucket_of(f"export{k}/x") != bucket_of("export1/x")][:2]
    for folder in others:
        for path in series_writer(data_paths.scans / folder):
            touch(path, 2_000)
    second, _ = tick(new_scans_sensor, data_paths, instance, cursor)
    assert sorted(r.partition_key for r in second) == sorted(bucket_of(f"{folder}/x") for folder in others)
    assert {r.run_key for r in second}.isdisjoint({request.run_key})


def test_many_changed_buckets_are_asked_for_in_at_most_four_ranges(data_paths, instance, series_writer) -> None:
    assert bucket_ranges(["00", "02", "03", "07", "08", "12"], 4) == [("00", "02"), ("03", "07"), ("08", "08"),
                                                                    ("12", "12")]
    assert bucket_ranges(["05"], 4) == [("05", "05")]
    folders = [f"export{k}" for k in range(40)]
    for folder in folders[:12]:
        series_writer(data_paths.scans / folder)
    requests, _ = tick(new_scans_sensor, data_paths, instance, None)
    changed = sorted({bucket_of(f"{folder}/x") for folder in folders[:12]})
    assert len(requests) == min(4, len(changed))
    covered = [(r.tags.get("dagster/asset_partition_range_start", r.partition_key),
                r.tags.get("dagster/asset_partition_range_end", r.partition_key)) for r in requests]
    assert all(any(first <= bucket <= last for first, last in covered) for bucket in changed)
    assert sum(int(r.tags["cmr/bucket_files"]) for r in requests) == 12 * 12


def test_a_whole_folder_cursor_from_before_buckets_asks_for_every_bucket_once(data_paths) -> None:
    stamps = [FileStamp(f"s{k}/IM1.dcm", 10, 1) for k in range(40)]
    changed, cursor, counts = changed_buckets(stamps, json.dumps({"digest": "abc", "n_files": 40}))
    assert changed == sorted({bucket_of(s.path) for s in stamps}) and sum(counts.values()) == 40
    assert changed_buckets(stamps, cursor)[0] == []


def test_files_already_ingested_start_no_run_but_a_new_one_does(data_paths, instance) -> None:
    incoming = data_paths.annotations_incoming
    touch(write_annotation_file([single()], incoming, "single", "sim-expert-1"), 1_000)
    with duckdb.connect(str(data_paths.duckdb)) as con:  # e.g. `make demo` ingested it before the daemon ran
        tasks = pd.DataFrame({"task_id": ["s-000001", "s-000002"], "annotator_id": ["sim-expert-1"] * 2,
                              "slice_id": ["scan0-00", "scan1-01"], "kind": ["primary"] * 2})
        con.register("tasks_frame", tasks)
        con.execute("CREATE TABLE tasks_single AS SELECT * FROM tasks_frame")
        con.execute("CREATE TABLE tasks_ranking (batch_id VARCHAR, annotator_id VARCHAR, slice_ids VARCHAR[])")
        assert ingest_annotation_files(incoming, con, ROSTER).files_read == 1
    skipped, cursor = tick(annotation_files_sensor, data_paths, instance, None)
    assert isinstance(skipped, dg.SkipReason) and "already ingested" in skipped.skip_message and cursor
    touch(write_annotation_file([single("s-000002", "scan1-01")], incoming, "single", "sim-expert-1"), 2_000)
    fired, _ = tick(annotation_files_sensor, data_paths, instance, cursor)
    assert isinstance(fired, dg.RunRequest)


def test_rejected_symlink_counts_as_handled_and_subfolders_are_not_watched(data_paths, instance, tmp_path) -> None:
    incoming = data_paths.annotations_incoming
    outside = write_annotation_file([single()], tmp_path / "elsewhere", "single", "sim-expert-1")
    (incoming / "link.jsonl").symlink_to(outside)
    with duckdb.connect(str(data_paths.duckdb)) as con:
        con.execute("CREATE TABLE tasks_single (task_id VARCHAR, annotator_id VARCHAR, slice_id VARCHAR, kind VARCHAR)")
        con.execute("CREATE TABLE tasks_ranking (batch_id VARCHAR, annotator_id VARCHAR, slice_ids VARCHAR[])")
        assert ingest_annotation_files(incoming, con, ROSTER).files_rejected == ["link.jsonl"]
    write_annotation_file([single("s-000002", "scan1-01")], incoming / "nested", "single", "sim-expert-1")
    skipped, _ = tick(annotation_files_sensor, data_paths, instance, None)
    assert isinstance(skipped, dg.SkipReason) and "already ingested" in skipped.skip_message
