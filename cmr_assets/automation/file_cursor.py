"""Cursor arithmetic for folder-watching sensors, kept pure so it can be tested without Dagster.

A cursor is the newest `(mtime_ns, relative path)` already handed to a run. Files are compared
on that pair, so a restart resumes exactly where it stopped, a file is never requested twice, and
files that share one mtime are still told apart by name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, order=True)
class FileStamp:
    mtime_ns: int
    path: str


def scan_folder(folder: Path, patterns: Iterable[str]) -> list[FileStamp]:
    """Every file under `folder` matching one of the glob patterns, oldest first."""
    if not folder.exists():
        return []
    seen: dict[str, FileStamp] = {}
    for pattern in patterns:
        for path in folder.rglob(pattern):
            if path.is_file():
                rel = path.relative_to(folder).as_posix()
                seen[rel] = FileStamp(path.stat().st_mtime_ns, rel)
    return sorted(seen.values())


def parse_cursor(cursor: str | None) -> FileStamp | None:
    if not cursor:
        return None
    raw = json.loads(cursor)
    return FileStamp(int(raw["mtime_ns"]), str(raw["path"]))


def format_cursor(stamp: FileStamp) -> str:
    return json.dumps({"mtime_ns": stamp.mtime_ns, "path": stamp.path})


def files_after(stamps: list[FileStamp], cursor: FileStamp | None) -> list[FileStamp]:
    """The files newer than the cursor, oldest first."""
    return [s for s in stamps if cursor is None or s > cursor]


def run_key_for(new_files: list[FileStamp]) -> str:
    """A run key unique to this exact set of new files (Dagster drops a repeated key)."""
    last = new_files[-1]
    return f"{len(new_files)}:{last.mtime_ns}:{last.path}"
