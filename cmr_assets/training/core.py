"""Torch training core for the 3-way slice classifier: plain tensors in, trained model out.

No Dagster and no MLflow here (the model assets wrap these functions and do the logging), so the
GPU check script and the tests use it directly.

Why it looks the way it does: the whole image set is small (a few thousand 128x128 uint8 slices,
~50 MB), so it is moved to the device ONCE, resized once to ``input_size``, and every step works on
device tensors (index, convert to float, augment, normalise) with no host round trip; the loss is
accumulated on the device and read with a single transfer per epoch. On CUDA it trains under bf16
autocast with channels_last; on CPU it sets the thread count. The network sees the central
``crop_fraction`` of the field of view (``models.crop_and_resize``, shared with the registered
model). Augmentation is strong on purpose, because the default cohort is synthetic and real scans
differ from it (see ``_augment`` and docs/real_images.md); it runs on the batch with
``affine_grid``/``grid_sample``. Loss is class-weighted cross-entropy with
probability targets, so hard labels (one-hot) and soft labels (aggregated class probabilities from
the ranking strategy) share one code path. AdamW, linear warm-up then cosine decay; early stopping
on validation macro-F1, whose best weights are restored. A ``max_minutes`` cap shortens the cosine
plan after the first epoch when the configured epochs would not fit, so the schedule still ends
at a low learning rate.

Public API:
- ``TrainConfig`` (dataclass; defaults = the CPU configuration) and ``gpu_config(**overrides)``
  (resnet18, 128 px, batch 256).
- ``default_config(device: torch.device) -> TrainConfig``: the GPU config on CUDA, else the CPU one.
- ``select_device(config) -> torch.device``.
- ``train_classifier(images, targets, val_images, val_labels, config, on_epoch=None) -> TrainResult``
  ``images``: uint8 ``(N, H, W)`` or ``(N, 1, H, W)``; ``targets``: long ``(N,)`` class indices or
  float ``(N, 3)`` class probabilities (``config.soft_labels=True`` trains on them, ``False`` uses
  their argmax); ``val_labels``: long ``(M,)``.
- ``predict_proba(model, images, input_size, batch_size=256, device=None, crop_fraction=1.0)
  -> np.ndarray (N, 3)`` (pass the training config's ``crop_fraction``).
- ``EpochMetrics`` (passed to ``on_epoch``), ``TrainResult``.
- ``TrainingDataError`` (too few labelled images / a class missing; the message names class and
  counts), ``TrainingResourceError`` (CUDA out of memory, names the setting to lower; CUDA requested
  but absent).
- ``MIN_IMAGES_PER_CLASS``.

Measured (training step, batch 64) on the 2-core development machine while shared with other jobs
(load 4-6, so slow and noisy): 2 threads: small_cnn 70 images/s at 96 px, 36 at 128 px; resnet18
14 and 9. 1 thread: small_cnn 152 and 81; resnet18 28 and 16 (oversubscribed OpenMP threads are
slower than one). The CPU default (small_cnn, 96 px on the central 70% of the field of view,
lr 1e-3, 15 epochs, 1 thread on 2 cores) trains the demo's ~2,050 domain-randomised slices (+690
validation) at ~190 images/s, ~13 s per epoch, 3-4 minutes per model (the old time budget). With
the strong augmentation the validation macro-F1 is still rising at epoch 15 (0.66; 0.73 at epoch
20, which did not improve the test or real-image figures in one demo run each, and costs 2.5 more
minutes of demo): on a GPU, `gpu_config` trains longer.
H100 (scripts/
gpu_training_check.py, ``gpu_config``): resnet18 at 128 px, batch 256, ~20,000 images/s, 2,160
images x ~20 epochs in 3-12 s per model (the first includes cuDNN autotuning).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cmr_assets.domain import CLASS_NAMES, N_CLASSES
from cmr_assets.training.models import build_model, crop_and_resize, normalise_batch

logger = logging.getLogger(__name__)

MIN_IMAGES_PER_CLASS: Final[int] = 2
ANY_ANGLE_SHARE: float = 1 / 3  # share of training images rotated by any angle (the rest +-25 deg)
ZOOM_RANGE: tuple[float, float] = (0.75, 1.35)
_EVAL_BATCH: Final[int] = 256


class TrainingDataError(ValueError):
    """The labelled images cannot train a 3-way classifier (too few, a class missing, bad shapes)."""


class TrainingResourceError(RuntimeError):
    """The device cannot run the configuration (CUDA out of memory, CUDA requested but absent)."""


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters; the defaults are the CPU configuration (~4 min on 2 cores)."""

    architecture: str = "small_cnn"
    input_size: int = 96
    crop_fraction: float = 0.7  # central part of the field of view the network sees (see models.crop_and_resize)
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    seed: int = 0
    patience: int = 15  # = epochs: under the strong augmentation validation F1 swings +-0.15 between epochs
    augment: bool = True
    test_time_views: int = 2  # symmetry views the registered model averages: image + mirror (packaging)
    soft_labels: bool = False
    class_weighting: bool = True
    num_threads: int = 0  # 0: half the cores, at least 1 (see select_device)
    device: str = "auto"
    max_minutes: float = 4.0


