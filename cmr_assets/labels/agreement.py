"""Observer agreement of both strategies and label accuracy against a reference (the ``agreement`` table).

Single-image labelling (``single_agreement``), unweighted Cohen's kappa over 3 classes, pooled over
experts:
- intra-observer: each ``intra_repeat`` task's label paired with the same expert's ``primary``
  label of the same slice;
- inter-observer: on every slice labelled by several experts, every pair of different experts
  (each expert's first ``primary``/``inter_repeat`` label of the slice; the pair ordered by
  annotator id).
A vote flagged as artefact, or without a label, is no rating and makes no pair.

Ranking (``ranking_agreement``), Kendall's tau-b between experts:
- ``shared_batches`` when some batch was ranked by several experts: tau between two experts'
  orders of the same 8 images, averaged over all such pairs;
- otherwise ``separate_fits``: one Plackett-Luce fit per expert on that expert's rankings, then tau
  between two experts' scores on the images both have seen, averaged over expert pairs weighted by
  the number of shared images. Each fit carries its own estimation noise, so this understates the
  experts' true agreement.

``label_accuracy`` compares a labels table with the reference, counting only slices the strategy
labelled (label not null, not artefact-excluded) that have a reference label.

Public API:
- ``cohen_kappa(a, b, n_classes=3) -> float``; ``kappa_bootstrap_ci(a, b, groups, ...) -> (low, high) | None``:
  95% interval resampling whole slices (the kappas' ``detail`` carries it as ``ci95``)
- ``single_agreement(raw_single, tasks_single) -> dict``
- ``ranking_agreement(raw_ranking, alpha=0.01) -> dict``
- ``label_accuracy(labels, reference, label_column="label") -> dict``
- ``agreement_table(raw_single, tasks_single, raw_ranking, labels, reference=None) -> DataFrame``
  with columns ``metric, value, n, detail`` (detail a JSON string)
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping
from typing import Any, TypedDict

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from cmr_assets.domain import CLASS_INDEX, CLASS_NAMES, N_CLASSES
from cmr_assets.labels.plackett_luce import fit_plackett_luce

AGREEMENT_COLUMNS = ("metric", "value", "n", "detail")


def cohen_kappa(a: np.ndarray, b: np.ndarray, n_classes: int = N_CLASSES) -> float:
    """Unweighted Cohen's kappa of two aligned ratings (class indices); NaN without pairs."""
    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    table = np.zeros((n_classes, n_classes))
    np.add.at(table, (a, b), 1)
    return kappa_from_table(table)


def kappa_from_table(table: np.ndarray) -> float:
    """Cohen's kappa of a square contingency table of counts (rows: one rater, columns: the other)."""
    total = float(np.sum(table))
    if total == 0:
        return float("nan")
    table = np.asarray(table, dtype=float) / total
    observed = np.trace(table)
    expected = float(table.sum(axis=1) @ table.sum(axis=0))
    if expected == 1.0:
        return 1.0 if observed == 1.0 else float("nan")
    return float((observed - expected) / (1 - expected))


def kappa_bootstrap_ci(a: np.ndarray, b: np.ndarray, groups: np.ndarray, n_boot: int = 2000, seed: int = 0,
                       confidence: float = 0.95, n_classes: int = N_CLASSES) -> tuple[float, float] | None:
    """Percentile bootstrap interval of Cohen's kappa, resampling whole `groups` (slices).

    Pairs that share a slice share its ambiguity, so slices (not pairs) are the independent units.
    None when there are fewer than two groups (no interval can be drawn).
    """
    a, b = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    _, group_index = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(group_index.max()) + 1 if group_index.size else 0
    if n_groups < 2:
        return None
    per_group = np.zeros((n_groups, n_classes * n_classes))
    np.add.at(per_group, (group_index, a * n_classes + b), 1)
    rng = np.random.default_rng(seed)
    weights = np.stack([np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups)
                        for _ in range(n_boot)])
    tables = (weights @ per_group).reshape(n_boot, n_classes, n_classes)
    kappas = np.array([kappa_from_table(t) for t in tables])
    kappas = kappas[np.isfinite(kappas)]
    if kappas.size == 0:
        return None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(kappas, [tail, 1.0 - tail])
    return float(low), float(high)


