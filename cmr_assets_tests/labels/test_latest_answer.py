import pandas as pd

from cmr_assets.labels.raw_annotations import latest_answer_per_task


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
