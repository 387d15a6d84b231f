"""The evaluation report: both models on one common test set, beside what their labels cost."""

import functools

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource
from mlflow import MlflowClient

from cmr_assets.domain import CHALLENGER, CHAMPION, REGISTERED_MODEL_NAMES, STRATEGIES
from cmr_assets.duckdb_io import read_table
from cmr_assets.evaluation.comparison import EvaluationInputError, EvaluationTables, ModelUnderTest, evaluate_models
from cmr_assets.evaluation.experiment_assets import experiment_assets
from cmr_assets.evaluation.report import render_markdown, write_report
from cmr_assets.labelling.annotation_ingest import read_raw_annotations
from cmr_assets.metadata import picture
from cmr_assets.resources import DataPathsResource, MlflowResource
from cmr_assets.run_context import git_commit, machine_info
from cmr_assets.training.dataset import frame_hash
from cmr_assets.training.provenance import TRAINING_DATA_TAG

GROUP = "evaluation"


TRAINING_PROVENANCE = ("architecture", "input_size", "epochs", "patience", "batch_size", "learning_rate", "seed",
                       "soft_labels", "device", "label_hash", "split_hash", "git_commit")


def _provenance(client: MlflowClient, split: pd.DataFrame, challengers: dict[str, ModelUnderTest]) -> dict:
    """Commit, machine, split and each evaluated model's training settings, for the report."""
    training = {}
    for strategy, challenger in challengers.items():
        params = client.get_run(challenger.run_id).data.params
        training[strategy] = {key: params.get(key) for key in TRAINING_PROVENANCE}
    return {"git_commit": git_commit(), "machine": machine_info(),
            "split_hash": frame_hash(split, ["scan_id", "split"]), "training": training}


@dg.asset(group_name=GROUP, deps=["model_single", "model_ranking", "observer_agreement", "reference_labels",
                                  "strategy_repeats", "learning_curves"],
          pool="duckdb", kinds={"mlflow"})
def evaluation_report(context: dg.AssetExecutionContext, data_paths: DataPathsResource, duckdb: DuckDBResource,
                      mlflow: MlflowResource) -> dg.MaterializeResult:
    """Accuracy, F1, ROC AUC, McNemar and a scan-level bootstrap for ranking vs single, plus labelling cost.

    Both newest models (alias `challenger`) are scored on the same test scans against the reference;
    both champions face the real-image check (`comparison.evaluate_models`).
    """
    paths = data_paths.paths()
    with duckdb.get_connection() as con:
        raw_single, raw_ranking = read_raw_annotations(con)
        tables = EvaluationTables(
            slices=read_table(con, "slices", "slice_id, scan_id, array_path, array_index"),
            split=read_table(con, "dataset_split"), reference=read_table(con, "reference_labels"),
            raw={"single": raw_single, "ranking": raw_ranking},
            labels={s: read_table(con, f"labels_{s}") for s in STRATEGIES}, agreement=read_table(con, "agreement"))
    client = mlflow.client()
    load = functools.cache(mlflow.load_model)  # the champion is often the challenger: loaded once

    def loaded(strategy: str, alias: str) -> ModelUnderTest:
        name = REGISTERED_MODEL_NAMES[strategy]
        version = client.get_model_version_by_alias(name, alias)
        return ModelUnderTest(name, version.version, version.run_id or "", load(f"models:/{name}/{version.version}"),
                              version.tags.get(TRAINING_DATA_TAG, "unknown"))

    challengers = {s: loaded(s, CHALLENGER) for s in STRATEGIES}
    champions = {s: loaded(s, CHAMPION) for s in STRATEGIES}
    try:
        evaluation = evaluate_models(tables, paths.root, paths.reports, challengers, champions,
                                     _provenance(client, tables.split, challengers))
    except EvaluationInputError as error:
        raise dg.Failure(str(error)) from error
    for line in evaluation.log:
        context.log.info(line)
    for warning in evaluation.warnings:
        context.log.warning(warning)
    for file_name, png in evaluation.figures.items():
        (paths.reports / file_name).write_bytes(png)
    json_path, md_path = write_report(evaluation.report, paths.reports)
    run_id = mlflow.log_evaluation_run(report=evaluation.report, report_files=[json_path, md_path],
                                       pictures=evaluation.figures)
    return dg.MaterializeResult(metadata={
        "n_test_images": evaluation.n_test_images, "mcnemar_p": float(evaluation.comparison["mcnemar_p"]),
        "repeats": evaluation.repeated["repeats"],
        "accuracy_diff_mean": float(evaluation.repeated["accuracy_diff_mean"]),
        **{f"{s}_test_accuracy": float(evaluation.per_strategy[s].metrics["accuracy"]) for s in STRATEGIES},
        "report": dg.MetadataValue.md(render_markdown(evaluation.report)),
        "report_json": dg.MetadataValue.path(str(json_path)), "mlflow_run_id": run_id,
        "mlflow_run": dg.MetadataValue.url(mlflow.run_url(run_id)),
        **{name.removesuffix(".png"): picture(png, name) for name, png in evaluation.figures.items()},
    })


evaluation_assets = [*experiment_assets, evaluation_report]
