"""Ranking aggregation: our sparse Plackett-Luce fit against choix's `ilsr_rankings`.

Why: choix is the plain reference for rank aggregation. It builds a dense n x n Markov chain, so
it is fine at the paper's size (~3,300 images) and cannot run at biobank size; our fit keeps only
the pairs that shared a batch. Both fit the same simulated rankings of 8
(`benchmark_against_choix`, choix with its usual nominal alpha 0.01). Above
`CHOIX_MAX_ITEMS` choix is not run: the dense float64 matrix it would allocate is stated instead.
The aim at 100,000 images is an absolute one (our fit <= 60 s): there is no baseline there.

Public API:
- `simulate_rankings(true_scores, n_batches, seed, batch_size=8) -> rankings`: Plackett-Luce draws
  (also what the tests fit).
- `benchmark_against_choix(n_items, n_batches, seed, choix_max_items=10_000) -> dict`
- `dense_chain_gib(n_items) -> float`: memory of choix's n x n float64 chain.
- `bench_ranking(sizes, choix_max_items=CHOIX_MAX_ITEMS, seed=0) -> dict`; `sizes` are
  (n_items, n_batches) pairs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from benchmarks.common import comparison
from cmr_assets.domain import BATCH_SIZE
from cmr_assets.labels.plackett_luce import fit_plackett_luce

CHOIX_MAX_ITEMS = 10_000
BIOBANK_AIM_SECONDS = 60.0


def balanced_batches(n_items: int, n_batches: int, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """Batches drawn from a stream of random permutations, so every item is seen about equally."""
    n_views = n_batches * batch_size
    n_perms = -(-n_views // n_items)
    stream = np.concatenate([rng.permutation(n_items) for _ in range(n_perms)])[:n_views]
    batches = stream.reshape(n_batches, batch_size)
    for batch in batches:  # repeats only where a batch straddles two permutations
        _, first = np.unique(batch, return_index=True)
        if first.size < batch_size:
            repeated = np.setdiff1d(np.arange(batch_size), first)
            others = np.setdiff1d(np.arange(n_items), batch)
            batch[repeated] = rng.choice(others, size=repeated.size, replace=False)
    return batches


def simulate_rankings(
    true_scores: np.ndarray, n_batches: int, seed: int, batch_size: int = BATCH_SIZE
) -> np.ndarray:
    """Plackett-Luce rankings (most basal first) of balanced random batches of ``true_scores``.

    Scores increase toward the apex; sorting ``-score + Gumbel noise`` descending is an exact
    Plackett-Luce draw with log strengths ``-score``.
    """
    rng = np.random.default_rng(seed)
    batches = balanced_batches(len(true_scores), n_batches, batch_size, rng)
    perceived = -true_scores[batches] + rng.gumbel(size=batches.shape)
    return np.take_along_axis(batches, np.argsort(-perceived, axis=1), axis=1)


def benchmark_against_choix(
    n_items: int,
    n_batches: int,
    seed: int,
    alpha: float = 0.01,
    choix_alpha: float | None = None,
    choix_max_items: int = 10_000,
) -> dict:
    """Time our fit and choix's ``ilsr_rankings`` on the same simulated rankings of 8.

    ``choix_alpha`` defaults to the same nominal ``alpha`` (choix's usual configuration, ~n times
    stronger than ours); ``alpha / n_items`` matches our prior but makes choix converge ~15x slower.
    choix is skipped above ``choix_max_items`` (it allocates a dense n x n chain: ~196 s at
    20,000 items and a 74.5 GiB allocation at 100,000). Spearman correlations are against the
    planted scores and between the two fits (choix's parameters are negated: they grow toward
    the base).
    """
    import choix  # imported here: only the benchmark needs it

    choix_alpha = alpha if choix_alpha is None else choix_alpha

    rng = np.random.default_rng(seed)
    true_scores = rng.normal(scale=2.0, size=n_items)
    rankings = simulate_rankings(true_scores, n_batches, seed + 1)
    ours = fit_plackett_luce(rankings, n_items, alpha=alpha)
    result: dict = {
        "n_items": n_items,
        "n_batches": n_batches,
        "alpha": alpha,
        "choix_alpha": choix_alpha,
        "ours_seconds": ours.seconds,
        "ours_n_iter": ours.n_iter,
        "ours_converged": ours.converged,
        "ours_spearman_vs_truth": float(spearmanr(ours.scores, true_scores).statistic),
        "choix_seconds": None,
        "choix_spearman_vs_truth": None,
        "spearman_ours_vs_choix": None,
        "choix_skipped_reason": None,
    }
    if n_items > choix_max_items:
        result["choix_skipped_reason"] = f"n_items {n_items} > {choix_max_items}: dense n x n chain"
        return result
    started = time.perf_counter()
    choix_scores = -choix.ilsr_rankings(n_items, rankings.tolist(), alpha=choix_alpha, tol=1e-6)
    result["choix_seconds"] = time.perf_counter() - started
    result["choix_spearman_vs_truth"] = float(spearmanr(choix_scores, true_scores).statistic)
    result["spearman_ours_vs_choix"] = float(spearmanr(ours.scores, choix_scores).statistic)
    return result


def dense_chain_gib(n_items: int) -> float:
    """Bytes of one dense n x n float64 matrix (what ILSR allocates), in GiB."""
    return n_items * n_items * 8 / 2**30


def bench_ranking(sizes: Sequence[tuple[int, int]], choix_max_items: int = CHOIX_MAX_ITEMS,
                  seed: int = 0) -> dict[str, Any]:
    """Fit both on each size; a comparison where choix ran, an absolute aim where it cannot."""
    runs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for n_items, n_batches in sizes:
        result = benchmark_against_choix(n_items, n_batches, seed, choix_max_items=choix_max_items)
        result["choix_dense_matrix_gib"] = dense_chain_gib(n_items)
        runs.append(result)
        label = f"ranking fit, {n_items:,} images / {n_batches:,} batches"
        if result["choix_seconds"] is not None:
            rows.append(comparison(
                label, "s", result["ours_seconds"], result["choix_seconds"], False, "faster than choix", 1.0,
                f"Spearman vs truth: ours {result['ours_spearman_vs_truth']:.3f}, "
                f"choix {result['choix_spearman_vs_truth']:.3f}; ours vs choix "
                f"{result['spearman_ours_vs_choix']:.3f}"))
        else:
            rows.append({
                "name": label, "unit": "s", "ours": result["ours_seconds"], "baseline": None, "ratio": None,
                "higher_is_better": False, "aim": f"ours <= {BIOBANK_AIM_SECONDS:.0f} s (choix cannot run)",
                "aim_met": result["ours_seconds"] <= BIOBANK_AIM_SECONDS,
                "detail": f"choix not run: ILSR needs a dense {n_items:,} x {n_items:,} float64 matrix "
                          f"({dense_chain_gib(n_items):.1f} GiB); ours Spearman vs truth "
                          f"{result['ours_spearman_vs_truth']:.3f}, {result['ours_n_iter']} Newton steps"})
    return {"runs": runs, "comparisons": rows}