def _ratings(raw_single: pd.DataFrame, tasks_single: pd.DataFrame) -> pd.DataFrame:
    """Usable single ratings with their task kind: one per task (earliest submission)."""
    rated = raw_single.loc[~raw_single["artefact"].astype(bool) & raw_single["label"].isin(CLASS_NAMES)]
    rated = rated.sort_values("submitted_at").drop_duplicates("task_id", keep="first")
    kinds = tasks_single.set_index("task_id")["kind"]
    return rated.assign(kind=rated["task_id"].map(kinds), rating=rated["label"].map(CLASS_INDEX))


def single_agreement(raw_single: pd.DataFrame, tasks_single: pd.DataFrame) -> dict[str, Any]:
    """Intra- and inter-observer Cohen's kappa of single-image labelling, with pair counts."""
    ratings = _ratings(raw_single, tasks_single)
    primary = ratings.loc[ratings["kind"] == "primary"].drop_duplicates(["annotator_id", "slice_id"])
    repeats = ratings.loc[ratings["kind"] == "intra_repeat"]
    intra = repeats.merge(primary, on=["annotator_id", "slice_id"], suffixes=("_repeat", "_primary"))

    firsts = ratings.loc[ratings["kind"] != "intra_repeat"].drop_duplicates(["annotator_id", "slice_id"])
    firsts = firsts.sort_values(["slice_id", "annotator_id"])
    pairs = firsts.merge(firsts, on="slice_id", suffixes=("_a", "_b"))
    pairs = pairs.loc[pairs["annotator_id_a"] < pairs["annotator_id_b"]]
    per_pair = {
        f"{a}|{b}": {"kappa": cohen_kappa(group["rating_a"], group["rating_b"]), "n": len(group)}
        for (a, b), group in pairs.groupby(["annotator_id_a", "annotator_id_b"])
    }
    return {
        "kappa_intra": cohen_kappa(intra["rating_repeat"], intra["rating_primary"]),
        "kappa_intra_ci95": kappa_bootstrap_ci(intra["rating_repeat"], intra["rating_primary"], intra["slice_id"]),
        "n_intra_pairs": len(intra),
        "kappa_inter": cohen_kappa(pairs["rating_a"], pairs["rating_b"]),
        "kappa_inter_ci95": kappa_bootstrap_ci(pairs["rating_a"], pairs["rating_b"], pairs["slice_id"]),
        "n_inter_pairs": len(pairs),
        "inter_per_expert_pair": per_pair,
    }


def _tau_on_shared_batches(raw_ranking: pd.DataFrame) -> list[float]:
    """Kendall's tau of every pair of different experts' orders of one batch."""
    taus = []
    first_per_expert = raw_ranking.drop_duplicates(["batch_id", "annotator_id"])
    for _, batch in first_per_expert.groupby("batch_id"):
        for (_, one), (_, other) in itertools.combinations(batch.iterrows(), 2):
            position = {slice_id: p for p, slice_id in enumerate(other["order"])}
            taus.append(float(kendalltau(np.arange(len(one["order"])),
                                         [position[s] for s in one["order"]]).statistic))
    return taus


class _PairTau(TypedDict):
    tau: float
    n_shared_images: int


def _tau_of_separate_fits(raw_ranking: pd.DataFrame, alpha: float) -> tuple[dict[str, _PairTau], int]:
    """Per expert pair: tau between separately fitted scores on the images both have seen."""
    scores = {}
    for annotator, own in raw_ranking.groupby("annotator_id"):
        orders = np.array(own["order"].map(list).tolist(), dtype=object)
        items = pd.Index(pd.unique(orders.ravel()))
        fit = fit_plackett_luce(items.get_indexer(orders.ravel()).reshape(orders.shape), len(items), alpha)
        scores[annotator] = pd.Series(fit.scores, index=items)
    per_pair: dict[str, _PairTau] = {}
    for a, b in itertools.combinations(sorted(scores), 2):
        shared = scores[a].index.intersection(scores[b].index)
        if len(shared) >= 2:
            tau = kendalltau(scores[a][shared], scores[b][shared]).statistic
            per_pair[f"{a}|{b}"] = {"tau": float(tau), "n_shared_images": len(shared)}
    return per_pair, sum(pair["n_shared_images"] for pair in per_pair.values())


