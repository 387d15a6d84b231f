"""Campaigns cut at a budget of expert-hours."""

import pandas as pd
import pytest

from cmr_assets.evaluation.learning_curves import labels_at_budget, within_hours


def _raw(minutes: list[int], annotator: str) -> pd.DataFrame:
    start = pd.Timestamp("2026-01-05T09:00:00Z")
    ends = start + pd.to_timedelta(pd.Series(minutes).cumsum(), unit="min")
    return pd.DataFrame({"annotator_id": annotator, "started_at": ends - pd.to_timedelta(minutes, unit="min"),
                         "submitted_at": ends, "task_id": [f"{annotator}{i}" for i in range(len(minutes))]})


def test_each_expert_keeps_their_first_records_within_the_budget():
    raw = pd.concat([_raw([20, 20, 20, 20], "a"), _raw([50, 50], "b")], ignore_index=True).sample(frac=1,
                                                                                                  random_state=0)
    cut = within_hours(raw, 1.0)
    assert sorted(cut["task_id"]) == ["a0", "a1", "a2", "b0"]
    assert within_hours(raw, 0.0).empty and len(within_hours(raw, 10.0)) == len(raw)
    with pytest.raises(ValueError, match="hours"):
        within_hours(raw, -1.0)


def test_an_empty_budget_gives_an_empty_labels_table_and_unknown_strategies_are_refused():
    empty = _raw([], "a")
    assert labels_at_budget("single", empty, pd.DataFrame(), pd.DataFrame()).empty
    with pytest.raises(ValueError, match="strategy"):
        labels_at_budget("pairs", _raw([5], "a"), pd.DataFrame(), pd.DataFrame())
