"""The real-image check: how a model does on real scanner DICOM, not only on the synthetic test set.

Why: a model trained on the phantom can score 95% on synthetic slices and still remove real LV
slices. Every evaluation therefore scores the champions on the real short-axis cines shipped in
`real_data/` (two CC0 Sunnybrook patients with expert contours; see its README), read with the
filter's own code path (`read_series` -> model -> deployment class prior -> monotone step ->
keep/remove):
- contoured slices contain LV myocardium: LV recall of the model's class before the monotone step
  (under the deployment prior, as the filter decides; also the network's own balanced-prior argmax)
  and of the filter's keep decision;
- uncontoured slices before the first contour (base: outflow tract, atria) and after the last
  (beyond the apex) should be removed; "not contoured" is weaker evidence than a positive label, so
  these are reported as decisions, not scored as errors;
- the OOD score of every slice.

Public API:
- `REAL_DATA_DIR`, `RealSeries`, `load_real_series(root) -> list[RealSeries]`
- `real_image_check(model, series, lv_share=None) -> dict` (JSON-ready; `summary` + `slices`)
- `decisions_png(check, series, path=None) -> bytes`: every real slice with its truth, the
  model's class and the filter's decision.
- `MATCHED_LEVELS`, `synthetic_vs_real_png(synthetic, series, path=None) -> bytes`: the "look before
  you claim" montage, real rows above synthetic rows at matched levels; `phantom_stacks(seed, n)`;
  `stacks_of_test_scans(test, images, reference, n_scans=4)`: the synthetic rows from the test set.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from cmr_assets.domain import CLASS_NAMES
from cmr_assets.figures import montage
from cmr_assets.inference.class_prior import lv_share_from_env, to_deployment
from cmr_assets.inference.decisions import decide
from cmr_assets.ingest.dicom_series import OrderedSeries, read_series
from cmr_assets.settings import PROJECT_ROOT
from cmr_assets.synthetic.cohort import plan_scan, stored_slices
from cmr_assets.training.packaging import predict_slices_with_ood

REAL_DATA_DIR = PROJECT_ROOT / "real_data" / "sunnybrook"
TRUTH_FILE = "slices_truth.csv"
BASE, LV, APEX = "uncontoured_base", "lv", "uncontoured_apex"
MATCHED_LEVELS = (-0.15, 0.1, 0.3, 0.5, 0.7, 0.9, 1.15)  # 0 = base plane, 1 = apex


@dataclass(frozen=True)
class RealSeries:
    """One real series read base -> apex, with the per-slice truth from the experts' contours."""

    name: str
    series: OrderedSeries
    truth: tuple[str, ...]  # BASE, LV or APEX per slice, base first


def _truth_by_patient(truth_csv: Path) -> dict[str, list[bool]]:
    contoured: dict[str, list[tuple[int, bool]]] = {}
    with truth_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            contoured.setdefault(row["patient_id"], []).append(
                (int(row["slice_from_base"]), row["endocardium_contoured"] == "True"))
    return {patient: [flag for _, flag in sorted(rows)] for patient, rows in contoured.items()}


def slice_truth(contoured: list[bool]) -> tuple[str, ...]:
    """Contoured -> LV; uncontoured before the first contour -> BASE, after the last -> APEX."""
    if not any(contoured):
        raise ValueError("no contoured slice: the truth cannot tell base from apex")
    first = contoured.index(True)
    last = len(contoured) - 1 - contoured[::-1].index(True)
    return tuple(BASE if k < first else APEX if k > last else LV for k in range(len(contoured)))


def load_real_series(root: Path = REAL_DATA_DIR) -> list[RealSeries]:
    """Every patient folder listed in `root/slices_truth.csv`, read as the filter reads a series."""
    truth_csv = Path(root) / TRUTH_FILE
    if not truth_csv.is_file():
        raise FileNotFoundError(f"{truth_csv}: the real-image check needs its truth table")
    out = []
    for number, (patient, contoured) in enumerate(sorted(_truth_by_patient(truth_csv).items()), start=1):
        series = read_series(Path(root) / patient)
        if len(series.slices) != len(contoured):
            raise ValueError(f"{root / patient}: {len(series.slices)} slice positions read, "
                             f"{TRUTH_FILE} lists {len(contoured)}")
        # named by number: the folder names are the (public, anonymised) patient IDs, which stay out of reports
        out.append(RealSeries(name=f"real {number}", series=series, truth=slice_truth(contoured)))
    return out