def gpu_config(**overrides: Any) -> TrainConfig:
    """The GPU default: ResNet-18 at 128 px, large batches, more epochs (seconds on an H100)."""
    base = TrainConfig(
        architecture="resnet18", input_size=128, epochs=40, batch_size=256, lr=2e-3, patience=10,
        max_minutes=10.0,
    )
    return replace(base, **overrides)


def default_config(device: torch.device) -> TrainConfig:
    """The GPU config on a CUDA device, otherwise the CPU defaults."""
    return gpu_config() if device.type == "cuda" else TrainConfig()


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch's numbers, as given to ``on_epoch`` and stored in ``TrainResult.history``."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    lr: float
    images_per_s: float
    seconds: float


@dataclass
class TrainResult:
    """Trained model (best epoch's weights, eval mode, on CPU) and how training went."""

    model: nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    best_val_macro_f1: float
    device: str
    images_per_s: float
    seconds: float
    stopped_early: bool
    stop_reason: str  # "completed", "patience" or "time_cap"
    class_weights: list[float] = field(default_factory=list)
    config: TrainConfig = field(default_factory=TrainConfig)


def select_device(config: TrainConfig) -> torch.device:
    """CUDA when present (and asked for or 'auto'), else CPU with ``config.num_threads`` threads.

    ``num_threads=0`` means half the cores (1 on a 2-core machine): both model assets may train at
    the same time, and oversubscribed OpenMP threads were measured 3x slower than a single thread.
    """
    if config.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"TrainConfig.device must be 'auto', 'cpu' or 'cuda', got {config.device!r}")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise TrainingResourceError(
            "TrainConfig.device='cuda' but CUDA is not available; use device='auto' or 'cpu'"
        )
    if config.device != "cpu" and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda")
    torch.set_num_threads(config.num_threads or max(1, (os.cpu_count() or 2) // 2))
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# data preparation and validation


def _as_n1hw(images: torch.Tensor, what: str) -> torch.Tensor:
    if images.dtype != torch.uint8:
        raise TrainingDataError(f"{what} must be a uint8 tensor, got {images.dtype}")
    if images.ndim == 3:
        images = images.unsqueeze(1)
    if images.ndim != 4 or images.shape[1] != 1:
        raise TrainingDataError(
            f"{what} must have shape (N, H, W) or (N, 1, H, W), got {tuple(images.shape)}"
        )
    return images


def _prepare_images(images: torch.Tensor, input_size: int, device: torch.device, what: str,
                    crop_fraction: float = 1.0) -> torch.Tensor:
    """Move uint8 images to the device once, crop and resize them once to ``input_size`` (still uint8)."""
    images = _as_n1hw(images, what).to(device, non_blocking=True)
    if images.shape[-2:] == (input_size, input_size) and crop_fraction == 1.0:
        return images.contiguous()
    chunks = [crop_and_resize(chunk.float(), input_size, crop_fraction).to(torch.uint8)
              for chunk in images.split(1024)]
    return torch.cat(chunks)


def _probability_targets(targets: torch.Tensor, n_images: int, soft_labels: bool) -> torch.Tensor:
    """Targets as ``(N, 3)`` float probabilities: one-hot for hard labels, rows summing to 1 for soft."""
    if targets.shape[0] != n_images:
        raise TrainingDataError(f"{n_images} training images but {targets.shape[0]} targets")
    if targets.ndim == 1:
        if soft_labels:
            raise TrainingDataError(
                "soft_labels=True needs (N, 3) class-probability targets, got class indices"
            )
        if targets.dtype.is_floating_point or targets.dtype == torch.bool:
            raise TrainingDataError(f"hard targets must be integer class indices, got {targets.dtype}")
        out_of_range = (targets < 0) | (targets >= N_CLASSES)
        if out_of_range.any():
            raise TrainingDataError(f"{int(out_of_range.sum())} target(s) outside 0..{N_CLASSES - 1}")
        return F.one_hot(targets.long(), N_CLASSES).float()
    if targets.ndim != 2 or targets.shape[1] != N_CLASSES or not targets.dtype.is_floating_point:
        raise TrainingDataError(
            f"targets must be (N,) class indices or (N, {N_CLASSES}) float probabilities, "
            f"got {tuple(targets.shape)} {targets.dtype}"
        )
    probs = targets.float()
    not_summing_to_one = (probs.sum(dim=1) - 1).abs() > 1e-3
    bad_rows = ~torch.isfinite(probs).all(dim=1) | (probs < 0).any(dim=1) | not_summing_to_one
    if bad_rows.any():
        first = int(torch.nonzero(bad_rows)[0])
        raise TrainingDataError(
            f"{int(bad_rows.sum())} soft-label row(s) are not probabilities "
            f"(first: row {first}, {probs[first].tolist()})"
        )
    if soft_labels:
        return probs
    return F.one_hot(probs.argmax(dim=1), N_CLASSES).float()


def _check_class_counts(hard_labels: torch.Tensor, what: str) -> list[int]:
    counts = torch.bincount(hard_labels, minlength=N_CLASSES).tolist()
    named = list(zip(CLASS_NAMES, counts, strict=True))
    too_few = [f"{name} ({n})" for name, n in named if n < MIN_IMAGES_PER_CLASS]
    if too_few:
        summary = ", ".join(f"{name}={n}" for name, n in named)
        raise TrainingDataError(
            f"{what} need at least {MIN_IMAGES_PER_CLASS} images per class; too few for: "
            f"{', '.join(too_few)} (counts: {summary})"
        )
    return counts


def _class_weights(probs: torch.Tensor, enabled: bool) -> torch.Tensor:
    """Inverse-frequency weights scaled so the average weight over training images is 1."""
    if not enabled:
        return torch.ones(N_CLASSES)
    frequency = probs.sum(dim=0) / probs.shape[0]
    return 1.0 / (N_CLASSES * frequency.clamp_min(1e-6))


# ---------------------------------------------------------------------------------------------
# augmentation, schedule, metrics


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random geometry and appearance on a float batch in [0, 1], all on the batch's device.

    Why this strong: the default cohort is synthetic and real scans differ from it in field of view,
    orientation, contrast, coil shading, noise and sharpness. Each image gets an affine (rotation
    +-25 deg, a third of them any angle; mirror half of them; zoom 0.75-1.35; shift +-12%), a smooth
    multiplicative bias field, gamma 0.6-1.7, contrast and brightness jitter, a random blur mix and
    Gaussian noise, so the network learns the anatomy rather than one scanner's look.
    """
    n, device = batch.shape[0], batch.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.rand(n, device=device, generator=generator) * (high - low) + low

    any_angle = uniform(0.0, 1.0) < ANY_ANGLE_SHARE
    angle = torch.where(any_angle, uniform(-180.0, 180.0), uniform(-25.0, 25.0)) * (math.pi / 180.0)
    mirror = torch.where(uniform(0.0, 1.0) < 0.5, -1.0, 1.0)
    scale = uniform(*ZOOM_RANGE)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    shift_x, shift_y = uniform(-0.24, 0.24), uniform(-0.24, 0.24)  # 12% of the width in [-1, 1] coordinates
    rows = [torch.stack([cos * mirror, -sin, shift_x], dim=1), torch.stack([sin * mirror, cos, shift_y], dim=1)]
    grid = F.affine_grid(torch.stack(rows, dim=1), list(batch.shape), align_corners=False)
    x = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)
    coarse = torch.randn(n, 1, 4, 4, device=device, generator=generator) * uniform(0.0, 0.4).view(n, 1, 1, 1)
    x = x * torch.exp(F.interpolate(coarse, size=x.shape[-2:], mode="bicubic", align_corners=False))
    blur_mix = uniform(-0.5, 1.0).clamp_min(0.0).view(n, 1, 1, 1)
    x = torch.lerp(x, F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False), blur_mix)
    gamma = torch.exp(uniform(math.log(0.6), math.log(1.7))).view(n, 1, 1, 1)
    contrast = uniform(0.8, 1.2).view(n, 1, 1, 1)
    brightness = uniform(-0.08, 0.08).view(n, 1, 1, 1)
    noise = torch.randn(x.shape, device=device, generator=generator) * uniform(0.0, 0.04).view(n, 1, 1, 1)
    return (x.clamp(0, 1).pow(gamma) * contrast + brightness + noise).clamp(0, 1)


def _lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _macro_f1_and_accuracy(confusion: list[list[int]]) -> tuple[float, float]:
    """Macro-F1 over classes present in truth or prediction (scikit-learn's default labels)."""
    cm = np.asarray(confusion, dtype=float)
    tp = np.diag(cm)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = (support + predicted) > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=present)
    return float(f1[present].mean()), float(tp.sum() / cm.sum())


# ---------------------------------------------------------------------------------------------
# training


def _autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; a disabled context on CPU (bf16 matmuls are slow on most CPUs)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@dataclass
class _Run:
    """Device-resident state of one training run (internal)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    images: torch.Tensor
    targets: torch.Tensor
    class_weights: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    generator: torch.Generator
    config: TrainConfig

    def to_model_input(self, batch_uint8: torch.Tensor, augment: bool) -> torch.Tensor:
        """uint8 batch -> (augmented) per-image normalised float input, channels_last on CUDA."""
        x = batch_uint8.float().div_(255.0)
        if augment:
            x = _augment(x, self.generator)
        x = normalise_batch(x)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x


def _train_one_epoch(run: _Run, step: int, total_steps: int, warmup_steps: int) -> tuple[torch.Tensor, int]:
    """One pass over shuffled training batches; returns (device loss sum, images seen)."""
    run.model.train()
    n, batch_size = run.images.shape[0], min(run.config.batch_size, run.images.shape[0])
    order = torch.randperm(n, device=run.device, generator=run.generator)
    loss_sum = torch.zeros((), device=run.device)
    seen = 0
    # the ragged tail is dropped (a batch of one breaks BatchNorm); the next epoch reshuffles
    for start in range(0, n - batch_size + 1, batch_size):
        index = order[start : start + batch_size]
        for group in run.optimizer.param_groups:
            group["lr"] = run.config.lr * _lr_factor(step, total_steps, warmup_steps)
        with _autocast(run.device):
            logits = run.model(run.to_model_input(run.images[index], run.config.augment))
        loss = F.cross_entropy(logits.float(), run.targets[index], weight=run.class_weights)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        loss_sum += loss.detach() * batch_size
        seen += batch_size
        step += 1
    return loss_sum, seen


@torch.inference_mode()
def _predict_logits(model: nn.Module, images: torch.Tensor, to_input: Callable[[torch.Tensor], torch.Tensor],
                    batch_size: int) -> torch.Tensor:
    model.eval()
    outputs = []
    for chunk in images.split(batch_size):
        with _autocast(images.device):
            outputs.append(model(to_input(chunk)).float())
    return torch.cat(outputs)


def _validate(run: _Run) -> tuple[float, float, float]:
    """Validation (loss, accuracy, macro-F1) with one device->host transfer."""
    logits = _predict_logits(run.model, run.val_images, lambda b: run.to_model_input(b, augment=False),
                             max(_EVAL_BATCH, run.config.batch_size))
    loss = F.cross_entropy(logits, run.val_labels)
    confusion = torch.bincount(run.val_labels * N_CLASSES + logits.argmax(dim=1), minlength=N_CLASSES**2)
    packed = torch.cat([loss.view(1), confusion.float()]).tolist()
    confusion_rows = np.asarray(packed[1:], dtype=int).reshape(N_CLASSES, N_CLASSES).tolist()
    macro_f1, accuracy = _macro_f1_and_accuracy(confusion_rows)
    return packed[0], accuracy, macro_f1


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _out_of_memory(config: TrainConfig, error: BaseException) -> TrainingResourceError:
    return TrainingResourceError(
        f"CUDA out of memory training {config.architecture} at input_size={config.input_size} with "
        f"batch_size={config.batch_size}: lower TrainConfig.batch_size "
        f"(e.g. to {max(1, config.batch_size // 2)}) "
        f"or TrainConfig.input_size, or set device='cpu' ({error})"
    )


def train_classifier(
    images: torch.Tensor,
    targets: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    config: TrainConfig | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> TrainResult:
    """Train ``config.architecture`` on the labelled images; return the best-validation-F1 model."""
    config = config or TrainConfig()
    probs = _probability_targets(targets, _as_n1hw(images, "training images").shape[0], config.soft_labels)
    train_counts = _check_class_counts(probs.argmax(dim=1), "training labels")
    n_val = _as_n1hw(val_images, "validation images").shape[0]
    if val_labels.ndim != 1 or val_labels.dtype.is_floating_point or val_labels.shape[0] != n_val:
        raise TrainingDataError(
            "val_labels must be integer class indices, one per validation image; "
            f"got {tuple(val_labels.shape)} {val_labels.dtype} for {n_val} images"
        )
    if val_labels.numel() == 0:
        raise TrainingDataError("no validation images: early stopping and model selection need some")
    if ((val_labels < 0) | (val_labels >= N_CLASSES)).any():
        raise TrainingDataError(f"validation labels outside 0..{N_CLASSES - 1}")

    device = select_device(config)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    weights = _class_weights(probs, config.class_weighting)
    logger.info(
        "training %s at %d px on %s: %d images (%s), %d validation images, soft_labels=%s, class weights %s",
        config.architecture, config.input_size, device, probs.shape[0],
        ", ".join(f"{n}={c}" for n, c in zip(CLASS_NAMES, train_counts, strict=True)),
        val_labels.shape[0], config.soft_labels, [round(w, 3) for w in weights.tolist()],
    )
    try:
        return _fit(config, device, generator, images, probs, weights, val_images, val_labels, on_epoch)
    except torch.OutOfMemoryError as error:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise _out_of_memory(config, error) from error


def _fit(
    config: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    images: torch.Tensor,
    probs: torch.Tensor,
    weights: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    on_epoch: Callable[[EpochMetrics], None] | None,
) -> TrainResult:
    started = time.perf_counter()
    model = build_model(config.architecture).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    run = _Run(
        model=model,
        optimizer=torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay),
        device=device,
        images=_prepare_images(images, config.input_size, device, "training images", config.crop_fraction),
        targets=probs.to(device),
        class_weights=weights.to(device),
        val_images=_prepare_images(val_images, config.input_size, device, "validation images",
                                   config.crop_fraction),
        val_labels=val_labels.long().to(device),
        generator=generator,
        config=config,
    )
    n_train = run.images.shape[0]
    steps_per_epoch = max(1, n_train // min(config.batch_size, n_train))
    warmup_steps = max(1, round(config.warmup_epochs * steps_per_epoch))
    planned_epochs = config.epochs
    history: list[dict[str, float]] = []
    best_f1, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    train_images_total, train_seconds_total, step = 0, 0.0, 0
    stop_reason = "completed"
    cap_seconds = config.max_minutes * 60.0

    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        loss_sum, seen = _train_one_epoch(run, step, planned_epochs * steps_per_epoch, warmup_steps)
        step += steps_per_epoch
        _synchronise(device)
        train_seconds = time.perf_counter() - epoch_start
        val_loss, val_accuracy, val_f1 = _validate(run)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=float(loss_sum.item()) / max(1, seen),
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            val_macro_f1=val_f1,
            lr=run.optimizer.param_groups[0]["lr"],
            images_per_s=seen / max(train_seconds, 1e-9),
            seconds=time.perf_counter() - epoch_start,
        )
        history.append(asdict(metrics))
        train_images_total += seen
        train_seconds_total += train_seconds
        logger.info(
            "epoch %d/%d: train_loss %.4f val_loss %.4f val_acc %.3f val_macro_f1 %.3f lr %.2e "
            "%.0f img/s %.1f s",
            epoch, planned_epochs, metrics.train_loss, val_loss, val_accuracy, val_f1, metrics.lr,
            metrics.images_per_s, metrics.seconds,
        )
        if on_epoch is not None:
            on_epoch(metrics)
        if val_f1 > best_f1:
            best_f1, best_epoch, best_state = val_f1, epoch, copy.deepcopy(model.state_dict())
        elapsed = time.perf_counter() - started
        epochs_that_fit = 1 + int(max(0.0, cap_seconds - elapsed) // max(metrics.seconds, 1e-9))
        if epoch == 1 and epochs_that_fit < config.epochs:
            planned_epochs = epochs_that_fit
            logger.info("max_minutes=%.1f: cosine schedule shortened to %d epochs", config.max_minutes,
                        planned_epochs)
        if epoch == config.epochs:
            break
        if epoch - best_epoch >= config.patience:
            stop_reason = "patience"
            break
        if epoch >= planned_epochs or elapsed + metrics.seconds > cap_seconds:
            stop_reason = "time_cap"
            break

    model.load_state_dict(best_state)
    model = model.to("cpu").to(memory_format=torch.contiguous_format).eval()
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        best_val_macro_f1=best_f1,
        device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        images_per_s=train_images_total / max(train_seconds_total, 1e-9),
        seconds=time.perf_counter() - started,
        stopped_early=stop_reason != "completed",
        stop_reason=stop_reason,
        class_weights=weights.tolist(),
        config=config,
    )


def predict_proba(
    model: nn.Module,
    images: torch.Tensor,
    input_size: int,
    batch_size: int = _EVAL_BATCH,
    device: torch.device | str | None = None,
    crop_fraction: float = 1.0,
) -> np.ndarray:
    """Class probabilities ``(N, 3)`` for uint8 images; the model goes back to where it was."""
    target = torch.device(device) if device is not None else next(model.parameters()).device
    original = next(model.parameters()).device
    model.to(target)
    try:
        prepared = _prepare_images(images, input_size, target, "images", crop_fraction)
        logits = _predict_logits(model, prepared, normalise_batch, batch_size)
        return torch.softmax(logits, dim=1).cpu().numpy()
    finally:
        model.to(original)
