"""The clinical use: classify every slice position of a new series and keep only those with LV myocardium.

The series is read with ingestion's own ordering and de-identification code (`read_series`), the
registry's `champion` classifies each position (its probabilities re-weighted to the class mix of
clinical stacks, `class_prior`), and the monotone step (too_basal* lv* too_apical*
along the stack) makes the labels consistent with the anatomy before the keep/remove decision.

The keep/remove decision itself is `inference.decisions` (pure, also used by the real-image
check). A model trained on synthetic data only makes the CLI warn on stderr.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
from torch import nn

from cmr_assets.domain import CLASS_NAMES, REGISTERED_MODEL_NAMES
from cmr_assets.inference.class_prior import LV_SHARE_ENV, check_lv_share, deployment_predictions, lv_share_from_env
from cmr_assets.inference.decisions import SERIES_OOD_REASON, SliceDecision, decide
from cmr_assets.ingest.dicom_series import read_series
from cmr_assets.mlflow_store import (
    ChampionNotFoundError,
    MlflowUnavailableError,
    load_champion,
    model_version_tags,
)
from cmr_assets.settings import mlflow_tracking_uri
from cmr_assets.training.provenance import TRAINING_DATA_TAG


def filter_series(series_dir: Path, model: nn.Module, lv_share: float | None = None) -> list[SliceDecision]:
    """Read one series base -> apex and classify each position with `model` (a registry model), under
    the deployment class prior (`class_prior`; `lv_share` defaults to `$CMR_FILTER_LV_SHARE` or 0.5)."""
    series = read_series(series_dir)
    images = np.stack([s.image_128 for s in series.slices])
    return decide(series, *deployment_predictions(model, images, lv_share))


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


def run_filter_cli(series_dir: Path, model: str = "ranking", as_json: bool = False, out_dir: str | None = None,
                   lv_share: float | None = None) -> int:
    """`cmr-assets filter`: errors go to stderr with the reason; exit 0 on success, 1 on failure."""
    try:
        share = lv_share_from_env() if lv_share is None else check_lv_share(lv_share, "--lv-share")
        module = load_champion(model_uri_for(model), tracking_uri=mlflow_tracking_uri())
        tags = model_version_tags(model_uri_for(model), tracking_uri=mlflow_tracking_uri())
        decisions = filter_series(series_dir, module, share)
    except (ChampionNotFoundError, MlflowUnavailableError, ValueError, OSError) as error:
        print(f"cmr-assets filter: {error}", file=sys.stderr)
        return 1
    warning = synthetic_only_warning(tags)
    if warning:
        print(warning, file=sys.stderr)
    print(f"cmr-assets filter: class prior: an LV share of {share:g} per stack (--lv-share, {LV_SHARE_ENV}; "
          "1/3 is the model's own balanced call)", file=sys.stderr)
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
