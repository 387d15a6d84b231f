"""Dagster definitions: every asset, check, job, sensor, schedule and resource of cmr_assets.

Served by `dg dev` (pyproject `[tool.dg]`) and `dagster dev -w workspace.yaml`; `cmr-assets demo`
runs the `cmr_pipeline` job in process against the same instance.
"""

from __future__ import annotations

import dagster as dg

from cmr_assets.automation.retrain import RetrainPolicyResource
from cmr_assets.automation.schedules import nightly_retrain_schedule
from cmr_assets.automation.sensors import (
    annotation_files_sensor,
    ingest_new_scans_job,
    labels_settled_sensor,
    new_scans_sensor,
    relabel_job,
    retrain_job,
)
from cmr_assets.evaluation.assets import evaluation_assets
from cmr_assets.inference.assets import archive_filter_sensor, inference_assets
from cmr_assets.ingest.assets import ingest_assets, ingest_checks
from cmr_assets.labelling.assets import labelling_assets
from cmr_assets.labels.assets import labels_assets, labels_checks
from cmr_assets.resources import DataPathsResource, MlflowResource, duckdb_resource
from cmr_assets.settings import retrain_quiet_minutes
from cmr_assets.synthetic.assets import synthetic_assets
from cmr_assets.training.assets import training_assets

PIPELINE_JOB = "cmr_pipeline"

simulate_experts = dg.define_asset_job(
    "simulate_experts", selection=["simulated_annotations_single", "simulated_annotations_ranking"],
    description="Simulated experts write annotation files for the current tasks (the sensor picks them up).",
)

strategy_experiment = dg.define_asset_job(
    "strategy_experiment", selection=["strategy_repeats", "learning_curves", "evaluation_report"],
    description="The strategy comparison again on today's labels: repeats, learning curves, report.",
)

cmr_pipeline = dg.define_asset_job(
    PIPELINE_JOB, selection=dg.AssetSelection.all(),
    description="Raw scans -> slices -> labelling -> labels -> two models -> evaluation report.",
)


def build_definitions() -> dg.Definitions:
    """Definitions bound to the current `CMR_DATA_DIR` / MLflow settings (read at load time)."""
    data_paths = DataPathsResource()
    return dg.Definitions(
        assets=[*synthetic_assets, *ingest_assets, *labelling_assets, *labels_assets, *training_assets,
                *evaluation_assets, *inference_assets],
        asset_checks=[*ingest_checks, *labels_checks],
        jobs=[cmr_pipeline, simulate_experts, strategy_experiment, relabel_job, ingest_new_scans_job, retrain_job],
        sensors=[annotation_files_sensor, labels_settled_sensor, new_scans_sensor, archive_filter_sensor],
        schedules=[nightly_retrain_schedule],
        resources={"data_paths": data_paths, "duckdb": duckdb_resource(data_paths.paths()), "mlflow": MlflowResource(),
                   "retrain_policy": RetrainPolicyResource(quiet_minutes=retrain_quiet_minutes())},
        # Every run in one process: a process per step would import torch, MLflow and Dagster again
        # for each short step (tens of seconds on a loaded 2-core machine), and the pools (duckdb,
        # gpu: one slot each) serialise the steps anyway. Runs themselves spread (run launcher).
        executor=dg.in_process_executor,
    )


defs = build_definitions()
