#!/usr/bin/env python
"""How well does `calibrate-experts` recover known simulator parameters from a 30-minute pilot?

For each seed: a stand-in cohort (`reference_like_cohort`, 300 scans), the pilot design
(`design_pilot_tasks`, 30 min per expert per strategy, 3 experts), simulated experts with known
parameters (TRUTH below, or the defaults with --defaults), `pilot_statistics` +
`fit_simulator_params`; printed: each fitted parameter and its error, and what matters for the
decision: ranking minus single label accuracy at 5 h per expert simulated with the true and with
the fitted parameters (`strategy_sensitivity`'s comparison at one setting). The tolerances of
cmr_assets_tests/labelling/test_calibration.py come from this table.

Usage: .venv/bin/python scripts/calibration_recovery.py [--seeds 0 1 2 3 4 5] [--defaults]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import numpy as np

from cmr_assets.labelling.calibration import FITTED, fit_simulator_params, pilot_statistics
from cmr_assets.labelling.campaign import annotator_ids, design_pilot_tasks
from cmr_assets.labelling.simulator import (
    SimulatorParams,
    reference_like_cohort,
    simulate_campaign_rows,
)
from cmr_assets.labels.sensitivity import SensitivityGrid, strategy_sensitivity

TRUTH = replace(SimulatorParams(), side_by_side_noise_sd=0.02, side_by_side_impression_share=0.5,
                divider_impression_share=1.0)


def pilot_fit(truth: SimulatorParams, seed: int) -> SimulatorParams:
    slices, reference = reference_like_cohort(300, seed=seed)
    tasks_single, tasks_ranking = design_pilot_tasks(slices, annotator_ids(truth.n_experts), seed=seed)
    rows = simulate_campaign_rows(tasks_single, tasks_ranking, reference, replace(truth, hours_per_expert=0.5), seed)
    return fit_simulator_params(pilot_statistics(rows.single, rows.ranking)).params


def single_perception_sd(params: SimulatorParams) -> float:
    """What a look alone adds to the truth beyond the shared ambiguity: the pilot pins this sum
    better than its two parts."""
    return float(np.hypot(params.personal_impression_sd, params.single_look_noise_sd))


def ranking_lead(params: SimulatorParams, seed: int) -> float:
    """Ranking minus single label accuracy at the parameters' own setting, 5 h per expert."""
    slices, reference = reference_like_cohort(300, seed=seed + 500)
    grid = SensitivityGrid((params.side_by_side_noise_sd,), (params.side_by_side_impression_share,),
                           (params.divider_impression_share,))
    return float(strategy_sensitivity(slices, reference, params, grid, seed)["ranking_minus_single"].iloc[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--defaults", action="store_true", help="recover SimulatorParams() instead of TRUTH")
    args = parser.parse_args()
    truth = SimulatorParams() if args.defaults else TRUTH
    errors: dict[str, list[float]] = {name: [] for name in (*FITTED, "single_perception_sd")}
    leads = []
    for seed in args.seeds:
        fitted = pilot_fit(truth, seed)
        for name in FITTED:
            errors[name].append(float(np.max(np.abs(np.subtract(getattr(fitted, name), getattr(truth, name))))))
        errors["single_perception_sd"].append(abs(single_perception_sd(fitted) - single_perception_sd(truth)))
        leads.append((ranking_lead(truth, seed), ranking_lead(fitted, seed)))
        print(f"seed {seed}: " + ", ".join(f"{n}={np.round(getattr(fitted, n), 3).tolist()}" for n in FITTED))
    print("\n| parameter | true | median abs error | max abs error |")
    print("|---|---|---|---|")
    for name in FITTED:
        print(f"| {name} | {np.round(getattr(truth, name), 4).tolist()} | {np.median(errors[name]):.4f} | "
              f"{np.max(errors[name]):.4f} |")
    print(f"| single_perception_sd (impression and fresh noise together) | {single_perception_sd(truth):.4f} | "
          f"{np.median(errors['single_perception_sd']):.4f} | {np.max(errors['single_perception_sd']):.4f} |")
    differences = [abs(a - b) for a, b in leads]
    print("\nranking - single label accuracy at 5 h, true vs fitted parameters: "
          + ", ".join(f"{a:+.2%} / {b:+.2%}" for a, b in leads)
          + f"; max abs difference {max(differences):.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
