"""The clinical use: classify every slice position of a new series and keep only those with LV myocardium.

The series is read with ingestion's own ordering and de-identification code (`read_series`), the
registry's `champion` classifies each position, and the monotone step (too_basal* lv* too_apical*
along the stack) makes the labels consistent with the anatomy before the keep/remove decision.
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
from cmr_assets.training.mlflow_registry import ChampionNotFoundError, MlflowUnavailableError, load_champion
from cmr_assets.training.packaging import predict_slices


@dataclass(frozen=True)
class SliceDecision:
    """One slice position's verdict, base first; `files` are relative to the series folder (all phases).

    `frames` maps each multi-frame (Enhanced MR) file in `files` to the 1-based frame numbers of this
    position, end-diastole first; it is empty for single-frame files.
    """

    slice_from_base: int
    position_mm: float
    predicted_class: str
    model_class: str
    probabilities: dict[str, float]
    keep: bool
    files: list[str]
    frames: dict[str, list[int]] = field(default_factory=dict)


def decide(series: OrderedSeries, probabilities: np.ndarray) -> list[SliceDecision]:
    """Keep exactly the positions whose monotone label is `lv`."""
    monotone = enforce_monotone(probabilities)
    return [
        SliceDecision(
            slice_from_base=s.slice_from_base, position_mm=round(float(s.position_mm), 2),
            predicted_class=CLASS_NAMES[int(label)], model_class=CLASS_NAMES[int(np.argmax(p))],
            probabilities={name: round(float(v), 4) for name, v in zip(CLASS_NAMES, p, strict=True)},
            keep=CLASS_NAMES[int(label)] == "lv", files=list(s.files),
            frames={path: list(numbers) for path, numbers in s.frames.items()})
        for s, p, label in zip(series.slices, probabilities, monotone, strict=True)
    ]


def filter_series(series_dir: Path, model: nn.Module) -> list[SliceDecision]:
    """Read one series base -> apex and classify each position with `model` (a registry model)."""
    series = read_series(series_dir)
    images = np.stack([s.image_128 for s in series.slices])
    return decide(series, predict_slices(model, images))


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
    header = f"{'slice':>5} {'pos mm':>8}  {'class':<11} " + " ".join(f"{n:>10}" for n in CLASS_NAMES) + "  decision"
    rows = [f"{d.slice_from_base:>5} {d.position_mm:>8.1f}  {d.predicted_class:<11} "
            + " ".join(f"{d.probabilities[n]:>10.3f}" for n in CLASS_NAMES)
            + f"  {'keep' if d.keep else 'remove'}" + ("" if d.predicted_class == d.model_class else
                                                        f" (model said {d.model_class})")
            for d in decisions]
    return "\n".join([header, *rows])


def run_filter_cli(series_dir: Path, model: str = "ranking", as_json: bool = False, out_dir: str | None = None) -> int:
    """`cmr-assets filter`: errors go to stderr with the reason; exit 0 on success, 1 on failure."""
    try:
        module = load_champion(model_uri_for(model), tracking_uri=mlflow_tracking_uri())
        decisions = filter_series(series_dir, module)
    except (ChampionNotFoundError, MlflowUnavailableError, ValueError, OSError) as error:
        print(f"cmr-assets filter: {error}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps([asdict(d) for d in decisions], indent=2))
    else:
        print(format_table(decisions))
    if out_dir:
        copied = copy_kept(series_dir, decisions, Path(out_dir))
        print(f"copied {copied} files of {sum(d.keep for d in decisions)} kept positions to {out_dir}",
              file=sys.stderr if as_json else sys.stdout)
    return 0
