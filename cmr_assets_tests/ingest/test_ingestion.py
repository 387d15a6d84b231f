"""End-to-end ingestion into a temporary data folder: bad input, idempotence, increments, stored files."""

from __future__ import annotations

import builtins
import contextlib
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGBaseline8Bit

from cmr_assets.ingest import dicom_files, ingestion
from cmr_assets.ingest.deid import load_or_create_key, scan_id_for
from cmr_assets.ingest.dicom_series import read_series
from cmr_assets.ingest.ingestion import IngestReport, ingest_folder
from cmr_assets.settings import DataPaths
from cmr_assets_tests.conftest import BadInputFolder, SeriesSpec, write_series


def _ingest(source: Path, paths: DataPaths, workers: int = 1) -> tuple[IngestReport, list[str]]:
    lines: list[str] = []
    return ingest_folder(source, paths, paths.duckdb, workers=workers, log=lines.append), lines


def _table(paths: DataPaths, sql: str) -> list[tuple]:
    with duckdb.connect(str(paths.duckdb), read_only=True) as con:
        return con.execute(sql).fetchall()


def _snapshot(paths: DataPaths) -> dict[str, object]:
    files = {p.relative_to(paths.root).as_posix(): p.stat().st_mtime_ns
             for p in (paths.root / "slices").rglob("*") if p.is_file()}
    tables = {t: sorted((tuple(tuple(v) if isinstance(v, list) else v for v in row)  # heart_crop is a list
                         for row in _table(paths, f"SELECT * FROM {t}")), key=repr)
              for t in ("scans", "slices", "rejected_files")}
    return {"files": files, "tables": tables}


def test_every_bad_input_is_rejected_by_name_and_the_run_goes_on(bad_input_folder: BadInputFolder,
                                                                 data_paths: DataPaths) -> None:
    report, lines = _ingest(bad_input_folder.root, data_paths)

    rows = {path: reason for _, path, reason, _ in _table(data_paths, "SELECT * FROM rejected_files")}
    assert set(rows) == set(bad_input_folder.expected)
    for path, expected_kind in bad_input_folder.expected.items():
        assert rows[path].startswith(expected_kind), (path, rows[path])
    assert "MPEG-4 AVC/H.264" in rows["video.dcm"] and "export as images" in rows["video.dcm"]
    assert "modality CT" in next(r for p, r in rows.items() if p.startswith("ct/"))
    assert report.scans_new == 2 and report.slices_new == 8
    key = load_or_create_key(data_paths.secret)
    expected_ids = sorted(scan_id_for(uid, key) for uid in bad_input_folder.good_series_uids)
    assert sorted(r[0] for r in _table(data_paths, "SELECT scan_id FROM scans")) == expected_ids
    assert sum(report.rejected.values()) == len(bad_input_folder.expected)
    assert any("rejected" in line for line in lines) and any("files/s" in line for line in lines)


