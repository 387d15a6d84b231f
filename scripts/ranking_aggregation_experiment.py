#!/usr/bin/env python
"""Which ranking aggregation gives the most accurate labels? The table in docs/methods.md.

For each seed: the stand-in cohort (`reference_like_cohort`, 300 scans, the default cohort's
geometry), the pipeline's default campaign design (3 experts, 5 h each, batches of 8, as many
rounds as the hours buy), simulated experts (`simulate_ranking_rows`, default `SimulatorParams`
unless --impression-share is given), then every method of `RANKING_METHODS` on the same
annotations; printed: each method's label accuracy against the truth (artefact-excluded images
left out, as in the report), and the single-image strategy's at the same hours for scale.

Usage: .venv/bin/python scripts/ranking_aggregation_experiment.py [--seeds 0 1 2] [--impression-share 0]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from cmr_assets.labelling.campaign import (
    annotator_ids,
    design_ranking_batches,
    design_single_tasks,
    ranking_rounds_for_budget,
)
from cmr_assets.labelling.simulator import (
    SimulatorParams,
    reference_like_cohort,
    simulate_campaign_rows,
)
from cmr_assets.labels.aggregation import RANKING_METHODS, aggregate_ranking, aggregate_single
from cmr_assets.labels.agreement import label_accuracy


def accuracies(seed: int, params: SimulatorParams) -> dict[str, float]:
    slices, reference = reference_like_cohort(n_scans=300, seed=seed)
    experts = annotator_ids(params.n_experts)
    rounds = ranking_rounds_for_budget(len(slices), len(experts), params.hours_per_expert, params.seconds_per_batch)
    tasks_ranking = design_ranking_batches(slices, experts, min_views=rounds, seed=seed)
    tasks_single = design_single_tasks(slices["slice_id"], experts, seed=seed, extra_vote_rounds=len(experts) - 1)
    rows = simulate_campaign_rows(tasks_single, tasks_ranking, reference, params, seed=seed)
    result = {method: label_accuracy(aggregate_ranking(rows.ranking, slices, method=method).labels,
                                     reference)["accuracy"] for method in RANKING_METHODS}
    result["single (same hours)"] = label_accuracy(aggregate_single(rows.single, tasks_single), reference)["accuracy"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--impression-share", type=float, default=0.0,
                        help="side-by-side and divider impression share (default 0: today's assumption)")
    args = parser.parse_args()
    params = replace(SimulatorParams(), side_by_side_impression_share=args.impression_share,
                     divider_impression_share=args.impression_share)
    table = {seed: accuracies(seed, params) for seed in args.seeds}
    methods = list(next(iter(table.values())))
    print("| method | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("|---|" + "---|" * (len(args.seeds) + 1))
    for method in methods:
        values = [table[s][method] for s in args.seeds]
        print(f"| {method} | " + " | ".join(f"{v:.2%}" for v in values) + f" | {sum(values) / len(values):.2%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
