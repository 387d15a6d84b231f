"""When to retrain: only for new training labels, once the inbox is quiet, one retrain at a time.

Relabelling (annotation ingestion, label aggregation, agreement, the split) is cheap and follows
answers within a sensor tick (`annotation_files_sensor` -> `relabel` job). Retraining is deliberate:
`labels_settled_sensor` (or the nightly schedule) requests a `retrain_models` run only when

1. no retrain run is queued or running (the instance's run records; backed by the run queue's tag
   concurrency limit `cmr/lane: retrain` = 1 in `.dagster_home/dagster.yaml`),
2. no relabel run is queued or running and every annotation file is ingested (labels are current),
3. the inbox has been quiet: no annotation file written for `RetrainPolicyResource.quiet_minutes`
   (schedule: not needed),
4. a strategy's training label hash (train + val slice ids and targets on the current split, and
   the class probabilities when the newest registered version trained on soft labels) differs from
   the hash logged by that version, i.e. what a model would learn from changed since a model was
   last trained and registered.

Only the strategies whose hash changed are selected (plus the evaluation report), and the run key
is the changed hashes, so Dagster never starts two runs for one label state from the sensor.

Public API:
- `RetrainPolicyResource(quiet_minutes=10)`
- `training_label_hash(slices, split, labels, label_column="label", soft_labels=False) -> str`
- `current_label_hashes(database, soft_labels={}) -> dict[strategy, str | None]`
- `last_trained(mlflow, strategy) -> LastTrained(label_hash, soft_labels)`
- `strategies_to_retrain(current, last_trained) -> list[str]`
- `runs_in_flight(instance, job_name) -> int`
- `retrain_request(changed, current, run_key_prefix, tags) -> RunRequest`
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import dagster as dg
import pandas as pd

from cmr_assets.domain import STRATEGIES
from cmr_assets.duckdb_io import read_only, read_table
from cmr_assets.resources import MlflowResource
from cmr_assets.training.dataset import label_hash, labelled_rows

IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
LANE_TAG = "cmr/lane"


class RetrainPolicyResource(dg.ConfigurableResource):
    """How long the annotation inbox must be quiet before `labels_settled_sensor` retrains
    (`CMR_RETRAIN_QUIET_MINUTES`, default 10)."""

    quiet_minutes: float = 10.0


class LastTrained(NamedTuple):
    """What the strategy's newest registered version learnt from: its `label_hash`, and whether it
    trained on soft labels (then the class probabilities are part of the hash)."""

    label_hash: str | None
    soft_labels: bool = False


def training_label_hash(slices: pd.DataFrame, split: pd.DataFrame, labels: pd.DataFrame,
                        label_column: str = "label", soft_labels: bool = False) -> str:
    """The `label_hash` a model trained now would log: its train + val rows and their targets."""
    train, val = (labelled_rows(slices, split, labels, which, label_column) for which in ("train", "val"))
    return label_hash(train, val, soft_labels=soft_labels)


def current_label_hashes(database: Path, soft_labels: Mapping[str, bool] | None = None) -> dict[str, str | None]:
    """Each strategy's training label hash now (None without slices, split or labels), with its
    class probabilities where `soft_labels[strategy]`. Raises `duckdb.Error` while the pipeline
    holds the write lock."""
    soft_labels = soft_labels or {}
    with read_only(database) as con:
        slices = read_table(con, "slices", "slice_id, scan_id, array_path, array_index")
        split = read_table(con, "dataset_split")
        tables = {s: read_table(con, f"labels_{s}") for s in STRATEGIES}
    return {s: training_label_hash(slices, split, labels, soft_labels=soft_labels.get(s, False))
            if min(len(slices), len(split), len(labels)) else None
            for s, labels in tables.items()}


def last_trained(mlflow: MlflowResource, strategy: str) -> LastTrained:
    """`label_hash` and `soft_labels` of the strategy's newest registered version (None, False when
    none is registered)."""
    params = mlflow.newest_training_params(strategy)
    return LastTrained(params.get("label_hash"), params.get("soft_labels") == "True")


def strategies_to_retrain(current: dict[str, str | None], last_trained: dict[str, str | None]) -> list[str]:
    """Strategies whose current label hash differs from the last trained one (or never trained)."""
    return [s for s, h in current.items() if h is not None and h != last_trained.get(s)]


def runs_in_flight(instance: dg.DagsterInstance, job_name: str,
                   statuses: list[dg.DagsterRunStatus] | None = None) -> int:
    """How many runs of `job_name` are queued or running in this instance."""
    return instance.get_runs_count(dg.RunsFilter(job_name=job_name, statuses=statuses or IN_FLIGHT))


def retrain_request(changed: list[str], current: dict[str, str | None], run_key_prefix: str,
                    tags: dict[str, str] | None = None) -> dg.RunRequest:
    """A `retrain_models` run for the changed strategies only (and the evaluation report); the run
    key names the label hashes, so one label state never gets a second run from the same source."""
    state = "-".join(f"{s}:{current[s]}" for s in sorted(changed))
    digest = hashlib.sha256(state.encode()).hexdigest()[:16]
    return dg.RunRequest(
        run_key=f"{run_key_prefix}-{digest}",
        asset_selection=[dg.AssetKey(f"model_{s}") for s in sorted(changed)] + [dg.AssetKey("evaluation_report")],
        tags={"cmr/labels_changed": ",".join(sorted(changed)),
              **{f"cmr/label_hash_{s}": str(current[s]) for s in sorted(changed)}, **(tags or {})})


def inbox_quiet_for(stamps_mtime_ns: list[int], now_s: float | None = None) -> float:
    """Seconds since the newest annotation file was written (infinite when there is none)."""
    if not stamps_mtime_ns:
        return float("inf")
    return (now_s if now_s is not None else time.time()) - max(stamps_mtime_ns) / 1e9
