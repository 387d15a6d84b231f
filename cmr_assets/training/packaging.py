"""The registered model's contract: de-identified slices in, class probabilities out.

The training core feeds its network resized, per-image normalised tensors and reads logits. A
clinic's consumer should not have to know that, so the model that goes to the registry wraps the
network with the same resizing and normalisation and ends in a softmax: it takes the slice store's
`(N, 1, 128, 128)` images (uint8 values as float32, 0..255) and returns `(N, 3)` probabilities in
`CLASS_NAMES` order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cmr_assets.ingest.dicom_series import ARRAY_SIZE
from cmr_assets.training.models import normalise_batch


class DeployableClassifier(nn.Module):
    """Resize (as training did) -> per-image normalisation -> network -> softmax."""

    def __init__(self, network: nn.Module, input_size: int):
        super().__init__()
        self.network = network
        self.input_size = int(input_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False).round().clamp(0, 255)
        return torch.softmax(self.network(normalise_batch(x)).float(), dim=1)


def input_example(images: np.ndarray) -> np.ndarray:
    """A float32 `(2, 1, 128, 128)` example from stored uint8 slices (2 so the batch size stays free)."""
    sample = np.asarray(images[:2], dtype=np.float32).reshape(-1, 1, ARRAY_SIZE, ARRAY_SIZE)
    return np.concatenate([sample, sample])[:2]


def predict_slices(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Probabilities `(N, 3)` from a deployable (or registry-loaded) model for uint8 `(N, 128, 128)` slices."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.asarray(images[start:start + batch_size], dtype=np.float32)[:, None])
            out.append(model(batch).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 3), dtype=np.float32)
