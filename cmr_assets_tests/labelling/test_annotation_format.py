"""Annotation file format: round trip, atomic write, every rejection reason, partly written files."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from cmr_assets.labelling.annotation_format import (
    AnnotationContext,
    RankingAnnotation,
    SingleAnnotation,
    parse_annotation_file,
    validate_record,
    write_annotation_file,
)

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
T0 = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
BATCH = [f"scan{i}-0{i % 3}" for i in range(8)]


def single(**changes) -> SingleAnnotation:
    fields = dict(submission_id=str(uuid.uuid4()), annotator_id="sim-expert-1", task_id="s-000001",
                  image_ids=("scanA-03",), label="lv", artefact=False, started_at=T0,
                  submitted_at=T0 + timedelta(seconds=7))
    return SingleAnnotation(**{**fields, **changes})


def ranking(**changes) -> RankingAnnotation:
    fields = dict(submission_id=str(uuid.uuid4()), annotator_id="sim-expert-2", batch_id="r-000001",
                  image_ids=tuple(BATCH), order=tuple(reversed(BATCH)), dividers=(2, 6),
                  artefact_ids=(BATCH[3],), started_at=T0, submitted_at=T0 + timedelta(seconds=40))
    return RankingAnnotation(**{**fields, **changes})


@pytest.fixture
def context() -> AnnotationContext:
    tasks_single = pd.DataFrame({"task_id": ["s-000001"], "annotator_id": ["sim-expert-1"],
                                 "slice_id": ["scanA-03"], "kind": ["primary"]})
    tasks_ranking = pd.DataFrame({"batch_id": ["r-000001"], "annotator_id": ["sim-expert-2"],
                                  "slice_ids": [list(BATCH)]})
    return AnnotationContext.from_tasks(tasks_single, tasks_ranking, {"sim-expert-1", "sim-expert-2"})


def write_lines(path: Path, objects: list, trailing_newline: bool = True) -> Path:
    text = "\n".join(o if isinstance(o, str) else json.dumps(o) for o in objects)
    path.write_text(text + ("\n" if trailing_newline else ""), encoding="utf-8")
    return path


def test_round_trip_and_atomic_name(tmp_path: Path, context: AnnotationContext) -> None:
    singles = [single(), single(task_id="s-000001", label=None, artefact=True)]
    path = write_annotation_file(singles, tmp_path, "single", "sim-expert-1")
    assert re.fullmatch(r"single-sim-expert-1-20260110T090000-[0-9a-f]{8}\.jsonl", path.name)
    assert list(tmp_path.iterdir()) == [path]  # no .tmp left behind
    parsed = parse_annotation_file(path, context, NOW)
    assert [p.record for p in parsed.records] == singles
    assert [p.line for p in parsed.records] == [1, 2]
    assert parsed.rejections == [] and not parsed.partial_last_line

    batch = [ranking()]
    path = write_annotation_file(batch, tmp_path, "ranking", "sim-expert-2")
    assert [p.record for p in parse_annotation_file(path, context, NOW).records] == batch


def test_write_refuses_mixed_records(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not ranking/sim-expert-1"):
        write_annotation_file([single()], tmp_path, "ranking", "sim-expert-1")


def _mutated(base: dict, **changes) -> dict:
    out = {**base, **changes}
    return {k: v for k, v in out.items() if v is not _DROP}


_DROP = object()


@pytest.mark.parametrize(("make", "changes", "reason"), [
    (single, {"strategy": "triage"}, "unknown strategy"),
    (single, {"format_version": 2}, "unknown format_version"),
    (single, {"submission_id": "not-a-uuid"}, "is not a UUID"),
    (single, {"annotator_id": "dr-nobody"}, "unknown annotator"),
    (single, {"task_id": "s-999999"}, "unknown task_id"),
    (single, {"image_ids": ["scanB-01"]}, "do not match task"),
    (single, {"label": "lvot"}, "is not one of"),
    (single, {"label": None}, "label is null but artefact is false"),
    (single, {"artefact": "yes"}, "field 'artefact' must be bool"),
    (single, {"label": _DROP}, "missing field 'label'"),
    (single, {"started_at": "yesterday"}, "not an ISO 8601 timestamp"),
    (single, {"started_at": "2026-01-10T09:00:00"}, "has no timezone"),
    (single, {"started_at": "2026-01-10T09:00:10+00:00", "submitted_at": "2026-01-10T09:00:00+00:00"},
     "started_at is after submitted_at"),
    (single, {"started_at": "2026-01-08T09:00:00+00:00"}, "more than 24 h apart"),
    (single, {"started_at": "2026-01-11T09:00:00+00:00", "submitted_at": "2026-01-11T09:00:05+00:00"},
     "in the future"),
    (ranking, {"annotator_id": "sim-expert-1"}, "belongs to sim-expert-2"),
    (ranking, {"batch_id": "r-424242"}, "unknown batch_id"),
    (ranking, {"image_ids": BATCH[:7] + ["scanZ-01"], "order": BATCH[:7] + ["scanZ-01"]}, "do not match"),
    (ranking, {"image_ids": BATCH[:7]}, "has 8 image ids, got 7"),
    (ranking, {"image_ids": BATCH[:7] + [BATCH[0]]}, "duplicate ids"),
    (ranking, {"order": BATCH[:7] + [BATCH[0]]}, "not a permutation"),
    (ranking, {"dividers": [6, 2]}, "are not 0 <= a <= b <= 8"),
    (ranking, {"dividers": [0, 9]}, "are not 0 <= a <= b <= 8"),
    (ranking, {"dividers": [1]}, "two integers"),
    (ranking, {"dividers": [1.0, 2]}, "two integers"),
    (ranking, {"artefact_ids": ["scanZ-01"]}, "not a subset"),
])
def test_each_invalid_record_is_rejected_with_its_reason(tmp_path: Path, context: AnnotationContext, make,
                                                         changes: dict, reason: str) -> None:
    good = make().to_json_dict()
    bad = _mutated(good, **changes)
    path = write_lines(tmp_path / "f.jsonl", [good, bad, make().to_json_dict()])
    parsed = parse_annotation_file(path, context, NOW)
    assert [p.line for p in parsed.records] == [1, 3]  # the valid records around it go on
    assert len(parsed.rejections) == 1
    assert parsed.rejections[0].line == 2
    assert reason in parsed.rejections[0].reason


def test_bad_json_and_non_objects_are_rejected(tmp_path: Path, context: AnnotationContext) -> None:
    path = tmp_path / "f.jsonl"
    valid = json.dumps(single().to_json_dict()).encode()
    path.write_bytes(b'{"format_version": 1,\n[1, 2]\n\xff\xfe\n\n' + valid + b"\n")
    parsed = parse_annotation_file(path, context, NOW)
    reasons = {r.line: r.reason for r in parsed.rejections}
    assert reasons[1].startswith("invalid JSON")
    assert "not an object" in reasons[2]
    assert "UTF-8" in reasons[3]
    assert [p.line for p in parsed.records] == [5]  # blank line 4 skipped silently


def test_partly_written_last_line_is_ignored_until_complete(tmp_path: Path,
                                                            context: AnnotationContext) -> None:
    first, second = single().to_json_dict(), single().to_json_dict()
    path = tmp_path / "f.jsonl"
    path.write_text(json.dumps(first) + "\n" + json.dumps(second)[:40], encoding="utf-8")
    parsed = parse_annotation_file(path, context, NOW)
    assert [p.line for p in parsed.records] == [1]
    assert parsed.rejections == [] and parsed.partial_last_line
    # complete JSON but no newline yet: still a line being written
    path.write_text(json.dumps(first) + "\n" + json.dumps(second), encoding="utf-8")
    assert len(parse_annotation_file(path, context, NOW).records) == 1
    path.write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n", encoding="utf-8")
    parsed = parse_annotation_file(path, context, NOW)
    assert [p.line for p in parsed.records] == [1, 2] and not parsed.partial_last_line


def test_validate_record_accepts_presentation_order_of_batch(context: AnnotationContext) -> None:
    shuffled = tuple(BATCH[4:] + BATCH[:4])
    assert validate_record(ranking(image_ids=shuffled, order=shuffled), context) is None
    assert validate_record(single(), context) is None
