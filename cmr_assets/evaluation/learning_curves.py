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
"""

from __future__ import annotations

import pandas as pd

from cmr_assets.labelling.annotation_ingest import latest_answer_per_task
from cmr_assets.labels.aggregation import aggregate_ranking, aggregate_single
from cmr_assets.labels.monotone import apply_monotone

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


def labels_at_budget(strategy: str, raw: pd.DataFrame, tasks_single: pd.DataFrame,
                     slices: pd.DataFrame) -> pd.DataFrame:
    """The strategy's labels from `raw` (already cut at the budget); empty when nothing was labelled."""
    if raw.empty:
        return pd.DataFrame(columns=["slice_id", "label", "artefact_excluded"])
    if strategy == "single":
        return apply_monotone(aggregate_single(latest_answer_per_task(raw), tasks_single), slices)
    if strategy == "ranking":
        return apply_monotone(aggregate_ranking(latest_answer_per_task(raw), slices).labels, slices)
    raise ValueError(f"strategy: expected 'ranking' or 'single', got {strategy!r}")
