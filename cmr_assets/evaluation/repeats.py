"""The strategy comparison repeated: intervals that cover both test sampling and training chance.

One training run per strategy on one split says little: a fresh clone and three demo runs gave
McNemar p from 0.0025 to 0.79. A *repeat* draws a new scan-level split and a new training seed and
trains both strategies on it; within a repeat both models are scored on the same test images, so
each repeat is a paired comparison. Across repeats we report the mean and a two-stage bootstrap
interval: draw repeats with replacement, then within each drawn repeat draw its test scans with
replacement (slices of one scan are correlated, so scans are the unit), and average the metric over
the drawn repeats. The first stage carries split and seed variation, the second test sampling.

Public API:
- `PREDICTION_COLUMNS`: one row per (repeat, strategy, test slice) with the class probabilities.
- `repeat_split(scan_class_mix, group_of_scan, fractions, seed) -> DataFrame(scan_id, split)`: a
  fresh split of all labelled scans for one repeat, whole patient groups on one side.
- `predictions_frame(repeat, strategy, test_rows, proba) -> DataFrame[PREDICTION_COLUMNS]`
- `summarise_repeats(predictions, n_boot=1000, seed=0, confidence=0.95) -> dict`: per strategy
  mean and interval of accuracy, macro-F1 and ROC AUC; mean paired accuracy difference (ranking -
  single) and its interval; each repeat's accuracies and exact McNemar p.
- `labels_version(labels) -> str`; `load_stored_repeats(reports_dir, labels) -> (predictions, n_stale)`:
  the stored repeats (`REPEATS_FILE`) trained on today's labels, and how many were dropped as stale.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cmr_assets.domain import N_CLASSES, STRATEGIES
from cmr_assets.evaluation.metrics import classification_metrics, mcnemar_exact
from cmr_assets.training.dataset import PROBABILITY_COLUMNS, frame_hash
from cmr_assets.training.split import split_new_scans_by_group

STRATEGY_A, STRATEGY_B = "ranking", "single"  # the difference is a - b, as in `paired_comparison`
REPEATS_FILE = "strategy_repeats.parquet"  # under reports/
PREDICTION_COLUMNS = ["repeat", "strategy", "slice_id", "scan_id", "target", *PROBABILITY_COLUMNS]


def repeat_split(scan_class_mix: pd.DataFrame, group_of_scan: pd.Series, fractions: Sequence[float],
                 seed: int) -> pd.DataFrame:
    """A new stratified split of every scan in `scan_class_mix` (no earlier assignment is kept)."""
    return split_new_scans_by_group(scan_class_mix, group_of_scan, pd.DataFrame(columns=["scan_id", "split"]),
                                    fractions, seed)


def predictions_frame(repeat: int, strategy: str, test_rows: pd.DataFrame, proba: np.ndarray) -> pd.DataFrame:
    """One repeat's test predictions of one strategy as rows of `PREDICTION_COLUMNS`."""
    if proba.shape != (len(test_rows), N_CLASSES):
        raise ValueError(f"proba: expected shape ({len(test_rows)}, {N_CLASSES}), got {proba.shape}")
    frame = test_rows[["slice_id", "scan_id", "target"]].reset_index(drop=True).assign(repeat=repeat,
                                                                                      strategy=strategy)
    frame[PROBABILITY_COLUMNS] = proba
    return frame[PREDICTION_COLUMNS]


def _interval(draws: np.ndarray, confidence: float) -> list[float] | None:
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return None
    tail = (1.0 - confidence) / 2.0
    return [float(v) for v in np.quantile(finite, [tail, 1.0 - tail])]


