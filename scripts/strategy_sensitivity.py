#!/usr/bin/env python
"""Redraw docs/screenshots/strategy_sensitivity.png (the README's break-even picture) and print the
summary: the `strategy_sensitivity` sweep on the stand-in cohort with the default cohort's geometry
(`reference_like_cohort`, 300 scans), default grid and simulator parameters (or a parameter file).

Usage: .venv/bin/python scripts/strategy_sensitivity.py [--seed 0] [--params-file PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cmr_assets.figures import strategy_sensitivity_png
from cmr_assets.labelling.simulator import load_simulator_params, reference_like_cohort
from cmr_assets.labels.sensitivity import SensitivityGrid, break_even_summary, strategy_sensitivity
from cmr_assets.settings import PROJECT_ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params-file", default="")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "screenshots" / "strategy_sensitivity.png")
    args = parser.parse_args()
    slices, reference = reference_like_cohort(300, seed=args.seed)
    params = load_simulator_params(args.params_file)
    frame = strategy_sensitivity(slices, reference, params, SensitivityGrid.spanning(params), seed=args.seed)
    strategy_sensitivity_png(frame, (params.side_by_side_noise_sd, params.side_by_side_impression_share,
                                     params.divider_impression_share), path=args.out)
    print(json.dumps(break_even_summary(frame), indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
