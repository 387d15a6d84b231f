"""Simulated experts: they label the synthetic cohort within a time budget and write the same
annotation files a person would (`docs/annotation_format.md`).

Perception model (every number is an assumption in `SimulatorParams`; the paper publishes none).
Truth is the continuous position `position01` (base plane 0, apex 1). Expert e judging image i sees

    alone (single):        position01_i + ambiguity_i + impression_{e,i} + fresh noise (sd single)
    side by side (ranking): position01_i + ambiguity_i + fresh noise (sd side_by_side, much smaller)

`ambiguity_i` is the image's own misleadingness, shared by every expert; `impression_{e,i}` is an
expert's persistent reading of an image seen alone against their mental template, the same each
time they see it, so intra-observer repeats are correlated but not identical. Side by side the
neighbouring images are the template, which removes the personal impression and most of the fresh
noise: the mechanism the paper's result rests on. An expert's classes come from the true class
boundaries (fitted from the reference) shifted by that expert's personal boundary biases; in a
ranking the two dividers fall where that expert's boundaries cut the perceived order.

Public API:
- `SimulatorParams`: the assumptions, calibrated so single-image labelling gives Cohen's kappa
  about 0.90 intra- and 0.77 inter-observer (the paper's values).
- `simulate_single_campaign(tasks_single, reference, params, incoming_dir, seed=0) -> list[Path]`
- `simulate_ranking_campaign(tasks_ranking, reference, params, incoming_dir, seed=0) -> list[Path]`
  Both write one file per session (<= `session_minutes`) and stop when an expert's hours are spent.
- `ExpertPanel.build(reference, params, seed)` with `label_alone`, `perceive_side_by_side`,
  `flag_artefacts`: the vectorised perception, also used to calibrate and test the kappas.
- `fit_class_boundaries(position01, labels)`: the two cut points on position01 that the truth uses.
- `reference_like_cohort(n_scans, seed)`: (slices, reference) frames with the geometry of the
  default synthetic cohort, for calibration and tests without writing DICOM.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from cmr_assets.classes import CLASS_INDEX, CLASS_NAMES
from cmr_assets.labelling.annotation_format import (
    AnnotationRecord,
    RankingAnnotation,
    SingleAnnotation,
    write_annotation_file,
)


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

    @property
    def n_experts(self) -> int:
        return len(self.basal_boundary_bias)


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
        index = self.slice_ids.get_indexer(pd.Index(list(slice_ids), dtype=object))
        if (index < 0).any():
            missing = [s for s, i in zip(slice_ids, index, strict=True) if i < 0][:5]
            raise ValueError(f"images not in the reference: {missing}")
        return index

    def perceive_alone(self, experts: np.ndarray, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.normal(0.0, self.params.single_look_noise_sd, np.shape(images))
        return self.position01[images] + self.ambiguity[images] + self.impression[experts, images] + noise

    def perceive_side_by_side(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.normal(0.0, self.params.side_by_side_noise_sd, np.shape(images))
        return self.position01[images] + self.ambiguity[images] + noise

    def classify(self, experts: np.ndarray, perceived: np.ndarray) -> np.ndarray:
        """Class index 0/1/2 of perceived positions by each expert's own boundaries."""
        limits = self.thresholds[experts]
        return (perceived >= limits[..., 0]).astype(np.int64) + (perceived >= limits[..., 1])

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


