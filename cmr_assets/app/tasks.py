"""Labelling tasks and slice images for the web app, snapshotted from DuckDB into memory.

The app never holds a DuckDB connection open: the pipeline may be writing, and a read-only
connection fails while another process holds the write lock. `load_task_snapshot` opens the file
read-only for a moment, retries briefly on a lock conflict, and copies the few columns the app
needs; `TaskSource` keeps the last good snapshot and refreshes it at most every `refresh_s` seconds.

Public API:
- `SingleTask`, `RankingTask`, `TaskSnapshot` - per-annotator queues (in task-id order), slice id ->
  PNG path, slice id -> heart crop box (`[top, left, bottom, right]`, absent for slices ingested
  before the crop existed) and the reference-strip candidates (`cmr_assets.app.reference`).
- `load_task_snapshot(duckdb_path, slice_png_root, data_root) -> TaskSnapshot`
- `resolve_slice_png(snapshot, slice_id) -> Path | None` - the image file, only if it lies inside
  the slice store.
- `TaskSource(paths, refresh_s=60).snapshot() -> TaskSnapshot`
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from cmr_assets.app.reference import Candidate, candidates_from_rows
from cmr_assets.duckdb_io import read_only
from cmr_assets.settings import DataPaths

log = logging.getLogger(__name__)

SLICE_ID_PATTERN = re.compile(r"[0-9a-f]{16}-\d{2,3}")
LOCK_RETRY_DELAYS_S = (0.05, 0.1, 0.2, 0.4, 0.8)


@dataclass(frozen=True)
class SingleTask:
    task_id: str
    slice_id: str
    kind: str


@dataclass(frozen=True)
class RankingTask:
    batch_id: str
    slice_ids: tuple[str, ...]


@dataclass(frozen=True)
class TaskSnapshot:
    """What the app serves; empty when the pipeline has not designed a campaign yet."""

    single: dict[str, tuple[SingleTask, ...]] = field(default_factory=dict)
    ranking: dict[str, tuple[RankingTask, ...]] = field(default_factory=dict)
    png_paths: dict[str, Path] = field(default_factory=dict)
    slice_png_root: Path = Path("/nonexistent")
    heart_crops: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    reference_candidates: tuple[Candidate, ...] = ()


@dataclass(frozen=True)
class _Tables:
    slices: list
    single: list
    ranking: list
    reference: list
    labels: list


def _table_names(connection: duckdb.DuckDBPyConnection) -> set[str]:
    return {row[0] for row in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def _column_names(connection: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {row[0] for row in connection.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]).fetchall()}


CONFIDENT_LABELS_SQL = """
SELECT l.slice_id, s.scan_id, s.slice_from_base, l.label, greatest(l.p_too_basal, l.p_lv, l.p_too_apical)
FROM {table} l JOIN slices s USING (slice_id)
WHERE l.label IS NOT NULL AND NOT coalesce(l.artefact_excluded, false)
"""


def _label_rows(connection: duckdb.DuckDBPyConnection, tables: set[str]) -> tuple[list, list]:
    """Reference rows (no artefact) and confident-label rows for the reference strip; ranking labels
    first (the better-founded of the two), single labels when there are no ranking labels."""
    reference = (connection.execute("SELECT r.slice_id, s.scan_id, s.slice_from_base, r.label FROM "
                                    "reference_labels r JOIN slices s USING (slice_id) "
                                    "WHERE NOT coalesce(r.artefact, false)").fetchall()
                 if "reference_labels" in tables else [])
    for table in ("labels_ranking", "labels_single"):
        if table in tables:
            rows = connection.execute(CONFIDENT_LABELS_SQL.format(table=table)).fetchall()
            if rows:
                return reference, rows
    return reference, []


def _read_tables(duckdb_path: Path) -> _Tables:
    with read_only(duckdb_path) as connection:
        tables = _table_names(connection)
        if "slices" in tables:
            crop = "heart_crop" if "heart_crop" in _column_names(connection, "slices") else "NULL"
            slices = connection.execute(f"SELECT slice_id, png_path, {crop} FROM slices").fetchall()
            reference, labels = _label_rows(connection, tables)
        else:
            slices, reference, labels = [], [], []
        single = (connection.execute("SELECT task_id, annotator_id, slice_id, kind FROM tasks_single "
                                     "ORDER BY task_id").fetchall() if "tasks_single" in tables else [])
        ranking = (connection.execute("SELECT batch_id, annotator_id, slice_ids FROM tasks_ranking "
                                      "ORDER BY batch_id").fetchall() if "tasks_ranking" in tables else [])
    return _Tables(slices, single, ranking, reference, labels)


def _read_tables_retrying(duckdb_path: Path) -> _Tables:
    """Read, retrying while another process holds the write lock (a pipeline run mid-write)."""
    for delay in LOCK_RETRY_DELAYS_S:
        try:
            return _read_tables(duckdb_path)
        except duckdb.IOException as error:
            if "lock" not in str(error).lower():
                raise
            time.sleep(delay)
    return _read_tables(duckdb_path)


def load_task_snapshot(duckdb_path: Path, slice_png_root: Path, data_root: Path) -> TaskSnapshot:
    """Copy both task tables and the slice PNG paths (relative to `data_root`) out of DuckDB.

    Rows naming a slice that is not in `slices`, or a slice id of the wrong shape, are skipped with
    a warning: the app must only ever serve files the slice store knows.
    """
    if not duckdb_path.exists():
        return TaskSnapshot(slice_png_root=slice_png_root)
    read = _read_tables_retrying(duckdb_path)
    single_rows, ranking_rows = read.single, read.ranking
    png_paths = {slice_id: data_root / png_path for slice_id, png_path, _ in read.slices
                 if png_path and SLICE_ID_PATTERN.fullmatch(slice_id)}
    heart_crops = {slice_id: (int(box[0]), int(box[1]), int(box[2]), int(box[3])) for slice_id, _, box in read.slices
                   if slice_id in png_paths and box is not None and len(box) == 4}
    candidates = tuple(c for c in candidates_from_rows(read.reference, read.labels) if c.slice_id in png_paths)
    single: dict[str, list[SingleTask]] = defaultdict(list)
    for task_id, annotator_id, slice_id, kind in single_rows:
        if slice_id not in png_paths:
            log.warning("%s: tasks_single %s names unknown slice %r; skipped", duckdb_path, task_id, slice_id)
            continue
        single[annotator_id].append(SingleTask(task_id, slice_id, kind))
    ranking: dict[str, list[RankingTask]] = defaultdict(list)
    for batch_id, annotator_id, slice_ids in ranking_rows:
        unknown = [slice_id for slice_id in slice_ids if slice_id not in png_paths]
        if unknown:
            log.warning("%s: tasks_ranking %s names unknown slices %r; skipped", duckdb_path, batch_id, unknown)
            continue
        ranking[annotator_id].append(RankingTask(batch_id, tuple(slice_ids)))
    return TaskSnapshot(single={name: tuple(tasks) for name, tasks in single.items()},
                        ranking={name: tuple(tasks) for name, tasks in ranking.items()},
                        png_paths=png_paths, slice_png_root=slice_png_root, heart_crops=heart_crops,
                        reference_candidates=candidates)


def resolve_slice_png(snapshot: TaskSnapshot, slice_id: str) -> Path | None:
    """The PNG of a known slice, or None if unknown, missing, or outside the slice store."""
    relative = snapshot.png_paths.get(slice_id)
    if relative is None:
        return None
    path = relative.resolve()
    if not path.is_relative_to(snapshot.slice_png_root.resolve()) or path.suffix != ".png" or not path.is_file():
        return None
    return path


class TaskSource:
    """The last good snapshot, refreshed lazily so newly designed tasks show up without a restart."""

    def __init__(self, paths: DataPaths, refresh_s: float = 60.0) -> None:
        self._paths = paths
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._snapshot = TaskSnapshot(slice_png_root=paths.slice_png)
        self._loaded_at = float("-inf")

    def snapshot(self) -> TaskSnapshot:
        with self._lock:
            if time.monotonic() - self._loaded_at >= self._refresh_s:
                try:
                    self._snapshot = load_task_snapshot(self._paths.duckdb, self._paths.slice_png,
                                                        self._paths.root)
                except duckdb.Error as error:
                    log.warning("%s: task refresh failed, keeping the previous snapshot (%s)",
                                self._paths.duckdb, error)
                self._loaded_at = time.monotonic()
            return self._snapshot
