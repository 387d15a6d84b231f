"""The repeated comparison: paired rows, means, two-stage intervals, weighted AUC."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cmr_assets.evaluation.repeats import _macro_auc, predictions_frame, repeat_split, summarise_repeats


def _rows(n: int, scans: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame({"slice_id": [f"s{i:03d}" for i in range(n)], "scan_id": [f"c{i % scans}" for i in range(n)],
                         "target": rng.integers(0, 3, n)})


def _proba(target: np.ndarray, skill: float, rng: np.random.Generator) -> np.ndarray:
    proba = rng.dirichlet([1.0, 1.0, 1.0], target.size)
    proba[np.arange(target.size), target] += skill
    return proba / proba.sum(axis=1, keepdims=True)


def _predictions(repeats: int, skills: dict[str, float]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = _rows(240, 24)
    return pd.concat([predictions_frame(r, s, rows, _proba(rows["target"].to_numpy(), skill, rng))
                      for r in range(repeats) for s, skill in skills.items()], ignore_index=True)


def test_weighted_auc_equals_sklearn_with_unit_weights_and_ties():
    rng = np.random.default_rng(3)
    target = rng.integers(0, 3, 200)
    proba = _proba(target, 0.4, rng)
    proba[:20] = proba[20]  # tied scores count one half, as in sklearn
    expected = np.mean([roc_auc_score(target == k, proba[:, k]) for k in range(3)])
    assert _macro_auc(proba, target, np.ones((1, 200)))[0] == pytest.approx(expected)


def test_better_strategy_has_a_positive_difference_whose_interval_excludes_zero():
    summary = summarise_repeats(_predictions(3, {"ranking": 1.5, "single": 0.2}))
    assert summary["repeats"] == 3 and len(summary["per_repeat"]) == 3
    low, high = summary["accuracy_diff_ci95"]
    assert 0 < low <= summary["accuracy_diff_mean"] <= high
    for strategy in ("ranking", "single"):
        block = summary["strategies"][strategy]
        for metric in ("accuracy", "macro_f1", "roc_auc"):
            low, high = block[f"test_{metric}_ci95"]
            assert low <= block[f"test_{metric}_mean"] <= high
    assert all(0 <= r["mcnemar_p"] <= 1 for r in summary["per_repeat"])


def test_equal_strategies_have_an_interval_around_zero_that_widens_with_fewer_test_scans():
    summary = summarise_repeats(_predictions(2, {"ranking": 0.6, "single": 0.6}))
    low, high = summary["accuracy_diff_ci95"]
    assert low < 0 < high
    one_scan_fewer = _predictions(2, {"ranking": 0.6, "single": 0.6})
    few = one_scan_fewer[one_scan_fewer["scan_id"].isin(["c0", "c1", "c2", "c3"])]
    few_low, few_high = summarise_repeats(few)["accuracy_diff_ci95"]
    assert few_high - few_low > high - low


def test_unpaired_repeat_is_refused():
    predictions = _predictions(1, {"ranking": 0.5, "single": 0.5})
    unpaired = predictions.drop(index=predictions.index[predictions["strategy"] == "single"][:3])
    with pytest.raises(ValueError, match="repeat 0: the strategies were scored on different test images"):
        summarise_repeats(unpaired)
    with pytest.raises(ValueError, match="no rows for strategy"):
        summarise_repeats(predictions[predictions["strategy"] == "ranking"])


def test_repeat_split_is_new_per_seed_and_keeps_a_study_together():
    mix = pd.DataFrame({"scan_id": [f"c{i:02d}" for i in range(30)], "too_basal": 2, "lv": 8, "too_apical": 2})
    study = pd.Series({"c00": "p", "c01": "p"})
    first, second = (repeat_split(mix, study, (0.6, 0.2, 0.2), seed) for seed in (1, 2))
    assert not first["split"].equals(second["split"])
    for split in (first, second):
        assert split.set_index("scan_id").loc[["c00", "c01"], "split"].nunique() == 1
        assert set(split["split"]) == {"train", "val", "test"}
