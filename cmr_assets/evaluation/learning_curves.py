"""Learning curves: what each strategy's labels and model are worth after h expert-hours per expert.

A campaign stopped at a budget of h hours holds exactly each expert's records up to their first h
hours of work, in the order they did them (the designs put every image's first view before any
second view, so an early stop leaves as many images labelled as possible). So the curves need no
new campaign: the recorded annotations (simulated or real) are cut at each budget, aggregated as
the labels assets do, scored against the reference, and, when asked, a model is trained on them.

Public API:
- `within_hours(raw, hours) -> DataFrame`: each expert's records up to `hours` of their work.
- `labels_at_budget(strategy, raw, tasks_single, slices) -> DataFrame`: the labels table a campaign
  stopped there would give (same aggregation and monotone step as the labels assets).
- `CURVE_COLUMNS`: the rows of the `learning_curves` table.
- `curve_point(strategy, hours, raw, inputs, root, train_config, steps, test, test_images) -> dict`:
  one row (labels cut at the budget, optionally a model trained on them and scored on `test`).
- `load_stored_curves(reports_dir, labels) -> dict | None`: the stored document (`CURVES_FILE`)
  when it was drawn from today's labels.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from cmr_assets.domain import STRATEGIES
from cmr_assets.evaluation.metrics import classification_metrics
from cmr_assets.evaluation.repeats import labels_version
from cmr_assets.labelling.annotation_ingest import latest_answer_per_task
from cmr_assets.labels.aggregation import CutPointsError, aggregate_ranking, aggregate_single
from cmr_assets.labels.agreement import label_accuracy
from cmr_assets.labels.monotone import apply_monotone
from cmr_assets.training.core import TrainConfig, TrainingDataError
from cmr_assets.training.dataset import labelled_rows
from cmr_assets.training.fitting import fit_classifier
from cmr_assets.training.packaging import predict_slices

CURVES_FILE = "learning_curves.json"  # under reports/
CURVE_COLUMNS = ["strategy", "hours_per_expert", "expert_hours", "images_labelled", "label_coverage",
                 "label_accuracy", "n_train", "test_accuracy", "test_macro_f1", "note"]


def within_hours(raw: pd.DataFrame, hours: float) -> pd.DataFrame:
    """Records each expert submitted before their work time (submitted - started, summed in
    submission order) exceeded `hours`; all of a record's time counts once it is started."""
    if hours < 0:
        raise ValueError(f"hours: must be >= 0, got {hours}")
    if raw.empty:
        return raw
    ordered = raw.sort_values(["annotator_id", "submitted_at"], kind="stable")
    seconds = (ordered["submitted_at"] - ordered["started_at"]).dt.total_seconds()
    spent = seconds.groupby(ordered["annotator_id"]).cumsum()
    return ordered[spent <= hours * 3600.0].reset_index(drop=True)


def _no_labels() -> pd.DataFrame:
    """The labels table of a budget within which nothing could be labelled."""
    return pd.DataFrame(columns=["slice_id", "label", "artefact_excluded"])


def labels_at_budget(strategy: str, raw: pd.DataFrame, tasks_single: pd.DataFrame,
                     slices: pd.DataFrame) -> pd.DataFrame:
    """The strategy's labels from `raw` (already cut at the budget); empty when nothing was labelled."""
    if raw.empty:
        return _no_labels()
    if strategy == "single":
        return apply_monotone(aggregate_single(latest_answer_per_task(raw), tasks_single), slices)
    if strategy == "ranking":
        return apply_monotone(aggregate_ranking(latest_answer_per_task(raw), slices).labels, slices)
    raise ValueError(f"strategy: expected 'ranking' or 'single', got {strategy!r}")


def load_stored_curves(reports_dir: Path, labels: dict[str, pd.DataFrame]) -> dict | None:
    """The `learning_curves` document when it was drawn from today's labels, else None."""
    path = reports_dir / CURVES_FILE
    if not path.exists():
        return None
    document = json.loads(path.read_text())
    current = {s: labels_version(labels[s]) for s in STRATEGIES}
    return document if document.get("labels_version") == current else None


def curve_point(strategy: str, hours: float, raw: pd.DataFrame, inputs: dict[str, pd.DataFrame], root: Path,
                 train_config: TrainConfig | None, steps: int | None, test: pd.DataFrame,
                 test_images: np.ndarray | None) -> dict:
    """One (strategy, budget) row of the curves: labels cut at the budget, and optionally a model."""
    cut = within_hours(raw, hours)
    try:
        labels, note = labels_at_budget(strategy, cut, inputs["tasks_single"], inputs["slices"]), ""
    except CutPointsError as error:  # too few views within this budget for ranking labels
        labels, note = _no_labels(), f"no labels: {error}"
    quality = label_accuracy(labels, inputs["reference"]) if len(labels) else {"accuracy": float("nan")}
    labelled = int(labels["label"].notna().sum()) if len(labels) else 0
    seconds = (cut["submitted_at"] - cut["started_at"]).dt.total_seconds().sum() if len(cut) else 0.0
    row = {"strategy": strategy, "hours_per_expert": hours, "expert_hours": float(seconds) / 3600.0,
           "images_labelled": labelled, "label_coverage": labelled / max(len(inputs["slices"]), 1),
           "label_accuracy": quality["accuracy"], "n_train": 0, "test_accuracy": None, "test_macro_f1": None,
           "note": note}
    if train_config is None:
        return row
    if test_images is None:
        raise ValueError("test_images: needed to score the model trained with train_config")
    if not labelled:
        return {**row, "note": note or "no model: no image labelled within this budget"}
    train = labelled_rows(inputs["slices"], inputs["split"], labels, "train")
    val = labelled_rows(inputs["slices"], inputs["split"], labels, "val")
    row["n_train"] = len(train)
    if steps:
        epochs = max(1, math.ceil(steps * train_config.batch_size / max(len(train), 1)))
        train_config = replace(train_config, epochs=epochs, patience=epochs)
    try:
        fitted = fit_classifier(root, train, val, train_config)
    except TrainingDataError as error:
        return {**row, "note": f"no model: {error}"}
    metrics = classification_metrics(test["target"].to_numpy(), predict_slices(fitted.deployable, test_images))
    return {**row, "test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"]}
