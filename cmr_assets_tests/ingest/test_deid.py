"""Keyed identifiers, and a search of every output for identifiers planted in the source files."""

from __future__ import annotations

import logging
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest

from cmr_assets.ingest.deid import load_or_create_key, scan_id_for, source_root_hash
from cmr_assets.ingest.ingestion import ingest_folder
from cmr_assets.settings import DataPaths
from cmr_assets_tests.conftest import PHI_MARKER, SeriesSpec, phi_values, write_series


def test_key_is_created_once_private_and_reused(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "secret")
    assert len(key) == 32
    assert stat.S_IMODE((tmp_path / "secret" / "scan_id.key").stat().st_mode) == 0o600
    assert load_or_create_key(tmp_path / "secret") == key
    assert load_or_create_key(tmp_path / "other") != key
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "scan_id.key").write_bytes(b"short")
    with pytest.raises(ValueError, match="scan_id.key"):
        load_or_create_key(tmp_path / "bad")


def test_scan_id_is_keyed_stable_and_short() -> None:
    uid = "1.2.840.113619.2.1.1.1"
    first = scan_id_for(uid, b"k" * 32)
    assert first == scan_id_for(uid, b"k" * 32) and len(first) == 16 and int(first, 16) >= 0
    assert first != scan_id_for(uid, b"j" * 32) and first != scan_id_for(uid + "1", b"k" * 32)
    assert uid not in first
    assert source_root_hash(Path("/a"), b"k" * 32) != source_root_hash(Path("/b"), b"k" * 32)


def _varchar_cells(database: Path) -> list[str]:
    with duckdb.connect(str(database), read_only=True) as con:
        columns = con.execute("SELECT table_name, column_name FROM information_schema.columns "
                              "WHERE data_type = 'VARCHAR'").fetchall()
        return [str(value) for table, column in columns
                for (value,) in con.execute(f'SELECT "{column}" FROM "{table}"').fetchall()
                if value is not None]


def test_no_identifier_reaches_any_output(tmp_path: Path, data_paths: DataPaths, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    source = tmp_path / "src"
    kept = SeriesSpec(phi_marker=PHI_MARKER)
    write_series(source / "mr", kept)
    rejected = SeriesSpec(phi_marker=PHI_MARKER, modality="CT", n_phases=1)
    write_series(source / "ct", rejected)
    lines: list[str] = []
    report = ingest_folder(source, data_paths, data_paths.duckdb, workers=1, log=lines.append)
    assert report.scans_new == 1 and report.rejected == {"series rejected: not MR": 4}

    forbidden = {v for v in phi_values(PHI_MARKER).values() if PHI_MARKER not in v} | {
        PHI_MARKER, kept.series_uid, rejected.series_uid}
    outputs = [p for p in data_paths.root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".png" for p in outputs) and any(p.suffix == ".npy" for p in outputs)
    assert data_paths.duckdb in outputs
    texts = {str(p): p.read_bytes().decode("latin-1") for p in outputs}
    texts["log lines"] = "\n".join(lines)
    texts["captured logging"] = caplog.text
    texts["duckdb cells"] = "\n".join(_varchar_cells(data_paths.duckdb))
    assert "rejected" in texts["log lines"] and texts["duckdb cells"]
    leaks = [(where, value) for where, text in texts.items() for value in forbidden if value in text]
    assert leaks == []


def test_runs_creating_the_key_at_once_all_get_the_one_key(tmp_path: Path) -> None:
    """Partition runs on a fresh data folder start together: none may read a half-written key."""
    for attempt in range(20):
        start = threading.Barrier(8)

        def racer(folder: Path = tmp_path / f"secret{attempt}", start: threading.Barrier = start) -> bytes:
            start.wait()
            return load_or_create_key(folder)

        with ThreadPoolExecutor(8) as pool:
            keys = list(pool.map(lambda _: racer(), range(8)))
        assert len(set(keys)) == 1 and len(keys[0]) == 32
        assert [p.name for p in (tmp_path / f"secret{attempt}").iterdir()] == ["scan_id.key"]
