"""Retraining is deliberate: labels settled (inbox quiet, all files ingested, no relabel pending),
training labels changed since the newest registered model, never beside another retrain run."""

from __future__ import annotations

import os
import time
import uuid

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRun

from cmr_assets.automation.retrain import RetrainPolicyResource, inbox_quiet_for
from cmr_assets.automation.sensors import annotation_files_sensor, labels_settled_sensor
from cmr_assets.labelling.annotation_format import write_annotation_file
from cmr_assets.resources import DataPathsResource, MlflowResource
from cmr_assets.settings import DataPaths
from cmr_assets.tables import ensure_annotation_tables
from cmr_assets_tests.automation.test_schedules import (
    current_hash,
    register_champion,
    relabel,
    tiny_tables,
    write_tables,
)
from cmr_assets_tests.labelling.test_annotation_ingest import single

QUIET_MINUTES = 10.0


@pytest.fixture
def mlflow_store(tmp_path) -> str:
    """A store per test: what one test registers must not decide another's outcome."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def settle_tick(paths: DataPaths, tracking_uri: str, instance: dg.DagsterInstance):
    context = dg.build_sensor_context(instance=instance, resources={
        "data_paths": DataPathsResource(root=str(paths.root)), "mlflow": MlflowResource(tracking_uri=tracking_uri),
        "retrain_policy": RetrainPolicyResource(quiet_minutes=QUIET_MINUTES)})
    return labels_settled_sensor(context)


def annotation_file_ingested(paths: DataPaths, age_s: float) -> None:
    """One annotation file, written `age_s` ago and recorded as ingested (as the relabel run does)."""
    path = write_annotation_file([single()], paths.annotations_incoming, "single", "sim-expert-1")
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    import duckdb

    with duckdb.connect(str(paths.duckdb)) as con:
        ensure_annotation_tables(con)
        con.execute("INSERT INTO annotation_files VALUES (?, ?, 'x', 1, 0, now())", [path.name, path.stat().st_size])


def add_run(instance: dg.DagsterInstance, job_name: str, status: dg.DagsterRunStatus) -> None:
    instance.add_run(DagsterRun(job_name=job_name, run_id=str(uuid.uuid4()), status=status))


def test_retrain_waits_for_a_quiet_inbox_then_trains_only_what_changed(data_paths, mlflow_store, instance,
                                                                        tmp_path) -> None:
    tables = tiny_tables()
    write_tables(data_paths, tables)
    annotation_file_ingested(data_paths, age_s=60)
    busy = settle_tick(data_paths, mlflow_store, instance)
    assert isinstance(busy, dg.SkipReason) and "annotators still at work" in busy.skip_message

    os.utime(next(data_paths.annotations_incoming.glob("*.jsonl")), (time.time() - 601, time.time() - 601))
    first = settle_tick(data_paths, mlflow_store, instance)
    assert isinstance(first, dg.RunRequest) and first.tags["cmr/labels_changed"] == "ranking,single"
    assert first.tags["cmr/label_hash_single"] == current_hash(tables, "single")
    assert settle_tick(data_paths, mlflow_store, instance).run_key == first.run_key  # same state, same key

    for strategy in ("ranking", "single"):  # the run registered models trained on these labels
        register_champion(mlflow_store, strategy, current_hash(tables, strategy), tmp_path / "artifacts")
    unchanged = settle_tick(data_paths, mlflow_store, instance)
    assert isinstance(unchanged, dg.SkipReason) and "unchanged" in unchanged.skip_message

    relabel(tables, "ranking", "scanD-01", "lv")  # a test-split label: not what training uses
    write_tables(data_paths, tables)
    assert isinstance(settle_tick(data_paths, mlflow_store, instance), dg.SkipReason)

    relabel(tables, "ranking", "scanA-01", "too_apical")  # a training label
    write_tables(data_paths, tables)
    second = settle_tick(data_paths, mlflow_store, instance)
    assert isinstance(second, dg.RunRequest) and second.tags["cmr/labels_changed"] == "ranking"
    assert second.asset_selection == [dg.AssetKey("model_ranking"), dg.AssetKey("evaluation_report")]
    assert second.run_key != first.run_key


@pytest.mark.parametrize(("job_name", "status", "why"), [
    ("retrain_models", dg.DagsterRunStatus.STARTED, "retrain run is already queued or running"),
    ("retrain_models", dg.DagsterRunStatus.NOT_STARTED, "retrain run is already queued or running"),
    ("relabel", dg.DagsterRunStatus.STARTED, "relabel run queued or running"),
])
def test_no_retrain_beside_a_retrain_or_relabel_in_flight(data_paths, mlflow_store, instance, job_name, status,
                                                          why) -> None:
    write_tables(data_paths, tiny_tables())
    add_run(instance, job_name, status)
    result = settle_tick(data_paths, mlflow_store, instance)
    assert isinstance(result, dg.SkipReason) and why in result.skip_message
    add_run(instance, "retrain_models", dg.DagsterRunStatus.SUCCESS)  # finished runs do not count


def test_finished_runs_do_not_block(data_paths, mlflow_store, instance) -> None:
    write_tables(data_paths, tiny_tables())
    for job_name in ("retrain_models", "relabel"):
        add_run(instance, job_name, dg.DagsterRunStatus.SUCCESS)
        add_run(instance, job_name, dg.DagsterRunStatus.FAILURE)
    assert isinstance(settle_tick(data_paths, mlflow_store, instance), dg.RunRequest)


def test_no_retrain_while_annotation_files_wait_for_ingestion(data_paths, mlflow_store, instance) -> None:
    write_tables(data_paths, tiny_tables())
    path = write_annotation_file([single()], data_paths.annotations_incoming, "single", "sim-expert-1")
    os.utime(path, (time.time() - 3600, time.time() - 3600))
    result = settle_tick(data_paths, mlflow_store, instance)
    assert isinstance(result, dg.SkipReason) and "not yet ingested" in result.skip_message


def test_relabel_sensor_queues_at_most_one_run(data_paths, instance) -> None:
    write_annotation_file([single()], data_paths.annotations_incoming, "single", "sim-expert-1")
    add_run(instance, "relabel", dg.DagsterRunStatus.NOT_STARTED)
    context = dg.build_sensor_context(instance=instance,
                                      resources={"data_paths": DataPathsResource(root=str(data_paths.root))})
    waiting = annotation_files_sensor(context)
    assert isinstance(waiting, dg.SkipReason) and "already queued" in waiting.skip_message
    assert context.cursor is None  # the files are looked at again next tick


def test_inbox_quiet_for() -> None:
    assert inbox_quiet_for([], 100.0) == float("inf")
    assert inbox_quiet_for([40 * 10**9, 90 * 10**9], 100.0) == pytest.approx(10.0)


def test_a_failed_blocking_label_check_keeps_that_strategy_from_retraining(data_paths, mlflow_store,
                                                                            instance) -> None:
    write_tables(data_paths, tiny_tables())
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey("labels_single"), check_name="labels_single_sane", passed=False))
    partial = settle_tick(data_paths, mlflow_store, instance)
    assert isinstance(partial, dg.RunRequest) and partial.tags["cmr/labels_changed"] == "ranking"
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey("labels_ranking"), check_name="labels_ranking_sane", passed=False))
    blocked = settle_tick(data_paths, mlflow_store, instance)
    assert isinstance(blocked, dg.SkipReason) and "blocking label check failed" in blocked.skip_message
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(  # fixed labels pass again
        asset_key=dg.AssetKey("labels_ranking"), check_name="labels_ranking_sane", passed=True))
    assert settle_tick(data_paths, mlflow_store, instance).tags["cmr/labels_changed"] == "ranking"