def _macro_f1(confusions: np.ndarray) -> np.ndarray:
    """Macro F1 of (D, K, K) confusion counts over the classes present in truth or prediction."""
    diagonal = np.diagonal(confusions, axis1=1, axis2=2)
    totals = confusions.sum(axis=2) + confusions.sum(axis=1)
    present = totals > 0
    f1 = np.divide(2 * diagonal, totals, out=np.zeros_like(diagonal, dtype=float), where=present)
    return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _macro_auc(proba: np.ndarray, target: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Macro one-vs-rest ROC AUC under (D, N) image weights (tied scores count one half); NaN for a
    draw where some class lacks positives or negatives."""
    aucs = []
    for k in range(N_CLASSES):
        order = np.argsort(proba[:, k], kind="stable")
        scores, positive = proba[order, k], target[order] == k
        starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])
        w = weights[:, order]
        pos = np.add.reduceat(w * positive, starts, axis=1)
        neg = np.add.reduceat(w * ~positive, starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        pairs = pos.sum(axis=1) * neg.sum(axis=1)
        wins = (pos * (below + 0.5 * neg)).sum(axis=1)
        aucs.append(np.divide(wins, pairs, out=np.full(len(w), np.nan), where=pairs > 0))
    return np.mean(aucs, axis=0)


def _scan_resampled_metrics(rows: pd.DataFrame, n_draws: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1 and ROC AUC of each strategy, and the paired accuracy difference, on
    `n_draws` resamples of one repeat's test scans."""
    wide = rows.pivot_table(index=["slice_id", "scan_id", "target"], columns="strategy",
                            values=PROBABILITY_COLUMNS).sort_index()
    keys = wide.index.to_frame(index=False)
    _, scan_index = np.unique(keys["scan_id"].to_numpy(), return_inverse=True)
    n_scans = int(scan_index.max()) + 1
    scan_weights = np.stack([np.bincount(rng.integers(0, n_scans, n_scans), minlength=n_scans)
                             for _ in range(n_draws)]).astype(float)
    image_weights = scan_weights[:, scan_index]
    target = keys["target"].to_numpy()
    out: dict[str, np.ndarray] = {}
    correct = {}
    for strategy in (STRATEGY_A, STRATEGY_B):
        proba = wide.xs(strategy, axis=1, level="strategy")[PROBABILITY_COLUMNS].to_numpy()
        predicted = proba.argmax(axis=1)
        correct[strategy] = (predicted == target).astype(float)
        cells = np.zeros((n_scans, N_CLASSES * N_CLASSES))
        np.add.at(cells, (scan_index, target * N_CLASSES + predicted), 1)
        confusions = (scan_weights @ cells).reshape(n_draws, N_CLASSES, N_CLASSES)
        out[f"{strategy}_accuracy"] = image_weights @ correct[strategy] / image_weights.sum(axis=1)
        out[f"{strategy}_macro_f1"] = _macro_f1(confusions)
        out[f"{strategy}_roc_auc"] = _macro_auc(proba, target, image_weights)
    out["accuracy_diff"] = out[f"{STRATEGY_A}_accuracy"] - out[f"{STRATEGY_B}_accuracy"]
    return out


def _per_repeat(rows: pd.DataFrame) -> dict[str, Any]:
    """Point metrics of both strategies on one repeat's full test set, and their McNemar p."""
    block: dict[str, Any] = {"n_test_images": 0, "n_test_scans": int(rows["scan_id"].nunique())}
    predicted = {}
    for strategy in (STRATEGY_A, STRATEGY_B):
        own = rows[rows["strategy"] == strategy].sort_values("slice_id")
        metrics = classification_metrics(own["target"].to_numpy(), own[PROBABILITY_COLUMNS].to_numpy())
        block["n_test_images"] = metrics["n"]
        block[strategy] = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
                           "roc_auc": metrics["roc_auc"]}
        predicted[strategy] = (own["target"].to_numpy(), own[PROBABILITY_COLUMNS].to_numpy().argmax(axis=1))
    truth = predicted[STRATEGY_A][0]
    block["accuracy_diff"] = block[STRATEGY_A]["accuracy"] - block[STRATEGY_B]["accuracy"]
    block["mcnemar_p"] = mcnemar_exact(truth, predicted[STRATEGY_A][1], predicted[STRATEGY_B][1])["p_value"]
    return block


