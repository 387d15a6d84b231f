"""Atomic file writes, shared by every writer of files other processes read while they change.

Readers (the pipeline's sensors and assets, the web app, a person opening a report) see the old
content or the new, never half a file: the bytes go to `<name>.<pid>.tmp` beside the target and are
renamed over it. `.tmp` files are never read as results (annotation ingestion reads `*.jsonl` only).
"""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes, durable: bool = True, mode: int = 0o644) -> Path:
    """Write `data` to `path` atomically; `durable` also fsyncs the file and its folder, so a record
    that was acknowledged survives a crash (the slice store skips it: re-ingesting re-makes an image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as handle:
        handle.write(data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(temporary, path)
    if durable:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return path
