"""The strategy comparison as an experiment: repeated paired trainings and learning curves.

Both assets train models (pool `gpu`, one training at a time) and write their results as files in
`reports/` (`strategy_repeats.parquet`, `learning_curves.json` and pictures), which the
evaluation report reads; neither writes DuckDB, so they never wait for or block its single writer.
Their models are experiment runs in MLflow (kind `strategy_repeat` / `learning_curve`), never
registered: only `model_single` / `model_ranking` produce deployable versions.
"""

import json
import time
from dataclasses import replace

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from cmr_assets.domain import CLASS_NAMES, STRATEGIES
from cmr_assets.duckdb_io import read_table
from cmr_assets.evaluation.learning_curves import CURVE_COLUMNS, CURVES_FILE, curve_point
from cmr_assets.evaluation.metrics import classification_metrics
from cmr_assets.evaluation.repeats import (
    PREDICTION_COLUMNS,
    REPEATS_FILE,
    labels_version,
    predictions_frame,
    repeat_split,
)
from cmr_assets.figures import learning_curves_png
from cmr_assets.fileio import write_atomically
from cmr_assets.labelling.annotation_ingest import read_raw_annotations
from cmr_assets.metadata import picture, table
from cmr_assets.resources import DataPathsResource, MlflowResource
from cmr_assets.training.assets import ModelConfig, SplitConfig
from cmr_assets.training.core import TrainingDataError, TrainingResourceError, select_device
from cmr_assets.training.dataset import (
    evaluation_rows,
    frame_hash,
    label_hash,
    labelled_rows,
    load_slice_images,
)
from cmr_assets.training.fitting import fit_classifier
from cmr_assets.training.packaging import predict_slices
from cmr_assets.training.split import class_mix_from_labels, split_group_of_scan

GROUP = "evaluation"
CPU_REPEATS, CUDA_REPEATS = 2, 5  # default repeats in all (repeat 0 = the registered models)
# The curves train 10 models. On CPU each gets the same small compute (100 steps of 64 images at
# 64 px, without augmentation: the curves are scored on the synthetic test set), so the budgets differ
# only in their labels and `make demo` stays near 15 min on 2 cores; the trend is the point.
CPU_CURVE_STEPS, CPU_CURVE_INPUT_SIZE = 100, 64
SLICE_COLUMNS = "slice_id, scan_id, slice_from_base, n_slices, position_mm, array_path, array_index"


class StrategyRepeatsConfig(ModelConfig):
    """`repeats` in all, counting the registered models on the standing split as repeat 0 (None: 2 on
    CPU, 5 on CUDA); repeat r >= 1 gets split seed `split_seed + r` and training seed `seed + r`.
    The training fields are those of `model_single` / `model_ranking`, used for both strategies."""

    repeats: int | None = None
    split_seed: int = 1000


def _read_experiment_inputs(duckdb: DuckDBResource) -> dict[str, pd.DataFrame]:
    with duckdb.get_connection() as con:
        return {"slices": read_table(con, "slices", SLICE_COLUMNS),
                "reference": read_table(con, "reference_labels"),
                "scans": read_table(con, "scans"),
                "split": read_table(con, "dataset_split"),
                "tasks_single": read_table(con, "tasks_single"),
                **{f"labels_{s}": read_table(con, f"labels_{s}") for s in STRATEGIES}}


@dg.asset(group_name=GROUP, deps=["dataset_split", "labels_single", "labels_ranking", "reference_labels"],
          pool="gpu", kinds={"pytorch", "mlflow"})
