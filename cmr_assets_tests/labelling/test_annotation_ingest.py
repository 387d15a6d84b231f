"""Annotation ingestion into DuckDB: valid records in, bad ones rejected, idempotent, append-only."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from cmr_assets.labelling.annotation_format import RankingAnnotation, SingleAnnotation, write_annotation_file
from cmr_assets.labelling.annotation_ingest import (
    ingest_annotation_files,
    list_annotation_files,
    read_raw_annotations,
)
from cmr_assets.tables import RAW_RANKING_COLUMNS, RAW_SINGLE_COLUMNS

ROSTER = {"sim-expert-1", "sim-expert-2"}
BATCH = [f"scan{i}-0{i % 4}" for i in range(8)]
T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def con() -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    tasks_single = pd.DataFrame({"task_id": ["s-000001", "s-000002", "s-000003"],
                                 "annotator_id": ["sim-expert-1", "sim-expert-1", "sim-expert-2"],
                                 "slice_id": ["scan0-00", "scan1-01", "scan0-00"],
                                 "kind": ["primary", "primary", "inter_repeat"]})
    tasks_ranking = pd.DataFrame({"batch_id": ["r-000001"], "annotator_id": ["sim-expert-2"],
                                  "slice_ids": [BATCH]})
    connection.register("ts", tasks_single)
    connection.register("tr", tasks_ranking)
    connection.execute("CREATE TABLE tasks_single AS SELECT * FROM ts")
    connection.execute("CREATE TABLE tasks_ranking AS SELECT * FROM tr")
    return connection


def single(task_id: str = "s-000001", slice_id: str = "scan0-00", annotator: str = "sim-expert-1",
           offset_s: int = 0, **changes) -> SingleAnnotation:
    start = T0 + timedelta(seconds=offset_s)
    fields = dict(submission_id=str(uuid.uuid4()), annotator_id=annotator, task_id=task_id,
                  image_ids=(slice_id,), label="lv", artefact=False, started_at=start,
                  submitted_at=start + timedelta(seconds=9))
    return SingleAnnotation(**{**fields, **changes})


def ranking(**changes) -> RankingAnnotation:
    fields = dict(submission_id=str(uuid.uuid4()), annotator_id="sim-expert-2", batch_id="r-000001",
                  image_ids=tuple(BATCH), order=tuple(sorted(BATCH)), dividers=(1, 7),
                  artefact_ids=(BATCH[2],),
                  started_at=T0, submitted_at=T0 + timedelta(seconds=35))
    return RankingAnnotation(**{**fields, **changes})


def count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def test_ingest_valid_files_with_the_agreed_schema(con, tmp_path: Path) -> None:
    write_annotation_file([single(), single("s-000002", "scan1-01", label=None, artefact=True)],
                          tmp_path, "single", "sim-expert-1")
    write_annotation_file([ranking()], tmp_path, "ranking", "sim-expert-2")
    report = ingest_annotation_files(tmp_path, con, ROSTER)
    assert report.files_read == 2 and report.rejected_added == 0
    assert (report.single_added, report.ranking_added) == (2, 1)
    single_frame, ranking_frame = read_raw_annotations(con)
    assert list(single_frame.columns) == RAW_SINGLE_COLUMNS and list(ranking_frame.columns) == RAW_RANKING_COLUMNS
    assert single_frame["label"].tolist() == ["lv", None]
    assert single_frame["started_at"].dt.tz is not None
    row = ranking_frame.iloc[0]
    assert row["order"] == sorted(BATCH) and row["artefact_ids"] == [BATCH[2]]
    assert (row["divider_a"], row["divider_b"]) == (1, 7)
    assert row["source_file"].startswith("ranking-sim-expert-2-") and row["line"] == 1


def test_rejections_keep_file_line_and_reason_and_the_rest_goes_on(con, tmp_path: Path) -> None:
    good = single().to_json_dict()
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({**single().to_json_dict(), "annotator_id": "dr-unknown"}),
        json.dumps({**single().to_json_dict(), "task_id": "s-777777"}),
        json.dumps({**ranking().to_json_dict(), "order": sorted(BATCH)[:7] + [BATCH[0]]}),
        json.dumps({**ranking().to_json_dict(), "dividers": [5, 3]}),
        json.dumps(single("s-000003", annotator="sim-expert-2").to_json_dict()),
    ]
    (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = ingest_annotation_files(tmp_path, con, ROSTER)
    assert (report.single_added, report.rejected_added) == (2, 5)
    rejected = con.sql("SELECT line, reason, source_file FROM rejected_annotations ORDER BY line").df()
    assert rejected["line"].tolist() == [2, 3, 4, 5, 6]
    assert (rejected["source_file"] == "mixed.jsonl").all()
    for expected, reason in zip(["invalid JSON", "unknown annotator", "unknown task_id", "not a permutation",
                                 "not 0 <= a <= b <= 8"], rejected["reason"], strict=True):
        assert expected in reason


def test_idempotent_and_source_files_untouched(con, tmp_path: Path) -> None:
    records = [single(), single("s-000002", "scan1-01")]
    path = write_annotation_file(records, tmp_path, "single", "sim-expert-1")
    (tmp_path / "bad.jsonl").write_text("[]\n", encoding="utf-8")
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()}
    ingest_annotation_files(tmp_path, con, ROSTER)
    again = ingest_annotation_files(tmp_path, con, ROSTER)
    assert (again.files_skipped_unchanged, again.files_read) == (2, 0)
    assert (again.single_added, again.rejected_added) == (0, 0)
    assert count(con, "raw_annotations_single") == 2 and count(con, "rejected_annotations") == 1
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir()} == digests
    files = con.sql("SELECT source_file, n_valid, n_rejected FROM annotation_files ORDER BY 1").df()
    assert files.values.tolist() == [["bad.jsonl", 0, 1], [path.name, 2, 0]]


def test_duplicate_submission_ids_are_stored_once_and_each_repeat_rejected(con, tmp_path: Path) -> None:
    record = single()
    write_annotation_file([record], tmp_path, "single", "sim-expert-1")
    copy = tmp_path / "copy-of-session.jsonl"
    copy.write_text(json.dumps(record.to_json_dict()) + "\n" + json.dumps(record.to_json_dict()) + "\n")
    report = ingest_annotation_files(tmp_path, con, ROSTER)
    assert (report.single_added, report.duplicates_rejected, report.rejected_added) == (1, 2, 2)
    assert count(con, "raw_annotations_single") == 1
    stored = con.execute("SELECT source_file, line FROM raw_annotations_single").fetchall()
    reasons = con.execute("SELECT source_file, line, reason FROM rejected_annotations").fetchall()
    # files are read by name: the copy's first line is stored, the other two places are rejected
    assert stored == [("copy-of-session.jsonl", 1)] and len(reasons) == 2
    assert all(reason == f"duplicate submission_id {record.submission_id}: already stored from "
                         "copy-of-session.jsonl line 1" for _, _, reason in reasons)
    files = dict(con.execute("SELECT source_file, n_valid FROM annotation_files").fetchall())
    assert sorted(files.values()) == [0, 1]


def test_partly_written_file_is_read_again_when_complete(con, tmp_path: Path) -> None:
    first, second = single(), single("s-000002", "scan1-01", offset_s=20)
    path = tmp_path / "single-sim-expert-1-live.jsonl"
    path.write_text(json.dumps(first.to_json_dict()) + "\n" + json.dumps(second.to_json_dict())[:50])
    report = ingest_annotation_files(tmp_path, con, ROSTER)
    assert report.single_added == 1 and report.files_with_partial_line == [path.name]
    assert count(con, "rejected_annotations") == 0

    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(second.to_json_dict())[50:] + "\n{broken\n")
    report = ingest_annotation_files(tmp_path, con, ROSTER)
    assert (report.files_read, report.single_added) == (1, 1)
    assert (report.duplicates_ignored, report.rejected_added) == (1, 1)
    single_frame, _ = read_raw_annotations(con)
    assert single_frame["line"].tolist() == [1, 2]
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(single("s-000003", annotator="sim-expert-2").to_json_dict()) + "\n")
    report = ingest_annotation_files(tmp_path, con, ROSTER)
    assert (report.single_added, report.rejected_added) == (1, 0)  # line 3 not rejected twice


def test_temporary_files_are_not_read(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl.tmp").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "b.jsonl").write_text("")
    assert [p.name for p in list_annotation_files(tmp_path)] == ["b.jsonl"]
    assert list_annotation_files(tmp_path / "missing") == []


def test_missing_campaign_tables_is_a_clear_error(tmp_path: Path) -> None:
    write_annotation_file([single()], tmp_path, "single", "sim-expert-1")
    with pytest.raises(ValueError, match="tasks_single, tasks_ranking missing"):
        ingest_annotation_files(tmp_path, duckdb.connect(), ROSTER)


def rejections(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int, str]]:
    return [tuple(row) for row in con.execute(
        "SELECT source_file, line, reason FROM rejected_annotations ORDER BY source_file, line").fetchall()]


def test_symlink_to_a_file_elsewhere_is_rejected_not_read(con, tmp_path: Path) -> None:
    incoming, elsewhere = tmp_path / "incoming", tmp_path / "elsewhere"
    incoming.mkdir()
    outside = write_annotation_file([single()], elsewhere, "single", "sim-expert-1")
    (incoming / "link.jsonl").symlink_to(outside)
    (incoming / "dir.jsonl").mkdir()
    write_annotation_file([single("s-000002", "scan1-01")], incoming, "single", "sim-expert-1")
    assert [p.name for p in list_annotation_files(incoming)] == [
        p.name for p in incoming.iterdir() if p.name.startswith("single-")]
    report = ingest_annotation_files(incoming, con, ROSTER)
    assert report.single_added == 1 and sorted(report.files_rejected) == ["dir.jsonl", "link.jsonl"]
    assert count(con, "raw_annotations_single") == 1
    assert con.execute("SELECT task_id FROM raw_annotations_single").fetchall() == [("s-000002",)]
    assert rejections(con) == [("dir.jsonl", 0, "not a regular file"),
                               ("link.jsonl", 0, "symbolic link: not followed")]
    again = ingest_annotation_files(incoming, con, ROSTER)  # recorded once, not looked at again
    assert (again.rejected_added, again.files_skipped_unchanged, again.files_read) == (0, 3, 0)
    assert len(rejections(con)) == 2


def test_fifo_is_rejected_without_blocking(con, tmp_path: Path) -> None:
    import os

    os.mkfifo(tmp_path / "pipe.jsonl")
    report = ingest_annotation_files(tmp_path, con, ROSTER)  # would hang if the FIFO were opened blocking
    assert report.files_rejected == ["pipe.jsonl"]
    assert rejections(con) == [("pipe.jsonl", 0, "not a regular file")]


def test_oversized_line_and_file_are_rejected_with_a_row(con, tmp_path: Path, monkeypatch) -> None:
    from cmr_assets.labelling import annotation_format

    huge_line = json.dumps({**single().to_json_dict(), "tool_version": "x" * (annotation_format.MAX_LINE_BYTES + 1)})
    good = single("s-000002", "scan1-01")
    (tmp_path / "long-line.jsonl").write_text(huge_line + "\n" + json.dumps(good.to_json_dict()) + "\n")
    (tmp_path / "growing.jsonl").write_text("x" * (annotation_format.MAX_LINE_BYTES + 10))  # no newline yet
    monkeypatch.setattr(annotation_format, "MAX_FILE_BYTES", 200_000)
    monkeypatch.setattr(annotation_format.read_annotation_bytes, "__defaults__", (200_000,))
    (tmp_path / "big.jsonl").write_bytes(b"\n" * 200_001)
    report = ingest_annotation_files(tmp_path, con, ROSTER)
    assert report.single_added == 1 and report.files_rejected == ["big.jsonl"]
    rows = rejections(con)
    assert rows[0] == ("big.jsonl", 0, "file of 200001 bytes exceeds the limit of 200000 bytes")
    assert rows[1] == ("growing.jsonl", 1, f"line longer than {annotation_format.MAX_LINE_BYTES} bytes")
    assert rows[2] == ("long-line.jsonl", 1, f"line longer than {annotation_format.MAX_LINE_BYTES} bytes")
    assert len(rows) == 3
    with open(tmp_path / "growing.jsonl", "a") as handle:  # the long line completes: still one row
        handle.write("\n")
    assert ingest_annotation_files(tmp_path, con, ROSTER).rejected_added == 0
    assert len(rejections(con)) == 3


def test_repeated_submission_id_across_files_gets_a_rejection_row(con, tmp_path: Path) -> None:
    record = single()
    original = write_annotation_file([record], tmp_path, "single", "sim-expert-1")
    ingest_annotation_files(tmp_path, con, ROSTER)
    (tmp_path / "replay.jsonl").write_text(json.dumps(record.to_json_dict()) + "\n")
    report = ingest_annotation_files(tmp_path, con, ROSTER)
    assert (report.single_added, report.duplicates_rejected, report.rejected_added) == (0, 1, 1)
    assert rejections(con) == [("replay.jsonl", 1, f"duplicate submission_id {record.submission_id}: "
                                                   f"already stored from {original.name} line 1")]
    files = dict(con.execute("SELECT source_file, n_valid FROM annotation_files").fetchall())
    assert files == {original.name: 1, "replay.jsonl": 0}  # the replay is not counted valid


def _stored(con: duckdb.DuckDBPyConnection) -> tuple[list, list, list]:
    return (con.execute("SELECT source_file, line, task_id FROM raw_annotations_single ORDER BY 1, 2").fetchall(),
            con.execute("SELECT source_file, line, reason FROM rejected_annotations ORDER BY 1, 2").fetchall(),
            con.execute("SELECT source_file, size, sha256, n_valid, n_rejected FROM annotation_files ORDER BY 1")
            .fetchall())


def test_files_stored_in_groups_give_the_same_tables_and_report(con, tmp_path: Path, monkeypatch) -> None:
    """Several files per transaction (a group of ~FLUSH_RECORDS records) store exactly what one file per
    transaction stores, duplicates across the groups included."""
    from cmr_assets.labelling import annotation_ingest

    repeated = single("s-000002", "scan1-01")
    write_annotation_file([single(), repeated], tmp_path, "single", "sim-expert-1")
    write_annotation_file([single("s-000003", annotator="sim-expert-2")], tmp_path, "single", "sim-expert-2")
    (tmp_path / "x-replay.jsonl").write_text(json.dumps(repeated.to_json_dict()) + "\n{not json\n")
    (tmp_path / "y-bad.jsonl").write_text("[]\n")
    reports, tables = [], []
    for flush in (1, 1_000):
        monkeypatch.setattr(annotation_ingest, "FLUSH_RECORDS", flush)
        database = duckdb.connect()
        for table in ("tasks_single", "tasks_ranking"):
            database.register("source", con.sql(f"SELECT * FROM {table}").df())
            database.execute(f"CREATE TABLE {table} AS SELECT * FROM source")
        reports.append(ingest_annotation_files(tmp_path, database, ROSTER, now=T0 + timedelta(days=1)))
        tables.append(_stored(database))
    assert reports[0] == reports[1] and tables[0] == tables[1]
    assert (reports[0].single_added, reports[0].duplicates_rejected, reports[0].rejected_added) == (3, 1, 3)
