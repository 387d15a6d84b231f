"""The labelling work itself, independent of HTTP: per-annotator queues, tickets, durable submissions.

Every presented task gets a **ticket** whose id is the record's `submission_id` and whose
`started_at` is the moment it was presented. A submission names its ticket, so

- a form posted twice (double click, network retry) finds its ticket already submitted and is
  answered "duplicate" without writing anything;
- a task answered in another tab is refused (409) instead of producing a second answer;
- the client never sees slice ids: images are addressed as `(ticket, index)`, because a slice id
  ends in its position in the stack, which would give the answer away.

Each accepted submission is one annotation file written atomically by
`cmr_assets.labelling.annotation_format.write_annotation_file` before the call returns, under a
per-annotator lock (two annotators write in parallel; one annotator's double posts serialise).
Restart-safe: an annotator's done tasks, submission ids and time used are re-read from their files
in the incoming folder the first time they show up.

Undo (both strategies): the last answer given in this server process goes back to the front of the
queue; answering it again writes a new record for the same task id (`task_id` / `batch_id`) with a
later `submitted_at`, which supersedes the earlier one (pipeline rule: per annotator and task, the
latest `submitted_at` wins). An undone batch comes back in the order, dividers and artefact flags
of the answer being taken back, so only the mistake needs fixing. An undo that is never
re-answered leaves the first answer standing.

Review: the last `RECENT_ANSWERS` answers per strategy (read back from the files after a restart),
with their images still addressable through their tickets.

Public API:
- `LabellingService(paths, tasks, budget_s, tool_version=WEB_TOOL_VERSION, ticket_ttl_s=1800)`
  - `.present(annotator_id, strategy) -> Presentation | None` (None: queue finished)
  - `.submit_single(annotator_id, ticket_id, label, artefact) -> SubmitResult`
  - `.submit_ranking(annotator_id, ticket_id, order, dividers, artefact_indices) -> SubmitResult`
    (`order` and `artefact_indices` are presentation indices 0..7)
  - `.undo(annotator_id, strategy) -> bool`, `.can_undo(annotator_id, strategy) -> bool`
  - `.recent(annotator_id, strategy) -> list[dict]` - newest first, for the review list
  - `.progress(annotator_id, strategy) -> Progress`
  - `.image_path(annotator_id, ticket_id, index) -> Path | None`
  - `.reference(annotator_id) -> list[(class, heart box)]` and
    `.reference_image_path(annotator_id, index) -> Path | None` - the reference strip
- `SubmissionRejected(status, reason)` - 400 bad payload, 404 unknown ticket, 409 conflict/stale.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cmr_assets import __version__
from cmr_assets.app.reference import choose_examples
from cmr_assets.app.tasks import TaskSource, resolve_slice_png
from cmr_assets.domain import BATCH_SIZE, CLASS_NAMES, STRATEGIES
from cmr_assets.labelling.annotation_format import (
    RankingAnnotation,
    SingleAnnotation,
    parse_annotation_file,
    write_annotation_file,
)
from cmr_assets.settings import DataPaths

log = logging.getLogger(__name__)

WEB_TOOL_VERSION = f"cmr_assets {__version__} web"
RECENT_ANSWERS = 10


class SubmissionRejected(Exception):
    """A submission the service refuses; `status` is the HTTP status the app answers with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Ticket:
    ticket_id: str
    annotator_id: str
    strategy: str
    task_id: str
    image_ids: tuple[str, ...]  # in presentation order
    started_at: datetime


@dataclass(frozen=True)
class Progress:
    done: int
    total: int
    seconds_used: float
    budget_s: float


@dataclass(frozen=True)
class Presentation:
    """A task on screen. `crops`: each image's heart box `[top, left, bottom, right]` (None: full
    view); `initial`: for a batch brought back by undo, the answer taken back (`dividers`,
    `artefacts` as presentation indices; the images come in that answer's order)."""

    ticket_id: str
    strategy: str
    n_images: int
    started_at: datetime
    crops: tuple[tuple[int, int, int, int] | None, ...] = ()
    initial: dict | None = None


@dataclass(frozen=True)
class SubmitResult:
    duplicate: bool
    path: Path | None  # the annotation file written (None for a duplicate)


@dataclass(frozen=True)
class Answer:
    ticket: Ticket
    record: SingleAnnotation | RankingAnnotation


@dataclass
class _AnnotatorState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: dict[str, set[str]] = field(default_factory=lambda: {s: set() for s in STRATEGIES})
    seconds_used: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STRATEGIES, 0.0))
    submitted_ids: set[str] = field(default_factory=set)
    open_tickets: dict[str, Ticket] = field(default_factory=dict)
    answered_tickets: dict[str, Ticket] = field(default_factory=dict)
    undo_front: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in STRATEGIES})
    last_answer: dict[str, Answer] = field(default_factory=dict)  # per strategy, this process only
    recent: dict[str, deque[Answer]] = field(
        default_factory=lambda: {s: deque(maxlen=RECENT_ANSWERS) for s in STRATEGIES})
    reference_ids: list[tuple[str, str]] | None = None  # (class, slice id), chosen at first use


