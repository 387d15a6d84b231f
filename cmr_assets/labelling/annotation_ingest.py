"""Annotation ingestion: annotation files in the incoming folder -> append-only DuckDB tables.

Every record is validated against the format and the campaign (`tasks_single`, `tasks_ranking` in
the same database, and the roster of known annotators). A bad record goes to
`rejected_annotations` with file, line and reason while the rest go on. A record whose
`submission_id` is already stored from another file or line (a copied session, a replay) is
rejected with the place it was first stored; re-reading the line it was stored from is not, so
re-running is idempotent. `annotation_files` remembers each file's size and SHA-256 so an unchanged
file is skipped without parsing, and a file that grew (it was partly written) is re-read for its new
records only. Source files are only ever read.

Only regular files directly in the incoming folder are read (`read_annotation_bytes`: no symlink is
followed, no FIFO or device opened, at most `MAX_FILE_BYTES`); any other `*.jsonl` entry gets one
`rejected_annotations` row with `line` 0 and the reason, and an `annotation_files` row with
`sha256` `rejected` so it is not looked at again until its size changes. Lines over
`MAX_LINE_BYTES` are rejected without being decoded.

Public API:
- `list_annotation_files(incoming_dir) -> list[Path]`: complete session files (`*.jsonl`, regular
  files, not symlinks), by name.
- `list_annotation_entries(incoming_dir) -> list[Path]`: every `*.jsonl` entry of the folder, symlinks
  and other non-regular entries included (what ingestion accounts for, reading or rejecting).
- `ingest_annotation_files(incoming_dir, con, known_annotators, now=None) -> AnnotationIngestReport`
- `read_raw_annotations(con) -> (single, ranking)`: the raw tables as DataFrames, list columns as
  Python lists, timestamps tz-aware UTC; what aggregation consumes.
- `annotation_file_rows(paths) -> (single, ranking)`: the same rows straight from annotation files,
  checked against the format only (no campaign, no database): what `calibrate-experts` reads.

Tables (schemas in `cmr_assets.tables`; column `order` is an SQL keyword: quote it as "order"):
- raw_annotations_single(submission_id, annotator_id, task_id, slice_id, label, artefact,
  started_at, submitted_at, source_file, line)
- raw_annotations_ranking(submission_id, annotator_id, batch_id, "order" VARCHAR[8] most basal
  first, divider_a, divider_b, artefact_ids VARCHAR[], started_at, submitted_at, source_file, line)
- rejected_annotations(source_file, line, reason, rejected_at)
- annotation_files(source_file, size, sha256, n_valid, n_rejected, ingested_at)
`source_file` is the file name relative to the incoming folder.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd

from cmr_assets.duckdb_io import transaction
from cmr_assets.labelling.annotation_format import (
    AnnotationContext,
    ParsedRecord,
    RankingAnnotation,
    SingleAnnotation,
    UnsafeAnnotationFile,
    parse_annotation_bytes,
    read_annotation_bytes,
)
from cmr_assets.tables import RAW_RANKING_COLUMNS, RAW_SINGLE_COLUMNS, ensure_annotation_tables


@dataclass
class AnnotationIngestReport:
    """What one ingestion run did (for asset metadata and logs)."""

    files_seen: int = 0
    files_skipped_unchanged: int = 0
    files_read: int = 0
    single_added: int = 0
    ranking_added: int = 0
    rejected_added: int = 0
    duplicates_ignored: int = 0  # records re-read from the very file and line they were stored from
    duplicates_rejected: int = 0  # a submission id already stored from elsewhere (rejection row each)
    files_rejected: list[str] = field(default_factory=list)  # symlink, not a regular file, too large
    files_with_partial_line: list[str] = field(default_factory=list)


REJECTED_FILE_DIGEST = "rejected"


def list_annotation_entries(incoming_dir: Path) -> list[Path]:
    """Every `*.jsonl` entry directly in the incoming folder, whatever its type, by name
    (a `.jsonl.tmp` is still being written and is not listed)."""
    if not incoming_dir.is_dir():
        return []
    return sorted(incoming_dir.glob("*.jsonl"))


def list_annotation_files(incoming_dir: Path) -> list[Path]:
    """Complete annotation files in the incoming folder: regular files, never symlinks."""
    return [p for p in list_annotation_entries(incoming_dir) if stat.S_ISREG(p.lstat().st_mode)]


def _table_exists(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    query = "SELECT count(*) FROM information_schema.tables WHERE table_name = ?"
    return bool(con.execute(query, [name]).fetchall()[0][0])


def _campaign_context(con: duckdb.DuckDBPyConnection, known_annotators: set[str]) -> AnnotationContext:
    missing = [t for t in ("tasks_single", "tasks_ranking") if not _table_exists(con, t)]
    if missing:
        raise ValueError(f"cannot validate annotations: table(s) {', '.join(missing)} missing; "
                         "design the labelling campaign first")
    tasks_single = con.sql("SELECT task_id, annotator_id, slice_id FROM tasks_single").df()
    tasks_ranking = con.sql("SELECT batch_id, annotator_id, slice_ids FROM tasks_ranking").df()
    return AnnotationContext.from_tasks(tasks_single, tasks_ranking, known_annotators)


def _timestamps(values: Iterable[datetime]) -> pd.Series:
    return pd.Series(pd.to_datetime(list(values), utc=True))


_Row = tuple[ParsedRecord, str]  # a valid record and the file (relative name) it came from


def _record_frame(rows: Sequence[tuple[SingleAnnotation | RankingAnnotation, int, str]],
                  own_columns: dict[str, pd.Series]) -> pd.DataFrame:
    """A raw annotation table's rows: the columns both strategies share around the strategy's own."""
    return pd.DataFrame({
        "submission_id": pd.Series([r.submission_id for r, _, _ in rows], dtype=object),
        "annotator_id": pd.Series([r.annotator_id for r, _, _ in rows], dtype=object),
        **own_columns,
        "started_at": _timestamps(r.started_at for r, _, _ in rows),
        "submitted_at": _timestamps(r.submitted_at for r, _, _ in rows),
        "source_file": pd.Series([source for _, _, source in rows], dtype=object),
        "line": pd.Series([line for _, line, _ in rows], dtype="int64"),
    })


def _single_frame(records: Sequence[_Row]) -> pd.DataFrame:
    rows = [(p.record, p.line, source) for p, source in records if isinstance(p.record, SingleAnnotation)]
    return _record_frame(rows, {
        "task_id": pd.Series([r.task_id for r, _, _ in rows], dtype=object),
        "slice_id": pd.Series([r.image_ids[0] for r, _, _ in rows], dtype=object),
        "label": pd.Series([r.label for r, _, _ in rows], dtype=object),
        "artefact": pd.Series([r.artefact for r, _, _ in rows], dtype=bool),
    })


def _ranking_frame(records: Sequence[_Row]) -> pd.DataFrame:
    rows = [(p.record, p.line, source) for p, source in records if isinstance(p.record, RankingAnnotation)]
    return _record_frame(rows, {
        "batch_id": pd.Series([r.batch_id for r, _, _ in rows], dtype=object),
        "order": pd.Series([list(r.order) for r, _, _ in rows], dtype=object),
        "divider_a": pd.Series([r.dividers[0] for r, _, _ in rows], dtype="int64"),
        "divider_b": pd.Series([r.dividers[1] for r, _, _ in rows], dtype="int64"),
        "artefact_ids": pd.Series([list(r.artefact_ids) for r, _, _ in rows], dtype=object),
    })


def annotation_file_rows(paths: Iterable[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(single, ranking) rows of every valid record in `paths` (format checks only; rejected lines
    are left out), with the columns of the raw tables."""
    rows = [(record, path.name) for path in paths
            for record in parse_annotation_bytes(read_annotation_bytes(path)).records]
    return _single_frame(rows), _ranking_frame(rows)


