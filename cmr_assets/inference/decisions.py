"""Keep or remove each slice position of a series: the filter's decision, apart from reading and models.

The monotone step (too_basal* lv* too_apical* along the stack) makes the model's labels consistent
with the anatomy before the keep/remove decision. A filter must know its limits: each slice gets
the model's out-of-distribution score (see `training.packaging`; > 1 means unlike anything the
model was trained and validated on). A slice the model cannot judge is kept, never dropped, and
its `reason` says so; when most slices of a series are out of distribution the series verdict is
`out_of_distribution` and every slice is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cmr_assets.domain import CLASS_NAMES
from cmr_assets.ingest.dicom_series import OrderedSeries
from cmr_assets.labels.monotone import enforce_monotone

SERIES_OOD_FRACTION = 0.5  # more than this share of slices out of distribution: the series is not judged


@dataclass(frozen=True)
class SliceDecision:
    """One slice position's verdict, base first; `files` are relative to the series folder (all phases).

    `ood_score` is None for a model registered without OOD calibration; `reason` says why the slice
    is kept or removed. `frames` maps each multi-frame (Enhanced MR) file in `files` to the 1-based
    frame numbers of this position, end-diastole first; it is empty for single-frame files.
    """

    slice_from_base: int
    position_mm: float
    predicted_class: str
    model_class: str
    probabilities: dict[str, float]
    keep: bool
    ood: bool
    ood_score: float | None
    reason: str
    files: list[str]
    frames: dict[str, list[int]] = field(default_factory=dict)


def series_verdict(ood_scores: np.ndarray) -> str:
    """`in_distribution`, `out_of_distribution` (most slices unlike the training data) or `unknown`."""
    if len(ood_scores) == 0 or np.isnan(ood_scores).all():
        return "unknown"
    return "out_of_distribution" if np.mean(ood_scores > 1.0) > SERIES_OOD_FRACTION else "in_distribution"


SERIES_OOD_REASON = "kept: series out of distribution, model cannot judge it"


def _reason(label: str, slice_ood: bool, verdict: str) -> str:
    if verdict == "out_of_distribution":
        return SERIES_OOD_REASON
    if slice_ood:
        return "kept: slice out of distribution, model cannot judge it"
    return "kept: LV myocardium" if label == "lv" else f"removed: {label.replace('_', ' ')}"


@dataclass(frozen=True)
class StackVerdict:
    """The decision for one position of a stack, apart from where its pixels came from."""

    predicted_class: str  # after the monotone step
    model_class: str  # the model's own argmax
    keep: bool
    ood: bool
    ood_score: float | None
    reason: str


def judge_stack(probabilities: np.ndarray, ood_scores: np.ndarray | None = None) -> list[StackVerdict]:
    """Per position of one stack, base first: keep the positions whose monotone label is `lv`, and
    every position the model cannot judge (its own OOD score, or a series mostly out of distribution)."""
    monotone = enforce_monotone(probabilities)
    scores = np.full(len(probabilities), np.nan) if ood_scores is None else np.asarray(ood_scores, dtype=float)
    verdict = series_verdict(scores)
    out = []
    for p, label_index, score in zip(probabilities, monotone, scores, strict=True):
        label = CLASS_NAMES[int(label_index)]
        beyond = bool(score > 1.0)
        slice_ood = beyond or verdict == "out_of_distribution"
        out.append(StackVerdict(predicted_class=label, model_class=CLASS_NAMES[int(np.argmax(p))],
                                keep=label == "lv" or slice_ood, ood=slice_ood,
                                ood_score=None if np.isnan(score) else round(float(score), 3),
                                reason=_reason(label, beyond, verdict)))
    return out


def decide(series: OrderedSeries, probabilities: np.ndarray,
           ood_scores: np.ndarray | None = None) -> list[SliceDecision]:
    """`judge_stack` for a series read from DICOM, with each position's files and frames."""
    return [SliceDecision(
        slice_from_base=s.slice_from_base, position_mm=round(float(s.position_mm), 2),
        predicted_class=v.predicted_class, model_class=v.model_class,
        probabilities={name: round(float(x), 4) for name, x in zip(CLASS_NAMES, p, strict=True)},
        keep=v.keep, ood=v.ood, ood_score=v.ood_score, reason=v.reason, files=list(s.files),
        frames={path: list(numbers) for path, numbers in s.frames.items()})
        for s, p, v in zip(series.slices, probabilities, judge_stack(probabilities, ood_scores), strict=True)]
