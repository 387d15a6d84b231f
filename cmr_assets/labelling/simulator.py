"""Simulated experts: they label the synthetic cohort within a time budget and write the same
annotation files a person would (`docs/annotation_format.md`).

Perception model (every number is an assumption in `SimulatorParams`; the paper publishes none).
Truth is the continuous position `position01` (base plane 0, apex 1). Expert e judging image i sees

    alone (single):        position01_i + ambiguity_i + impression_{e,i} + fresh noise (sd single)
    side by side (ranking): position01_i + ambiguity_i + share * impression_{e,i}
                            + fresh noise (sd side_by_side, by default much smaller)

`ambiguity_i` is the image's own misleadingness, shared by every expert; `impression_{e,i}` is an
expert's persistent reading of an image seen alone against their mental template, the same each
time they see it, so intra-observer repeats are correlated but not identical. Side by side the
neighbouring images are the template, which by default removes the personal impression
(`side_by_side_impression_share` 0) and most of the fresh noise (`side_by_side_noise_sd` 0.012 vs
0.030): the mechanism the paper's result rests on, and an assumption only the single-image terms
are constrained for (`strategy_sensitivity` sweeps it; `calibration.py` fits it to a pilot). An
expert's classes come from the true class boundaries (fitted from the reference) shifted by that
expert's personal boundary biases; in a ranking the two dividers are placed after as many images as
that expert's boundaries leave below them, judged with `divider_impression_share` of the impression
(placing a divider is an absolute class judgement, like single labelling).

Public API:
- `SimulatorParams`: the assumptions, calibrated so single-image labelling gives Cohen's kappa
  about 0.90 intra- and 0.77 inter-observer (the paper's values).
- `simulate_single_rows(tasks_single, reference, params, seed=0) -> DataFrame`,
  `simulate_ranking_rows(tasks_ranking, reference, params, seed=0) -> DataFrame`: the annotations as
  rows with the columns of `raw_annotations_single` / `raw_annotations_ranking` (what aggregation
  reads), no files; each expert works through their tasks in id order and stops when the next task
  would exceed `hours_per_expert`. With the same tasks and seed, a smaller budget gives a prefix of
  a larger one's rows (perception, durations and ids do not depend on the budget).
- `simulate_campaign_rows(tasks_single, tasks_ranking, reference, params, seed=0) -> SimulatedCampaigns`:
  both strategies at once (learning curves: label accuracy against `hours_per_expert`).
- `simulate_single_campaign(tasks_single, reference, params, incoming_dir, seed=0) -> list[Path]`
- `simulate_ranking_campaign(tasks_ranking, reference, params, incoming_dir, seed=0) -> list[Path]`
  The same rows written as annotation files, one per session (<= `session_minutes`).
- `ExpertPanel.build(reference, params, seed)` with `label_alone`, `perceive_side_by_side`,
  `rank_batches`, `flag_artefacts`: the vectorised perception, also used to calibrate and test the kappas.
- `fit_class_boundaries(position01, labels)`: the two cut points on position01 that the truth uses.
- `params_to_json(params, **extra) -> dict`, `params_from_json(obj) -> SimulatorParams`,
  `load_simulator_params(path="") -> SimulatorParams`: the parameter file `calibrate-experts` writes
  and the simulated campaigns read (`path`, else `$CMR_SIMULATOR_PARAMS`, else the defaults).
- `reference_like_cohort(n_scans, seed)`: (slices, reference) frames with the geometry of the
  default synthetic cohort, for calibration and tests without writing DICOM.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cmr_assets.domain import CLASS_INDEX, CLASS_NAMES
from cmr_assets.labelling.annotation_format import (
    RankingAnnotation,
    SingleAnnotation,
    write_annotation_file,
)
from cmr_assets.tables import RAW_RANKING_COLUMNS as RANKING_ROW_COLUMNS
from cmr_assets.tables import RAW_SINGLE_COLUMNS as SINGLE_ROW_COLUMNS


@dataclass(frozen=True)
class SimulatorParams:
    """Assumptions of the simulated experts. Positions are in `position01` units (LV length = 1;
    one 10 mm slice step is about 0.12); times in seconds of expert work."""

    # Where each expert puts the base plane / the apex, relative to the truth (one entry per expert;
    # their number is the panel size). Assumed: a few hundredths of the LV length, opposite signs.
    basal_boundary_bias: tuple[float, ...] = (-0.03, 0.0, 0.04)
    apical_boundary_bias: tuple[float, ...] = (0.04, -0.03, 0.0)
    # How misleading an image is to everybody (shared by experts and by both strategies).
    image_ambiguity_sd: float = 0.04
    # An expert's persistent impression of an image judged alone (same on every repeat).
    personal_impression_sd: float = 0.0525
    # Fresh perception noise of one look at one image alone (differs between repeats).
    single_look_noise_sd: float = 0.030
    # Fresh perception noise when judging an image side by side with 7 others (comparative).
    side_by_side_noise_sd: float = 0.012
    # Share (0..1) of the personal impression still present side by side: in the order, and in the
    # class judgement that places the two dividers.
    side_by_side_impression_share: float = 0.0
    divider_impression_share: float = 0.0
    # Mean expert time per single image and per ranked batch of 8 (incl. placing dividers);
    # each task's time is lognormal around the mean with this log-sd.
    seconds_per_single: float = 11.0
    seconds_per_batch: float = 36.0
    duration_log_sd: float = 0.25
    # Probability of flagging an image as artefact when it truly has one / when it is clean.
    p_flag_true_artefact: float = 0.9
    p_flag_clean: float = 0.01
    # Work time per expert per strategy, and the longest session (one annotation file each).
    hours_per_expert: float = 5.0
    session_minutes: float = 60.0
    # First session start (a fixed past date keeps runs reproducible and never "in the future");
    # each expert's next session starts a day later at the same time.
    campaign_start: datetime = field(
        default_factory=lambda: datetime.fromisoformat("2025-01-06T09:00:00+00:00"))

    def __post_init__(self) -> None:
        if len(self.basal_boundary_bias) != len(self.apical_boundary_bias) or not self.basal_boundary_bias:
            raise ValueError("basal_boundary_bias and apical_boundary_bias need one entry per expert")
        if self.campaign_start.tzinfo is None:
            raise ValueError("campaign_start needs a timezone")
        for name in ("side_by_side_impression_share", "divider_impression_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1, got {getattr(self, name)}")

    @property
    def n_experts(self) -> int:
        return len(self.basal_boundary_bias)


PARAMS_FILE_FORMAT = "cmr_assets simulator params v1"
SIMULATOR_PARAMS_ENV = "CMR_SIMULATOR_PARAMS"


def params_to_json(params: SimulatorParams, **extra: object) -> dict[str, Any]:
    """The parameter file's JSON object: every field (tuples as lists, times as ISO 8601) under
    `params`, plus any `extra` sections (e.g. how they were fitted)."""
    values = {}
    for f in fields(params):
        value = getattr(params, f.name)
        values[f.name] = value.isoformat() if isinstance(value, datetime) else \
            list(value) if isinstance(value, tuple) else value
    return {"format": PARAMS_FILE_FORMAT, "params": values, **extra}


def params_from_json(obj: dict[str, Any]) -> SimulatorParams:
    """Parameters from a parameter file's object; fields it leaves out keep their defaults."""
    if obj.get("format") != PARAMS_FILE_FORMAT:
        raise ValueError(f"not a simulator parameter file (format {obj.get('format')!r}, "
                         f"expected {PARAMS_FILE_FORMAT!r})")
    known = {f.name for f in fields(SimulatorParams)}
    unknown = sorted(set(obj["params"]) - known)
    if unknown:
        raise ValueError(f"unknown simulator parameter(s) {unknown}")
    values: dict[str, Any] = {}  # field name -> value decoded from JSON
    for name, value in obj["params"].items():
        values[name] = datetime.fromisoformat(value) if name == "campaign_start" else \
            tuple(float(v) for v in value) if isinstance(value, list) else value
    return replace(SimulatorParams(), **values)


