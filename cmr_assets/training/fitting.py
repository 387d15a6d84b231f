"""One classifier fitted on labelled slice rows and packaged for use: the step that the model assets,
the repeated strategy comparison and the learning curves share (`fit_classifier`), and everything a
strategy's registered model carries besides (`train_strategy`: OOD calibration, provenance, the
params and metrics to log, the validation confusion picture).

Pure of Dagster and MLflow: rows (from `dataset.labelled_rows`) and a `TrainConfig` in, a
`FittedClassifier` / `StrategyTraining` out, so scripts and tests call it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cmr_assets.domain import CLASS_NAMES
from cmr_assets.evaluation.metrics import classification_metrics
from cmr_assets.figures import confusion_matrix_png
from cmr_assets.training.core import EpochMetrics, TrainConfig, TrainResult, train_classifier
from cmr_assets.training.dataset import PROBABILITY_COLUMNS, array_hash, load_slice_images
from cmr_assets.training.packaging import DeployableClassifier, predict_slices
from cmr_assets.training.provenance import provenance_tags


def symmetry_views_for(config: TrainConfig) -> int:
    """The views the packaged model averages: `test_time_views` when training mirrored and turned the
    images, else 1 (a network that never saw a mirrored slice is not invariant to mirroring)."""
    return config.test_time_views if config.augment else 1


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


def training_class_prior(train: pd.DataFrame, config: TrainConfig) -> np.ndarray:
    """The class shares the trained network's probabilities assume: balanced under inverse-frequency
    class weighting (the default), else the training labels' own mix (soft labels: their mean)."""
    if config.class_weighting:
        return np.full(len(CLASS_NAMES), 1.0 / len(CLASS_NAMES))
    if config.soft_labels:
        shares = train[PROBABILITY_COLUMNS].to_numpy(dtype=float).mean(axis=0)
    else:
        shares = np.bincount(train["target"].to_numpy(), minlength=len(CLASS_NAMES)) / max(1, len(train))
    return np.clip(shares, 1e-3, None)


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
    deployable = DeployableClassifier(result.model, config.input_size, config.crop_fraction,
                                      symmetry_views_for(config), training_class_prior(train, config)).eval()
    val_metrics = classification_metrics(val_targets, predict_slices(deployable, val_images))
    return FittedClassifier(deployable, result, train_images, val_images, val_metrics)


@dataclass(frozen=True)
class StrategyTraining:
    """One strategy's trained model with what its registered version carries: OOD calibration
    (logged as metrics), provenance (version tags), params and metrics for the tracking run, and the
    validation confusion matrix as a picture."""

    fitted: FittedClassifier
    ood_calibration: dict[str, float]
    provenance: dict[str, str]
    params: dict[str, Any]
    metrics: dict[str, float]
    confusion_png: bytes

    @property
    def complete(self) -> bool:
        """False when the wall-clock safety cap stopped training: such a model is never registered."""
        return self.fitted.result.stop_reason != "time_cap"


def train_strategy(root: Path, strategy: str, train: pd.DataFrame, val: pd.DataFrame, scans: pd.DataFrame,
                   annotator_ids: Sequence[str], config: TrainConfig, label_column: str = "label",
                   on_epoch: Callable[[EpochMetrics], None] | None = None) -> StrategyTraining:
    """Fit one strategy's model on its labelled rows and gather what its registered version logs.

    `scans` (scan_id, manufacturer_model) and `annotator_ids` give the provenance of the train and
    validation rows. Raises `TrainingDataError` / `TrainingResourceError` from the training core."""
    fitted = fit_classifier(root, train, val, config, on_epoch)
    result = fitted.result
    ood_calibration = fitted.deployable.calibrate_ood(fitted.train_images, train["target"].to_numpy(),
                                                      fitted.val_images)
    used_scans = set(train["scan_id"]) | set(val["scan_id"])
    provenance = provenance_tags(scans[scans["scan_id"].isin(used_scans)], annotator_ids)
    counts = train[label_column].value_counts()
    params = {
        "architecture": config.architecture, "input_size": config.input_size, "crop_fraction": config.crop_fraction,
        "test_time_views": symmetry_views_for(config),
        "training_prior": " ".join(f"{x:.3f}" for x in training_class_prior(train, config)),
        "epochs": config.epochs, "batch_size": config.batch_size, "learning_rate": config.lr,
        "patience": config.patience, "max_minutes": config.max_minutes, "seed": config.seed,
        "soft_labels": config.soft_labels, "label_column": label_column,
        "data_hash": array_hash(fitted.train_images), "device": result.device, "n_train": len(train),
        "n_val": len(val), **{f"n_train_{name}": int(counts.get(name, 0)) for name in CLASS_NAMES},
    }
    metrics = {"best_val_macro_f1": result.best_val_macro_f1, "val_macro_f1": fitted.val_metrics["macro_f1"],
               "val_accuracy": fitted.val_metrics["accuracy"], "train_images_per_s": result.images_per_s,
               "train_seconds": result.seconds, "best_epoch": result.best_epoch,
               "epochs_run": len(result.history), **ood_calibration}
    confusion = confusion_matrix_png(fitted.val_metrics["confusion_matrix"]["matrix"], title=f"{strategy}: validation")
    return StrategyTraining(fitted, ood_calibration, provenance, params, metrics, confusion)
