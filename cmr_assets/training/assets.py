"""Training as assets: the patient-level split and one CNN per labelling strategy, logged to MLflow."""


import subprocess
import time

import dagster as dg
import numpy as np
import pandas as pd
import torch
from dagster_duckdb import DuckDBResource

from cmr_assets.classes import CLASS_NAMES
from cmr_assets.duckdb_io import append_rows, read_table
from cmr_assets.evaluation.metrics import classification_metrics
from cmr_assets.evaluation.plots import confusion_matrix_png
from cmr_assets.metadata import picture, table
from cmr_assets.resources import DataPathsResource, MlflowResource
from cmr_assets.settings import PROJECT_ROOT
from cmr_assets.training.core import (
    TrainConfig,
    TrainingDataError,
    TrainingResourceError,
    default_config,
    select_device,
    train_classifier,
)
from cmr_assets.training.dataset import (
    PROBABILITY_COLUMNS,
    array_hash,
    frame_hash,
    label_hash,
    labelled_rows,
    load_slice_images,
)
from cmr_assets.training.packaging import DeployableClassifier, input_example, predict_slices
from cmr_assets.training.provenance import provenance_tags
from cmr_assets.training.split import class_mix_from_labels, split_by_scan

GROUP = "training"
SLICE_COLUMNS = "slice_id, scan_id, slice_from_base, array_path, array_index"


class SplitConfig(dg.Config):
    """Patient-level split fractions (train, val, test) and seed; existing assignments never change."""

    train: float = 0.6
    val: float = 0.2
    test: float = 0.2
    seed: int = 0