def load_simulator_params(path: str | Path = "") -> SimulatorParams:
    """The simulated experts' parameters: from `path`, else from `$CMR_SIMULATOR_PARAMS`, else the defaults."""
    chosen = str(path) or os.environ.get(SIMULATOR_PARAMS_ENV, "")
    if not chosen:
        return SimulatorParams()
    return params_from_json(json.loads(Path(chosen).read_text(encoding="utf-8")))


def fit_class_boundaries(position01: np.ndarray, labels: Sequence[str]) -> tuple[float, float]:
    """Cut points on position01 that best reproduce the true classes (fewest misclassified images);
    equal to the base plane 0 and apex 1 when the truth is defined that way."""
    position = np.asarray(position01, dtype=float)
    codes = np.array([CLASS_INDEX[str(label)] for label in labels])
    order = np.argsort(position, kind="stable")
    position, codes = position[order], codes[order]
    cuts = []
    for upper_class in (1, 2):
        above = codes >= upper_class
        # errors of a cut before sorted index k: images below it that belong above, and vice versa
        below_wrong = np.concatenate([[0], np.cumsum(above)])
        above_wrong = np.concatenate([[0], np.cumsum((~above)[::-1])])[::-1]
        k = int(np.argmin(below_wrong + above_wrong))
        if k == 0:
            cuts.append(position[0] - 1e-9)
        elif k == len(position):
            cuts.append(position[-1] + 1e-9)
        else:
            cuts.append(0.5 * (position[k - 1] + position[k]))
    return float(cuts[0]), float(cuts[1])


