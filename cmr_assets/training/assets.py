"""Training as assets: the patient-level split and one CNN per labelling strategy, logged to MLflow.

A model asset trains only when its training labels (`label_hash`: train + val slice ids and
targets) differ from those of the strategy's newest registered version (`force: true` retrains
anyway). Training stops by epochs or early stopping; the wall-clock cap (`max_minutes`, default
`SAFETY_CAP_MINUTES`) is only a safety limit: a run that hits it is logged to MLflow as incomplete,
never registered, and the asset fails. A registered version becomes `champion` only if its
validation macro-F1 is >= the current champion's, re-scored on the same validation set.
"""


import time
import warnings
from dataclasses import replace
from typing import TypeVar

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource
from mlflow.data.pandas_dataset import PandasDataset, from_pandas

from cmr_assets.duckdb_io import append_rows, read_table
from cmr_assets.evaluation.metrics import classification_metrics
from cmr_assets.metadata import picture, table
from cmr_assets.resources import DataPathsResource, MlflowResource
from cmr_assets.run_context import git_commit
from cmr_assets.training.core import (
    EpochMetrics,
    TrainConfig,
    TrainingDataError,
    TrainingResourceError,
    default_config,
    select_device,
)
from cmr_assets.training.dataset import frame_hash, label_hash, training_rows
from cmr_assets.training.fitting import train_strategy
from cmr_assets.training.packaging import input_example, predict_slices
from cmr_assets.training.split import assign_labelled_scans

GROUP = "training"
T = TypeVar("T")
# Wall-clock safety limit per model: far above a normal run (CPU ~4 min, GPU seconds), so under load
# training still runs its epochs; reaching it marks the run incomplete (never registered).
SAFETY_CAP_MINUTES = 60.0
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
    """Scans to train/val/test, stratified by class mix; new scans are added, old ones keep their split;
    all scans of one patient (`scans.patient_group`, else one study) share one split.

    Strata come from the ranking labels (never from the reference), so the split is the same for both
    models. A scan with no ranking label yet waits: it is assigned once its first labels arrive (its
    class mix is then known), so new scans never disturb training before they are labelled.
    """
    with duckdb.get_connection() as con:
        update = assign_labelled_scans(read_table(con, "slices", "slice_id, scan_id"),
                                       read_table(con, "labels_ranking", "slice_id, label"),
                                       read_table(con, "dataset_split"), read_table(con, "scans"),
                                       (config.train, config.val, config.test), config.seed)
        if update.new_scans:
            append_rows(con, "dataset_split", update.assigned)
        split = read_table(con, "dataset_split")
    counts = split.groupby("split").size() if len(split) else pd.Series(dtype=int)
    context.log.info(f"split: {dict(counts)} scans ({len(update.new_scans)} newly assigned, {update.waiting} "
                     "waiting for labels)")
    return dg.MaterializeResult(metadata={
        "new_scans": len(update.new_scans), "scans_waiting_for_labels": update.waiting,
        **{f"scans_{k}": int(v) for k, v in counts.items()},
        "split_hash": frame_hash(split, ["scan_id", "split"]) if len(split) else "empty"})


class ModelConfig(dg.Config):
    """Training settings; a setting left out (None) takes the device's default (small CNN on CPU,
    ResNet-18 on CUDA) and, for `max_minutes`, the safety cap `SAFETY_CAP_MINUTES`. `force`
    retrains even when the training labels equal those of the newest registered version."""

    architecture: str | None = None
    input_size: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    max_minutes: float | None = None
    learning_rate: float | None = None
    seed: int = 0
    soft_labels: bool = False
    label_column: str = "label"
    device: str = "auto"
    force: bool = False

    def train_config(self) -> TrainConfig:
        """The device's defaults with the settings given here; raises `ValueError` for values training
        cannot use (a size, epoch count, batch size, time or learning rate that is not positive)."""
        positive = {"input_size": self.input_size, "epochs": self.epochs, "batch_size": self.batch_size,
                    "max_minutes": self.max_minutes, "learning_rate": self.learning_rate}
        wrong = {name: value for name, value in positive.items() if value is not None and not value > 0}
        if wrong:
            raise ValueError(f"model config: {wrong} must be > 0 (leave a setting out for the default)")
        base = default_config(select_device(TrainConfig(device=self.device)))
        return replace(base, architecture=_given(self.architecture, base.architecture),
                       input_size=_given(self.input_size, base.input_size), epochs=_given(self.epochs, base.epochs),
                       batch_size=_given(self.batch_size, base.batch_size),
                       max_minutes=_given(self.max_minutes, SAFETY_CAP_MINUTES),
                       lr=_given(self.learning_rate, base.lr),
                       seed=self.seed, soft_labels=self.soft_labels, device=self.device)


def _given(value: T | None, default: T) -> T:
    return default if value is None else value


