"""Hash buckets of the folders that hold the DICOM files: how ingestion (and the archive-wide filter)
is split into partitions that separate processes, machines or pods run at the same time.

Why static hash buckets of the file's folder, not one partition per study or per delivery:
- scanners, PACS exports and archives write a series (or a whole patient) into one folder, so every
  file of a series lands in the same bucket and a partition plans its series from its own files;
  a cohort of many series folders spreads evenly over the buckets, however deep it is nested;
- the number of partitions stays fixed (`BUCKET_COUNT`) however large the archive: Dagster shows and
  schedules 16 partitions, not 10^5 dynamic ones, and a new series folder changes one bucket;
- the bucket comes from a hash of the folder path, so the key says nothing about the patient.
A flat export (every file in one folder) is one partition. A series whose files are spread over
several folders is split between buckets and is seen as incomplete in each: keep a series in one
folder (or ingest such a source without buckets, `ingest_folder(..., buckets=None)`).

Public API: `BUCKET_COUNT`, `BUCKET_KEYS`, `bucket_of(relative_path)`, `files_in_buckets(...)`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from pathlib import Path, PurePosixPath

BUCKET_COUNT = 16  # fixed for the life of an archive: changing it moves scans between partitions
BUCKET_KEYS = tuple(f"{index:02d}" for index in range(BUCKET_COUNT))


def bucket_of(relative_path: str) -> str:
    """The bucket key of a file, from the folder that holds it (relative to the source folder)."""
    folder = PurePosixPath(relative_path).parent.as_posix()
    digest = hashlib.blake2b(folder.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return BUCKET_KEYS[int.from_bytes(digest, "big") % BUCKET_COUNT]


def files_in_buckets(source_dir: Path, files: Sequence[Path], buckets: Collection[str]) -> list[Path]:
    """The files of `files` (under `source_dir`) that belong to `buckets`, in their order."""
    unknown = sorted(set(buckets) - set(BUCKET_KEYS))
    if unknown:
        raise ValueError(f"unknown ingestion bucket(s) {unknown}; the buckets are {BUCKET_KEYS[0]}..{BUCKET_KEYS[-1]}")
    wanted = set(buckets)
    return [file for file in files if bucket_of(file.relative_to(source_dir).as_posix()) in wanted]
