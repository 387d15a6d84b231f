"""A labels table in figures: class mix, its plausibility bounds, counts for the label assets."""

from __future__ import annotations

import pandas as pd

from cmr_assets.labels.summary import (
    CLASS_MIX_BOUNDS,
    CLASS_MIX_BOUNDS_TEXT,
    class_mix,
    class_mix_is_plausible,
    summarise_labels,
)


def test_summary_counts_labelled_excluded_and_monotone_changes() -> None:
    labels = pd.DataFrame({"label": ["too_basal", "lv", "lv", None, "too_apical"],
                           "label_monotone": ["too_basal", "lv", "too_apical", None, "too_apical"],
                           "artefact_excluded": [False, False, False, True, False]})
    summary = summarise_labels(labels)
    assert (summary.slices, summary.labelled, summary.artefact_excluded, summary.changed_by_monotone_step) == \
        (5, 4, 1, 1)
    assert summary.class_mix == {"too_basal": 0.25, "lv": 0.5, "too_apical": 0.25}


def test_class_mix_bounds() -> None:
    assert class_mix(pd.DataFrame({"label": pd.Series([], dtype=object)})) == \
        {"too_basal": 0.0, "lv": 0.0, "too_apical": 0.0}
    assert class_mix_is_plausible({"too_basal": 0.15, "lv": 0.7, "too_apical": 0.15})
    assert not class_mix_is_plausible({"too_basal": 0.0, "lv": 1.0, "too_apical": 0.0})
    low, high = CLASS_MIX_BOUNDS["lv"]
    assert class_mix_is_plausible({"too_basal": 0.02, "lv": low, "too_apical": 0.4})  # inclusive
    assert not class_mix_is_plausible({"too_basal": 0.02, "lv": high + 0.01, "too_apical": 0.02})
    assert CLASS_MIX_BOUNDS_TEXT == "too_basal 2-40%, lv 30-95%, too_apical 2-40%"
