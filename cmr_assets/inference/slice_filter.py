"""The clinical use: classify every slice position of a new series and keep only those with LV myocardium.

The series is read with ingestion's own ordering and de-identification code (`read_series`), the
registry's `champion` classifies each position, and the monotone step (too_basal* lv* too_apical*
along the stack) makes the labels consistent with the anatomy before the keep/remove decision.

A filter must know its limits: each slice gets the model's out-of-distribution score (see
`training.packaging`; > 1 means unlike anything the model was trained and validated on). A slice
the model cannot judge is kept, never dropped, and its `reason` says so; when most slices of a
series are out of distribution the series verdict is `out_of_distribution` and every slice is
kept. A model trained on synthetic data only makes the CLI warn on stderr.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from cmr_assets.classes import CLASS_NAMES
from cmr_assets.ingest.dicom_series import OrderedSeries, read_series
from cmr_assets.labels.monotone import enforce_monotone
from cmr_assets.settings import REGISTERED_MODEL_NAMES, mlflow_tracking_uri
from cmr_assets.training.mlflow_registry import (
    ChampionNotFoundError,
    MlflowUnavailableError,
    load_champion,
    model_version_tags,
)
from cmr_assets.training.packaging import predict_slices_with_ood
from cmr_assets.training.provenance import TRAINING_DATA_TAG

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


def decide(series: OrderedSeries, probabilities: np.ndarray,
           ood_scores: np.ndarray | None = None) -> list[SliceDecision]:
    """Keep the positions whose monotone label is `lv`, and every position the model cannot judge."""
    monotone = enforce_monotone(probabilities)
    scores = np.full(len(probabilities), np.nan) if ood_scores is None else np.asarray(ood_scores, dtype=float)
    verdict = series_verdict(scores)
    decisions = []
    for s, p, label_index, score in zip(series.slices, probabilities, monotone, scores, strict=True):
        label = CLASS_NAMES[int(label_index)]
        beyond = bool(score > 1.0)
        slice_ood = beyond or verdict == "out_of_distribution"
        decisions.append(SliceDecision(
            slice_from_base=s.slice_from_base, position_mm=round(float(s.position_mm), 2),
            predicted_class=label, model_class=CLASS_NAMES[int(np.argmax(p))],
            probabilities={name: round(float(v), 4) for name, v in zip(CLASS_NAMES, p, strict=True)},
            keep=label == "lv" or slice_ood, ood=slice_ood,
            ood_score=None if np.isnan(score) else round(float(score), 3),
            reason=_reason(label, beyond, verdict), files=list(s.files),
            frames={path: list(numbers) for path, numbers in s.frames.items()}))
    return decisions


def filter_series(series_dir: Path, model: nn.Module) -> list[SliceDecision]:
    """Read one series base -> apex and classify each position with `model` (a registry model)."""
    series = read_series(series_dir)
    images = np.stack([s.image_128 for s in series.slices])
    return decide(series, *predict_slices_with_ood(model, images))


def model_uri_for(choice: str) -> str:
    """'ranking' / 'single' -> that strategy's champion; anything else is taken as an MLflow model URI."""
    if choice in REGISTERED_MODEL_NAMES:
        return REGISTERED_MODEL_NAMES[choice]
    return choice


def copy_kept(series_dir: Path, decisions: list[SliceDecision], out_dir: Path) -> int:
    """Copy the kept positions' source files, unchanged, keeping their relative paths; returns the count."""
    copied = 0
    for decision in decisions:
        if not decision.keep:
            continue
        for relative in decision.files:
            target = out_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(series_dir / relative, target)
            copied += 1
    return copied


def format_table(decisions: list[SliceDecision]) -> str:
    header = (f"{'slice':>5} {'pos mm':>8}  {'class':<11} " + " ".join(f"{n:>10}" for n in CLASS_NAMES)
              + f" {'ood':>6}  decision")
    rows = [f"{d.slice_from_base:>5} {d.position_mm:>8.1f}  {d.predicted_class:<11} "
            + " ".join(f"{d.probabilities[n]:>10.3f}" for n in CLASS_NAMES)
            + (f" {d.ood_score:>6.2f}" if d.ood_score is not None else f" {'n/a':>6}")
            + f"  {d.reason}" + ("" if d.predicted_class == d.model_class else f" (model said {d.model_class})")
            for d in decisions]
    return "\n".join([header, *rows])


def synthetic_only_warning(tags: dict[str, str]) -> str | None:
    """The stderr warning for a model that never saw a real scan (tag `cmr.training_data`)."""
    if tags.get(TRAINING_DATA_TAG, "synthetic") != "synthetic":
        return None
    source = f"{TRAINING_DATA_TAG}={tags[TRAINING_DATA_TAG]}" if TRAINING_DATA_TAG in tags else "no provenance tag"
    return (f"cmr-assets filter: WARNING: this model was trained on synthetic data only ({source}); check its "
            "decisions on your scanner's images, or train it on your own labelled scans (README, 'Your own labels').")


def run_filter_cli(series_dir: Path, model: str = "ranking", as_json: bool = False, out_dir: str | None = None) -> int:
    """`cmr-assets filter`: errors go to stderr with the reason; exit 0 on success, 1 on failure."""
    try:
        module = load_champion(model_uri_for(model), tracking_uri=mlflow_tracking_uri())
        tags = model_version_tags(model_uri_for(model), tracking_uri=mlflow_tracking_uri())
        decisions = filter_series(series_dir, module)
    except (ChampionNotFoundError, MlflowUnavailableError, ValueError, OSError) as error:
        print(f"cmr-assets filter: {error}", file=sys.stderr)
        return 1
    warning = synthetic_only_warning(tags)
    if warning:
        print(warning, file=sys.stderr)
    if decisions and decisions[0].reason == SERIES_OOD_REASON:  # decide's verdict, on the unrounded scores
        print(f"cmr-assets filter: WARNING: {series_dir} is unlike the model's training data "
              "(most slices out of distribution): every slice is kept", file=sys.stderr)
    if as_json:
        print(json.dumps([asdict(d) for d in decisions], indent=2))
    else:
        print(format_table(decisions))
    if out_dir:
        copied = copy_kept(series_dir, decisions, Path(out_dir))
        print(f"copied {copied} files of {sum(d.keep for d in decisions)} kept positions to {out_dir}",
              file=sys.stderr if as_json else sys.stdout)
    return 0