def test_unreadable_file_is_rejected(tmp_path: Path, data_paths: DataPaths, monkeypatch) -> None:
    write_series(tmp_path / "src", SeriesSpec())
    locked = tmp_path / "src" / "locked.dcm"
    locked.write_bytes(b"anything")
    real_open = builtins.open

    def open_with_permission_denied(file, *args, **kwargs):
        if Path(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(dicom_files, "open", open_with_permission_denied, raising=False)
    report, _ = _ingest(tmp_path / "src", data_paths, workers=1)
    assert _table(data_paths, "SELECT path, reason FROM rejected_files") == [
        ("locked.dcm", "unreadable file: Permission denied")]
    assert report.scans_new == 1


def test_undecodable_pixels_reject_the_scan_and_name_the_file(tmp_path: Path, data_paths: DataPaths) -> None:
    if not get_decoder(JPEGBaseline8Bit).is_available:
        pytest.skip("no JPEG baseline decoder installed")
    files = write_series(tmp_path / "src" / "broken", SeriesSpec(n_positions=3, n_phases=1))
    for path in files:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0 not really a jpeg"])
        ds["PixelData"].VR = "OB"
        ds.save_as(path)
    write_series(tmp_path / "src" / "fine", SeriesSpec())
    report, _ = _ingest(tmp_path / "src", data_paths)
    reasons = dict(_table(data_paths, "SELECT path, reason FROM rejected_files"))
    assert len(reasons) == 3 and report.scans_new == 1
    failed = [p for p, r in reasons.items() if r.startswith("pixel decoding failed")]
    assert len(failed) == 1
    others = [r for p, r in reasons.items() if p != failed[0]]
    assert all(r.startswith("series rejected: a chosen-phase file failed to decode") and failed[0] in r
               for r in others)


def test_empty_folder_gives_zero_report_and_one_row(tmp_path: Path, data_paths: DataPaths) -> None:
    (tmp_path / "empty").mkdir()
    for _ in range(2):
        report, _ = _ingest(tmp_path / "empty", data_paths)
        assert (report.files_seen, report.scans_new, report.slices_new) == (0, 0, 0)
    rows = _table(data_paths, "SELECT path, reason FROM rejected_files")
    assert rows == [(".", "empty folder: no files found")]
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        _ingest(tmp_path / "does-not-exist", data_paths)


def test_reingest_changes_nothing(bad_input_folder: BadInputFolder, data_paths: DataPaths) -> None:
    _ingest(bad_input_folder.root, data_paths)
    before = _snapshot(data_paths)
    # second run through a connection factory, the way the Dagster DuckDB resource is passed
    report = ingest_folder(bad_input_folder.root, data_paths,
                           lambda: contextlib.closing(duckdb.connect(str(data_paths.duckdb))), workers=1)
    assert _snapshot(data_paths) == before
    assert (report.scans_new, report.scans_skipped_existing, report.rejected_rows_new) == (0, 2, 0)


def test_incremental_ingest_adds_only_the_new_scan(tmp_path: Path, data_paths: DataPaths) -> None:
    source = tmp_path / "src"
    write_series(source / "first", SeriesSpec(n_positions=4))
    _ingest(source, data_paths)
    before = _snapshot(data_paths)
    write_series(source / "second", SeriesSpec(n_positions=6))
    report, _ = _ingest(source, data_paths)
    after = _snapshot(data_paths)
    assert (report.scans_new, report.scans_skipped_existing, report.slices_new) == (1, 1, 6)
    assert all(after["files"][name] == mtime for name, mtime in before["files"].items())
    for table in ("scans", "slices"):
        assert set(before["tables"][table]) <= set(after["tables"][table])
    assert _table(data_paths, "SELECT count(*), count(DISTINCT scan_id) FROM slices") == [(10, 2)]


def test_stored_images_match_read_series_and_carry_no_metadata(tmp_path: Path, data_paths: DataPaths) -> None:
    series_dir = tmp_path / "src" / "one"
    write_series(series_dir, SeriesSpec(n_positions=5, rows=40, cols=30))
    _ingest(tmp_path / "src", data_paths)
    rows = _table(data_paths, "SELECT slice_id, scan_id, slice_from_base, n_slices, position_mm, "
                              "png_path, array_path, array_index, phase_rule, n_phases "
                              "FROM slices ORDER BY slice_from_base")
    ordered = read_series(series_dir)
    assert [r[2] for r in rows] == list(range(5)) and all(r[3] == 5 for r in rows)
    assert [r[0] for r in rows] == [f"{rows[0][1]}-{i:02d}" for i in range(5)]
    assert np.all(np.diff([r[4] for r in rows]) > 0) and rows[0][4] == 0
    array = np.load(data_paths.root / rows[0][6])
    assert array.shape == (5, 128, 128) and array.dtype == np.uint8
    for row, expected in zip(rows, ordered.slices, strict=True):
        png_path = data_paths.root / row[5]
        assert png_path == data_paths.slice_png / row[1] / f"{row[2]:02d}.png"
        with Image.open(png_path) as png:
            assert png.mode == "L" and not png.info and not getattr(png, "text", {})
            assert np.array_equal(np.asarray(png), expected.image)
        assert np.array_equal(array[row[7]], expected.image_128)
        assert row[8:] == ("min_trigger_time", 3)
        assert _png_chunk_types(png_path) == ["IHDR", "IDAT", "IEND"]


def _png_chunk_types(path: Path) -> list[str]:
    data = path.read_bytes()[8:]
    types = []
    while data:
        length = int.from_bytes(data[:4], "big")
        types.append(data[4:8].decode("ascii"))
        data = data[12 + length:]
    return sorted(set(types), key=types.index)


def test_sunnybrook_ingest_with_a_process_pool(sunnybrook: Path, data_paths: DataPaths, monkeypatch) -> None:
    monkeypatch.setattr(ingestion, "MIN_FILES_PER_WORKER", 100)  # 557 files: use both workers
    report, _ = _ingest(sunnybrook, data_paths, workers=2)
    # 500 cine files + 30 localizers, which share their patient's cine SeriesInstanceUID
    assert (report.dicom_files, report.series_found, report.scans_new, report.slices_new) == (530, 2, 2, 25)
    assert set(report.rejected) == {"not a DICOM file", "series rejected: not a short-axis cine"}
    assert report.rejected["series rejected: not a short-axis cine"] == 30
    localizer_rows = _table(data_paths, "SELECT count(*) FROM rejected_files WHERE path LIKE 'localizers/%' "
                                        "AND reason LIKE 'series rejected: not a short-axis cine: series 1, %'")
    assert localizer_rows == [(30,)]
    scans = _table(data_paths, "SELECT n_slices, n_files FROM scans ORDER BY n_slices")
    assert scans == [(12, 240), (13, 260)]



def test_a_database_from_before_study_key_gets_the_column(tmp_path: Path, data_paths: DataPaths) -> None:
    with duckdb.connect(str(data_paths.duckdb)) as con:
        con.execute("CREATE TABLE scans (scan_id VARCHAR PRIMARY KEY, n_slices INTEGER NOT NULL, "
                    "n_files INTEGER NOT NULL, rows INTEGER NOT NULL, cols INTEGER NOT NULL, "
                    "manufacturer_model VARCHAR, ingested_at TIMESTAMP NOT NULL)")
        con.execute("INSERT INTO scans VALUES ('old', 3, 9, 24, 32, NULL, now()::TIMESTAMP)")
    write_series(tmp_path / "src", SeriesSpec())
    report, _ = _ingest(tmp_path / "src", data_paths)
    assert report.scans_new == 1
    rows = _table(data_paths, "SELECT scan_id, study_key, patient_group FROM scans ORDER BY scan_id = 'old'")
    assert rows[1] == ("old", None, None) and len(rows[0][1]) == 16 and len(rows[0][2]) == 16


def test_every_slice_of_a_scan_carries_the_scan_heart_crop(tmp_path: Path, data_paths: DataPaths) -> None:
    write_series(tmp_path / "src", SeriesSpec(n_positions=5, rows=40, cols=30))
    _ingest(tmp_path / "src", data_paths)
    boxes = _table(data_paths, "SELECT DISTINCT heart_crop FROM slices")
    (box,) = [row[0] for row in boxes]
    top, left, bottom, right = box
    assert 0 <= top < bottom <= 40 and 0 <= left < right <= 30


def _as_older_versions_stored_it(paths: DataPaths) -> None:
    """The database of a version before partitions: the rows in DuckDB tables (slices without
    heart_crop), no Parquet partition files."""
    with duckdb.connect(str(paths.duckdb)) as con:
        con.execute("DROP TABLE partition_files")
        con.execute("ALTER TABLE slices DROP COLUMN heart_crop")
    shutil.rmtree(paths.table_files)


def test_a_database_from_before_partitions_keeps_its_rows_and_skips_its_scans(
        tmp_path: Path, data_paths: DataPaths) -> None:
    write_series(tmp_path / "old" / "one", SeriesSpec(n_positions=3))
    (tmp_path / "old" / "notes.txt").write_text("not dicom")
    _ingest(tmp_path / "old", data_paths)
    _as_older_versions_stored_it(data_paths)
    write_series(tmp_path / "old" / "two", SeriesSpec(n_positions=4))
    report, _ = _ingest(tmp_path / "old", data_paths)
    assert (report.scans_new, report.scans_skipped_existing, report.rejected_rows_new) == (1, 1, 0)
    rows = _table(data_paths, "SELECT n_slices, heart_crop IS NULL FROM slices ORDER BY n_slices")
    assert rows == [(3, True)] * 3 + [(4, False)] * 4
    assert _table(data_paths, "SELECT count(*) FROM scans") == [(2,)]
    assert (data_paths.table_files / "slices" / "legacy" / "rows.parquet").exists()