def _training_datasets(train: pd.DataFrame, val: pd.DataFrame, strategy: str, label_column: str,
                       source: str) -> dict[str, PandasDataset]:
    """The rows training learnt from, as MLflow datasets (slice ids, scans, labels; not the pixels)."""
    columns = ["slice_id", "scan_id", label_column, "target"]
    with warnings.catch_warnings():  # a local path matches MLflow's local-artifact source twice; same source
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        return {context: from_pandas(rows[columns].reset_index(drop=True), source=source,
                                     targets="target", name=f"labels_{strategy}-{which}",
                                     digest=label_hash(rows, rows.iloc[0:0]))
                for context, which, rows in (("training", "train", train), ("validation", "val", val))}


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
    rows = training_rows(slices, split, labels, config.label_column, config.soft_labels)
    train, val, training_labels, split_hash = rows.train, rows.val, rows.label_hash, rows.split_hash
    newest = mlflow.newest_label_hash(strategy)
    if newest == training_labels and not config.force:
        context.log.info(f"model_{strategy}: training labels {training_labels} unchanged since the newest "
                         "registered version; not retrained (config force: true retrains anyway)")
        return dg.MaterializeResult(metadata={"retrained": False, "label_hash": training_labels,
                                              "reason": "training labels unchanged since the newest registered "
                                                        "version"})
    train_config = config.train_config()
    started = time.perf_counter()

    def on_epoch(m: EpochMetrics) -> None:
        context.log.info(f"{strategy} epoch {m.epoch}: loss {m.train_loss:.3f}, val macro-F1 {m.val_macro_f1:.3f}, "
                         f"{m.images_per_s:.0f} images/s, {time.perf_counter() - started:.0f} s")

    context.log.info(f"training {strategy} model: {len(train)} train / {len(val)} val images, "
                     f"{train_config.architecture} at {train_config.input_size} px, up to {train_config.epochs} "
                     f"epochs (patience {train_config.patience}, safety cap {train_config.max_minutes:g} min)")
    try:
        trained = train_strategy(paths.root, strategy, train, val, scans, annotators.get("annotator_id", []),
                                 train_config, config.label_column, on_epoch)
    except (TrainingDataError, TrainingResourceError) as error:
        raise dg.Failure(f"model_{strategy}: {error}") from error
    fitted, result, val_metrics = trained.fitted, trained.fitted.result, trained.fitted.val_metrics
    context.log.info(f"{strategy}: provenance {trained.provenance}; OOD calibration {trained.ood_calibration}")
    lineage = {"dagster.run_id": context.run_id, "dagster.asset_key": context.asset_key.to_user_string(),
               "dagster.job": context.job_name or "", "label_hash": training_labels, "split_hash": split_hash,
               "stop_reason": result.stop_reason}
    logged = mlflow.log_trained_model(
        strategy=strategy, model=fitted.deployable, history=result.history, metrics=trained.metrics,
        params={**trained.params, "label_hash": training_labels, "split_hash": split_hash, "git_commit": git_commit()},
        version_tags=trained.provenance,
        input_example=input_example(fitted.val_images if len(fitted.val_images) else fitted.train_images),
        pictures={"validation_confusion_matrix.png": trained.confusion_png}, tags=lineage,
        register=trained.complete,
        datasets=_training_datasets(train, val, strategy, config.label_column, str(paths.duckdb)))
    run_link = dg.MetadataValue.url(mlflow.run_url(logged.run_id))
    if not trained.complete:
        raise dg.Failure(
            description=f"model_{strategy}: training reached the {train_config.max_minutes:g}-minute safety cap "
                        f"after {len(result.history)} of {train_config.epochs} epochs; logged as incomplete MLflow "
                        f"run {logged.run_id}, not registered (the champion is unchanged)",
            metadata={"mlflow_run_id": logged.run_id, "mlflow_run": run_link, "epochs_run": len(result.history),
                      "label_hash": training_labels})

    def rescore(model_uri: str) -> float:
        """The champion's macro-F1 on this run's validation images and labels."""
        return float(classification_metrics(val["target"].to_numpy(), predict_slices(mlflow.load_model(model_uri),
                                                                                 fitted.val_images))["macro_f1"])

    decision = mlflow.promote_if_better(strategy, logged.version, float(val_metrics["macro_f1"]), split_hash,
                                        rescore)
    before = decision["champion_before"] or {}
    context.log.info(f"registered {logged.registered_model} v{logged.version}: {decision['decision']} "
                     f"(val macro-F1 {val_metrics['macro_f1']:.4f} vs champion "
                     f"{before.get('val_macro_f1_rescored', before.get('val_macro_f1'))}, {decision['comparison']})")
    history = pd.DataFrame(result.history)
    return dg.MaterializeResult(metadata={
        "retrained": True,
        "registered_model": logged.registered_model, "version": logged.version, "run_id": logged.run_id,
        "model_uri": logged.model_uri, "champion_decision": decision["decision"],
        "champion_version": decision["champion_version"], "promotion_comparison": decision["comparison"],
        **({"champion_val_macro_f1_rescored": float(before["val_macro_f1_rescored"])}
           if "val_macro_f1_rescored" in before else {}),
        "mlflow_run": run_link,
        "mlflow_model_version": dg.MetadataValue.url(mlflow.model_version_url(logged.registered_model,
                                                                               logged.version)),
        "val_macro_f1": float(val_metrics["macro_f1"]),
        "best_val_macro_f1": float(result.best_val_macro_f1), "val_accuracy": float(val_metrics["accuracy"]),
        "device": result.device, "train_seconds": float(result.seconds), "epochs_run": len(result.history),
        "images_per_s": float(result.images_per_s), "stop_reason": result.stop_reason,
        "n_train": len(train), "n_val": len(val), "label_hash": training_labels, "split_hash": split_hash,
        **trained.provenance, "ood_val_flagged": trained.ood_calibration["ood_val_flagged"],
        "history": table(history.round(4)), "validation_confusion": picture(trained.confusion_png,
                                                                           "validation confusion"),
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