@dg.asset(group_name=GROUP, deps=["slices", "labels_ranking"], pool="duckdb", kinds={"duckdb"})
def dataset_split(context: dg.AssetExecutionContext, config: SplitConfig,
                  duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Scans to train/val/test, stratified by class mix; new scans are added, old ones keep their split.

    Strata come from the ranking labels (never from the reference), so the split is the same for both models.
    """
    with duckdb.get_connection() as con:
        slices = read_table(con, "slices", "slice_id, scan_id")
        labels = read_table(con, "labels_ranking", "slice_id, label")
        existing = read_table(con, "dataset_split")
        new_scans = sorted(set(slices["scan_id"]) - set(existing.get("scan_id", [])))
        if new_scans:
            labelled = slices.merge(labels.dropna(subset=["label"]), on="slice_id")
            labelled["label"] = labelled["label"].map({n: i for i, n in enumerate(CLASS_NAMES)})
            mix = class_mix_from_labels(labelled[labelled["scan_id"].isin(new_scans)])
            unlabelled = pd.DataFrame({"scan_id": sorted(set(new_scans) - set(mix["scan_id"]))})
            mix = pd.concat([mix, unlabelled.assign(**{n: 0 for n in CLASS_NAMES})], ignore_index=True)
            assigned = split_by_scan(mix, (config.train, config.val, config.test), config.seed)
            append_rows(con, "dataset_split", assigned)
        split = read_table(con, "dataset_split")
    counts = split.groupby("split").size()
    context.log.info(f"split: {dict(counts)} scans ({len(new_scans)} newly assigned)")
    return dg.MaterializeResult(metadata={
        "new_scans": len(new_scans), **{f"scans_{k}": int(v) for k, v in counts.items()},
        "split_hash": frame_hash(split, ["scan_id", "split"])})


class ModelConfig(dg.Config):
    """Training settings; 0 / empty means the device's default (small CNN on CPU, ResNet-18 on CUDA)."""

    architecture: str = ""
    input_size: int = 0
    epochs: int = 0
    batch_size: int = 0
    max_minutes: float = 0.0
    learning_rate: float = 0.0
    seed: int = 0
    soft_labels: bool = False
    label_column: str = "label"
    device: str = "auto"

    def train_config(self) -> TrainConfig:
        base = default_config(select_device(TrainConfig(device=self.device)))
        overrides = {"architecture": self.architecture, "input_size": self.input_size, "epochs": self.epochs,
                     "batch_size": self.batch_size, "max_minutes": self.max_minutes, "lr": self.learning_rate}
        return TrainConfig(**{**base.__dict__, **{k: v for k, v in overrides.items() if v},
                              "seed": self.seed, "soft_labels": self.soft_labels, "device": self.device})


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _targets(rows: pd.DataFrame, soft: bool) -> torch.Tensor:
    if soft:
        return torch.from_numpy(rows[PROBABILITY_COLUMNS].to_numpy(dtype=np.float32).copy())
    return torch.from_numpy(rows["target"].to_numpy().copy())


def train_strategy_model(context: dg.AssetExecutionContext, strategy: str, config: ModelConfig,
                         data_paths: DataPathsResource, duckdb: DuckDBResource,
                         mlflow: MlflowResource) -> dg.MaterializeResult:
    """Train one strategy's model on its own labels for the training scans, log and register it."""
    paths = data_paths.paths()
    with duckdb.get_connection() as con:
        slices = read_table(con, "slices", SLICE_COLUMNS)
        split = read_table(con, "dataset_split")
        labels = read_table(con, f"labels_{strategy}")
        scans = read_table(con, "scans", "scan_id, manufacturer_model")
        annotators = read_table(con, f"raw_annotations_{strategy}", "DISTINCT annotator_id")
    if split.empty or labels.empty:
        raise dg.Failure(f"model_{strategy}: no split or no labels_{strategy} yet; materialise them first")
    train = labelled_rows(slices, split, labels, "train", config.label_column)
    val = labelled_rows(slices, split, labels, "val", config.label_column)
    train_config = config.train_config()
    train_images = load_slice_images(paths.root, train)
    val_images = load_slice_images(paths.root, val)
    started = time.perf_counter()

    def on_epoch(m) -> None:
        context.log.info(f"{strategy} epoch {m.epoch}: loss {m.train_loss:.3f}, val macro-F1 {m.val_macro_f1:.3f}, "
                         f"{m.images_per_s:.0f} images/s, {time.perf_counter() - started:.0f} s")

    context.log.info(f"training {strategy} model: {len(train)} train / {len(val)} val images, "
                     f"{train_config.architecture} at {train_config.input_size} px")
    try:
        result = train_classifier(torch.from_numpy(train_images), _targets(train, config.soft_labels),
                                  torch.from_numpy(val_images), torch.from_numpy(val["target"].to_numpy().copy()),
                                  train_config, on_epoch)
    except (TrainingDataError, TrainingResourceError) as error:
        raise dg.Failure(f"model_{strategy}: {error}") from error
    deployable = DeployableClassifier(result.model, train_config.input_size, train_config.crop_fraction).eval()
    ood_calibration = deployable.calibrate_ood(train_images, train["target"].to_numpy(), val_images)
    provenance = provenance_tags(scans[scans["scan_id"].isin(set(train["scan_id"]) | set(val["scan_id"]))],
                                 annotators.get("annotator_id", []))
    context.log.info(f"{strategy}: provenance {provenance}; OOD calibration {ood_calibration}")
    val_proba = predict_slices(deployable, val_images)
    val_metrics = classification_metrics(val["target"].to_numpy(), val_proba)
    split_hash = frame_hash(split, ["scan_id", "split"])
    counts = train[config.label_column].value_counts()
    params = {
        "architecture": train_config.architecture, "input_size": train_config.input_size,
        "crop_fraction": train_config.crop_fraction,
        "epochs": train_config.epochs, "batch_size": train_config.batch_size, "learning_rate": train_config.lr,
        "seed": train_config.seed, "soft_labels": train_config.soft_labels, "label_column": config.label_column,
        "label_hash": label_hash(train, val),
        "data_hash": array_hash(train_images), "split_hash": split_hash, "git_commit": _git_commit(),
        "device": result.device, "n_train": len(train), "n_val": len(val),
        **{f"n_train_{name}": int(counts.get(name, 0)) for name in CLASS_NAMES},
    }
    cm_png = confusion_matrix_png(val_metrics["confusion_matrix"]["matrix"], title=f"{strategy}: validation")
    logged = mlflow.log_trained_model(
        strategy=strategy, model=deployable, params=params, history=result.history,
        metrics={"best_val_macro_f1": result.best_val_macro_f1, "val_accuracy": val_metrics["accuracy"],
                 "train_images_per_s": result.images_per_s, "train_seconds": result.seconds,
                 "best_epoch": result.best_epoch, **ood_calibration},
        version_tags=provenance,
        input_example=input_example(val_images if len(val_images) else train_images),
        pictures={"validation_confusion_matrix.png": cm_png})
    decision = mlflow.promote_if_better(strategy, logged.version, result.best_val_macro_f1, split_hash)
    context.log.info(f"registered {logged.registered_model} v{logged.version}: {decision['decision']}")
    history = pd.DataFrame(result.history)
    return dg.MaterializeResult(metadata={
        "registered_model": logged.registered_model, "version": logged.version, "run_id": logged.run_id,
        "model_uri": logged.model_uri, "champion_decision": decision["decision"],
        "mlflow_run": dg.MetadataValue.url(mlflow.run_url(logged.run_id)),
        "best_val_macro_f1": float(result.best_val_macro_f1), "val_accuracy": float(val_metrics["accuracy"]),
        "device": result.device, "train_seconds": float(result.seconds),
        "images_per_s": float(result.images_per_s), "stop_reason": result.stop_reason,
        "n_train": len(train), "n_val": len(val), "label_hash": params["label_hash"], **provenance,
        "ood_val_flagged": ood_calibration["ood_val_flagged"],
        "history": table(history.round(4)), "validation_confusion": picture(cm_png, "validation confusion"),
    })


@dg.asset(group_name=GROUP, deps=["dataset_split", "labels_single"], pool="gpu", kinds={"pytorch", "mlflow"})
def model_single(context: dg.AssetExecutionContext, config: ModelConfig, data_paths: DataPathsResource,
                 duckdb: DuckDBResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """CNN trained on one-image-at-a-time labels; registered as `cmr-slice-classifier-single`."""
    return train_strategy_model(context, "single", config, data_paths, duckdb, mlflow)


@dg.asset(group_name=GROUP, deps=["dataset_split", "labels_ranking"], pool="gpu", kinds={"pytorch", "mlflow"})
def model_ranking(context: dg.AssetExecutionContext, config: ModelConfig, data_paths: DataPathsResource,
                  duckdb: DuckDBResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """CNN trained on multiple-image-ranking labels; registered as `cmr-slice-classifier-ranking`."""
    return train_strategy_model(context, "ranking", config, data_paths, duckdb, mlflow)


training_assets = [dataset_split, model_single, model_ranking]
