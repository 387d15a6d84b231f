import pandas as pd

from cmr_assets.labelling.annotation_ingest import latest_answer_per_task


def test_latest_answer_supersedes_an_undone_one():
    t = pd.Timestamp("2026-01-01T10:00:00Z")
    raw = pd.DataFrame({
        "annotator_id": ["a", "a", "b"], "task_id": ["s-1", "s-1", "s-1"],
        "label": ["lv", None, "too_basal"], "artefact": [False, True, False],
        "submitted_at": [t, t + pd.Timedelta(seconds=30), t], "source_file": ["f1", "f2", "f3"], "line": [1, 1, 1],
    })
    latest = latest_answer_per_task(raw)
    assert len(latest) == 2
    mine = latest[latest["annotator_id"] == "a"].iloc[0]
    assert bool(mine["artefact"]) and pd.isna(mine["label"])


def test_a_batch_answered_again_after_undo_supersedes_the_first_ranking():
    t = pd.Timestamp("2026-01-01T10:00:00Z")
    raw = pd.DataFrame({
        "submission_id": ["x1", "x2", "y1"], "annotator_id": ["a", "a", "b"], "batch_id": ["r-1", "r-1", "r-1"],
        "divider_a": [2, 3, 2], "submitted_at": [t + pd.Timedelta(seconds=40), t + pd.Timedelta(seconds=90), t],
        "source_file": ["f2", "f1", "f3"], "line": [1, 1, 1],
    })
    latest = latest_answer_per_task(raw)
    assert sorted(latest["submission_id"]) == ["x2", "y1"]
