#!/usr/bin/env python
"""GPU check of the training core: trains a 'single' and a 'ranking' model on synthetic slices.

Standalone on purpose: needs only torch, torchvision, numpy, scikit-learn and the
``cmr_assets.training`` core (no Dagster, MLflow, DuckDB), so it runs on a bare GPU machine from a
copy of the source tree with ``PYTHONPATH=. python scripts/gpu_training_check.py`` in its root
(``.venv/bin/python scripts/gpu_training_check.py`` where the package is installed). It builds a
CMR-like synthetic set in memory (three classes that need a CNN: a closed myocardial ring with a
bright blood pool and a right-ventricle crescent = LV; a ring opened by an outflow tract with
atrial blobs = too basal; a small solid myocardial disc = too apical), corrupts the training labels
the way each strategy would (single: hard labels with 25% flipped to the neighbouring class;
ranking: soft class probabilities with less noise), trains both with the GPU default configuration
(``core.gpu_config``: resnet18, 128 px, batch 256, bf16 autocast, channels_last) and prints device,
images/s, time per model, clean-test accuracy, plus a CPU-vs-device throughput line. With ``OUT``
set it also writes ``$OUT/gpu_check.json``. ``--quick`` shrinks everything so it runs on a laptop
CPU in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from cmr_assets.training.core import (
    TrainConfig,
    TrainingResourceError,
    TrainResult,
    gpu_config,
    predict_proba,
    select_device,
    train_classifier,
)

SIZE = 128


def _disc(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, radius: float) -> np.ndarray:
    return ((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2


def synthetic_slice(label: int, rng: np.random.Generator) -> np.ndarray:
    """One 128x128 uint8 CMR-like short-axis slice of class ``label`` (0 basal, 1 LV, 2 apical)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    image = np.zeros((SIZE, SIZE), np.float32)
    body = ((yy - 64) / rng.uniform(44, 54)) ** 2 + ((xx - 64) / rng.uniform(52, 62)) ** 2 <= 1
    image[body] = rng.uniform(70, 110)
    cy, cx = 64 + rng.uniform(-12, 12), 64 + rng.uniform(-12, 12)
    blood, myocardium = rng.uniform(190, 240), rng.uniform(40, 70)
    if label == 2:  # apex: small solid muscle, at most a pin-hole cavity
        outer = rng.uniform(6, 11)
        image[_disc(yy, xx, cy, cx, outer)] = myocardium
        image[_disc(yy, xx, cy, cx, rng.uniform(0, 2.5))] = blood
    else:
        outer = rng.uniform(15, 22)
        inner = outer - rng.uniform(4, 7)
        angle = rng.uniform(0, 2 * np.pi)
        rv_cy, rv_cx = cy + 1.1 * outer * np.sin(angle), cx + 1.1 * outer * np.cos(angle)
        image[_disc(yy, xx, rv_cy, rv_cx, outer * rng.uniform(0.7, 1.0))] = blood * 0.9
        image[_disc(yy, xx, cy, cx, outer)] = myocardium
        image[_disc(yy, xx, cy, cx, inner)] = blood
        if label == 0:  # base: outflow tract opens the ring, atria appear beside it
            gap = rng.uniform(0, 2 * np.pi)
            along = (xx - cx) * np.cos(gap) + (yy - cy) * np.sin(gap)
            across = -(xx - cx) * np.sin(gap) + (yy - cy) * np.cos(gap)
            image[(along > 0) & (along < outer + 6) & (np.abs(across) < inner * 0.6)] = blood
            for _ in range(rng.integers(1, 3)):
                a = rng.uniform(0, 2 * np.pi)
                image[_disc(yy, xx, cy + 1.6 * outer * np.sin(a), cx + 1.6 * outer * np.cos(a),
                            rng.uniform(5, 9))] = blood * 0.8
    image *= rng.uniform(0.6, 1.1)
    image += rng.normal(0, rng.uniform(6, 16), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def synthetic_set(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    return np.stack([synthetic_slice(int(y), rng) for y in labels]), labels


def single_labels(truth: np.ndarray, flip: float, rng: np.random.Generator) -> torch.Tensor:
    """Hard labels with a fraction moved to a neighbouring class (the one-image-at-a-time noise)."""
    noisy = truth.copy()
    flipped = rng.random(len(truth)) < flip
    step = np.where(rng.random(len(truth)) < 0.5, -1, 1)
    noisy[flipped] = np.clip(truth[flipped] + step[flipped], 0, 2)
    noisy[flipped & (noisy == truth)] = 1  # clipped at an end class: move to LV instead
    return torch.from_numpy(noisy).long()


def ranking_soft_labels(truth: np.ndarray, noise: float, rng: np.random.Generator) -> torch.Tensor:
    """Class probabilities as an aggregated ranking would give: peaked on the truth, noisy."""
    logits = 3.0 * np.eye(3)[truth] + rng.normal(0, noise, (len(truth), 3))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return torch.from_numpy(probs / probs.sum(axis=1, keepdims=True)).float()


def summarise(name: str, result: TrainResult, test_images: torch.Tensor, test_truth: np.ndarray,
              device: torch.device) -> dict[str, object]:
    probs = predict_proba(result.model, test_images, result.config.input_size, device=device,
                          crop_fraction=result.config.crop_fraction)
    predicted = probs.argmax(axis=1)
    steady = [h["images_per_s"] for h in result.history[1:]] or [result.images_per_s]
    return {
        "model": name,
        "device": result.device,
        "architecture": result.config.architecture,
        "input_size": result.config.input_size,
        "batch_size": result.config.batch_size,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
        "seconds": round(result.seconds, 2),
        "images_per_s_mean": round(result.images_per_s, 1),
        "images_per_s_steady": round(statistics.median(steady), 1),
        "best_val_macro_f1": round(result.best_val_macro_f1, 4),
        "test_accuracy": round(float(accuracy_score(test_truth, predicted)), 4),
        "test_macro_f1": round(float(f1_score(test_truth, predicted, average="macro")), 4),
    }


def cpu_throughput(images: torch.Tensor, labels: torch.Tensor, config: TrainConfig) -> float:
    """Training images/s of the same architecture on this machine's CPU (one short epoch)."""
    n = min(len(images), 8 * 32)
    cpu = TrainConfig(architecture=config.architecture, input_size=config.input_size, epochs=1,
                      batch_size=32, device="cpu", num_threads=os.cpu_count() or 1, augment=config.augment)
    return train_classifier(images[:n], labels[:n], images[:64], labels[:64], cpu).images_per_s


def oom_message(images: torch.Tensor, labels: torch.Tensor, config: TrainConfig) -> str:
    """Train at a size that cannot fit and return the TrainingResourceError message (or say it did fit)."""
    oversized = replace(config, input_size=2048, batch_size=512, epochs=1)
    try:
        train_classifier(images[:1024], labels[:1024], images[:64], labels[:64], oversized)
    except TrainingResourceError as error:
        torch.cuda.empty_cache()
        return str(error)
    return "no out-of-memory error: the oversized configuration fit"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (CPU smoke test of this script)")
    parser.add_argument("--n-images", type=int, default=3600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oom-check", action="store_true",
                        help="also check that an oversized batch gives TrainingResourceError (CUDA only)")
    args = parser.parse_args(argv)

    n = 150 if args.quick else args.n_images
    config = gpu_config(seed=args.seed)
    if args.quick:
        config = gpu_config(seed=args.seed, input_size=64, epochs=2, batch_size=32)
    device = select_device(config)
    if device.type != "cuda" and not args.quick:
        print("warning: no CUDA device; the GPU configuration on CPU will be slow (use --quick)", flush=True)

    started = time.perf_counter()
    images_np, truth = synthetic_set(n, args.seed)
    images = torch.from_numpy(images_np)
    n_train, n_val = int(0.6 * n), int(0.2 * n)
    train, val, test = slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, n)
    val_labels = torch.from_numpy(truth[val]).long()
    rng = np.random.default_rng(args.seed + 1)
    data_seconds = time.perf_counter() - started
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
          f"{n} synthetic {SIZE}x{SIZE} images built in {data_seconds:.1f} s "
          f"(train {n_train}, val {n_val}, test {n - n_train - n_val})", flush=True)

    runs = {
        "single": (single_labels(truth[train], 0.25, rng), config),
        "ranking": (ranking_soft_labels(truth[train], 0.8, rng), replace(config, soft_labels=True)),
    }
    summaries = []
    for name, (targets, model_config) in runs.items():
        result = train_classifier(images[train], targets, images[val], val_labels, model_config)
        summaries.append(summarise(name, result, images[test], truth[test], device))
        s = summaries[-1]
        print(f"{name:8s} {s['architecture']} {s['input_size']}px batch {s['batch_size']}: "
              f"{s['epochs_run']} epochs ({s['stop_reason']}) in {s['seconds']} s, "
              f"{s['images_per_s_steady']} img/s steady ({s['images_per_s_mean']} mean), "
              f"val macro-F1 {s['best_val_macro_f1']}, test acc {s['test_accuracy']} "
              f"macro-F1 {s['test_macro_f1']}", flush=True)

    cpu_rate = cpu_throughput(images[train], torch.from_numpy(truth[train]).long(), config)
    device_rate = float(summaries[0]["images_per_s_steady"])
    print(f"throughput {config.architecture} {config.input_size}px training: CPU ({os.cpu_count()} threads, "
          f"batch 32) {cpu_rate:.0f} img/s vs {device.type} (batch {config.batch_size}) "
          f"{device_rate:.0f} img/s = {device_rate / cpu_rate:.1f}x", flush=True)
    report = {
        "device": summaries[0]["device"],
        "torch": torch.__version__,
        "n_images": n,
        "models": summaries,
        "cpu_images_per_s": round(cpu_rate, 1),
        "cpu_threads": os.cpu_count(),
        "speedup_vs_cpu": round(device_rate / cpu_rate, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    if args.oom_check and device.type == "cuda":
        report["oom_message"] = oom_message(images[train], torch.from_numpy(truth[train]).long(), config)
        print(f"out-of-memory check: {report['oom_message'][:200]}", flush=True)
    print(f"total {report['total_seconds']} s", flush=True)
    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "gpu_check.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