@dataclass(frozen=True)
class ExpertPanel:
    """Persistent state of the simulated experts on one reference: who perceives what, where."""

    params: SimulatorParams
    slice_ids: pd.Index
    position01: np.ndarray
    artefact: np.ndarray
    ambiguity: np.ndarray  # (n_images,)
    impression: np.ndarray  # (n_experts, n_images)
    thresholds: np.ndarray  # (n_experts, 2): each expert's basal and apical boundary

    @classmethod
    def build(cls, reference: pd.DataFrame, params: SimulatorParams, seed: int = 0) -> ExpertPanel:
        rng = np.random.default_rng([seed, 0])
        n = len(reference)
        position = reference["position01"].to_numpy(dtype=float)
        basal, apical = fit_class_boundaries(position, reference["label"].astype(str).tolist())
        thresholds = np.column_stack([basal + np.asarray(params.basal_boundary_bias),
                                      apical + np.asarray(params.apical_boundary_bias)])
        return cls(
            params=params,
            slice_ids=pd.Index(reference["slice_id"].astype(str)),
            position01=position,
            artefact=reference["artefact"].to_numpy(dtype=bool),
            ambiguity=rng.normal(0.0, params.image_ambiguity_sd, n),
            impression=rng.normal(0.0, params.personal_impression_sd, (params.n_experts, n)),
            thresholds=thresholds,
        )

    def image_index(self, slice_ids: Sequence[str]) -> np.ndarray:
        index: np.ndarray = self.slice_ids.get_indexer(pd.Index(list(slice_ids), dtype=object))
        if (index < 0).any():
            missing = [s for s, i in zip(slice_ids, index, strict=True) if i < 0][:5]
            raise ValueError(f"images not in the reference: {missing}")
        return index

    def perceive_alone(self, experts: np.ndarray, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.normal(0.0, self.params.single_look_noise_sd, np.shape(images))
        perceived: np.ndarray = (self.position01[images] + self.ambiguity[images]
                                 + self.impression[experts, images] + noise)
        return perceived

    def perceive_side_by_side(self, experts: np.ndarray, images: np.ndarray, rng: np.random.Generator
                              ) -> tuple[np.ndarray, np.ndarray]:
        """(order, class) perceptions of one side-by-side look: one fresh noise, each with its own
        share of the personal impression."""
        params = self.params
        seen = (self.position01[images] + self.ambiguity[images]
                + rng.normal(0.0, params.side_by_side_noise_sd, np.shape(images)))
        impression = self.impression[experts, images]
        return (seen + params.side_by_side_impression_share * impression,
                seen + params.divider_impression_share * impression)

    def rank_batches(self, experts: np.ndarray, images: np.ndarray, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each row of `images` (n_batches, batch_size) ordered most basal first (indices into the
        row) and its two dividers: as many images as the expert's boundaries leave below them."""
        experts = np.broadcast_to(np.asarray(experts)[..., None], np.shape(images))
        order_seen, class_seen = self.perceive_side_by_side(experts, images, rng)
        order = np.argsort(order_seen, axis=1, kind="stable")
        limits = self.thresholds[experts]
        return (order, (class_seen < limits[..., 0]).sum(axis=1), (class_seen < limits[..., 1]).sum(axis=1))

    def classify(self, experts: np.ndarray, perceived: np.ndarray) -> np.ndarray:
        """Class index 0/1/2 of perceived positions by each expert's own boundaries."""
        limits = self.thresholds[experts]
        classes: np.ndarray = (perceived >= limits[..., 0]).astype(np.int64) + (perceived >= limits[..., 1])
        return classes

    def label_alone(self, experts: np.ndarray, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.classify(experts, self.perceive_alone(experts, images, rng))

    def flag_artefacts(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        p = np.where(self.artefact[images], self.params.p_flag_true_artefact, self.params.p_flag_clean)
        return rng.random(np.shape(images)) < p


def _durations(mean_seconds: float, n: int, params: SimulatorParams, rng: np.random.Generator) -> np.ndarray:
    """Lognormal task times with the given mean."""
    sd = params.duration_log_sd
    return mean_seconds * rng.lognormal(-0.5 * sd * sd, sd, n)


def _schedule(durations: np.ndarray, expert: int, params: SimulatorParams
              ) -> tuple[list[datetime], list[datetime], list[int]]:
    """Back-to-back tasks in sessions of at most `session_minutes`, one session per day, until the
    expert's hours are spent; returns start, end and session number of the tasks that fit."""
    budget = params.hours_per_expert * 3600.0
    session_length = params.session_minutes * 60.0
    starts: list[datetime] = []
    ends: list[datetime] = []
    sessions: list[int] = []
    spent = 0.0
    session, in_session = 0, 0.0
    for seconds in durations:
        if spent + seconds > budget:
            break
        if in_session > 0 and in_session + seconds > session_length:
            session, in_session = session + 1, 0.0
        session_start = params.campaign_start + timedelta(days=session, minutes=2 * expert)
        start = session_start + timedelta(seconds=in_session)
        starts.append(start)
        ends.append(start + timedelta(seconds=float(seconds)))
        sessions.append(session)
        in_session += seconds
        spent += seconds
    return starts, ends, sessions


def _submission_ids(n: int, rng: np.random.Generator) -> list[str]:
    return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]


def _expert_numbers(annotators: Sequence[str], params: SimulatorParams) -> dict[str, int]:
    roster = sorted(set(annotators), key=lambda a: (len(a), a))  # sim-expert-2 before sim-expert-10
    if len(roster) > params.n_experts:
        raise ValueError(f"{len(roster)} annotators in the tasks but the simulator has "
                         f"{params.n_experts} experts")
    return {annotator: i for i, annotator in enumerate(roster)}


def _timed(rows: dict[str, Any], durations: np.ndarray, expert: int, params: SimulatorParams,
           ids: list[str]) -> pd.DataFrame:
    """The rows of one expert that fit the budget, with times, session and submission id; `rows`:
    column name -> one value per task (an array or a list), in task order."""
    starts, ends, sessions = _schedule(durations, expert, params)
    done = len(starts)
    return pd.DataFrame({
        "submission_id": ids[:done], **{k: v[:done] for k, v in rows.items()},
        "started_at": pd.to_datetime(starts, utc=True), "submitted_at": pd.to_datetime(ends, utc=True),
        "session": np.asarray(sessions, dtype=np.int64)})


def _finish(frames: list[pd.DataFrame], columns: Sequence[str], strategy: str) -> pd.DataFrame:
    """All experts' rows with a `source_file` per session and 1-based `line`, as ingestion stores them."""
    if not frames:
        return pd.DataFrame(columns=[*columns, "session"])
    rows = pd.concat(frames, ignore_index=True)
    rows["source_file"] = (f"simulated-{strategy}-" + rows["annotator_id"] + "-session"
                           + rows["session"].astype(str))
    rows["line"] = rows.groupby(["annotator_id", "session"]).cumcount() + 1
    return rows[[*columns, "session"]]


def _single_rows(tasks_single: pd.DataFrame, reference: pd.DataFrame, params: SimulatorParams,
                 seed: int) -> pd.DataFrame:
    panel = ExpertPanel.build(reference, params, seed)
    rng = np.random.default_rng([seed, 1])
    id_rng = np.random.default_rng([seed, 3])
    frames = []
    for annotator, expert in _expert_numbers(tasks_single["annotator_id"].tolist(), params).items():
        tasks = tasks_single[tasks_single["annotator_id"] == annotator].sort_values("task_id")
        images = panel.image_index(tasks["slice_id"].tolist())
        labels = panel.label_alone(np.full(len(images), expert), images, rng)
        flagged = panel.flag_artefacts(images, rng)
        durations = _durations(params.seconds_per_single, len(images), params, rng)
        frames.append(_timed({
            "annotator_id": np.full(len(images), annotator, dtype=object),
            "task_id": tasks["task_id"].astype(str).to_numpy(dtype=object),
            "slice_id": tasks["slice_id"].astype(str).to_numpy(dtype=object),
            "label": np.where(flagged, None, np.asarray(CLASS_NAMES, dtype=object)[labels]),
            "artefact": flagged,
        }, durations, expert, params, _submission_ids(len(images), id_rng)))
    rows = _finish(frames, SINGLE_ROW_COLUMNS, "single")
    # None (not NaN) for a missing label, as `read_raw_annotations` gives
    rows["label"] = pd.Series([v if isinstance(v, str) else None for v in rows["label"]], index=rows.index,
                              dtype=object)
    return rows


def _ranking_rows(tasks_ranking: pd.DataFrame, reference: pd.DataFrame, params: SimulatorParams,
                  seed: int) -> pd.DataFrame:
    panel = ExpertPanel.build(reference, params, seed)
    rng = np.random.default_rng([seed, 2])
    id_rng = np.random.default_rng([seed, 4])
    frames = []
    for annotator, expert in _expert_numbers(tasks_ranking["annotator_id"].tolist(), params).items():
        batches = tasks_ranking[tasks_ranking["annotator_id"] == annotator].sort_values("batch_id")
        presented = np.array([list(map(str, ids)) for ids in batches["slice_ids"]], dtype=object)
        images = panel.image_index(presented.ravel().tolist()).reshape(presented.shape)
        order, divider_a, divider_b = panel.rank_batches(np.full(len(images), expert), images, rng)
        flagged = panel.flag_artefacts(images, rng)
        durations = _durations(params.seconds_per_batch, len(images), params, rng)
        frames.append(_timed({
            "annotator_id": np.full(len(images), annotator, dtype=object),
            "batch_id": batches["batch_id"].astype(str).to_numpy(dtype=object),
            "image_ids": [list(row) for row in presented],
            "order": [list(row[k]) for row, k in zip(presented, order, strict=True)],
            "divider_a": divider_a.astype(np.int64), "divider_b": divider_b.astype(np.int64),
            "artefact_ids": [list(row[f]) for row, f in zip(presented, flagged, strict=True)],
        }, durations, expert, params, _submission_ids(len(images), id_rng)))
    return _finish(frames, [*RANKING_ROW_COLUMNS[:3], "image_ids", *RANKING_ROW_COLUMNS[3:]], "ranking")


def simulate_single_rows(tasks_single: pd.DataFrame, reference: pd.DataFrame, params: SimulatorParams,
                         seed: int = 0) -> pd.DataFrame:
    """Single-image annotations as `raw_annotations_single` rows: each expert labels their images
    alone in task-id order until the next one would exceed their hours; an image flagged as artefact
    gets a null label."""
    return _single_rows(tasks_single, reference, params, seed)[list(SINGLE_ROW_COLUMNS)]


def simulate_ranking_rows(tasks_ranking: pd.DataFrame, reference: pd.DataFrame, params: SimulatorParams,
                          seed: int = 0) -> pd.DataFrame:
    """Ranking annotations as `raw_annotations_ranking` rows: each expert orders their batches by
    side-by-side perception (most basal first) and places the dividers, in batch-id order until the
    next batch would exceed their hours."""
    return _ranking_rows(tasks_ranking, reference, params, seed)[list(RANKING_ROW_COLUMNS)]


@dataclass(frozen=True)
class SimulatedCampaigns:
    """Both strategies' simulated annotations (rows as ingestion stores them) at one budget."""

    single: pd.DataFrame
    ranking: pd.DataFrame


def simulate_campaign_rows(tasks_single: pd.DataFrame, tasks_ranking: pd.DataFrame, reference: pd.DataFrame,
                           params: SimulatorParams, seed: int = 0) -> SimulatedCampaigns:
    """Both campaigns as rows, each stopped at `params.hours_per_expert` per expert: feed them to
    `aggregate_single` / `aggregate_ranking` for label accuracy against expert-hours, no files."""
    return SimulatedCampaigns(single=simulate_single_rows(tasks_single, reference, params, seed),
                              ranking=simulate_ranking_rows(tasks_ranking, reference, params, seed))


def _write_sessions(rows: pd.DataFrame, to_record: Callable[[Any], SingleAnnotation | RankingAnnotation],
                    incoming_dir: Path, strategy: str) -> list[Path]:
    paths = []
    for (annotator, _), session in rows.groupby(["annotator_id", "session"], sort=True):
        records = [to_record(row) for row in session.itertuples(index=False)]
        paths.append(write_annotation_file(records, incoming_dir, strategy, str(annotator)))
    return paths


def simulate_single_campaign(tasks_single: pd.DataFrame, reference: pd.DataFrame, params: SimulatorParams,
                             incoming_dir: Path, seed: int = 0) -> list[Path]:
    """`simulate_single_rows` written as annotation files, one per session. Returns the files."""
    def record(row: Any) -> SingleAnnotation:  # a row of DataFrame.itertuples
        return SingleAnnotation(
            submission_id=row.submission_id, annotator_id=row.annotator_id, task_id=row.task_id,
            image_ids=(row.slice_id,), label=row.label, artefact=bool(row.artefact),
            started_at=row.started_at.to_pydatetime(), submitted_at=row.submitted_at.to_pydatetime())

    return _write_sessions(_single_rows(tasks_single, reference, params, seed), record, incoming_dir, "single")


def simulate_ranking_campaign(tasks_ranking: pd.DataFrame, reference: pd.DataFrame, params: SimulatorParams,
                              incoming_dir: Path, seed: int = 0) -> list[Path]:
    """`simulate_ranking_rows` written as annotation files, one per session. Returns the files."""
    def record(row: Any) -> RankingAnnotation:  # a row of DataFrame.itertuples
        return RankingAnnotation(
            submission_id=row.submission_id, annotator_id=row.annotator_id, batch_id=row.batch_id,
            image_ids=tuple(row.image_ids), order=tuple(row.order), dividers=(int(row.divider_a),
                                                                              int(row.divider_b)),
            artefact_ids=tuple(row.artefact_ids), started_at=row.started_at.to_pydatetime(),
            submitted_at=row.submitted_at.to_pydatetime())

    return _write_sessions(_ranking_rows(tasks_ranking, reference, params, seed), record, incoming_dir, "ranking")


def reference_like_cohort(n_scans: int = 300, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(slices, reference) with the default synthetic cohort's geometry: 10-14 slices 10 mm apart,
    stacks starting above the base and ending beyond the apex (about 10-20% too basal and too
    apical each), ~6% artefact slices. Lets the simulator be calibrated on any number of images."""
    rng = np.random.default_rng(seed)
    n_slices = rng.integers(10, 15, n_scans)
    span_mm = (n_slices - 1) * 10.0
    lv_length_mm = rng.uniform(0.68, 0.82, n_scans) * span_mm
    basal_share = rng.uniform(0.35, 0.65, n_scans)
    first_mm = -basal_share * (span_mm - lv_length_mm)  # first slice's position relative to the base plane
    scan_ids = [f"{v:016x}" for v in rng.integers(0, 2**63, n_scans)]
    scan_of = np.repeat(np.arange(n_scans), n_slices)
    index = np.concatenate([np.arange(k) for k in n_slices])
    position_mm = index * 10.0
    position01 = (first_mm[scan_of] + position_mm) / lv_length_mm[scan_of]
    labels = np.where(position01 < 0, "too_basal", np.where(position01 > 1, "too_apical", "lv"))
    slice_ids = [f"{scan_ids[s]}-{i:02d}" for s, i in zip(scan_of, index, strict=True)]
    slices = pd.DataFrame({
        "slice_id": slice_ids,
        "scan_id": [scan_ids[s] for s in scan_of],
        "slice_from_base": index,
        "n_slices": n_slices[scan_of],
        "position_mm": position_mm,
    })
    reference = pd.DataFrame({
        "slice_id": slice_ids,
        "label": labels,
        "position01": position01,
        "artefact": rng.random(len(slice_ids)) < 0.06,
    })
    return slices, reference
