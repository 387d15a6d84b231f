"""Annotation file format (version 1): what experts hand over, people and simulators alike.

The format is specified in `docs/annotation_format.md`; this module is its one implementation, so the
web app, the simulated experts and ingestion cannot drift apart.

Public API:
- `SingleAnnotation`, `RankingAnnotation`: one record of each strategy (frozen dataclasses).
- `AnnotationContext.from_tasks(tasks_single, tasks_ranking, known_annotators)`: what a record is
  checked against (roster, task ids, their annotators and images).
- `write_annotation_file(records, incoming_dir, strategy, annotator_id) -> Path`: atomic write
  (`cmr_assets.fileio.write_atomically`: `.tmp`, fsync, rename), name
  `<strategy>-<annotator>-<UTC yyyymmddThhmmss>-<8 hex>.jsonl`.
- `parse_annotation_file(path, context=None, now=None) -> ParsedAnnotationFile`: valid records with
  their line numbers, rejections with line and reason; a partly written last line is left alone.
  Reads through `read_annotation_bytes` (regular files only, never through a symlink, at most
  `MAX_FILE_BYTES`); `parse_annotation_bytes(data, ...)` parses bytes already read.
- `read_annotation_bytes(path, max_bytes=MAX_FILE_BYTES) -> bytes`, `UnsafeAnnotationFile`: the
  reason a file is not read at all (symlink, not a regular file, too large).
- `parse_record(obj, now=None)`: one decoded JSON object -> record, or `RecordError` with the reason.
- `validate_record(record, context) -> str | None`: the reason a structurally valid record does not
  fit the campaign, or None.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from cmr_assets import __version__
from cmr_assets.domain import BATCH_SIZE, CLASS_NAMES, STRATEGIES
from cmr_assets.fileio import write_atomically

FORMAT_VERSION = 1
TOOL_VERSION_SIMULATOR = f"cmr_assets {__version__} simulator"
# A record submitted more than this after "now" is from a wrong clock, not from the future.
CLOCK_SKEW_TOLERANCE = timedelta(minutes=5)
MAX_TASK_DURATION = timedelta(hours=24)
EARLIEST_PLAUSIBLE = datetime(2000, 1, 1, tzinfo=UTC)
# Input limits: a ranking record is about 1 kB and one expert's whole simulated 5 h session about
# 2 MB, so these leave a wide margin while keeping one bad file or line from exhausting memory.
MAX_LINE_BYTES = 64 * 1024
MAX_FILE_BYTES = 64 * 1024 * 1024


class RecordError(ValueError):
    """A record that breaks the format; the message is the reason stored in `rejected_annotations`."""


class UnsafeAnnotationFile(ValueError):
    """A file that is not read at all (symlink, not a regular file, too large); the message is the reason."""


@dataclass(frozen=True)
class SingleAnnotation:
    """One image labelled alone: a class, or null with the artefact flag."""

    strategy: ClassVar[str] = "single"
    submission_id: str
    annotator_id: str
    task_id: str
    image_ids: tuple[str, ...]
    label: str | None
    artefact: bool
    started_at: datetime
    submitted_at: datetime
    tool_version: str = TOOL_VERSION_SIMULATOR

    def to_json_dict(self) -> dict[str, Any]:
        return record_json(self)


@dataclass(frozen=True)
class RankingAnnotation:
    """One batch of 8 images ordered most basal first, cut by two dividers into the three classes."""

    strategy: ClassVar[str] = "ranking"
    submission_id: str
    annotator_id: str
    batch_id: str
    image_ids: tuple[str, ...]
    order: tuple[str, ...]
    dividers: tuple[int, int]
    artefact_ids: tuple[str, ...]
    started_at: datetime
    submitted_at: datetime
    tool_version: str = TOOL_VERSION_SIMULATOR

    def to_json_dict(self) -> dict[str, Any]:
        return record_json(self)


AnnotationRecord = SingleAnnotation | RankingAnnotation


def record_json(record: AnnotationRecord) -> dict[str, Any]:
    """The record as the JSON object of the file format: tuples as lists, times as ISO 8601 strings."""
    def value(v: Any) -> Any:
        if isinstance(v, datetime):
            return _format_time(v)
        return list(v) if isinstance(v, tuple) else v

    return {"format_version": FORMAT_VERSION, "strategy": record.strategy,
            **{f.name: value(getattr(record, f.name)) for f in fields(record)}}


@dataclass(frozen=True)
class ParsedRecord:
    line: int  # 1-based line number in the source file
    record: AnnotationRecord


@dataclass(frozen=True)
class RecordRejection:
    """An annotation record (a line of a file) that was not used, and why; `ingest.FileRejection` is
    the same for a DICOM file."""

    line: int
    reason: str


@dataclass(frozen=True)
class ParsedAnnotationFile:
    """Result of reading one file: every complete line is either a valid record or a rejection."""

    records: list[ParsedRecord]
    rejections: list[RecordRejection]
    partial_last_line: bool  # a last line without newline was left for a later read


@dataclass(frozen=True)
class AnnotationContext:
    """The campaign a record must belong to: roster, task/batch ids with their annotator and images."""

    known_annotators: frozenset[str]
    single_tasks: Mapping[str, tuple[str, str]]  # task_id -> (annotator_id, slice_id)
    ranking_batches: Mapping[str, tuple[str, frozenset[str]]]  # batch_id -> (annotator_id, slice ids)

    @classmethod
    def from_tasks(cls, tasks_single: pd.DataFrame, tasks_ranking: pd.DataFrame,
                   known_annotators: set[str] | frozenset[str]) -> AnnotationContext:
        single = {str(t): (str(a), str(s)) for t, a, s in
                  zip(tasks_single["task_id"], tasks_single["annotator_id"], tasks_single["slice_id"],
                      strict=True)}
        ranking = {str(b): (str(a), frozenset(str(i) for i in ids)) for b, a, ids in
                   zip(tasks_ranking["batch_id"], tasks_ranking["annotator_id"], tasks_ranking["slice_ids"],
                       strict=True)}
        return cls(frozenset(known_annotators), single, ranking)


def _format_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no timezone")
    return value.isoformat(timespec="milliseconds")


def annotation_file_name(strategy: str, annotator_id: str, session_start: datetime, content: bytes) -> str:
    """`<strategy>-<annotator>-<UTC yyyymmddThhmmss>-<8 hex>.jsonl`; the hex is a content digest,
    so the same session written twice gets the same name and different sessions do not collide."""
    stamp = session_start.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{strategy}-{annotator_id}-{stamp}-{hashlib.sha256(content).hexdigest()[:8]}.jsonl"


def write_annotation_file(records: Sequence[AnnotationRecord], incoming_dir: Path, strategy: str,
                          annotator_id: str) -> Path:
    """Write one session's records atomically so a reader never sees half a file under its final name."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if not records:
        raise ValueError("an annotation file needs at least one record")
    for record in records:
        if record.strategy != strategy or record.annotator_id != annotator_id:
            raise ValueError(f"record {record.submission_id} is {record.strategy}/{record.annotator_id}, "
                             f"not {strategy}/{annotator_id}")
    content = "".join(json.dumps(r.to_json_dict(), separators=(",", ":")) + "\n" for r in records)
    data = content.encode("utf-8")
    incoming_dir.mkdir(parents=True, exist_ok=True)
    session_start = min(r.started_at for r in records)
    final = incoming_dir / annotation_file_name(strategy, annotator_id, session_start, data)
    return write_atomically(final, data)


