#!/usr/bin/env python
"""Redraw docs/screenshots/synthetic_vs_real.png: the shipped real Sunnybrook slices above the
default cohort's first synthetic scans, at matched levels (the README's "look before you claim").

Usage: .venv/bin/python scripts/synthetic_vs_real.py [--seed 0] [--scans 4] [--out PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cmr_assets.evaluation.real_check import load_real_series, phantom_stacks, synthetic_vs_real_png
from cmr_assets.settings import PROJECT_ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scans", type=int, default=4)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "screenshots" / "synthetic_vs_real.png")
    args = parser.parse_args()
    synthetic_vs_real_png(phantom_stacks(args.seed, args.scans), load_real_series(), path=args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
