"""Ranking aggregation: our sparse Plackett-Luce fit against choix's `ilsr_rankings`.

Why: choix is the plain reference for rank aggregation. It builds a dense n x n Markov chain, so
it is fine at the paper's size (~3,300 images) and cannot run at biobank size; our fit keeps only
the pairs that shared a batch. Both fit the same simulated rankings of 8
(`plackett_luce.benchmark_against_choix`, choix with its usual nominal alpha 0.01). Above
`CHOIX_MAX_ITEMS` choix is not run: the dense float64 matrix it would allocate is stated instead.
The aim at 100,000 images is an absolute one (our fit <= 60 s): there is no baseline there.

Public API:
- `dense_chain_gib(n_items) -> float`: memory of choix's n x n float64 chain.
- `bench_ranking(sizes, choix_max_items=CHOIX_MAX_ITEMS, seed=0) -> dict`; `sizes` are
  (n_items, n_batches) pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks.common import comparison
from cmr_assets.labels.plackett_luce import benchmark_against_choix

CHOIX_MAX_ITEMS = 10_000
BIOBANK_AIM_SECONDS = 60.0


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
