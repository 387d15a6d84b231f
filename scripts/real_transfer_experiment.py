#!/usr/bin/env python
"""How well does a model trained on the phantom alone transfer to the shipped real Sunnybrook cines?

Trains the default CPU classifier on true classes of a synthetic cohort rendered in memory (no
labelling campaign, so the image domain is the only question), then scores it with the evaluation's
own real-image check. Prints the synthetic validation accuracy and, per real slice, truth, raw class
and filter decision. Used to compare generator changes (docs/real_images.md).

Usage: .venv/bin/python scripts/real_transfer_experiment.py [--scans 160] [--seed 0] [--epochs 15]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from cmr_assets.domain import CLASS_INDEX
from cmr_assets.evaluation.real_check import load_real_series, real_image_check
from cmr_assets.synthetic.cohort import plan_scan, stored_slices
from cmr_assets.training.core import TrainConfig, train_classifier
from cmr_assets.training.fitting import symmetry_views_for
from cmr_assets.training.packaging import DeployableClassifier


def _scan(args: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    seed, index = args
    plan = plan_scan(seed, index, n_phases=1)
    return stored_slices(plan), np.array([CLASS_INDEX[c] for c in plan.true_classes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--save", type=Path, help="write the packaged model here (torch.save)")
    args = parser.parse_args()
    started = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        scans = list(pool.map(_scan, [(args.seed, index) for index in range(args.scans)]))
    n_val = max(2, args.scans // 7)
    train_images = np.concatenate([images for images, _ in scans[n_val:]])
    train_targets = np.concatenate([targets for _, targets in scans[n_val:]])
    val_images = np.concatenate([images for images, _ in scans[:n_val]])
    val_targets = np.concatenate([targets for _, targets in scans[:n_val]])
    print(f"rendered {args.scans} scans ({len(train_images)} train / {len(val_images)} val slices) "
          f"in {time.perf_counter() - started:.0f} s", flush=True)
    config = TrainConfig(epochs=args.epochs, patience=args.epochs, seed=args.seed)
    result = train_classifier(torch.from_numpy(train_images), torch.from_numpy(train_targets),
                              torch.from_numpy(val_images), torch.from_numpy(val_targets), config)
    model = DeployableClassifier(result.model, config.input_size, config.crop_fraction,
                                 symmetry_views_for(config)).eval()
    model.calibrate_ood(train_images, train_targets, val_images)
    if args.save:
        torch.save(model, args.save)
    print(f"trained in {result.seconds:.0f} s; best synthetic val macro-F1 {result.best_val_macro_f1:.3f}")
    check = real_image_check(model, load_real_series())
    for row in check["slices"]:
        print(f"  {row['series']} {row['slice_from_base']:2d} {row['truth']:16s} {row['model_class']:10s} "
              f"{'keep' if row['keep'] else 'drop'} ood={row['ood_score']:.2f}")
    summary = check["summary"]
    print(f"real LV recall: model class {summary['lv_recall_model']:.3f} (LV share {summary['lv_share']:g}; "
          f"balanced-prior argmax {summary['lv_recall_balanced_prior']:.3f}), "
          f"filter {summary['lv_recall_filter']:.3f}; "
          f"base {summary['uncontoured_base']}; apex {summary['uncontoured_apex']}")


if __name__ == "__main__":
    main()