def strategy_repeats(context: dg.AssetExecutionContext, config: StrategyRepeatsConfig,
                     data_paths: DataPathsResource, duckdb: DuckDBResource,
                     mlflow: MlflowResource) -> dg.MaterializeResult:
    """Repeats 1..R-1 of the paired comparison: a new scan-level split and training seed each, both
    strategies trained and scored on that repeat's test images (see `evaluation.repeats`)."""
    paths = data_paths.paths()
    inputs = _read_experiment_inputs(duckdb)
    slices, reference = inputs["slices"], inputs["reference"]
    base = config.train_config()
    repeats = config.repeats if config.repeats is not None else \
        (CUDA_REPEATS if select_device(base).type == "cuda" else CPU_REPEATS)
    if repeats < 1:
        raise dg.Failure(f"strategy_repeats: repeats must be >= 1 (1 = only the registered models), got {repeats}")
    ranked = slices.merge(inputs["labels_ranking"].dropna(subset=["label"])[["slice_id", "label"]], on="slice_id")
    if ranked.empty or reference.empty:
        raise dg.Failure("strategy_repeats: needs ranking labels (the split's strata) and reference labels")
    mix = class_mix_from_labels(ranked.assign(label=ranked["label"].map({n: i for i, n in enumerate(CLASS_NAMES)})))
    group_of_scan = split_group_of_scan(inputs["scans"])
    fractions = (SplitConfig().train, SplitConfig().val, SplitConfig().test)
    versions = {s: labels_version(inputs[f"labels_{s}"]) for s in STRATEGIES}
    frames, rows = [], []
    started = time.perf_counter()
    for repeat in range(1, repeats):
        split = repeat_split(mix, group_of_scan, fractions, config.split_seed + repeat)
        test = evaluation_rows(slices, split, reference)
        test_images = load_slice_images(paths.root, test)
        for strategy in STRATEGIES:
            labels = inputs[f"labels_{strategy}"]
            train = labelled_rows(slices, split, labels, "train", config.label_column)
            val = labelled_rows(slices, split, labels, "val", config.label_column)
            train_config = replace(base, seed=base.seed + repeat)
            try:
                fitted = fit_classifier(paths.root, train, val, train_config)
            except (TrainingDataError, TrainingResourceError) as error:
                raise dg.Failure(f"strategy_repeats: repeat {repeat}, {strategy}: {error}") from error
            proba = predict_slices(fitted.deployable, test_images)
            metrics = classification_metrics(test["target"].to_numpy(), proba)
            frames.append(predictions_frame(repeat, strategy, test, proba).assign(labels_version=versions[strategy]))
            run_id = mlflow.log_run(
                run_name=f"repeat {repeat} {strategy}",
                params={"repeat": repeat, "strategy": strategy, "split_seed": config.split_seed + repeat,
                        "seed": train_config.seed, "epochs": train_config.epochs,
                        "architecture": train_config.architecture, "label_hash": label_hash(train, val),
                        "split_hash": frame_hash(split, ["scan_id", "split"]), "n_train": len(train),
                        "n_test": len(test)},
                metrics={"test_accuracy": metrics["accuracy"], "test_macro_f1": metrics["macro_f1"],
                         "test_roc_auc": metrics["roc_auc"], "val_macro_f1": fitted.val_metrics["macro_f1"],
                         "train_seconds": fitted.result.seconds},
                tags={"kind": "strategy_repeat", "dagster.run_id": context.run_id})
            rows.append({"repeat": repeat, "strategy": strategy, "n_train": len(train), "n_test": len(test),
                         "test_accuracy": round(metrics["accuracy"], 4), "mlflow_run_id": run_id})
            context.log.info(f"repeat {repeat}/{repeats - 1} {strategy}: test accuracy {metrics['accuracy']:.3f} "
                             f"on {len(test)} images ({time.perf_counter() - started:.0f} s so far)")
    predictions = pd.concat(frames, ignore_index=True) if frames else \
        pd.DataFrame(columns=[*PREDICTION_COLUMNS, "labels_version"])
    target = paths.reports / REPEATS_FILE
    paths.reports.mkdir(parents=True, exist_ok=True)
    predictions.to_parquet(target.with_suffix(".tmp"), index=False)
    target.with_suffix(".tmp").replace(target)
    return dg.MaterializeResult(metadata={
        "repeats": repeats, "extra_repeats_trained": repeats - 1, "seconds": round(time.perf_counter() - started, 1),
        "predictions": dg.MetadataValue.path(str(target)),
        **({"runs": table(pd.DataFrame(rows))} if rows else {})})


