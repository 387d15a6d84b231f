"""The evaluation report: both models on one common test set, beside what their labels cost."""

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
from dagster_duckdb import DuckDBResource
from mlflow import MlflowClient

from cmr_assets.domain import REGISTERED_MODEL_NAMES, STRATEGIES
from cmr_assets.duckdb_io import read_table
from cmr_assets.evaluation.experiment_assets import experiment_assets
from cmr_assets.evaluation.learning_curves import load_stored_curves
from cmr_assets.evaluation.metrics import paired_comparison
from cmr_assets.evaluation.real_check import (
    REAL_DATA_DIR,
    decisions_png,
    load_real_series,
    real_image_check,
    stacks_of_test_scans,
    synthetic_vs_real_png,
)
from cmr_assets.evaluation.repeats import load_stored_repeats, predictions_frame, summarise_repeats
from cmr_assets.evaluation.report import (
    StrategyEvaluation,
    agreement_summary,
    build_evaluation_report,
    evaluate_strategy,
    render_markdown,
    write_report,
)
from cmr_assets.figures import (
    confusion_matrix_png,
    rank_score_distribution_png,
    repeats_png,
    roc_curves_png,
)
from cmr_assets.labelling.annotation_ingest import latest_answer_per_task, read_raw_annotations
from cmr_assets.metadata import picture
from cmr_assets.resources import DataPathsResource, MlflowResource
from cmr_assets.run_context import git_commit, machine_info
from cmr_assets.training.dataset import evaluation_rows, frame_hash, load_slice_images
from cmr_assets.training.packaging import predict_slices
from cmr_assets.training.provenance import TRAINING_DATA_TAG

GROUP = "evaluation"


def champions_on_real_images(context: dg.AssetExecutionContext, client: MlflowClient,
                             load: Callable[[str], Any], figures: dict[str, bytes], test_stacks: list) -> dict:
    """`real_image_check` of the report: each strategy's champion (loaded with `load(model_uri)`) on the
    shipped real DICOM; its pictures (decisions per slice, synthetic beside real) are added to `figures`."""
    try:
        real_series = load_real_series(REAL_DATA_DIR)
    except (OSError, ValueError) as error:
        context.log.warning(f"real-image check skipped: {error}")
        return {"data": str(REAL_DATA_DIR), "error": str(error), "strategies": {}}
    results = {}
    for strategy in STRATEGIES:
        name = REGISTERED_MODEL_NAMES[strategy]
        version = client.get_model_version_by_alias(name, "champion")
        check = real_image_check(load(f"models:/{name}/{version.version}"), real_series)
        results[strategy] = {"model": {"registered_model": name, "version": version.version,
                                       "training_data": version.tags.get(TRAINING_DATA_TAG, "unknown")},
                             **check}
        figures[f"real_image_check_{strategy}.png"] = decisions_png(check, real_series)
        summary = check["summary"]
        context.log.info(f"{strategy} champion v{version.version} on real images: LV recall model "
                         f"{summary['lv_recall_model']:.3f}, filter {summary['lv_recall_filter']:.3f} "
                         f"({summary['n_lv']} contoured slices), {summary['n_ood']} slices out of distribution")
    figures["synthetic_vs_real.png"] = synthetic_vs_real_png(test_stacks, real_series)
    return {"data": "real_data/sunnybrook (Sunnybrook Cardiac Data, CC0; 2 patients, ED phase)",
            "strategies": results}


TRAINING_PROVENANCE = ("architecture", "input_size", "epochs", "patience", "batch_size", "learning_rate", "seed",
                       "soft_labels", "device", "label_hash", "split_hash", "git_commit")


def _provenance(client: MlflowClient, split: pd.DataFrame, per_strategy: dict[str, StrategyEvaluation]) -> dict:
    """Commit, machine, split and each evaluated model's training settings, for the report."""
    training = {}
    for strategy, evaluation in per_strategy.items():
        params = client.get_run(evaluation.model["run_id"]).data.params
        training[strategy] = {key: params.get(key) for key in TRAINING_PROVENANCE}
    return {"git_commit": git_commit(), "machine": machine_info(),
            "split_hash": frame_hash(split, ["scan_id", "split"]), "training": training}


def _repeated_summary(context: dg.AssetExecutionContext, reports_dir: Path, test: pd.DataFrame,
                      probas: dict[str, np.ndarray], labels: dict[str, pd.DataFrame]) -> dict:
    """All repeats summarised: repeat 0 = today's models on the standing test set, plus the stored
    `strategy_repeats` trained on today's labels (stale ones are dropped, with a warning)."""
    stored, stale = load_stored_repeats(reports_dir, labels)
    if stale:
        context.log.warning(f"{stale} stored repeat(s) were trained on other labels and are left out; "
                            "materialise strategy_repeats to redo them")
    own = pd.concat([predictions_frame(0, s, test, probas[s]) for s in STRATEGIES], ignore_index=True)
    return summarise_repeats(pd.concat([own, stored], ignore_index=True))


