#!/usr/bin/env python
"""Train both strategies' models on CUDA on the pipeline's own data and print the figures.

Input: the .npz written by `scripts/export_training_set.py` after `make demo`. Needs only torch,
numpy, scipy, scikit-learn and `cmr_assets.training` / `cmr_assets.evaluation.metrics` (no Dagster,
MLflow or DuckDB), so it runs on a bare GPU machine from a copy of the source tree. Uses the GPU
default configuration (ResNet-18, 128 px, batch 256, bf16 autocast, channels_last), scores each
model on the common test set against the reference labels with the evaluation's own
`classification_metrics` and compares them with its exact McNemar test (`mcnemar_exact`).

Usage (in the repository root; PYTHONPATH=. where the package is not installed):
    PYTHONPATH=. python scripts/gpu_pipeline_training.py training_set.npz [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cmr_assets.evaluation.metrics import classification_metrics, mcnemar_exact
from cmr_assets.training.core import gpu_config, predict_proba, select_device, train_classifier

RUNS = (("ranking", False), ("ranking", True), ("single", False))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help=".npz from scripts/export_training_set.py")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    data = np.load(args.dataset)
    config = gpu_config(device=args.device)
    device = select_device(config)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, config {config}")
    images = data["images"]

    def part(name: str) -> torch.Tensor:
        return torch.from_numpy(images[data[f"{name}_index"]])

    test_images = part("test")
    y_test = data["test_targets"]
    results, predictions = {}, {}
    for strategy, soft in RUNS:
        key = f"{strategy}{'_soft' if soft else ''}"
        targets = data[f"{strategy}_train_soft"] if soft else data[f"{strategy}_train_targets"]
        run_config = gpu_config(device=args.device, soft_labels=soft)
        started = time.perf_counter()
        result = train_classifier(part(f"{strategy}_train"), torch.from_numpy(targets), part(f"{strategy}_val"),
                                  torch.from_numpy(data[f"{strategy}_val_targets"]), run_config)
        wall = time.perf_counter() - started
        proba = predict_proba(result.model, test_images, run_config.input_size, device=device,
                              crop_fraction=run_config.crop_fraction)
        predictions[key] = proba.argmax(axis=1)
        metrics = classification_metrics(y_test, proba)
        roc_auc = metrics["roc_auc"]
        results[key] = {
            "n_train": int(len(targets)), "epochs": len(result.history), "best_epoch": result.best_epoch,
            "stop_reason": result.stop_reason, "train_seconds": round(wall, 2),
            "images_per_s": round(result.images_per_s, 1), "best_val_macro_f1": round(result.best_val_macro_f1, 4),
            "test_accuracy": round(metrics["accuracy"], 4), "test_macro_f1": round(metrics["macro_f1"], 4),
            "test_roc_auc": None if roc_auc is None else round(roc_auc, 4),
        }
        print(f"{key:<13} {results[key]}")
    summary = {"device": name, "n_test_images": int(len(y_test)), "runs": results,
               "mcnemar_ranking_vs_single": mcnemar_exact(y_test, predictions["ranking"], predictions["single"])}
    print(json.dumps(summary["mcnemar_ranking_vs_single"]))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_pipeline.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
