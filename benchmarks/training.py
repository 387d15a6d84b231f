"""Training throughput: `train_classifier` against a bare torch loop on the same model and tensors.

Why: the training core adds per-batch work the plain loop does not (uint8 -> float on the fly,
per-image normalisation per batch, learning-rate schedule, class-weighted loss with probability
targets, loss kept on the device) plus per-epoch validation and best-weight copies. The aim is at
most 1.1x time overhead on the training steps. Both sides: same architecture from `build_model`,
same batch size and input size, AdamW with the same lr / weight decay, the same number of epochs
over the same preloaded images, the same torch thread count (2 in the full run). The bare loop
gets its images preloaded as normalised float tensors (the plain way), hard labels and no
augmentation; ours runs with
`augment=False` for the ratio, and once more with augmentation (the real configuration) to show
what augmentation costs. Images are random uint8 (throughput does not depend on content). Sides
alternate `repeats` times and the best of each counts (the machine may be shared).

Public API:
- `bare_training_images_per_s(images, labels, architecture, batch_size, epochs, lr, weight_decay) -> float`
- `bench_training(n_images, input_size, batch_size, epochs, architecture="small_cnn", repeats=2, threads=2,
  with_augmentation=True) -> dict`
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import comparison
from cmr_assets.domain import N_CLASSES
from cmr_assets.training.core import TrainConfig, train_classifier
from cmr_assets.training.models import build_model, normalise_batch

DEFAULT_TORCH_THREADS = 2
TRAINING_OVERHEAD_AIM = 1.1


def bare_training_images_per_s(images: torch.Tensor, labels: torch.Tensor, architecture: str, batch_size: int,
                               epochs: int, lr: float, weight_decay: float) -> float:
    """The plain loop: preloaded normalised floats, shuffled batches, cross-entropy, AdamW."""
    torch.manual_seed(0)
    model = build_model(architecture).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    inputs = normalise_batch(images.float().div(255.0))
    n = inputs.shape[0]
    seen = 0
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n)
        for start in range(0, n - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(model(inputs[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += batch_size
    return seen / (time.perf_counter() - started)


def bench_training(n_images: int, input_size: int, batch_size: int, epochs: int, architecture: str = "small_cnn",
                   repeats: int = 2, threads: int = DEFAULT_TORCH_THREADS,
                   with_augmentation: bool = True) -> dict[str, Any]:
    """Best-of-`repeats` images/s of ours and of the bare loop (and of ours with augmentation)."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_images, 1, input_size, input_size), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n_images) % N_CLASSES
    n_val = max(N_CLASSES * 4, n_images // 8)
    val_images = torch.randint(0, 256, (n_val, 1, input_size, input_size), dtype=torch.uint8, generator=generator)
    val_labels = torch.arange(n_val) % N_CLASSES
    config = TrainConfig(architecture=architecture, input_size=input_size, epochs=epochs, batch_size=batch_size,
                         patience=epochs + 1, augment=False, num_threads=threads, device="cpu",
                         max_minutes=60.0)

    bare, ours, ours_wall = [], [], []
    for _ in range(repeats):
        bare.append(bare_training_images_per_s(images, labels, architecture, batch_size, epochs, config.lr,
                                               config.weight_decay))
        result = train_classifier(images, labels, val_images, val_labels, config)
        ours.append(result.images_per_s)
        trained_images = (n_images // batch_size) * batch_size * len(result.history)
        ours_wall.append(trained_images / result.seconds)
    augmented = (train_classifier(images, labels, val_images, val_labels, replace(config, augment=True)).images_per_s
                 if with_augmentation else None)
    best_bare, best_ours = max(bare), max(ours)
    overhead = best_bare / best_ours
    return {
        "architecture": architecture,
        "n_images": n_images,
        "input_size": input_size,
        "batch_size": batch_size,
        "epochs": epochs,
        "torch_threads": threads,
        "bare_images_per_s": bare,
        "ours_images_per_s": ours,
        "ours_images_per_s_incl_validation": ours_wall,
        "ours_with_augmentation_images_per_s": augmented,
        "time_overhead": overhead,
        "comparisons": [comparison(
            f"training steps, {architecture} {input_size}px batch {batch_size}", "images/s", best_ours, best_bare,
            True, f"time overhead <= {TRAINING_OVERHEAD_AIM}x (ratio >= {1 / TRAINING_OVERHEAD_AIM:.2f})",
            1 / TRAINING_OVERHEAD_AIM,
            f"time overhead {overhead:.3f}x; with validation {max(ours_wall):.0f} images/s"
            + (f"; with augmentation {augmented:.0f} images/s" if augmented else ""))],
    }
