"""Test-set metrics and the paired comparison of the two strategies' models.

Plain numpy/scikit-learn/scipy underneath; every result is a JSON-able dict (floats, ints, lists,
None) so it can go straight into `evaluation.json` and MLflow.

Public API:
- `classification_metrics(y_true, proba, class_names=CLASS_NAMES) -> dict`: accuracy, macro and
  weighted F1, macro one-vs-rest ROC AUC, per-class precision/recall/F1/support/AUC, confusion
  matrix (rows = truth, columns = prediction).
- `mcnemar_exact(y_true, pred_a, pred_b) -> dict`: exact two-sided McNemar test (binomial on the
  discordant pairs), as the paper's paired P value.
- `bootstrap_accuracy_difference(y_true, pred_a, pred_b, n_boot=2000, seed=0, groups=None,
  confidence=0.95) -> dict`: percentile bootstrap interval of accuracy(a) - accuracy(b); with
  `groups` (scan ids) whole scans are resampled.
- `paired_comparison(y_true, pred_a, pred_b, groups=None, n_boot=2000, seed=0) -> dict`: both of
  the above flattened into the report's `comparison` block (`mcnemar_p`, `accuracy_difference`,
  `accuracy_difference_ci_low/high`, ...).

Errors: `ValueError` naming the argument and the reason (shape, range, NaN, probabilities that do
not sum to 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from cmr_assets.domain import CLASS_NAMES


def _labels_array(name: str, values: Any, n_classes: int) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array of class indices, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array.astype(float))) or not np.all(array == np.round(array)):
            raise ValueError(f"{name}: class indices must be integers")
        array = array.astype(np.int64)
    if array.min() < 0 or array.max() >= n_classes:
        raise ValueError(f"{name}: class indices must lie in 0..{n_classes - 1}, "
                         f"got {int(array.min())}..{int(array.max())}")
    return array.astype(np.int64)


def _probabilities_array(proba: Any, n: int, n_classes: int) -> np.ndarray:
    array = np.asarray(proba, dtype=np.float64)
    if array.shape != (n, n_classes):
        raise ValueError(f"proba: expected shape ({n}, {n_classes}), got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("proba: contains NaN or infinite values")
    if not np.allclose(array.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("proba: rows must be class probabilities summing to 1 (apply softmax to logits)")
    return array


def classification_metrics(y_true: Any, proba: Any,
                           class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    """Everything the report needs about one model on one test set, predictions = argmax(proba).

    Macro/weighted F1 average over the classes present in the truth or the predictions
    (scikit-learn's default), so a class nobody has and nobody predicts does not count as F1 0.
    ROC AUC is the macro mean of one-vs-rest AUCs; it is undefined (None, with `roc_auc_note`)
    when a class has no positive or no negative example in `y_true`, rather than silently
    averaging over fewer classes. Per-class AUCs that are defined are still reported.
    """
    n_classes = len(class_names)
    truth = _labels_array("y_true", y_true, n_classes)
    probabilities = _probabilities_array(proba, truth.size, n_classes)
    predicted = probabilities.argmax(axis=1)
    labels = list(range(n_classes))

    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0)
    per_class_auc: list[float | None] = []
    defined_auc: list[float] = []
    undefined: list[str] = []
    for k, name in enumerate(class_names):
        positives = truth == k
        if positives.all() or not positives.any():
            per_class_auc.append(None)
            undefined.append(name)
        else:
            defined_auc.append(float(roc_auc_score(positives, probabilities[:, k])))
            per_class_auc.append(defined_auc[-1])
    if undefined:
        roc_auc = None
        roc_auc_note = (f"ROC AUC undefined: class(es) {', '.join(undefined)} have no positive or no "
                        "negative example in the test set")
    else:
        roc_auc = float(np.mean(defined_auc))  # every class defined here
        roc_auc_note = None

    return {
        "n": int(truth.size),
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(truth, predicted, average="weighted", zero_division=0)),
        "roc_auc": roc_auc,
        "roc_auc_note": roc_auc_note,
        "per_class": {
            name: {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(support[k]),
                "roc_auc": per_class_auc[k],
            }
            for k, name in enumerate(class_names)
        },
        "confusion_matrix": {
            "labels": list(class_names),
            "rows": "truth",
            "columns": "prediction",
            "matrix": confusion_matrix(truth, predicted, labels=labels).tolist(),
        },
    }


def _paired_correctness(y_true: Any, pred_a: Any, pred_b: Any) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(y_true)
    a, b = np.asarray(pred_a), np.asarray(pred_b)
    if truth.ndim != 1 or truth.size == 0 or a.shape != truth.shape or b.shape != truth.shape:
        raise ValueError(f"y_true, pred_a, pred_b: expected equal non-empty 1-D arrays, got shapes "
                         f"{truth.shape}, {a.shape}, {b.shape}")
    return a == truth, b == truth


def mcnemar_exact(y_true: Any, pred_a: Any, pred_b: Any) -> dict[str, Any]:
    """Exact two-sided McNemar test of two models on the same images.

    `b` = images model a gets right and model b wrong, `c` = the reverse; under the null both are
    equally likely, so p = two-sided binomial test of b out of b + c at 0.5. Exact rather than the
    chi-square approximation because the discordant count is small at the paper's test size.
    """
    correct_a, correct_b = _paired_correctness(y_true, pred_a, pred_b)
    b = int(np.sum(correct_a & ~correct_b))
    c = int(np.sum(~correct_a & correct_b))
    p_value = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    return {"b": b, "c": c, "n_discordant": b + c, "n": int(correct_a.size), "p_value": p_value}


def bootstrap_accuracy_difference(y_true: Any, pred_a: Any, pred_b: Any, n_boot: int = 2000,
                                  seed: int = 0, groups: Any = None,
                                  confidence: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap interval of accuracy(a) - accuracy(b) on paired predictions.

    Slices of one scan share anatomy, contrast and artefacts, so their errors are correlated and
    an image-level bootstrap gives too narrow an interval. Pass `groups` (one scan id per image)
    for a cluster bootstrap: whole scans are drawn with replacement and the difference is the
    ratio sum(correct_a - correct_b) / images drawn. Without `groups` images are resampled.
    """
    correct_a, correct_b = _paired_correctness(y_true, pred_a, pred_b)
    if n_boot < 1:
        raise ValueError(f"n_boot: must be at least 1, got {n_boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: must lie in (0, 1), got {confidence}")
    difference = correct_a.astype(np.float64) - correct_b.astype(np.float64)
    unit_sums: np.ndarray
    unit_sizes: np.ndarray
    if groups is None:
        unit_sums, unit_sizes = difference, np.ones_like(difference)
        unit = "image"
    else:
        group_array = np.asarray(groups)
        if group_array.shape != difference.shape:
            raise ValueError(f"groups: expected one group per image ({difference.size}), "
                             f"got shape {group_array.shape}")
        _, inverse = np.unique(group_array, return_inverse=True)
        unit_sums = np.bincount(inverse, weights=difference)
        unit_sizes = np.bincount(inverse).astype(np.float64)
        unit = "scan"
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, unit_sums.size, size=(n_boot, unit_sums.size))
    boot = unit_sums[draws].sum(axis=1) / unit_sizes[draws].sum(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    return {
        "diff": float(difference.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "confidence": confidence,
        "n_boot": int(n_boot),
        "seed": int(seed),
        "resampling_unit": unit,
        "n_units": int(unit_sums.size),
    }


def paired_comparison(y_true: Any, pred_a: Any, pred_b: Any, groups: Any = None,
                      n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """McNemar and bootstrap for model a vs model b, flattened for the report's `comparison` block."""
    mcnemar = mcnemar_exact(y_true, pred_a, pred_b)
    bootstrap = bootstrap_accuracy_difference(y_true, pred_a, pred_b, n_boot=n_boot, seed=seed,
                                              groups=groups)
    return {
        "mcnemar_p": mcnemar["p_value"],
        "mcnemar_b": mcnemar["b"],
        "mcnemar_c": mcnemar["c"],
        "accuracy_difference": bootstrap["diff"],
        "accuracy_difference_ci_low": bootstrap["ci_low"],
        "accuracy_difference_ci_high": bootstrap["ci_high"],
        "bootstrap": {key: bootstrap[key] for key in
                      ("confidence", "n_boot", "seed", "resampling_unit", "n_units")},
    }
