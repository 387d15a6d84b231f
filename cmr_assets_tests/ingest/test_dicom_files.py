"""The inventory of a source folder: files, bytes and top-level folders, no file opened."""

from __future__ import annotations

from pathlib import Path

from cmr_assets.ingest.dicom_files import SourceInventory, inventory


def test_inventory_counts_files_bytes_and_top_level_folders(tmp_path: Path) -> None:
    (tmp_path / "p1" / "series").mkdir(parents=True)
    (tmp_path / "p2").mkdir()
    (tmp_path / "p1" / "series" / "a").write_bytes(b"x" * 10)
    (tmp_path / "p2" / "b").write_bytes(b"x" * 5)
    (tmp_path / "DICOMDIR").write_bytes(b"x" * 2)
    assert inventory(tmp_path) == SourceInventory(files=3, bytes=17, top_level_folders=3)  # p1, p2 and "."
    assert inventory(tmp_path / "p2") == SourceInventory(files=1, bytes=5, top_level_folders=1)
