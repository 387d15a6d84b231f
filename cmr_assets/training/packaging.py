"""The registered model's contract: de-identified slices in, class probabilities and an OOD score out.

The training core feeds its network resized, per-image normalised tensors and reads logits. A
clinic's consumer should not have to know that, so the model that goes to the registry wraps the
network with the same central crop, resizing and normalisation and ends in a softmax: it takes the slice store's
`(N, 1, 128, 128)` images (uint8 values as float32, 0..255) and returns `(N, 4)`: the 3 class
probabilities in `CLASS_NAMES` order, then the out-of-distribution score (NaN when uncalibrated).
Models registered before the score existed return `(N, 3)`; `predict_slices*` accept both.

Why an OOD score: a filter must say when it cannot judge. `calibrate_ood` stores, as buffers that
travel with the exported model, the class means and shared (shrunk) precision of the network's
features (channel means of every stage, from low-level texture to the penultimate layer) on the
training images, and per stage a threshold: `OOD_MARGIN` x the `OOD_VALIDATION_QUANTILE` of the
validation images' distances. The score is the largest, over stages, Mahalanobis distance to the
nearest class mean divided by that stage's threshold (Lee et al., NeurIPS 2018, with their
feature ensemble), so a score above 1 means "further from the training data, at some level of
the network, than almost every validation image". Early stages catch other modalities and noise,
the last one images whose content the classes never showed.

Why test-time symmetry views: training mirrors every other image, so the network's class evidence
should not depend on the mirror; on a scan unlike the training images the two disagree (on the
shipped real cines the plain view calls a mid-ventricular slice too apical and the mirrored one LV).
The probabilities are therefore the mean over the first `n_views` symmetries of the square
(`DEFAULT_VIEWS` = 2: the image and its mirror; up to `DIHEDRAL_VIEWS` = 8 adds the quarter turns,
which training shows only in the third of images turned by any angle, and which cost synthetic
accuracy: docs/real_images.md), one batched pass; the OOD features come from the plain view.

Why the model carries its training class prior (`training_prior`): training weights the classes by
inverse frequency, so the network's probabilities are those of a cohort with balanced classes. The
filter re-weights them to the class mix of the stacks it judges (`inference.class_prior`); to do
that it must know which mix the network learnt under.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.models import ResNet

from cmr_assets.domain import ARRAY_SIZE, N_CLASSES
from cmr_assets.training.models import crop_and_resize, normalise_batch

OOD_VALIDATION_QUANTILE = 0.995
OOD_MARGIN = 1.25  # so that in-distribution slices are almost never flagged
_SHRINKAGE = 0.05
DIHEDRAL_VIEWS = 8  # the symmetries of the square: 4 rotations, each plain and mirrored
DEFAULT_VIEWS = 2  # the image and its mirror


def features_and_logits(network: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Channel means of every stage (low-level texture up to the penultimate features) and the logits
    of a `models.build_model` network, in one pass."""
    stages: list[torch.Tensor] = []
    if isinstance(network, nn.Sequential):
        for module in network:
            x = module(x)
            if isinstance(module, nn.ReLU):
                stages.append(x.mean(dim=(2, 3)))
        return stages, x
    if isinstance(network, ResNet):
        x = network.maxpool(network.relu(network.bn1(network.conv1(x))))
        stages.append(x.mean(dim=(2, 3)))
        for layer in (network.layer1, network.layer2, network.layer3, network.layer4):
            x = layer(x)
            stages.append(x.mean(dim=(2, 3)))
        return stages, network.fc(stages[-1])
    raise TypeError(f"no feature split for {type(network).__name__}: expected models.build_model's networks")


def _check_views(n_views: int) -> None:
    if not 1 <= n_views <= DIHEDRAL_VIEWS:
        raise ValueError(f"symmetry views must be 1..{DIHEDRAL_VIEWS}, got {n_views}")


