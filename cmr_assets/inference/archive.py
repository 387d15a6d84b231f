"""The filter over a whole archive: the champion's keep/remove decision for every ingested slice.

Why: the clinical use at scale is to filter every stack of an archive, not one series at a time.
The decisions are the slice filter's own (deployment class prior, then `decisions.judge_stack`:
monotone step along each stack, OOD slices kept), computed from the slice store's images instead of
re-reading DICOM, and kept in the `slice_decisions` table with the model version that made them.
Work is incremental: a scan is decided again only when the champion changed or its slices did.

Pure of Dagster and MLflow: slice rows, images and a model in, DataFrames out.

Public API:
- `scans_to_decide(slices, decided, model_version, redecide=False) -> list[str]`
- `decide_scans(slices, images, model, registered_model, model_version, now, lv_share=None) -> pd.DataFrame`
  (`tables.SLICE_DECISIONS_COLUMNS`)
- `decision_summary(decisions) -> dict`: counts by filter class, kept, removed, out of distribution.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd
from torch import nn

from cmr_assets.domain import CLASS_NAMES
from cmr_assets.inference.class_prior import deployment_predictions
from cmr_assets.inference.decisions import judge_stack
from cmr_assets.tables import SLICE_DECISIONS_COLUMNS


def scans_to_decide(slices: pd.DataFrame, decided: pd.DataFrame, model_version: str,
                    redecide: bool = False) -> list[str]:
    """Scans (in `slices` order) without a decision by `model_version` for each of their slices: new
    scans, scans decided by an earlier champion, scans whose slices changed; every scan with `redecide`
    (after a change of the class prior, which the stored decisions do not record)."""
    if redecide:
        return list(dict.fromkeys(slices["scan_id"]))
    current = set(decided.loc[decided["model_version"] == model_version, "slice_id"]) if len(decided) else set()
    missing = ~slices["slice_id"].isin(current)
    return list(dict.fromkeys(slices.loc[missing, "scan_id"]))


def decide_scans(slices: pd.DataFrame, images: np.ndarray, model: nn.Module, registered_model: str,
                 model_version: str, now: datetime, lv_share: float | None = None) -> pd.DataFrame:
    """Decisions for the rows of `slices` (slice_id, scan_id, slice_from_base; whole scans), whose
    images are `images` in row order: one row per slice, each scan judged as a stack, base first,
    under the class prior of `lv_share` (default `$CMR_FILTER_LV_SHARE` or 0.5)."""
    if len(slices) != len(images):
        raise ValueError(f"{len(slices)} slice rows but {len(images)} images")
    probabilities, ood_scores = deployment_predictions(model, images, lv_share)
    frames = []
    rows = slices.reset_index(drop=True)
    for _, stack in rows.groupby("scan_id", sort=False):
        stack = stack.sort_values("slice_from_base")
        index = stack.index.to_numpy()
        verdicts = judge_stack(probabilities[index], ood_scores[index])
        frames.append(pd.DataFrame({
            "slice_id": stack["slice_id"].to_numpy(), "scan_id": stack["scan_id"].to_numpy(),
            "slice_from_base": stack["slice_from_base"].to_numpy(dtype=np.int64),
            "registered_model": registered_model, "model_version": str(model_version),
            "model_class": [v.model_class for v in verdicts], "filter_class": [v.predicted_class for v in verdicts],
            "keep": [v.keep for v in verdicts], "ood": [v.ood for v in verdicts],
            "ood_score": [np.nan if v.ood_score is None else v.ood_score for v in verdicts],
            **{f"p_{name}": probabilities[index, k].round(4) for k, name in enumerate(CLASS_NAMES)},
            "reason": [v.reason for v in verdicts], "decided_at": now,
        }))
    if not frames:
        return pd.DataFrame(columns=list(SLICE_DECISIONS_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(SLICE_DECISIONS_COLUMNS)]


def decision_summary(decisions: pd.DataFrame) -> dict[str, int]:
    """Scans and slices decided, kept, removed, out of distribution, and slices by filter class."""
    return {"scans": int(decisions["scan_id"].nunique()), "slices": len(decisions),
            "kept": int(decisions["keep"].sum()), "removed": int((~decisions["keep"]).sum()),
            "out_of_distribution": int(decisions["ood"].sum()),
            **{f"filter_{name}": int((decisions["filter_class"] == name).sum()) for name in CLASS_NAMES}}
