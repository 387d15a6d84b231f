"""Cursor arithmetic for folder-watching sensors, kept pure so it can be tested without Dagster.

The cursor is a digest of the folder listing (path, size, mtime of every matching file) plus the
file count. Any change, including a file copied in with an old mtime (`cp -p`, `rsync -a`, unzip)
or one whose name sorts before files already seen, changes the digest, so nothing is missed; the
same listing never gives a second run (the digest is also the run key). The runs it starts are
idempotent (ingestion skips what is stored), so a whole-folder pass per change is safe.
"""

from __future__ import annotations

import hashlib
import json
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, order=True)
class FileStamp:
    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FolderState:
    digest: str
    n_files: int


def scan_folder(folder: Path, patterns: Iterable[str], recursive: bool = True,
                follow_symlinks: bool = True) -> list[FileStamp]:
    """Every file under `folder` matching one of the glob patterns, sorted by path.

    With `follow_symlinks=False` entries are stat'ed without following links and every non-folder
    entry (symlink, FIFO, ...) is listed with its own size, so a consumer that rejects such entries
    sees them; with `recursive=False` only the folder's own entries count.
    """
    if not folder.exists():
        return []
    seen: dict[str, FileStamp] = {}
    for pattern in patterns:
        for path in (folder.rglob if recursive else folder.glob)(pattern):
            try:
                if follow_symlinks:
                    if not path.is_file():
                        continue
                    info = path.stat()
                else:
                    info = path.lstat()
                    if stat.S_ISDIR(info.st_mode):
                        continue
            except FileNotFoundError:  # removed while listing
                continue
            rel = path.relative_to(folder).as_posix()
            seen[rel] = FileStamp(rel, info.st_size, info.st_mtime_ns)
    return sorted(seen.values())


def folder_state(stamps: list[FileStamp]) -> FolderState:
    digest = hashlib.sha256("\n".join(f"{s.path}\t{s.size}\t{s.mtime_ns}" for s in stamps).encode())
    return FolderState(digest.hexdigest()[:32], len(stamps))


def parse_cursor(cursor: str | None) -> FolderState | None:
    if not cursor:
        return None
    raw = json.loads(cursor)
    return FolderState(str(raw["digest"]), int(raw["n_files"]))


def format_cursor(state: FolderState) -> str:
    return json.dumps({"digest": state.digest, "n_files": state.n_files})


def new_file_count(now: FolderState, before: FolderState | None) -> int:
    """How many more files than at the cursor (a changed file with no new one counts as one)."""
    return max(now.n_files - (before.n_files if before else 0), 1)