def _rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def real_image_check(model: nn.Module, series: list[RealSeries], lv_share: float | None = None) -> dict[str, Any]:
    """Score one model on the real series: raw and filter LV recall, base/apex decisions, OOD flags.

    The model's class is the filter's: under the deployment class prior (`class_prior`; `lv_share`
    defaults to `$CMR_FILTER_LV_SHARE` or 0.5). `lv_recall_balanced_prior` is the network's own
    argmax, trained on balanced classes, for comparison."""
    share = lv_share_from_env() if lv_share is None else lv_share
    slices: list[dict[str, Any]] = []
    for item in series:
        images = np.stack([s.image_128 for s in item.series.slices])
        balanced, ood_scores = predict_slices_with_ood(model, images)
        probabilities = to_deployment(balanced, model, share)
        for decision, truth, own in zip(decide(item.series, probabilities, ood_scores), item.truth, balanced,
                                        strict=True):
            slices.append({"series": item.name, "slice_from_base": decision.slice_from_base, "truth": truth,
                           "model_class": decision.model_class, "filter_class": decision.predicted_class,
                           "balanced_prior_class": CLASS_NAMES[int(np.argmax(own))],
                           "keep": decision.keep, "ood": decision.ood, "ood_score": decision.ood_score})
    lv = [s for s in slices if s["truth"] == LV]
    summary: dict[str, Any] = {
        "n_series": len(series), "n_slices": len(slices), "n_lv": len(lv), "lv_share": share,
        "lv_recall_model": _rate(sum(s["model_class"] == "lv" for s in lv), len(lv)),
        "lv_recall_balanced_prior": _rate(sum(s["balanced_prior_class"] == "lv" for s in lv), len(lv)),
        "lv_recall_filter": _rate(sum(s["keep"] for s in lv), len(lv)),
        "n_ood": sum(bool(s["ood"]) for s in slices),
    }
    for truth in (BASE, APEX):
        outside = [s for s in slices if s["truth"] == truth]
        summary[truth] = {"n": len(outside), "removed": sum(not s["keep"] for s in outside),
                          "model_classes": dict(Counter(s["model_class"] for s in outside))}
    return {"summary": summary, "slices": slices}


def real_levels(truth: tuple[str, ...]) -> np.ndarray:
    """Approximate level of each real slice (0 base plane, 1 apex), spreading the contoured slices over 0..1."""
    contoured = [k for k, t in enumerate(truth) if t == LV]
    return (np.arange(len(truth)) - contoured[0] + 0.5) / len(contoured)


def _closest(levels: np.ndarray, wanted: float) -> int:
    return int(np.argmin(np.abs(np.asarray(levels) - wanted)))


def phantom_stacks(seed: int, n_scans: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, stored slices, levels) of the synthetic cohort's first scans, rendered without DICOM."""
    plans = [plan_scan(seed, index, n_phases=1) for index in range(n_scans)]
    return [(f"synthetic {plan.index}", stored_slices(plan), plan.position01) for plan in plans]


def synthetic_vs_real_png(synthetic: list[tuple[str, np.ndarray, np.ndarray]], series: list[RealSeries],
                          path: str | Path | None = None) -> bytes:
    """Real slices (top rows) above synthetic stacks `(name, images, levels)` at the same levels."""
    rows = [(item.name, np.stack([s.image_128 for s in item.series.slices]), real_levels(item.truth))
            for item in series]
    images, titles = [], []
    for name, stack, levels in [*rows, *synthetic]:
        for wanted in MATCHED_LEVELS:
            k = _closest(levels, wanted)
            images.append(stack[k])
            titles.append(f"{name} {levels[k]:+.2f}")
    return montage(images, titles, ncols=len(MATCHED_LEVELS), path=path)


_SHORT = {"too_basal": "basal", "lv": "LV", "too_apical": "apical", BASE: "base?", APEX: "apex?"}


def decisions_png(check: dict[str, Any], series: list[RealSeries], path: str | Path | None = None) -> bytes:
    """The real slices base -> apex, one row per series, titled truth / model class / filter decision."""
    rows = iter(check["slices"])
    width = max(len(item.series.slices) for item in series)
    images, titles = [], []
    for item in series:
        for s in item.series.slices:
            row = next(rows)
            images.append(s.image_128)
            titles.append(f"{_SHORT[row['truth']]}: {_SHORT[row['model_class']]}, "
                          f"{'keep' if row['keep'] else 'remove'}" + (" OOD" if row["ood"] else ""))
        blank = width - len(item.series.slices)  # pad so each series starts a row
        images += [np.zeros_like(item.series.slices[0].image_128)] * blank
        titles += [""] * blank
    return montage(images, titles, ncols=width, path=path)


def stacks_of_test_scans(test: pd.DataFrame, images: np.ndarray, reference: pd.DataFrame,
                         n_scans: int = 4) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, images, levels) of the first test scans with a continuous reference level, base first."""
    rows = test.reset_index(drop=True).merge(reference[["slice_id", "position01"]], on="slice_id", how="left")
    stacks = []
    for number, (_, scan) in enumerate(rows.dropna(subset=["position01"]).groupby("scan_id", sort=True)):
        if number == n_scans:
            break
        stacks.append((f"test scan {number}", images[scan.index.to_numpy()], scan["position01"].to_numpy()))
    return stacks