def _insert(con: duckdb.DuckDBPyConnection, table: str, frame: pd.DataFrame, columns: list[str]) -> None:
    if frame.empty:
        return
    con.register("incoming_frame", frame)
    try:
        quoted = ", ".join(f'"{c}"' for c in columns)
        con.execute(f"INSERT INTO {table} ({quoted}) SELECT {quoted} FROM incoming_frame")
    finally:
        con.unregister("incoming_frame")


def _rejections_frame(rejections: Sequence[tuple[str, int, str]], now: datetime) -> pd.DataFrame:
    return pd.DataFrame({
        "source_file": pd.Series([source for source, _, _ in rejections], dtype=object),
        "line": pd.Series([line for _, line, _ in rejections], dtype="int64"),
        "reason": pd.Series([reason for _, _, reason in rejections], dtype=object),
        "rejected_at": pd.Series([pd.Timestamp(now)] * len(rejections), dtype="datetime64[us, UTC]"),
    })


# Records held before a group of files is stored: bounds memory, while a transaction (and the
# frames handed to DuckDB) per ~100-record session file cost more than the rows themselves
FLUSH_RECORDS = 50_000


@dataclass
class _PendingFiles:
    """Files read but not yet stored: their new rows and their `annotation_files` entries."""

    records: list[_Row] = field(default_factory=list)
    rejections: list[tuple[str, int, str]] = field(default_factory=list)  # (source_file, line, reason)
    files: list[tuple[str, int, str, int, int]] = field(default_factory=list)  # name, size, digest, valid, rejected

    def __len__(self) -> int:
        return len(self.records) + len(self.rejections) + len(self.files)

    def store(self, con: duckdb.DuckDBPyConnection, now: datetime, report: AnnotationIngestReport) -> None:
        """Every pending file's new rows and `annotation_files` entry in one transaction: a crash
        never half-ingests a file (a file's rows and its entry commit together)."""
        if not self.files:
            return
        single, ranking = _single_frame(self.records), _ranking_frame(self.records)
        entries = pd.DataFrame(self.files, columns=["source_file", "size", "sha256", "n_valid", "n_rejected"])
        entries["ingested_at"] = pd.Series([pd.Timestamp(now)] * len(entries), dtype="datetime64[us, UTC]")
        with transaction(con):
            _insert(con, "raw_annotations_single", single, RAW_SINGLE_COLUMNS)
            _insert(con, "raw_annotations_ranking", ranking, RAW_RANKING_COLUMNS)
            _insert(con, "rejected_annotations", _rejections_frame(self.rejections, now),
                    ["source_file", "line", "reason", "rejected_at"])
            con.register("stored_files", entries)
            try:
                con.execute("DELETE FROM annotation_files WHERE source_file IN (SELECT source_file FROM stored_files)")
                con.execute("INSERT INTO annotation_files SELECT source_file, size, sha256, n_valid, n_rejected, "
                            "ingested_at FROM stored_files")
            finally:
                con.unregister("stored_files")
        report.single_added += len(single)
        report.ranking_added += len(ranking)
        report.rejected_added += len(self.rejections)
        self.records, self.rejections, self.files = [], [], []


