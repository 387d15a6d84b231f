"""Nightly retraining, only for the strategies whose training labels changed since their newest
registered model, and never beside another retrain run (`sensors.retrain_due`)."""


import dagster as dg

from cmr_assets.automation.retrain import strategies_to_retrain, training_label_hash
from cmr_assets.automation.sensors import retrain_due, retrain_job
from cmr_assets.resources import DataPathsResource, MlflowResource

__all__ = ["nightly_retrain_schedule", "strategies_to_retrain", "training_label_hash"]


@dg.schedule(cron_schedule="0 2 * * *", job=retrain_job, default_status=dg.DefaultScheduleStatus.RUNNING,
             execution_timezone="UTC")
def nightly_retrain_schedule(context: dg.ScheduleEvaluationContext, data_paths: DataPathsResource,
                             mlflow: MlflowResource) -> dg.RunRequest | dg.SkipReason:
    """At 02:00 UTC retrain the strategies whose labels changed and re-evaluate; no quiet period needed."""
    return retrain_due(context, data_paths, mlflow, None, f"nightly-{context.scheduled_execution_time:%Y%m%d}")