class LearningCurvesConfig(ModelConfig):
    """Budgets (expert-hours per expert) to cut the campaigns at; `train_models` also trains one model
    per budget and strategy. `steps` gives every curve model the same number of optimisation steps
    (epochs follow from its training-set size); None: `CPU_CURVE_STEPS` at `CPU_CURVE_INPUT_SIZE` px
    without augmentation on CPU unless `epochs` is set, the device's default epochs on CUDA."""

    hours_per_expert: list[float] = [0.5, 1.0, 2.0, 3.0, 5.0]
    train_models: bool = True
    steps: int | None = None


@dg.asset(group_name=GROUP, deps=["dataset_split", "labels_single", "labels_ranking", "reference_labels"],
          pool="gpu", kinds={"pytorch", "mlflow"})
def learning_curves(context: dg.AssetExecutionContext, config: LearningCurvesConfig, data_paths: DataPathsResource,
                    duckdb: DuckDBResource, mlflow: MlflowResource) -> dg.MaterializeResult:
    """Label accuracy and model test accuracy against expert-hours per expert, for both strategies:
    the recorded campaigns cut at each budget (see `evaluation.learning_curves`)."""
    paths = data_paths.paths()
    inputs = _read_experiment_inputs(duckdb)
    with duckdb.get_connection() as con:
        raw_single, raw_ranking = read_raw_annotations(con)
    if inputs["reference"].empty or inputs["split"].empty:
        raise dg.Failure("learning_curves: needs reference labels and the dataset split")
    train_config, steps = None, config.steps
    if config.train_models:
        train_config = config.train_config()
        if select_device(train_config).type == "cpu" and config.epochs is None:
            steps = CPU_CURVE_STEPS if steps is None else steps
            train_config = replace(train_config, augment=False, input_size=CPU_CURVE_INPUT_SIZE
                                   if config.input_size is None else config.input_size)
    test = evaluation_rows(inputs["slices"], inputs["split"], inputs["reference"])
    test_images = load_slice_images(paths.root, test) if train_config is not None else None
    points = []
    started = time.perf_counter()
    for strategy, raw in (("ranking", raw_ranking), ("single", raw_single)):
        for hours in sorted(config.hours_per_expert):
            point = curve_point(strategy, hours, raw, inputs, paths.root, train_config, steps, test, test_images)
            points.append(point)
            context.log.info(f"{strategy} at {hours:g} h/expert: {point['images_labelled']} images labelled, "
                             f"label accuracy {point['label_accuracy']:.3f}, test accuracy "
                             f"{point['test_accuracy'] if point['test_accuracy'] is not None else 'n/a'} "
                             f"({time.perf_counter() - started:.0f} s so far) {point['note']}")
    curves = pd.DataFrame(points, columns=CURVE_COLUMNS)
    png = learning_curves_png(curves)
    document = {"hours_per_expert": sorted(config.hours_per_expert),
                "labels_version": {s: labels_version(inputs[f"labels_{s}"]) for s in STRATEGIES},
                "model": None if train_config is None else {
                    "architecture": train_config.architecture, "input_size": train_config.input_size,
                    "augment": train_config.augment, "batch_size": train_config.batch_size,
                    **({"steps": steps} if steps else {"epochs": train_config.epochs})},
                "points": json.loads(curves.to_json(orient="records"))}
    paths.reports.mkdir(parents=True, exist_ok=True)
    write_atomically(paths.reports / CURVES_FILE, (json.dumps(document, indent=2) + "\n").encode())
    (paths.reports / "learning_curves.png").write_bytes(png)
    run_id = mlflow.log_run(run_name="learning curves", params={"hours_per_expert": document["hours_per_expert"],
                                                                "model": document["model"]},
                            files=[paths.reports / CURVES_FILE], pictures={"learning_curves.png": png},
                            tags={"kind": "learning_curve", "dagster.run_id": context.run_id})
    return dg.MaterializeResult(metadata={
        "curves": table(curves.round(4)), "learning_curves": picture(png, "learning curves"),
        "report_json": dg.MetadataValue.path(str(paths.reports / CURVES_FILE)),
        "mlflow_run": dg.MetadataValue.url(mlflow.run_url(run_id)),
        "seconds": round(time.perf_counter() - started, 1)})


experiment_assets = [strategy_repeats, learning_curves]