def _check_paired(predictions: pd.DataFrame) -> None:
    missing = {STRATEGY_A, STRATEGY_B} - set(predictions["strategy"])
    if missing:
        raise ValueError(f"predictions: no rows for strategy/strategies {sorted(missing)}")
    for repeat, rows in predictions.groupby("repeat"):
        sets = [frozenset(rows.loc[rows["strategy"] == s, "slice_id"]) for s in (STRATEGY_A, STRATEGY_B)]
        if sets[0] != sets[1]:
            raise ValueError(f"repeat {repeat}: the strategies were scored on different test images "
                             f"({len(sets[0])} vs {len(sets[1])}); a repeat must be paired")


def summarise_repeats(predictions: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> dict[str, Any]:
    """Means over repeats with two-stage bootstrap intervals (repeats, then test scans); see module doc."""
    if predictions.empty:
        raise ValueError("predictions: no repeat to summarise")
    _check_paired(predictions)
    repeats = sorted(predictions["repeat"].unique())
    per_repeat = [{"repeat": int(r), **_per_repeat(predictions[predictions["repeat"] == r])} for r in repeats]
    rng = np.random.default_rng(seed)
    # within-repeat resamples: one column per (bootstrap draw, slot), so a repeat drawn twice in one
    # bootstrap draw gets two independent scan resamples
    within = [_scan_resampled_metrics(predictions[predictions["repeat"] == r], n_boot * len(repeats), rng)
              for r in repeats]
    chosen = rng.integers(0, len(repeats), size=(n_boot, len(repeats)))
    columns = np.arange(n_boot * len(repeats)).reshape(n_boot, len(repeats))

    def two_stage(name: str) -> np.ndarray:
        values = np.stack([w[name] for w in within])  # (repeats, draws)
        return values[chosen, columns].mean(axis=1)

    strategies: dict[str, dict[str, float | list[float] | None]] = {}
    for strategy in (STRATEGY_A, STRATEGY_B):
        block: dict[str, float | list[float] | None] = {}
        for metric in ("accuracy", "macro_f1", "roc_auc"):
            points = [r[strategy][metric] for r in per_repeat]
            block[f"test_{metric}_mean"] = float(np.mean(points)) if None not in points else None
            block[f"test_{metric}_ci95"] = _interval(two_stage(f"{strategy}_{metric}"), confidence)
        strategies[strategy] = block
    return {
        "repeats": len(repeats),
        "strategies": strategies,
        "accuracy_diff_mean": float(np.mean([r["accuracy_diff"] for r in per_repeat])),
        "accuracy_diff_ci95": _interval(two_stage("accuracy_diff"), confidence),
        "per_repeat": per_repeat,
        "interval": f"{100 * confidence:.0f}% two-stage bootstrap ({n_boot} resamples of repeats, then of "
                    "test scans within each repeat)",
    }


def labels_version(labels: pd.DataFrame) -> str:
    """Content hash of a labels table: stored with each repeat so a report never mixes repeats
    trained on other labels with today's models."""
    return frame_hash(labels.assign(label=labels["label"].fillna("")), ["slice_id", "label"]) if len(labels) \
        else "empty"


def load_stored_repeats(reports_dir: Path, labels: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, int]:
    """Stored repeat predictions whose labels equal today's (both strategies), and how many repeats
    were dropped as stale (trained on other labels)."""
    path = reports_dir / REPEATS_FILE
    if not path.exists():
        return pd.DataFrame(columns=PREDICTION_COLUMNS), 0
    stored = pd.read_parquet(path)
    current = {s: labels_version(labels[s]) for s in STRATEGIES}
    fresh_rows = stored["labels_version"] == stored["strategy"].map(current)
    fresh = fresh_rows.groupby(stored["repeat"]).all()
    keep = stored["repeat"].isin(fresh[fresh].index)
    return stored.loc[keep, PREDICTION_COLUMNS].reset_index(drop=True), int((~fresh).sum())