def ingest_annotation_files(incoming_dir: Path, con: duckdb.DuckDBPyConnection, known_annotators: set[str],
                            now: datetime | None = None) -> AnnotationIngestReport:
    """Append the new valid records of every annotation file to the raw tables, and the new bad ones
    to `rejected_annotations`; files are stored in groups of about `FLUSH_RECORDS` records, each
    group in one transaction, so a crash never half-ingests a file."""
    now = now or datetime.now(UTC)
    ensure_annotation_tables(con)
    report = AnnotationIngestReport()
    entries = list_annotation_entries(incoming_dir)
    report.files_seen = len(entries)
    known_files = {row[0]: (row[1], row[2]) for row in
                   con.execute("SELECT source_file, size, sha256 FROM annotation_files").fetchall()}
    rejected_lines: dict[str, set[int]] = {}  # read once: a query per file would scan the table per file
    for source, line in con.execute("SELECT source_file, line FROM rejected_annotations").fetchall():
        rejected_lines.setdefault(source, set()).add(line)
    context: AnnotationContext | None = None
    stored_at: dict[str, tuple[str, int]] | None = None  # submission_id -> (source_file, line)
    pending = _PendingFiles()
    for path in entries:
        source_file = path.name
        try:
            entry_size = path.lstat().st_size
        except FileNotFoundError:  # removed since the listing
            continue
        if known_files.get(source_file) == (entry_size, REJECTED_FILE_DIGEST):
            report.files_skipped_unchanged += 1
            continue
        already_rejected = rejected_lines.get(source_file, set())
        try:
            data = read_annotation_bytes(path)
        except FileNotFoundError:
            continue
        except UnsafeAnnotationFile as unsafe:
            report.files_rejected.append(source_file)
            if 0 not in already_rejected:
                pending.rejections.append((source_file, 0, str(unsafe)))
            pending.files.append((source_file, entry_size, REJECTED_FILE_DIGEST, 0, 1))
            continue
        fingerprint = (len(data), hashlib.sha256(data).hexdigest())
        if known_files.get(source_file) == fingerprint:
            report.files_skipped_unchanged += 1
            continue
        if context is None or stored_at is None:
            context = _campaign_context(con, known_annotators)
            stored_at = {row[0]: (row[1], int(row[2])) for row in con.execute(
                "SELECT submission_id, source_file, line FROM raw_annotations_single "
                "UNION ALL SELECT submission_id, source_file, line FROM raw_annotations_ranking").fetchall()}
        parsed = parse_annotation_bytes(data, context, now)
        report.files_read += 1
        if parsed.partial_last_line:
            report.files_with_partial_line.append(source_file)
        rejections = [(r.line, r.reason) for r in parsed.rejections]
        n_valid = 0
        for item in parsed.records:
            first = stored_at.get(item.record.submission_id)
            if first == (source_file, item.line):
                report.duplicates_ignored += 1  # this very line, stored when the file was shorter
                n_valid += 1
            elif first is not None:
                report.duplicates_rejected += 1
                rejections.append((item.line, f"duplicate submission_id {item.record.submission_id}: "
                                              f"already stored from {first[0]} line {first[1]}"))
            else:
                stored_at[item.record.submission_id] = (source_file, item.line)
                pending.records.append((item, source_file))
                n_valid += 1
        pending.rejections += [(source_file, line, reason) for line, reason in sorted(rejections)
                               if line not in already_rejected]
        pending.files.append((source_file, fingerprint[0], fingerprint[1], n_valid, len(rejections)))
        if len(pending) >= FLUSH_RECORDS:
            pending.store(con, now, report)
    pending.store(con, now, report)
    return report


