"""The nightly schedule retrains only the strategies whose labels changed since their `champion`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import mlflow
import pandas as pd
import pytest

from cmr_assets.automation.schedules import (
    nightly_retrain_schedule,
    strategies_to_retrain,
    training_label_hash,
)
from cmr_assets.domain import REGISTERED_MODEL_NAMES
from cmr_assets.resources import DataPathsResource, MlflowResource
from cmr_assets.settings import DataPaths

SPLIT = {"scanA": "train", "scanB": "train", "scanC": "val", "scanD": "test"}
NIGHT = datetime(2025, 3, 2, 2, 0, tzinfo=UTC)


def tiny_tables() -> dict[str, pd.DataFrame]:
    """Four scans of three slices, a split, and the same labels for both strategies."""
    slice_ids = [f"{scan}-{k:02d}" for scan in SPLIT for k in range(3)]
    slices = pd.DataFrame({"slice_id": slice_ids, "scan_id": [s.split("-")[0] for s in slice_ids],
                           "array_path": [f"arrays/{s.split('-')[0]}.npy" for s in slice_ids],
                           "array_index": [int(s.split("-")[1]) for s in slice_ids]})
    split = pd.DataFrame({"scan_id": list(SPLIT), "split": list(SPLIT.values())})
    names = ["too_basal", "lv", "too_apical"]
    labels = pd.DataFrame({"slice_id": slice_ids, "label": [names[k % 3] for k in range(len(slice_ids))],
                           "artefact_excluded": False})
    for name in names:
        labels[f"p_{name}"] = (labels["label"] == name).astype(float)
    return {"slices": slices, "dataset_split": split, "labels_single": labels, "labels_ranking": labels.copy()}


def write_tables(paths: DataPaths, tables: dict[str, pd.DataFrame]) -> None:
    with duckdb.connect(str(paths.duckdb)) as con:
        for name, frame in tables.items():
            con.register("frame", frame)
            con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM frame")
            con.unregister("frame")


def relabel(tables: dict[str, pd.DataFrame], strategy: str, slice_id: str, label: str) -> None:
    labels = tables[f"labels_{strategy}"]
    labels.loc[labels["slice_id"] == slice_id, "label"] = label


def current_hash(tables: dict[str, pd.DataFrame], strategy: str, soft_labels: bool = False) -> str:
    return training_label_hash(tables["slices"], tables["dataset_split"], tables[f"labels_{strategy}"],
                               soft_labels=soft_labels)


def shift_probability(tables: dict[str, pd.DataFrame], strategy: str, slice_id: str, amount: float) -> None:
    """Move probability from the slice's label to `too_apical` (its hard label stays)."""
    labels = tables[f"labels_{strategy}"]
    row = labels["slice_id"] == slice_id
    labels.loc[row, "p_lv"] -= amount
    labels.loc[row, "p_too_apical"] += amount


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> str:
    """One SQLite MLflow store for the module (creating its schema takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def register_champion(tracking_uri: str, strategy: str, label_hash: str, artifacts: Path,
                      soft_labels: bool = False) -> None:
    """A registered version aliased `champion` whose training run logged `label_hash` and
    `soft_labels`, as training does."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    name = REGISTERED_MODEL_NAMES[strategy]
    if not client.search_registered_models(f"name = '{name}'"):
        client.create_registered_model(name)
    experiment = client.get_experiment_by_name("schedule-test")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(
        "schedule-test", artifact_location=artifacts.as_uri())
    run = client.create_run(experiment_id)
    client.log_param(run.info.run_id, "label_hash", label_hash)
    client.log_param(run.info.run_id, "soft_labels", soft_labels)
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(name, source=(artifacts / run.info.run_id).as_uri(),
                                          run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", version.version)


def evaluate(paths: DataPaths, tracking_uri: str) -> dg.RunRequest | dg.SkipReason:
    # a schedule context needs a persistent instance, and must be closed (it enters the instance)
    with dg.instance_for_test() as instance, dg.build_schedule_context(
            instance=instance, scheduled_execution_time=NIGHT,
            resources={"data_paths": DataPathsResource(root=str(paths.root)),
                       "mlflow": MlflowResource(tracking_uri=tracking_uri)}) as context:
        return nightly_retrain_schedule(context)


def test_strategies_to_retrain() -> None:
    assert strategies_to_retrain({"ranking": "h1", "single": "h2"}, {"ranking": "h1", "single": "h2"}) == []
    assert strategies_to_retrain({"ranking": "h1", "single": "h3"}, {"ranking": "h1", "single": "h2"}) == ["single"]
    assert strategies_to_retrain({"ranking": "h1", "single": "h2"}, {"ranking": None}) == ["ranking", "single"]
    assert strategies_to_retrain({"ranking": None, "single": None}, {}) == []  # no labels yet: nothing to train


def test_label_hash_follows_training_rows_only() -> None:
    tables = tiny_tables()
    before = current_hash(tables, "single")
    relabel(tables, "single", "scanD-00", "lv")  # test split: not in training
    assert current_hash(tables, "single") == before
    relabel(tables, "single", "scanA-00", "lv")  # train split
    assert current_hash(tables, "single") != before


def test_soft_label_hash_follows_the_probabilities_to_two_decimals() -> None:
    tables = tiny_tables()
    hard, soft = current_hash(tables, "ranking"), current_hash(tables, "ranking", soft_labels=True)
    shift_probability(tables, "ranking", "scanA-01", 1e-4)  # numerical noise of the aggregation
    assert current_hash(tables, "ranking", soft_labels=True) == soft
    shift_probability(tables, "ranking", "scanA-01", 0.2)
    assert current_hash(tables, "ranking") == hard  # a hard-label model learns the same targets
    assert current_hash(tables, "ranking", soft_labels=True) != soft


def test_schedule_targets_retrain_job() -> None:
    assert nightly_retrain_schedule.job_name == "retrain_models"
    assert nightly_retrain_schedule.cron_schedule == "0 2 * * *"


def test_schedule_skips_when_labels_unchanged_and_retrains_what_changed(data_paths, mlflow_store, tmp_path) -> None:
    tables = tiny_tables()
    write_tables(data_paths, tables)
    first = evaluate(data_paths, mlflow_store)  # no champion yet: both strategies are due
    assert isinstance(first, dg.RunRequest) and first.tags["cmr/labels_changed"] == "ranking,single"

    for strategy in ("ranking", "single"):
        register_champion(mlflow_store, strategy, current_hash(tables, strategy), tmp_path / "artifacts")
    unchanged = evaluate(data_paths, mlflow_store)
    assert isinstance(unchanged, dg.SkipReason) and "unchanged" in unchanged.skip_message

    relabel(tables, "single", "scanC-01", "too_apical")  # a validation label changed
    write_tables(data_paths, tables)
    changed = evaluate(data_paths, mlflow_store)
    assert isinstance(changed, dg.RunRequest)
    assert changed.tags["cmr/labels_changed"] == "single" and changed.run_key.startswith("nightly-20250302-")
    assert changed.asset_selection == [dg.AssetKey("model_single"), dg.AssetKey("evaluation_report")]


def test_a_soft_label_champion_is_retrained_when_its_probabilities_move(data_paths, mlflow_store, tmp_path) -> None:
    tables = tiny_tables()
    write_tables(data_paths, tables)
    for strategy in ("ranking", "single"):
        soft = strategy == "ranking"
        register_champion(mlflow_store, strategy, current_hash(tables, strategy, soft), tmp_path / "artifacts", soft)
    assert isinstance(evaluate(data_paths, mlflow_store), dg.SkipReason)

    for strategy in ("ranking", "single"):  # the same move in both: only the soft-label model learns from it
        shift_probability(tables, strategy, "scanA-01", 0.2)
    write_tables(data_paths, tables)
    changed = evaluate(data_paths, mlflow_store)
    assert isinstance(changed, dg.RunRequest) and changed.tags["cmr/labels_changed"] == "ranking"


def test_schedule_skips_without_a_split(data_paths, mlflow_store) -> None:
    tables = tiny_tables()
    tables["dataset_split"] = tables["dataset_split"].iloc[0:0]
    write_tables(data_paths, tables)
    assert isinstance(evaluate(data_paths, mlflow_store), dg.SkipReason)
