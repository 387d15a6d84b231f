"""One classifier fitted on labelled slice rows and packaged for use: the step that the model assets,
the repeated strategy comparison and the learning curves share.

Pure of Dagster and MLflow: rows (from `dataset.labelled_rows`) and a `TrainConfig` in, a
`FittedClassifier` out, so scripts and tests call it directly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cmr_assets.evaluation.metrics import classification_metrics
from cmr_assets.training.core import EpochMetrics, TrainConfig, TrainResult, train_classifier
from cmr_assets.training.dataset import PROBABILITY_COLUMNS, load_slice_images
from cmr_assets.training.packaging import DeployableClassifier, predict_slices


@dataclass(frozen=True)
class FittedClassifier:
    """The packaged model (resize, crop, normalisation and softmax inside), how training went, the
    images it saw (for calibration and input examples) and its validation metrics."""

    deployable: DeployableClassifier
    result: TrainResult
    train_images: np.ndarray
    val_images: np.ndarray
    val_metrics: dict[str, Any]


def training_targets(rows: pd.DataFrame, soft_labels: bool) -> torch.Tensor:
    """Class indices, or the rows' class probabilities when training on soft labels."""
    if soft_labels:
        return torch.from_numpy(rows[PROBABILITY_COLUMNS].to_numpy(dtype=np.float32).copy())
    return torch.from_numpy(rows["target"].to_numpy().copy())


def fit_classifier(root: Path, train: pd.DataFrame, val: pd.DataFrame, config: TrainConfig,
                   on_epoch: Callable[[EpochMetrics], None] | None = None) -> FittedClassifier:
    """Train on `train` rows, select the epoch on `val` rows, package and score on validation.

    Raises `TrainingDataError` / `TrainingResourceError` from the training core unchanged.
    """
    train_images = load_slice_images(root, train)
    val_images = load_slice_images(root, val)
    val_targets = val["target"].to_numpy()
    result = train_classifier(torch.from_numpy(train_images), training_targets(train, config.soft_labels),
                              torch.from_numpy(val_images), torch.from_numpy(val_targets.copy()), config, on_epoch)
    deployable = DeployableClassifier(result.model, config.input_size, config.crop_fraction).eval()
    val_metrics = classification_metrics(val_targets, predict_slices(deployable, val_images))
    return FittedClassifier(deployable, result, train_images, val_images, val_metrics)