@dg.asset(group_name=GROUP, deps=["model_single", "model_ranking", "observer_agreement", "reference_labels",
                                  "strategy_repeats", "learning_curves"],
          pool="duckdb", kinds={"mlflow"})
def evaluation_report(context: dg.AssetExecutionContext, data_paths: DataPathsResource, duckdb: DuckDBResource,
                      mlflow: MlflowResource) -> dg.MaterializeResult:
    """Accuracy, F1, ROC AUC, McNemar and a scan-level bootstrap for ranking vs single, plus labelling cost.

    Both newest models (alias `challenger`) are scored on the same test scans against the reference.
    """
    paths = data_paths.paths()
    with duckdb.get_connection() as con:
        slices = read_table(con, "slices", "slice_id, scan_id, array_path, array_index")
        split = read_table(con, "dataset_split")
        reference = read_table(con, "reference_labels")
        raw_single, raw_ranking = read_raw_annotations(con)
        labels = {s: read_table(con, f"labels_{s}") for s in STRATEGIES}
        agreement_rows = read_table(con, "agreement")
    if reference.empty:
        raise dg.Failure("evaluation needs reference labels for the test scans: the synthetic truth, or "
                         "your own CSV via the reference_labels asset's `reference_csv` config")
    test = evaluation_rows(slices, split, reference)
    if test.empty:
        raise dg.Failure("no test image has a reference label: check dataset_split and reference_labels")
    images = load_slice_images(paths.root, test)
    y_true = test["target"].to_numpy()
    agreement = agreement_summary(agreement_rows)
    raw = {"single": latest_answer_per_task(raw_single), "ranking": latest_answer_per_task(raw_ranking)}
    probas, per_strategy, figures = {}, {}, {}
    client = mlflow.client()
    load = functools.cache(mlflow.load_model)  # the champion is often the challenger: loaded once
    for strategy in STRATEGIES:
        name = REGISTERED_MODEL_NAMES[strategy]
        version = client.get_model_version_by_alias(name, "challenger")
        model = load(f"models:/{name}/{version.version}")
        probas[strategy] = predict_slices(model, images)
        per_strategy[strategy] = evaluate_strategy(
            strategy, y_true, probas[strategy], raw[strategy], labels[strategy], reference, agreement,
            model={"registered_model": name, "version": version.version, "run_id": version.run_id})
        metrics = per_strategy[strategy].metrics
        figures[f"confusion_{strategy}.png"] = confusion_matrix_png(
            metrics["confusion_matrix"]["matrix"], title=f"{strategy}-trained model, test set")
        context.log.info(f"{strategy}: test accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}")
    real_check = champions_on_real_images(context, client, load, figures, stacks_of_test_scans(test, images, reference))
    predictions = {s: probas[s].argmax(axis=1) for s in STRATEGIES}
    comparison = paired_comparison(y_true, predictions["ranking"], predictions["single"], groups=test["scan_id"])
    repeated = _repeated_summary(context, paths.reports, test, probas, labels)
    figures["strategy_repeats.png"] = repeats_png(repeated)
    curves = load_stored_curves(paths.reports, labels)
    if curves is None:
        context.log.warning("no learning curves drawn from today's labels: materialise learning_curves")
    else:
        figures["learning_curves.png"] = (paths.reports / "learning_curves.png").read_bytes()
    figures["roc_curves.png"] = roc_curves_png(y_true, probas)
    ranked = labels["ranking"].dropna(subset=["label"])
    figures["rank_score_distribution.png"] = rank_score_distribution_png(ranked, score_column="latent_score")
    for file_name, png in figures.items():
        (paths.reports / file_name).write_bytes(png)
    report = build_evaluation_report(per_strategy, comparison, agreement, len(test),
                                     pictures={f: f for f in figures},
                                     reference_source=str(reference["source"].iloc[0]),
                                     real_image_check=real_check, repeated=repeated, learning_curves=curves,
                                     provenance=_provenance(client, split, per_strategy))
    json_path, md_path = write_report(report, paths.reports)
    run_id = mlflow.log_evaluation_run(report=report, report_files=[json_path, md_path], pictures=figures)
    return dg.MaterializeResult(metadata={
        "n_test_images": len(test), "mcnemar_p": float(comparison["mcnemar_p"]),
        "repeats": repeated["repeats"], "accuracy_diff_mean": float(repeated["accuracy_diff_mean"]),
        **{f"{s}_test_accuracy": float(per_strategy[s].metrics["accuracy"]) for s in STRATEGIES},
        "report": dg.MetadataValue.md(render_markdown(report)),
        "report_json": dg.MetadataValue.path(str(json_path)), "mlflow_run_id": run_id,
        "mlflow_run": dg.MetadataValue.url(mlflow.run_url(run_id)),
        **{name.removesuffix(".png"): picture(png, name) for name, png in figures.items()},
    })


evaluation_assets = [*experiment_assets, evaluation_report]