def read_raw_annotations(con: duckdb.DuckDBPyConnection) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(raw_annotations_single, raw_annotations_ranking) with Python-list columns, UTC timestamps and
    None (not NaN) for a missing label."""
    ensure_annotation_tables(con)
    single = con.sql("SELECT * FROM raw_annotations_single ORDER BY source_file, line").df()
    ranking = con.sql("SELECT * FROM raw_annotations_ranking ORDER BY source_file, line").df()
    for frame in (single, ranking):
        for column in ("started_at", "submitted_at"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
    single["label"] = pd.Series([v if isinstance(v, str) else None for v in single["label"]], dtype=object)
    for column in ("order", "artefact_ids"):
        ranking[column] = [list(map(str, values)) for values in ranking[column]]
    return single[RAW_SINGLE_COLUMNS], ranking[RAW_RANKING_COLUMNS]


def latest_answer_per_task(raw: pd.DataFrame) -> pd.DataFrame:
    """One answer per (annotator, task) of either strategy (`task_id` or, for rankings, `batch_id`):
    the latest submitted. Undo in the web app re-answers a task with a new record (files are never
    edited), so the newest answer supersedes the earlier one."""
    if raw.empty:
        return raw
    task_column = "task_id" if "task_id" in raw.columns else "batch_id"
    ordered = raw.sort_values(["submitted_at", "source_file", "line"], kind="stable")
    return ordered.drop_duplicates(["annotator_id", task_column], keep="last").sort_index()