def _submission_id(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _expert_numbers(annotators: Sequence[str], params: SimulatorParams) -> dict[str, int]:
    roster = sorted(set(annotators), key=lambda a: (len(a), a))  # sim-expert-2 before sim-expert-10
    if len(roster) > params.n_experts:
        raise ValueError(f"{len(roster)} annotators in the tasks but the simulator has "
                         f"{params.n_experts} experts")
    return {annotator: i for i, annotator in enumerate(roster)}


def _write_sessions(records: list[AnnotationRecord], sessions: list[int], incoming_dir: Path, strategy: str,
                    annotator: str) -> list[Path]:
    paths = []
    for session in sorted(set(sessions)):
        chunk = [r for r, s in zip(records, sessions, strict=True) if s == session]
        paths.append(write_annotation_file(chunk, incoming_dir, strategy, annotator))
    return paths


def simulate_single_campaign(tasks_single: pd.DataFrame, reference: pd.DataFrame, params: SimulatorParams,
                             incoming_dir: Path, seed: int = 0) -> list[Path]:
    """Each simulated expert labels their images alone in task-id order until their hours are spent;
    an image flagged as artefact gets a null label. Returns the session files written."""
    panel = ExpertPanel.build(reference, params, seed)
    rng = np.random.default_rng([seed, 1])
    paths: list[Path] = []
    for annotator, expert in _expert_numbers(tasks_single["annotator_id"].tolist(), params).items():
        tasks = tasks_single[tasks_single["annotator_id"] == annotator].sort_values("task_id")
        images = panel.image_index(tasks["slice_id"].tolist())
        experts = np.full(len(images), expert)
        labels = panel.label_alone(experts, images, rng)
        flagged = panel.flag_artefacts(images, rng)
        starts, ends, sessions = _schedule(_durations(params.seconds_per_single, len(images), params, rng),
                                           expert, params)
        records: list[AnnotationRecord] = [
            SingleAnnotation(
                submission_id=_submission_id(rng), annotator_id=annotator, task_id=task_id,
                image_ids=(slice_id,), label=None if flag else CLASS_NAMES[label], artefact=bool(flag),
                started_at=start, submitted_at=end)
            for task_id, slice_id, label, flag, start, end in zip(
                tasks["task_id"], tasks["slice_id"], labels, flagged, starts, ends, strict=False)
        ]
        paths += _write_sessions(records, sessions, incoming_dir, "single", annotator)
    return paths


def simulate_ranking_campaign(tasks_ranking: pd.DataFrame, reference: pd.DataFrame, params: SimulatorParams,
                              incoming_dir: Path, seed: int = 0) -> list[Path]:
    """Each simulated expert orders their batches by side-by-side perception (most basal first) and
    puts the dividers where their own boundaries fall, in batch-id order until their hours are spent."""
    panel = ExpertPanel.build(reference, params, seed)
    rng = np.random.default_rng([seed, 2])
    paths: list[Path] = []
    for annotator, expert in _expert_numbers(tasks_ranking["annotator_id"].tolist(), params).items():
        batches = tasks_ranking[tasks_ranking["annotator_id"] == annotator].sort_values("batch_id")
        presented = [list(map(str, ids)) for ids in batches["slice_ids"]]
        images = panel.image_index([s for ids in presented for s in ids]).reshape(len(presented), -1)
        perceived = panel.perceive_side_by_side(images, rng)
        order = np.argsort(perceived, axis=1, kind="stable")
        basal, apical = panel.thresholds[expert]
        divider_a = (perceived < basal).sum(axis=1)
        divider_b = (perceived < apical).sum(axis=1)
        flagged = panel.flag_artefacts(images, rng)
        starts, ends, sessions = _schedule(_durations(params.seconds_per_batch, len(presented), params, rng),
                                           expert, params)
        records: list[AnnotationRecord] = []
        for b, (start, end) in enumerate(zip(starts, ends, strict=False)):
            ids = presented[b]
            records.append(RankingAnnotation(
                submission_id=_submission_id(rng), annotator_id=annotator,
                batch_id=str(batches["batch_id"].iloc[b]), image_ids=tuple(ids),
                order=tuple(ids[k] for k in order[b]), dividers=(int(divider_a[b]), int(divider_b[b])),
                artefact_ids=tuple(s for s, f in zip(ids, flagged[b], strict=True) if f),
                started_at=start, submitted_at=end))
        paths += _write_sessions(records, sessions, incoming_dir, "ranking", annotator)
    return paths


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