class LabellingService:
    """Queues and submissions for all annotators of one data dir (one server process)."""

    def __init__(self, paths: DataPaths, tasks: TaskSource, budget_s: float,
                 tool_version: str = WEB_TOOL_VERSION, ticket_ttl_s: float = 1800.0,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._paths = paths
        self._tasks = tasks
        self._budget_s = budget_s
        self._tool_version = tool_version
        self._ticket_ttl = timedelta(seconds=ticket_ttl_s)
        self._clock = clock
        self._states: dict[str, _AnnotatorState] = {}
        self._states_lock = threading.Lock()

    # ------------------------------------------------------------------ state

    def _state(self, annotator_id: str) -> _AnnotatorState:
        with self._states_lock:
            state = self._states.get(annotator_id)
            if state is None:
                state = self._states[annotator_id] = self._load_state(annotator_id)
            return state

    def _load_state(self, annotator_id: str) -> _AnnotatorState:
        """Rebuild done tasks and time used from this annotator's files (survives restarts)."""
        state = _AnnotatorState()
        incoming = self._paths.annotations_incoming
        for strategy in STRATEGIES:
            for path in sorted(incoming.glob(f"{strategy}-{annotator_id}-*.jsonl")):
                try:
                    parsed = parse_annotation_file(path)
                except OSError as error:
                    log.warning("%s: unreadable annotation file (%s)", path, error)
                    continue
                for item in parsed.records:
                    record = item.record
                    if record.annotator_id != annotator_id or record.submission_id in state.submitted_ids:
                        continue
                    task_id = record.task_id if isinstance(record, SingleAnnotation) else record.batch_id
                    state.done[record.strategy].add(task_id)
                    state.submitted_ids.add(record.submission_id)
                    state.seconds_used[record.strategy] += (record.submitted_at - record.started_at).total_seconds()
                    ticket = Ticket(record.submission_id, annotator_id, record.strategy, task_id,
                                    record.image_ids, record.started_at)
                    state.answered_tickets[ticket.ticket_id] = ticket
                    state.recent[record.strategy].append(Answer(ticket, record))
        for strategy in STRATEGIES:  # files are named by time, but records inside may not be
            ordered = sorted(state.recent[strategy], key=lambda answer: answer.record.submitted_at)
            state.recent[strategy] = deque(ordered, maxlen=RECENT_ANSWERS)
        return state

    def _queue(self, annotator_id: str, strategy: str) -> dict[str, tuple[str, ...]]:
        """task id -> slice ids, in queue order."""
        snapshot = self._tasks.snapshot()
        if strategy == "single":
            return {t.task_id: (t.slice_id,) for t in snapshot.single.get(annotator_id, ())}
        return {t.batch_id: t.slice_ids for t in snapshot.ranking.get(annotator_id, ())}

    # ------------------------------------------------------------------ reading

    def progress(self, annotator_id: str, strategy: str) -> Progress:
        state = self._state(annotator_id)
        queue = self._queue(annotator_id, strategy)
        with state.lock:
            done = sum(1 for task_id in queue if task_id in state.done[strategy])
            return Progress(done, len(queue), state.seconds_used[strategy], self._budget_s)

    def present(self, annotator_id: str, strategy: str) -> Presentation | None:
        """Issue a ticket for the next unanswered task (undone answers first), or None when done."""
        if strategy not in STRATEGIES:
            raise SubmissionRejected(404, f"unknown strategy {strategy!r}")
        state = self._state(annotator_id)
        queue = self._queue(annotator_id, strategy)
        now = self._clock()
        with state.lock:
            self._expire_tickets(state, now)
            candidates = [*state.undo_front[strategy], *queue]
            task_id = next((t for t in candidates if t in queue and t not in state.done[strategy]), None)
            if task_id is None:
                return None
            ticket_id = str(uuid.uuid4())
            image_ids, initial = self._presentation_order(state, strategy, task_id, queue[task_id], ticket_id)
            state.open_tickets[ticket_id] = Ticket(ticket_id, annotator_id, strategy, task_id,
                                                   tuple(image_ids), now)
        crops = self._tasks.snapshot().heart_crops
        return Presentation(ticket_id, strategy, len(image_ids), now,
                            tuple(crops.get(image_id) for image_id in image_ids), initial)

    @staticmethod
    def _presentation_order(state: _AnnotatorState, strategy: str, task_id: str, slice_ids: Sequence[str],
                            ticket_id: str) -> tuple[list[str], dict | None]:
        """Shuffled per ticket (the stored order must not hint at the answer), except a batch brought
        back by undo: it comes in the order the annotator gave, with their dividers and flags."""
        taken_back = state.last_answer.get(strategy)
        if (task_id in state.undo_front[strategy] and taken_back is not None
                and isinstance(taken_back.record, RankingAnnotation) and taken_back.ticket.task_id == task_id):
            record = taken_back.record
            order = list(record.order)
            return order, {"dividers": list(record.dividers),
                           "artefacts": [order.index(image_id) for image_id in record.artefact_ids]}
        image_ids = list(slice_ids)
        random.Random(ticket_id).shuffle(image_ids)
        return image_ids, None

    def _expire_tickets(self, state: _AnnotatorState, now: datetime) -> None:
        for ticket_id, ticket in list(state.open_tickets.items()):
            if now - ticket.started_at > 2 * self._ticket_ttl:
                del state.open_tickets[ticket_id]

    def image_path(self, annotator_id: str, ticket_id: str, index: int) -> Path | None:
        """The PNG behind image `index` of one of this annotator's tickets; None for anything else."""
        state = self._state(annotator_id)
        with state.lock:
            ticket = state.open_tickets.get(ticket_id) or state.answered_tickets.get(ticket_id)
        if ticket is None or not 0 <= index < len(ticket.image_ids):
            return None
        return resolve_slice_png(self._tasks.snapshot(), ticket.image_ids[index])

    # ------------------------------------------------------------------ writing

    def _claim(self, state: _AnnotatorState, ticket_id: str, strategy: str, now: datetime) -> Ticket | None:
        """The open ticket to answer, None for a repeat of an answered one; raises when refused."""
        if ticket_id in state.submitted_ids:
            return None
        ticket = state.open_tickets.get(ticket_id)
        if ticket is None or ticket.strategy != strategy:
            raise SubmissionRejected(404, "unknown or expired ticket; reload the task")
        if now - ticket.started_at > self._ticket_ttl:
            del state.open_tickets[ticket_id]
            raise SubmissionRejected(409, "the task was open too long to time it; it is shown again")
        if ticket.task_id in state.done[strategy]:
            del state.open_tickets[ticket_id]
            raise SubmissionRejected(409, "this task was already answered (another tab?)")
        return ticket

    def _commit(self, state: _AnnotatorState, ticket: Ticket,
                record: SingleAnnotation | RankingAnnotation) -> SubmitResult:
        path = write_annotation_file([record], self._paths.annotations_incoming, ticket.strategy,
                                     ticket.annotator_id)
        del state.open_tickets[ticket.ticket_id]
        state.answered_tickets[ticket.ticket_id] = ticket
        state.submitted_ids.add(ticket.ticket_id)
        state.done[ticket.strategy].add(ticket.task_id)
        state.seconds_used[ticket.strategy] += (record.submitted_at - record.started_at).total_seconds()
        if ticket.task_id in state.undo_front[ticket.strategy]:
            state.undo_front[ticket.strategy].remove(ticket.task_id)
        state.last_answer[ticket.strategy] = Answer(ticket, record)
        state.recent[ticket.strategy].append(state.last_answer[ticket.strategy])
        return SubmitResult(False, path)

    def submit_single(self, annotator_id: str, ticket_id: str, label: str | None,
                      artefact: bool) -> SubmitResult:
        """Write one single-image answer; `label` may be None only with `artefact`."""
        if label is not None and label not in CLASS_NAMES:
            raise SubmissionRejected(400, f"label must be one of {', '.join(CLASS_NAMES)} or null")
        if label is None and not artefact:
            raise SubmissionRejected(400, "a missing label needs the artefact flag")
        state = self._state(annotator_id)
        with state.lock:
            now = self._clock()
            ticket = self._claim(state, ticket_id, "single", now)
            if ticket is None:
                return SubmitResult(True, None)
            record = SingleAnnotation(ticket.ticket_id, annotator_id, ticket.task_id, ticket.image_ids,
                                      label, bool(artefact), ticket.started_at, now, self._tool_version)
            return self._commit(state, ticket, record)

    def submit_ranking(self, annotator_id: str, ticket_id: str, order: Sequence[int],
                       dividers: Sequence[int], artefact_indices: Sequence[int]) -> SubmitResult:
        """Write one ranked batch; indices refer to the presentation order of the ticket's images."""
        if sorted(order) != list(range(BATCH_SIZE)) or not all(type(i) is int for i in order):
            raise SubmissionRejected(400, f"order must be a permutation of 0..{BATCH_SIZE - 1}")
        if (len(dividers) != 2 or not all(type(d) is int for d in dividers)
                or not 0 <= dividers[0] <= dividers[1] <= BATCH_SIZE):
            raise SubmissionRejected(400, f"dividers must be two integers 0 <= a <= b <= {BATCH_SIZE}")
        if (not all(type(i) is int and 0 <= i < BATCH_SIZE for i in artefact_indices)
                or len(set(artefact_indices)) != len(artefact_indices)):
            raise SubmissionRejected(400, f"artefact indices must be distinct integers in 0..{BATCH_SIZE - 1}")
        state = self._state(annotator_id)
        with state.lock:
            now = self._clock()
            ticket = self._claim(state, ticket_id, "ranking", now)
            if ticket is None:
                return SubmitResult(True, None)
            if len(ticket.image_ids) != BATCH_SIZE:
                raise SubmissionRejected(409, f"batch {ticket.task_id} does not have {BATCH_SIZE} images")
            ids = ticket.image_ids
            record = RankingAnnotation(ticket.ticket_id, annotator_id, ticket.task_id, ids,
                                       tuple(ids[i] for i in order), (dividers[0], dividers[1]),
                                       tuple(ids[i] for i in sorted(artefact_indices)),
                                       ticket.started_at, now, self._tool_version)
            return self._commit(state, ticket, record)

    def undo(self, annotator_id: str, strategy: str) -> bool:
        """Put the last answer of this process back at the front of the queue (one level deep)."""
        if strategy not in STRATEGIES:
            raise SubmissionRejected(404, f"unknown strategy {strategy!r}")
        state = self._state(annotator_id)
        with state.lock:
            answer = self._undoable(state, strategy)
            if answer is None:
                return False
            state.done[strategy].discard(answer.ticket.task_id)
            state.undo_front[strategy].insert(0, answer.ticket.task_id)
            return True

    @staticmethod
    def _undoable(state: _AnnotatorState, strategy: str) -> Answer | None:
        """The answer undo would take back: the last of this process, unless already taken back."""
        answer = state.last_answer.get(strategy)
        return answer if answer is not None and answer.ticket.task_id in state.done[strategy] else None

    def can_undo(self, annotator_id: str, strategy: str) -> bool:
        state = self._state(annotator_id)
        with state.lock:
            return self._undoable(state, strategy) is not None

    def recent(self, annotator_id: str, strategy: str) -> list[dict]:
        """The last answers, newest first: ticket, when, seconds spent, the answer in presentation
        indices, whether a later answer to the same task superseded it, and whether undo takes it back."""
        state = self._state(annotator_id)
        with state.lock:
            answers = list(state.recent[strategy])
            undoable = self._undoable(state, strategy)
            undoable_id = undoable.ticket.ticket_id if undoable else None
        listed, later_tasks = [], set()
        for answer in reversed(answers):
            record, ticket = answer.record, answer.ticket
            entry = {"ticket": ticket.ticket_id, "submitted_at": record.submitted_at.isoformat(),
                     "seconds": round((record.submitted_at - record.started_at).total_seconds(), 1),
                     "superseded": ticket.task_id in later_tasks, "undoable": ticket.ticket_id == undoable_id,
                     "n_images": len(ticket.image_ids)}
            if isinstance(record, RankingAnnotation):
                entry.update(order=[ticket.image_ids.index(i) for i in record.order], dividers=list(record.dividers),
                             artefacts=[ticket.image_ids.index(i) for i in record.artefact_ids])
            else:
                entry.update(label=record.label, artefact=record.artefact)
            later_tasks.add(ticket.task_id)
            listed.append(entry)
        return listed

    def reference(self, annotator_id: str) -> list[tuple[str, tuple[int, int, int, int] | None]]:
        """(class, heart box) of each reference example for this annotator (outside their queue first)."""
        crops = self._tasks.snapshot().heart_crops
        return [(label, crops.get(slice_id)) for label, slice_id in self._reference_ids(annotator_id)]

    def reference_image_path(self, annotator_id: str, index: int) -> Path | None:
        examples = self._reference_ids(annotator_id)
        if not 0 <= index < len(examples):
            return None
        return resolve_slice_png(self._tasks.snapshot(), examples[index][1])

    def _reference_ids(self, annotator_id: str) -> list[tuple[str, str]]:
        state = self._state(annotator_id)
        with state.lock:
            if state.reference_ids:
                return state.reference_ids
        snapshot = self._tasks.snapshot()
        own = {task.slice_id for task in snapshot.single.get(annotator_id, ())}
        own |= {slice_id for task in snapshot.ranking.get(annotator_id, ()) for slice_id in task.slice_ids}
        examples = choose_examples(snapshot.reference_candidates, own)
        with state.lock:
            state.reference_ids = examples
        return examples
