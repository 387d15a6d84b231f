"""Partitioned ingestion: buckets of the files' folders, runs that share no writer, and results equal
to one run over the whole folder; re-running a partition replaces exactly its rows."""

from __future__ import annotations

import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from cmr_assets.ingest.deid import KEY_FILE_NAME
from cmr_assets.ingest.dicom_files import discover_files
from cmr_assets.ingest.ingestion import ingest_folder
from cmr_assets.ingest.partitions import BUCKET_KEYS, bucket_of, files_in_buckets
from cmr_assets.partitioned_tables import PartitionStore, sync_partitioned_tables
from cmr_assets.settings import DataPaths
from cmr_assets_tests.conftest import SeriesSpec, write_series

TIMESTAMPS = ("ingested_at", "rejected_at")
SORT_KEYS = {"scans": ["scan_id"], "slices": ["slice_id"], "rejected_files": ["path", "reason"]}


def _tables(paths: DataPaths) -> dict[str, pd.DataFrame]:
    """The ingested tables in the DuckDB file after a sync, timestamps left out, rows sorted."""
    with duckdb.connect(str(paths.duckdb)) as con:
        sync_partitioned_tables(con, paths)
        frames = {table: con.execute(f"SELECT * FROM {table}").df() for table in SORT_KEYS}
    return {table: frame.drop(columns=[c for c in TIMESTAMPS if c in frame]).sort_values(SORT_KEYS[table])
            .reset_index(drop=True) for table, frame in frames.items()}


def _paths_sharing_key(root: Path, key_from: DataPaths) -> DataPaths:
    paths = DataPaths(root).ensure()
    shutil.copy(key_from.secret / KEY_FILE_NAME, paths.secret / KEY_FILE_NAME)
    return paths


def _ingest_buckets(source: Path, root: Path, buckets: list[str]) -> int:
    return ingest_folder(source, DataPaths(root), None, workers=1, log=lambda _: None, buckets=buckets).scans_new


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    """Ten short-axis series and a CT series, each in its own folder, and files that are not images:
    spread over several buckets, each series within one folder (`partitions.py`)."""
    root = tmp_path / "archive"
    for k in range(10):
        write_series(root / "studies" / f"patient{k}" / "cine", SeriesSpec(n_positions=3))
    write_series(root / "studies" / "patient0" / "ct", SeriesSpec(modality="CT", n_phases=1))
    (root / "notes.txt").write_text("not dicom")
    (root / "studies" / "patient4" / "report.pdf").write_bytes(b"%PDF-1.4")
    return root


def test_a_bucket_is_the_hash_of_the_files_folder() -> None:
    assert bucket_of("a/b/IM1.dcm") == bucket_of("a/b/IM2.dcm") and bucket_of("IM1") == bucket_of("IM2")
    spread = {bucket_of(f"study{k}/series/IM1.dcm") for k in range(200)}
    assert spread == set(BUCKET_KEYS)
    with pytest.raises(ValueError, match="unknown ingestion bucket"):
        files_in_buckets(Path("/x"), [], ["99"])


def test_partition_runs_side_by_side_equal_one_run_over_the_whole_folder(archive: Path, tmp_path: Path) -> None:
    whole = DataPaths(tmp_path / "whole").ensure()
    ingest_folder(archive, whole, whole.duckdb, workers=1, log=lambda _: None)
    split = _paths_sharing_key(tmp_path / "split", whole)
    buckets = sorted({bucket_of(f.relative_to(archive).as_posix()) for f in discover_files(archive)})
    assert len(buckets) >= 4
    halves = [buckets[::2], buckets[1::2]]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        scans_new = list(pool.map(_ingest_buckets, [archive] * 2, [split.root] * 2, halves))
    assert not split.duckdb.exists()  # the partition runs never opened DuckDB
    expected, got = _tables(whole), _tables(split)
    with duckdb.connect(str(split.duckdb)) as con:  # ordinary tables in the single file, as before partitions
        kinds = con.execute("SELECT table_name, table_type FROM information_schema.tables").fetchall()
        assert {("scans", "BASE TABLE"), ("slices", "BASE TABLE"), ("rejected_files", "BASE TABLE")} <= set(kinds)
    assert sum(scans_new) == len(expected["scans"]) == 10
    for table in SORT_KEYS:
        pd.testing.assert_frame_equal(got[table], expected[table], obj=table)
    assert len(expected["rejected_files"]) == 6  # 4 CT files, 2 not DICOM


def test_rerunning_a_partition_replaces_its_rows_and_leaves_the_others(archive: Path, data_paths: DataPaths) -> None:
    ingest_folder(archive, data_paths, data_paths.duckdb, workers=1, log=lambda _: None)
    store = PartitionStore(data_paths)
    files = sorted(store.folder("slices").glob("*/[0-9]*.parquet"))
    before = {f: f.stat().st_mtime_ns for f in files}
    target = bucket_of("studies/patient3/cine/IM1.dcm")
    write_series(archive / "studies" / "patient3" / "cine", SeriesSpec(n_positions=5))  # a second series there
    report = ingest_folder(archive, data_paths, data_paths.duckdb, workers=1, log=lambda _: None, buckets=[target])
    assert (report.scans_new, report.rejected_rows_new) == (1, 0)
    changed = [f for f in files if f.stat().st_mtime_ns != before[f]]
    assert [f.stem for f in changed] == [target]
    again = ingest_folder(archive, data_paths, data_paths.duckdb, workers=1, log=lambda _: None, buckets=[target])
    assert (again.scans_new, again.scans_skipped_existing) == (0, report.scans_skipped_existing + 1)
    assert _tables(data_paths)["slices"]["slice_id"].is_unique


def test_an_empty_bucket_records_nothing_and_an_empty_folder_is_recorded(tmp_path: Path,
                                                                       data_paths: DataPaths) -> None:
    (tmp_path / "empty").mkdir()
    assert ingest_folder(tmp_path / "empty", data_paths, None, buckets=["00"]).rejected_rows_new == 0
    assert ingest_folder(tmp_path / "empty", data_paths, None).rejected_rows_new == 1


def test_a_decisions_table_from_before_partitions_is_set_aside(data_paths: DataPaths) -> None:
    with duckdb.connect(str(data_paths.duckdb)) as con:
        con.execute("CREATE TABLE slice_decisions AS SELECT 'a-00' AS slice_id")
        assert "slice_decisions" in sync_partitioned_tables(con, data_paths)
        assert con.execute("SELECT count(*) FROM slice_decisions").fetchall() == [(0,)]
        assert con.execute("SELECT * FROM slice_decisions_before_partitions").fetchall() == [("a-00",)]
        assert sync_partitioned_tables(con, data_paths) == []  # nothing changed since
