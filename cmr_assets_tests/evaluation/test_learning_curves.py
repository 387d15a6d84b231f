"""Campaigns cut at a budget of expert-hours."""

from pathlib import Path

import pandas as pd
import pytest

from cmr_assets.evaluation.learning_curves import curve_point, labels_at_budget, within_hours


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


def test_a_budget_too_small_for_ranking_cut_points_gives_a_noted_row_not_a_failure():
    """Within the budget no view implies `too_apical`: no ranking labels there, the curve goes on."""
    slice_ids = [f"s-{k:02d}" for k in range(8)]
    start = pd.Timestamp("2026-01-05T09:00:00Z")
    raw = pd.DataFrame({"annotator_id": "a", "batch_id": ["b1", "b2"], "order": [slice_ids, slice_ids[::-1]],
                        "divider_a": 3, "divider_b": 8, "artefact_ids": [[], []],
                        "started_at": [start, start + pd.Timedelta(minutes=1)],
                        "submitted_at": [start + pd.Timedelta(minutes=1), start + pd.Timedelta(minutes=2)],
                        "source_file": "f.jsonl", "line": [1, 2]})
    inputs = {"slices": pd.DataFrame({"slice_id": slice_ids, "scan_id": "s", "slice_from_base": range(8)}),
              "reference": pd.DataFrame({"slice_id": slice_ids, "label": "lv"}), "tasks_single": pd.DataFrame()}
    row = curve_point("ranking", 1.0, raw, inputs, Path("."), None, None, pd.DataFrame(), None)
    assert row["images_labelled"] == 0 and row["note"].startswith("no labels: cannot place cut points")
    assert row["expert_hours"] == pytest.approx(2 / 60)