# ---------------------------------------------------------------- parsing


def _require(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise RecordError(f"missing field '{key}'")
    value = obj[key]
    # bool is an int in Python; an int field must not accept true/false
    if isinstance(value, bool) and kind is int:
        raise RecordError(f"field '{key}' must be int, got bool")
    if not isinstance(value, kind):
        expected = getattr(kind, "__name__", kind)
        raise RecordError(f"field '{key}' must be {expected}, got {type(value).__name__}")
    return value


def _string_list(obj: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = _require(obj, key, list)
    if not all(isinstance(v, str) and v for v in value):
        raise RecordError(f"field '{key}' must be a list of non-empty strings")
    return tuple(value)


def _timestamps(obj: Mapping[str, Any], now: datetime) -> tuple[datetime, datetime]:
    parsed = []
    for key in ("started_at", "submitted_at"):
        text = _require(obj, key, str)
        try:
            value = datetime.fromisoformat(text)
        except ValueError as exc:
            raise RecordError(f"'{key}' is not an ISO 8601 timestamp: {text!r}") from exc
        if value.tzinfo is None:
            raise RecordError(f"'{key}' has no timezone: {text!r}")
        if value < EARLIEST_PLAUSIBLE:
            raise RecordError(f"'{key}' is before {EARLIEST_PLAUSIBLE.date()}: {text!r}")
        parsed.append(value)
    started, submitted = parsed
    if started > submitted:
        raise RecordError("started_at is after submitted_at")
    if submitted - started > MAX_TASK_DURATION:
        raise RecordError("started_at and submitted_at are more than 24 h apart")
    if submitted > now + CLOCK_SKEW_TOLERANCE:
        raise RecordError("submitted_at is in the future")
    return started, submitted


def parse_record(obj: Any, now: datetime | None = None) -> AnnotationRecord:
    """Check one decoded JSON value against the format; raise `RecordError` with the reason."""
    now = now or datetime.now(UTC)
    if not isinstance(obj, dict):
        raise RecordError(f"record is a JSON {type(obj).__name__}, not an object")
    version = _require(obj, "format_version", int)
    if version != FORMAT_VERSION:
        raise RecordError(f"unknown format_version {version}")
    strategy = _require(obj, "strategy", str)
    if strategy not in STRATEGIES:
        raise RecordError(f"unknown strategy {strategy!r}")
    submission_id = _require(obj, "submission_id", str)
    try:
        uuid.UUID(submission_id)
    except ValueError as exc:
        raise RecordError(f"submission_id {submission_id!r} is not a UUID") from exc
    annotator_id = _require(obj, "annotator_id", str)
    image_ids = _string_list(obj, "image_ids")
    tool_version = _require(obj, "tool_version", str)
    started, submitted = _timestamps(obj, now)
    if strategy == "single":
        return _parse_single(obj, submission_id, annotator_id, image_ids, started, submitted, tool_version)
    return _parse_ranking(obj, submission_id, annotator_id, image_ids, started, submitted, tool_version)


def _parse_single(obj: Mapping[str, Any], submission_id: str, annotator_id: str, image_ids: tuple[str, ...],
                  started: datetime, submitted: datetime, tool_version: str) -> SingleAnnotation:
    task_id = _require(obj, "task_id", str)
    if len(image_ids) != 1:
        raise RecordError(f"a single record has exactly 1 image id, got {len(image_ids)}")
    artefact = _require(obj, "artefact", bool)
    label = _require(obj, "label", (str, type(None)))
    if label is None and not artefact:
        raise RecordError("label is null but artefact is false")
    if label is not None and label not in CLASS_NAMES:
        raise RecordError(f"label {label!r} is not one of {', '.join(CLASS_NAMES)}")
    return SingleAnnotation(submission_id, annotator_id, task_id, image_ids, label, artefact, started,
                            submitted, tool_version)


def _parse_ranking(obj: Mapping[str, Any], submission_id: str, annotator_id: str, image_ids: tuple[str, ...],
                   started: datetime, submitted: datetime, tool_version: str) -> RankingAnnotation:
    batch_id = _require(obj, "batch_id", str)
    if len(image_ids) != BATCH_SIZE:
        raise RecordError(f"a ranking record has {BATCH_SIZE} image ids, got {len(image_ids)}")
    if len(set(image_ids)) != BATCH_SIZE:
        raise RecordError("image_ids contains duplicate ids")
    order = _string_list(obj, "order")
    if len(order) != BATCH_SIZE or set(order) != set(image_ids):
        raise RecordError("order is not a permutation of image_ids")
    dividers = _require(obj, "dividers", list)
    if len(dividers) != 2 or not all(isinstance(d, int) and not isinstance(d, bool) for d in dividers):
        raise RecordError("dividers must be a list of two integers")
    divider_a, divider_b = dividers
    if not 0 <= divider_a <= divider_b <= BATCH_SIZE:
        raise RecordError(f"dividers {dividers} are not 0 <= a <= b <= {BATCH_SIZE}")
    artefact_ids = _string_list(obj, "artefact_ids")
    if not set(artefact_ids) <= set(image_ids):
        raise RecordError("artefact_ids is not a subset of image_ids")
    if len(set(artefact_ids)) != len(artefact_ids):
        raise RecordError("artefact_ids contains duplicate ids")
    return RankingAnnotation(submission_id, annotator_id, batch_id, image_ids, order,
                             (divider_a, divider_b), artefact_ids, started, submitted, tool_version)


def validate_record(record: AnnotationRecord, context: AnnotationContext) -> str | None:
    """Why a well-formed record does not belong to this campaign (None when it does)."""
    if record.annotator_id not in context.known_annotators:
        return f"unknown annotator {record.annotator_id!r}"
    if isinstance(record, SingleAnnotation):
        task = context.single_tasks.get(record.task_id)
        if task is None:
            return f"unknown task_id {record.task_id!r}"
        annotator, slice_id = task
        if annotator != record.annotator_id:
            return f"task {record.task_id} belongs to {annotator}, not {record.annotator_id}"
        if record.image_ids != (slice_id,):
            return f"image_ids {list(record.image_ids)} do not match task {record.task_id} ({slice_id})"
        return None
    batch = context.ranking_batches.get(record.batch_id)
    if batch is None:
        return f"unknown batch_id {record.batch_id!r}"
    annotator, slice_ids = batch
    if annotator != record.annotator_id:
        return f"batch {record.batch_id} belongs to {annotator}, not {record.annotator_id}"
    if set(record.image_ids) != slice_ids:
        return f"image_ids do not match the images of batch {record.batch_id}"
    return None


def read_annotation_bytes(path: Path, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The content of one annotation file, read only if it is a regular file (never through a
    symlink: `O_NOFOLLOW`; a FIFO or device is not opened for blocking reads: `O_NONBLOCK`) of at
    most `max_bytes`; otherwise `UnsafeAnnotationFile` with the reason."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP or path.is_symlink():
            raise UnsafeAnnotationFile("symbolic link: not followed") from error
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeAnnotationFile("not a regular file")
        if info.st_size > max_bytes:
            raise UnsafeAnnotationFile(f"file of {info.st_size} bytes exceeds the limit of {max_bytes} bytes")
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise UnsafeAnnotationFile(f"file grew past the limit of {max_bytes} bytes while being read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def parse_annotation_file(path: Path, context: AnnotationContext | None = None,
                          now: datetime | None = None) -> ParsedAnnotationFile:
    """Read every complete line of one file; a bad line is rejected with its reason, the rest go on.

    A last line without a trailing newline is a session still being written: it is neither a
    record nor a rejection until it is complete (unless it is already longer than
    `MAX_LINE_BYTES`). With a `context` the records are also checked against the campaign
    (`validate_record`). Raises `UnsafeAnnotationFile` for a file that must not be read.
    """
    return parse_annotation_bytes(read_annotation_bytes(path), context, now)


def parse_annotation_bytes(data: bytes, context: AnnotationContext | None = None,
                           now: datetime | None = None) -> ParsedAnnotationFile:
    """`parse_annotation_file` on content already read."""
    now = now or datetime.now(UTC)
    lines = data.split(b"\n")
    partial = lines[-1] != b""
    records: list[ParsedRecord] = []
    rejections: list[RecordRejection] = []
    too_long = f"line longer than {MAX_LINE_BYTES} bytes"
    if partial and len(lines[-1]) > MAX_LINE_BYTES:  # will never become a record: reject it now
        rejections.append(RecordRejection(len(lines), too_long))
        partial = False
    for number, raw in enumerate(lines[:-1], start=1):
        if len(raw) > MAX_LINE_BYTES:
            rejections.append(RecordRejection(number, too_long))
            continue
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            rejections.append(RecordRejection(number, "line is not valid UTF-8"))
            continue
        except json.JSONDecodeError as exc:
            rejections.append(RecordRejection(number, f"invalid JSON: {exc.msg} at column {exc.colno}"))
            continue
        except RecursionError:
            rejections.append(RecordRejection(number, "invalid JSON: nested too deeply"))
            continue
        try:
            record = parse_record(obj, now)
        except RecordError as exc:
            rejections.append(RecordRejection(number, str(exc)))
            continue
        reason = validate_record(record, context) if context is not None else None
        if reason is None:
            records.append(ParsedRecord(number, record))
        else:
            rejections.append(RecordRejection(number, reason))
    rejections.sort(key=lambda r: r.line)
    return ParsedAnnotationFile(records, rejections, partial)
