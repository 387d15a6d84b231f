"""CNN architectures for 3-way slice classification, and the input normalisation they expect.

Plain torch/torchvision (no Dagster, no MLflow), so the training core and the GPU check script can
import it anywhere.

Public API:
- ``ARCHITECTURES``: the names ``build_model`` accepts.
- ``build_model(architecture="small_cnn", n_classes=3) -> nn.Module``: an untrained classifier that
  takes a float batch ``(N, 1, H, W)`` (already normalised by ``normalise_batch``) and returns logits
  ``(N, n_classes)``. Any ``H, W >= 32`` works (global average pooling).
    * ``"small_cnn"``: a stride-2 conv3x3-BN-ReLU stem (16 channels), then 4 conv3x3-BN-ReLU blocks
      of 32/64/128/192 channels with 2x2 max-pooling after the first three, global average pool,
      dropout 0.2, linear: 319,539 parameters for 3 classes. The stride-2 stem keeps full-resolution
      activations small, which is what limits CPU speed (about 2x faster than the same blocks
      without it, see ``training.core`` for measured throughput).
    * ``"resnet18"``: torchvision ResNet-18 with ``weights=None`` (nothing downloaded) and a
      1-channel 7x7 first conv; 11,171,779 parameters for 3 classes. The GPU default.
- ``normalise_batch(batch_uint8) -> float tensor``: per-image z-score of a uint8 batch. Per image
  (not a dataset mean/std) so a model carries no statistics besides its weights and copes with the
  arbitrary intensity scaling of MR between scanners.
- ``crop_and_resize(batch, input_size, crop_fraction=1.0)``: the central crop and resize that
  training and the registered model share.
- ``count_parameters(model) -> int``.
"""

from __future__ import annotations

from typing import Final

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from cmr_assets.domain import N_CLASSES

ARCHITECTURES: Final[tuple[str, ...]] = ("small_cnn", "resnet18")
SMALL_CNN_STEM_CHANNELS: Final[int] = 16
SMALL_CNN_CHANNELS: Final[tuple[int, ...]] = (32, 64, 128, 192)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _small_cnn(n_classes: int) -> nn.Module:
    layers = _conv_bn_relu(1, SMALL_CNN_STEM_CHANNELS, stride=2)
    channels = (SMALL_CNN_STEM_CHANNELS, *SMALL_CNN_CHANNELS)
    for i, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:], strict=True)):
        layers += _conv_bn_relu(c_in, c_out)
        if i < len(SMALL_CNN_CHANNELS) - 1:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(channels[-1], n_classes),
    )


def _resnet18_one_channel(n_classes: int) -> nn.Module:
    model = resnet18(weights=None, num_classes=n_classes)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def build_model(architecture: str = "small_cnn", n_classes: int = N_CLASSES) -> nn.Module:
    """Return an untrained 1-channel classifier; raises ValueError naming the valid architectures."""
    if architecture == "small_cnn":
        return _small_cnn(n_classes)
    if architecture == "resnet18":
        return _resnet18_one_channel(n_classes)
    raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")


def crop_and_resize(batch: torch.Tensor, input_size: int, crop_fraction: float = 1.0) -> torch.Tensor:
    """Central `crop_fraction` of a float `(N, 1, H, W)` batch (0..255), resized to `input_size`, rounded.

    Why a central crop: CMR fields of view are centred on the heart, so the middle ~70% holds it with
    margin; cropping before resizing gives the network 1.4x finer pixels for the same cost and
    fewer distractors. Training and the registered model call this one function, so they agree.
    """
    if not 0.2 <= crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in [0.2, 1], got {crop_fraction}")
    height, width = batch.shape[-2:]
    if crop_fraction < 1.0:
        crop_h, crop_w = max(1, round(height * crop_fraction)), max(1, round(width * crop_fraction))
        top, left = (height - crop_h) // 2, (width - crop_w) // 2
        batch = batch[..., top:top + crop_h, left:left + crop_w]
    if batch.shape[-2:] != (input_size, input_size):
        batch = F.interpolate(batch, size=(input_size, input_size), mode="bilinear", antialias=True,
                              align_corners=False).round().clamp(0, 255)
    return batch


def normalise_batch(batch: torch.Tensor) -> torch.Tensor:
    """Per-image z-score of a ``(N, 1, H, W)`` batch (uint8 or float) as float32."""
    x = batch.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    return (x - mean) / (std + 1e-3)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (for reports and MLflow params)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
