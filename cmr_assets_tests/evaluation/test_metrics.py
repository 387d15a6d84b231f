"""Metrics agree with scikit-learn; the paired tests give known answers on planted data."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from cmr_assets.evaluation.metrics import (
    bootstrap_accuracy_difference,
    classification_metrics,
    mcnemar_exact,
    paired_comparison,
)


def _fixed_predictions(n: int = 300, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y_true] += 1.2  # informative but imperfect
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y_true, proba


def test_classification_metrics_agree_with_sklearn():
    y_true, proba = _fixed_predictions()
    y_pred = proba.argmax(axis=1)
    result = classification_metrics(y_true, proba)

    assert result["n"] == 300
    assert result["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert result["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert result["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    expected_auc = roc_auc_score(y_true, proba, multi_class="ovr", average="macro")
    assert result["roc_auc"] == pytest.approx(expected_auc)
    assert result["roc_auc_note"] is None
    assert result["confusion_matrix"]["matrix"] == confusion_matrix(y_true, y_pred).tolist()
    per_f1 = f1_score(y_true, y_pred, average=None)
    for k, name in enumerate(("too_basal", "lv", "too_apical")):
        assert result["per_class"][name]["f1"] == pytest.approx(per_f1[k])
        assert result["per_class"][name]["support"] == int(np.sum(y_true == k))
    assert 0.5 < result["accuracy"] < 1.0


def test_missing_class_makes_auc_undefined_not_an_error():
    y_true, proba = _fixed_predictions()
    keep = y_true != 2
    result = classification_metrics(y_true[keep], proba[keep])
    assert result["roc_auc"] is None
    assert "too_apical" in result["roc_auc_note"]
    assert result["per_class"]["too_apical"]["roc_auc"] is None
    assert result["per_class"]["too_apical"]["support"] == 0
    expected_lv_auc = roc_auc_score(y_true[keep] == 1, proba[keep, 1])
    assert result["per_class"]["lv"]["roc_auc"] == pytest.approx(expected_lv_auc)


@pytest.mark.parametrize(("y_true", "proba", "message"), [
    ([0, 1], [[0.5, 0.5, 0.5], [1, 0, 0]], "summing to 1"),
    ([0, 3], [[1, 0, 0], [1, 0, 0]], "0..2"),
    ([0, 1], [[1, 0, 0]], "shape"),
])
def test_bad_input_is_named(y_true, proba, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(y_true, proba)


def _planted_pairs(b: int, c: int, both_right: int = 50, both_wrong: int = 8):
    """Truth all 0; model a right on the b + both_right block, model b right on the c + both_right block."""
    n = b + c + both_right + both_wrong
    y_true = np.zeros(n, dtype=int)
    pred_a = np.ones(n, dtype=int)
    pred_b = np.ones(n, dtype=int)
    pred_a[:b] = 0
    pred_b[b:b + c] = 0
    pred_a[b + c:b + c + both_right] = 0
    pred_b[b + c:b + c + both_right] = 0
    return y_true, pred_a, pred_b


def test_mcnemar_exact_on_planted_table():
    result = mcnemar_exact(*_planted_pairs(b=10, c=2))
    assert (result["b"], result["c"], result["n_discordant"]) == (10, 2, 12)
    assert result["p_value"] == pytest.approx(158 / 4096)  # 2 * (C(12,10)+C(12,11)+C(12,12)) / 2**12
    assert round(result["p_value"], 4) == 0.0386
    swapped = mcnemar_exact(*_planted_pairs(b=2, c=10))
    assert swapped["p_value"] == pytest.approx(result["p_value"])
    assert mcnemar_exact(*_planted_pairs(b=0, c=0))["p_value"] == 1.0


def test_bootstrap_interval_contains_true_difference():
    rng = np.random.default_rng(11)
    n = 2000
    y_true = np.zeros(n, dtype=int)
    pred_a = np.where(rng.random(n) < 0.85, 0, 1)  # population accuracy 0.85
    pred_b = np.where(rng.random(n) < 0.70, 0, 2)  # population accuracy 0.70
    result = bootstrap_accuracy_difference(y_true, pred_a, pred_b, n_boot=2000, seed=0)
    assert result["ci_low"] < 0.15 < result["ci_high"]
    assert result["ci_low"] < result["diff"] < result["ci_high"]
    assert result["ci_high"] - result["ci_low"] < 0.1
    assert result["resampling_unit"] == "image"
    assert bootstrap_accuracy_difference(y_true, pred_a, pred_b, n_boot=2000, seed=0) == result


def test_cluster_bootstrap_is_wider_when_errors_cluster_by_scan():
    rng = np.random.default_rng(5)
    n_scans, per_scan = 60, 10
    groups = np.repeat(np.arange(n_scans), per_scan)
    y_true = np.zeros(n_scans * per_scan, dtype=int)
    # whole scans are right or wrong together: the effective sample size is the number of scans
    scan_a = rng.random(n_scans) < 0.8
    scan_b = rng.random(n_scans) < 0.6
    pred_a = np.where(scan_a[groups], 0, 1)
    pred_b = np.where(scan_b[groups], 0, 1)
    by_image = bootstrap_accuracy_difference(y_true, pred_a, pred_b, seed=1)
    by_scan = bootstrap_accuracy_difference(y_true, pred_a, pred_b, seed=1, groups=groups)
    assert by_scan["resampling_unit"] == "scan" and by_scan["n_units"] == n_scans
    assert by_scan["diff"] == pytest.approx(by_image["diff"])
    width_image = by_image["ci_high"] - by_image["ci_low"]
    width_scan = by_scan["ci_high"] - by_scan["ci_low"]
    assert width_scan > 2 * width_image


def test_paired_comparison_flattens_both_tests():
    y_true, pred_a, pred_b = _planted_pairs(b=10, c=2)
    result = paired_comparison(y_true, pred_a, pred_b, n_boot=500)
    assert result["mcnemar_p"] == pytest.approx(158 / 4096)
    assert result["accuracy_difference"] == pytest.approx(8 / 70)
    assert result["accuracy_difference_ci_low"] <= result["accuracy_difference"]
    assert result["accuracy_difference"] <= result["accuracy_difference_ci_high"]
    with pytest.raises(ValueError, match="groups"):
        paired_comparison(y_true, pred_a, pred_b, groups=[1, 2, 3])