def symmetry_views(batch: torch.Tensor, n_views: int) -> torch.Tensor:
    """`(n_views * N, C, S, S)`: the square batch under the first `n_views` of `DIHEDRAL_VIEWS`
    symmetries, view-major (rows `v * N .. (v + 1) * N` are view `v`; view 0 is the batch itself)."""
    _check_views(n_views)
    views = []
    for index in range(n_views):
        rotated = torch.rot90(batch, index // 2, dims=(2, 3))
        views.append(torch.flip(rotated, dims=(3,)) if index % 2 else rotated)
    return torch.cat(views)


class DeployableClassifier(nn.Module):
    """Resize (as training did) -> per-image normalisation -> network -> softmax averaged over
    symmetry views, plus the OOD score."""

    def __init__(self, network: nn.Module, input_size: int, crop_fraction: float = 1.0,
                 n_views: int = DEFAULT_VIEWS, training_prior: np.ndarray | None = None):
        super().__init__()
        _check_views(n_views)
        self.network = network
        self.input_size = int(input_size)
        self.crop_fraction = float(crop_fraction)
        self.n_views = int(n_views)
        self.n_ood_stages = 0
        self.register_buffer("ood_threshold", torch.zeros(0))
        prior = np.full(N_CLASSES, 1.0 / N_CLASSES) if training_prior is None else np.asarray(training_prior, float)
        if prior.shape != (N_CLASSES,) or not (prior > 0).all():
            raise ValueError(f"training_prior must be {N_CLASSES} positive shares, got {prior.tolist()}")
        self.register_buffer("training_prior", torch.tensor(prior / prior.sum(), dtype=torch.float32))

    def _features_and_probabilities(self, images: torch.Tensor,
                                    n_views: int | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Identity-view stage features and view-averaged probabilities (`n_views` defaults to the model's)."""
        n_views = self.n_views if n_views is None else n_views
        x = normalise_batch(crop_and_resize(images.float(), self.input_size, self.crop_fraction))
        stages, logits = features_and_logits(self.network, symmetry_views(x, n_views))
        n = x.shape[0]
        probabilities = torch.softmax(logits.float(), dim=1).reshape(n_views, n, -1).mean(dim=0)
        return [f[:n].float() for f in stages], probabilities

    def _distances(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """(N, stages) Mahalanobis distance of each stage's features to the nearest class mean."""
        out = []
        for index, features in enumerate(stages):
            means, precision = getattr(self, f"ood_means_{index}"), getattr(self, f"ood_precision_{index}")
            centred = features[:, None, :] - means[None, :, :]  # (N, classes, D)
            squared = torch.einsum("ncd,de,nce->nc", centred, precision, centred)
            out.append(squared.clamp_min(0).min(dim=1).values.sqrt())
        return torch.stack(out, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        stages, probabilities = self._features_and_probabilities(images)
        if self.n_ood_stages:
            score = (self._distances(stages) / self.ood_threshold).max(dim=1).values
        else:
            score = torch.full_like(probabilities[:, 0], float("nan"))
        return torch.cat([probabilities, score[:, None]], dim=1)

    def calibrate_ood(self, train_images: np.ndarray, train_targets: np.ndarray,
                      val_images: np.ndarray) -> dict[str, float]:
        """Fit class-conditional Gaussians per stage on training images and the thresholds on validation."""
        stages = self._batched_stages(train_images)
        targets = torch.from_numpy(np.array(train_targets, dtype=np.int64))
        present = sorted(set(targets.tolist()))
        row_class = torch.searchsorted(torch.tensor(present), targets)
        for index, features in enumerate(stages):
            means = torch.stack([features[targets == c].mean(dim=0) for c in present])
            centred = features - means[row_class]
            covariance = centred.T @ centred / max(1, len(centred) - 1)
            ridge = _SHRINKAGE * covariance.diagonal().mean() * torch.eye(covariance.shape[0])
            self.register_buffer(f"ood_means_{index}", means)
            self.register_buffer(f"ood_precision_{index}", torch.linalg.inv((1 - _SHRINKAGE) * covariance + ridge))
        self.n_ood_stages = len(stages)
        val_distances = self._distances(self._batched_stages(val_images))
        quantiles = torch.quantile(val_distances, OOD_VALIDATION_QUANTILE, dim=0)
        self.ood_threshold = OOD_MARGIN * quantiles
        val_scores = (val_distances / self.ood_threshold).max(dim=1).values
        return {"ood_stages": float(len(stages)), "ood_val_flagged": float((val_scores > 1).float().mean())}

    def _batched_stages(self, images: np.ndarray, batch_size: int = 256) -> list[torch.Tensor]:
        self.eval()
        with torch.no_grad():
            batches = [self._features_and_probabilities(_as_batch(images[start:start + batch_size]), n_views=1)[0]
                       for start in range(0, len(images), batch_size)]
        return [torch.cat(parts) for parts in zip(*batches, strict=True)]


def training_prior_of(model: nn.Module) -> np.ndarray:
    """The class shares the model's probabilities assume; balanced for models registered before the
    prior travelled with them (they were all trained with inverse-frequency class weights)."""
    prior = getattr(model, "training_prior", None)
    if prior is None:
        return np.full(N_CLASSES, 1.0 / N_CLASSES)
    return prior.detach().cpu().numpy().astype(float)


def _as_batch(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(images, dtype=np.float32)[:, None])


def input_example(images: np.ndarray) -> np.ndarray:
    """A float32 `(2, 1, 128, 128)` example from stored uint8 slices (2 so the batch size stays free)."""
    sample = np.asarray(images[:2], dtype=np.float32).reshape(-1, 1, ARRAY_SIZE, ARRAY_SIZE)
    return np.concatenate([sample, sample])[:2]


def _outputs(model: nn.Module, images: np.ndarray, batch_size: int) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(model(_as_batch(images[start:start + batch_size])).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, N_CLASSES + 1), dtype=np.float32)


def predict_slices(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Probabilities `(N, 3)` from a deployable (or registry-loaded) model for uint8 `(N, 128, 128)` slices."""
    return _outputs(model, images, batch_size)[:, :N_CLASSES]


def predict_slices_with_ood(model: nn.Module, images: np.ndarray,
                            batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities `(N, 3)`, OOD scores `(N,)`); scores are NaN for a model without OOD calibration."""
    out = _outputs(model, images, batch_size)
    scores = out[:, N_CLASSES] if out.shape[1] > N_CLASSES else np.full(len(out), np.nan, dtype=np.float32)
    return out[:, :N_CLASSES], scores