def ranking_agreement(raw_ranking: pd.DataFrame, alpha: float = 0.01) -> dict[str, Any]:
    """Kendall's tau between experts' rankings (shared batches, else separately fitted scores)."""
    shared = raw_ranking.groupby("batch_id")["annotator_id"].transform("nunique") > 1
    if shared.any():
        taus = _tau_on_shared_batches(raw_ranking.loc[shared])
        return {"method": "shared_batches", "kendall_tau": float(np.mean(taus)), "n": len(taus),
                "detail": {"n_batch_pairs": len(taus)}}
    per_pair, n_shared = _tau_of_separate_fits(raw_ranking, alpha)
    if not per_pair:
        return {"method": "separate_fits", "kendall_tau": float("nan"), "n": 0, "detail": {}}
    weights = np.array([pair["n_shared_images"] for pair in per_pair.values()])
    pair_taus = np.array([pair["tau"] for pair in per_pair.values()])
    return {"method": "separate_fits", "kendall_tau": float(pair_taus @ weights / weights.sum()),
            "n": n_shared, "detail": per_pair}


def label_accuracy(labels: pd.DataFrame, reference: pd.DataFrame, label_column: str = "label") -> dict[str, Any]:
    """Accuracy, Cohen's kappa and 3x3 confusion matrix (rows = reference class) of labelled, non-excluded slices."""
    truth = reference.dropna(subset=["label"]).set_index("slice_id")["label"]
    counted = labels.loc[labels[label_column].notna() & ~labels["artefact_excluded"].astype(bool)]
    counted = counted.assign(truth=counted["slice_id"].map(truth)).dropna(subset=["truth"])
    confusion = np.zeros((N_CLASSES, N_CLASSES), dtype=int)
    np.add.at(confusion, (counted["truth"].map(CLASS_INDEX).to_numpy(int),
                          counted[label_column].map(CLASS_INDEX).to_numpy(int)), 1)
    n = int(confusion.sum())
    return {
        "accuracy": float(np.trace(confusion) / n) if n else float("nan"),
        "kappa": kappa_from_table(confusion),
        "n": n,
        "confusion": confusion.tolist(),
        "classes": list(CLASS_NAMES),
    }


def agreement_table(
    raw_single: pd.DataFrame,
    tasks_single: pd.DataFrame,
    raw_ranking: pd.DataFrame,
    labels: Mapping[str, pd.DataFrame],
    reference: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """All agreement metrics as rows (metric, value, n, detail JSON) for the DuckDB table.

    ``labels`` maps strategy name ('single', 'ranking') to its labels table; accuracy rows
    (``label_accuracy_<strategy>`` and, with a ``label_monotone`` column,
    ``label_accuracy_<strategy>_monotone``) appear only when ``reference`` is given.
    """
    single = single_agreement(raw_single, tasks_single)
    ranking = ranking_agreement(raw_ranking)
    rows = [
        ("kappa_intra", single["kappa_intra"], single["n_intra_pairs"],
         {"pairs": "intra_repeat vs primary", "ci95": single["kappa_intra_ci95"]}),
        ("kappa_inter", single["kappa_inter"], single["n_inter_pairs"],
         {"per_expert_pair": single["inter_per_expert_pair"], "ci95": single["kappa_inter_ci95"]}),
        ("kendall_tau_ranking", ranking["kendall_tau"], ranking["n"],
         {"method": ranking["method"], **ranking["detail"]}),
    ]
    if reference is not None:
        for strategy, table in labels.items():
            for column, suffix in (("label", ""), ("label_monotone", "_monotone")):
                metric = f"label_accuracy_{strategy}{suffix}"
                if column in table.columns:
                    result = label_accuracy(table, reference, column)
                    rows.append((metric, result["accuracy"], result["n"],
                                 {"confusion": result["confusion"], "classes": result["classes"]}))
    records = [(metric, float(value), int(n), json.dumps(detail, sort_keys=True))
               for metric, value, n, detail in rows]
    return pd.DataFrame(records, columns=list(AGREEMENT_COLUMNS))
