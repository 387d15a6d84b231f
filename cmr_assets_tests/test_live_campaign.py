"""The live-campaign loop on a tiny pipeline: answers through the app -> sensors (evaluated as the
daemon evaluates them) -> relabel -> retrain once the inbox is quiet -> promotion on the same data.

Runs are executed in process where the daemon would launch them; `test_retrain_policy.py` covers
what the sensors do while runs are queued or running.
"""

from __future__ import annotations

import os
import time

import dagster as dg
import duckdb
import mlflow
import pytest
from starlette.testclient import TestClient

from cmr_assets.app.web import create_app
from cmr_assets.automation.retrain import RetrainPolicyResource
from cmr_assets.automation.sensors import annotation_files_sensor, labels_settled_sensor, new_scans_sensor
from cmr_assets.domain import REGISTERED_MODEL_NAMES
from cmr_assets.ingest.partitions import bucket_of
from cmr_assets.labelling.roster import add_annotator
from cmr_assets.resources import DataPathsResource, MlflowResource
from cmr_assets.settings import DataPaths
from cmr_assets_tests.app.conftest import FAST_HASH, PASSWORD, app_config, log_in
from cmr_assets_tests.conftest import pipeline_environment
from cmr_assets_tests.test_end_to_end import TINY_RUN

MODELS = {"ops": {name: TINY_RUN["ops"][name] for name in ("model_single", "model_ranking")}}
# A first wave without the budget-filling extra rounds: few views per image, so new answers can move labels.
FIRST_WAVE = {"fill_budget": False}
LIVE_RUN = {"ops": {**TINY_RUN["ops"], "labelling_tasks_single": {"config": FIRST_WAVE},
                    "labelling_tasks_ranking": {"config": FIRST_WAVE}}}
ANNOTATORS = ("dr_a", "dr_b")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A tiny pipeline run (v1 of both models), with its environment kept for the module's tests."""
    root = tmp_path_factory.mktemp("live")
    with pipeline_environment(root):
        from cmr_assets.definitions import build_definitions
        from cmr_assets.pipeline_runs import run_job

        assert run_job("cmr_pipeline", LIVE_RUN).success
        yield {"root": root, "paths": DataPaths(root / "data"), "defs": build_definitions(),
               "tracking_uri": f"sqlite:///{root / 'mlflow.db'}"}


def _sensor_tick(sensor, live, cursor=None, quiet_minutes: float = 10.0):
    resources = {"data_paths": DataPathsResource(root=str(live["paths"].root)),
                 "mlflow": MlflowResource(tracking_uri=live["tracking_uri"]),
                 "retrain_policy": RetrainPolicyResource(quiet_minutes=quiet_minutes)}
    context = dg.build_sensor_context(cursor=cursor, instance=dg.DagsterInstance.get(), resources=resources)
    return sensor(context), context.cursor


def _launch(live, job_name: str, request: dg.RunRequest | None = None, run_config=None):
    """What the daemon does with a run request: one run of the job, with its tags and asset selection."""
    job = live["defs"].resolve_job_def(job_name)
    result = job.execute_in_process(run_config=run_config or {}, instance=dg.DagsterInstance.get(),
                                    tags=request.tags if request else None,
                                    partition_key=request.partition_key if request else None,
                                    asset_selection=request.asset_selection if request else None,
                                    raise_on_error=False)
    assert result.success, [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return result


def _versions(live, strategy: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=live["tracking_uri"])
    versions = client.search_model_versions(f"name = '{REGISTERED_MODEL_NAMES[strategy]}'")
    return sorted(versions, key=lambda v: int(v.version))


def _query(live, sql: str):
    with duckdb.connect(str(live["paths"].duckdb), read_only=True) as con:
        return con.execute(sql).fetchall()


def _back_date_inbox(paths: DataPaths, seconds: float) -> None:
    stamp = time.time() - seconds
    for path in paths.annotations_incoming.glob("*.jsonl"):
        os.utime(path, (stamp, stamp))


def _soft_labels(live) -> dict[str, tuple[float, ...]]:
    rows = _query(live, "SELECT slice_id, p_too_basal, p_lv, p_too_apical FROM labels_ranking")
    return {row[0]: row[1:] for row in rows}


def _truth_by_png(live) -> dict[bytes, tuple[float, str]]:
    """(position01, true class) of every slice, keyed by its PNG's bytes (what the app serves)."""
    rows = _query(live, "SELECT s.png_path, r.position01, r.label FROM slices s "
                        "JOIN reference_labels r USING (slice_id)")
    return {(live["paths"].root / png).read_bytes(): (position, label) for png, position, label in rows}


def _answer_as_the_truth(client, ticket: str, truth_by_png) -> tuple[list[int], list[int]]:
    """An expert who sees the truth: images ordered base -> apex, dividers at the true class changes
    (Dawid-Skene rightly gives little weight to answers that carry no information)."""
    truths = [truth_by_png[client.get(f"/img/{ticket}/{index}").content] for index in range(8)]
    order = sorted(range(8), key=lambda index: truths[index][0])
    classes = [truths[index][1] for index in order]
    n_basal = classes.count("too_basal")
    return order, [n_basal, n_basal + classes.count("lv")]


def test_answers_relabel_promptly_and_retrain_once_when_the_inbox_is_quiet(live) -> None:
    paths = live["paths"]
    for name in ANNOTATORS:
        add_annotator(paths, name, PASSWORD, FAST_HASH)
    assets = [a for a in live["defs"].assets if isinstance(a, dg.AssetsDefinition)]
    designed = dg.materialize(assets, selection=["labelling_tasks_ranking"], resources=dict(live["defs"].resources),
                              instance=dg.DagsterInstance.get(), run_config={"ops": {"labelling_tasks_ranking": {
                                  "config": {"adaptive_batches": 6, "annotators": list(ANNOTATORS)}}}})
    assert designed.success
    views_before = _query(live, "SELECT sum(n_views) FROM labels_ranking")[0][0]
    soft_before = _soft_labels(live)
    ranking_versions_before = _versions(live, "ranking")
    single_versions_before = _versions(live, "single")

    # the demo's files are long ingested and nothing changed since v1: no retrain
    _back_date_inbox(paths, 11 * 60)
    settled, _ = _sensor_tick(labels_settled_sensor, live)
    assert isinstance(settled, dg.SkipReason) and "unchanged" in settled.skip_message

    truth_by_png = _truth_by_png(live)
    acknowledged: list[str] = []
    with TestClient(create_app(app_config(paths))) as client:
        for name in ANNOTATORS:
            client.cookies.clear()
            token = log_in(client, name)
            task = client.get("/api/ranking/next").json()["task"]
            while task is not None:
                order, dividers = _answer_as_the_truth(client, task["ticket"], truth_by_png)
                response = client.post("/api/ranking/submit", json={
                    "ticket": task["ticket"], "order": order, "dividers": dividers, "artefacts": []},
                    headers={"X-CSRF-Token": token})
                assert response.status_code == 200 and response.json()["duplicate"] is False
                acknowledged.append(task["ticket"])
                task = response.json()["task"]
    assert len(acknowledged) == 6

    # the relabel sensor follows at once; the retrain sensor waits for the annotators to pause
    request, cursor = _sensor_tick(annotation_files_sensor, live)
    assert isinstance(request, dg.RunRequest)
    _launch(live, "relabel", request)
    again, _ = _sensor_tick(annotation_files_sensor, live, cursor)
    assert isinstance(again, dg.SkipReason)
    busy, _ = _sensor_tick(labels_settled_sensor, live)
    assert isinstance(busy, dg.SkipReason) and "annotators still at work" in busy.skip_message

    stored = {row[0] for row in _query(live, "SELECT submission_id FROM raw_annotations_ranking")}
    assert set(acknowledged) <= stored  # every acknowledged answer reached the labels' input
    assert _query(live, "SELECT sum(n_views) FROM labels_ranking")[0][0] == views_before + 8 * len(acknowledged)
    soft_after = _soft_labels(live)  # the ranking model trains on these (TINY_RUN: soft_labels)
    assert max(abs(a - b) for k in soft_after for a, b in zip(soft_after[k], soft_before[k], strict=True)) > 0.01

    _back_date_inbox(paths, 11 * 60)
    retrain, _ = _sensor_tick(labels_settled_sensor, live)
    assert isinstance(retrain, dg.RunRequest)
    assert retrain.asset_selection == [dg.AssetKey("model_ranking"), dg.AssetKey("evaluation_report")]
    second_look, _ = _sensor_tick(labels_settled_sensor, live)
    assert second_look.run_key == retrain.run_key  # the daemon drops a request whose key it has launched
    run = _launch(live, "retrain_models", retrain, MODELS)
    after, _ = _sensor_tick(labels_settled_sensor, live)
    assert isinstance(after, dg.SkipReason) and "unchanged" in after.skip_message

    ranking_versions = _versions(live, "ranking")
    assert len(ranking_versions) == len(ranking_versions_before) + 1
    assert len(_versions(live, "single")) == len(single_versions_before)  # single labels did not change
    client = mlflow.MlflowClient(tracking_uri=live["tracking_uri"])
    hashes = [client.get_run(v.run_id).data.params["label_hash"] for v in ranking_versions]
    assert all(a != b for a, b in zip(hashes, hashes[1:], strict=False))
    new = ranking_versions[-1]
    assert new.tags["dagster.run_id"] == run.run_id and new.tags["label_hash"] == hashes[-1]
    assert new.tags["promotion_comparison"] == "rescored_on_same_validation"
    new_score, old_score = float(new.tags["val_macro_f1"]), float(new.tags["champion_val_macro_f1_rescored"])
    champion = client.get_model_version_by_alias(REGISTERED_MODEL_NAMES["ranking"], "champion")
    if new.tags["promotion_decision"] == "promoted":
        assert new_score >= old_score and str(champion.version) == str(new.version)
    else:
        assert new.tags["promotion_decision"] == "kept_champion" and new_score < old_score
        assert str(champion.version) == str(ranking_versions_before[-1].version)


def test_new_scans_without_labels_wait_and_break_nothing(live, series_writer) -> None:
    paths = live["paths"]
    split_before = _query(live, "SELECT scan_id, split FROM dataset_split ORDER BY scan_id")
    _, cursor = _sensor_tick(new_scans_sensor, live)  # the demo's scans: already ingested, nothing new
    series_writer(paths.scans / "new_export_1")
    series_writer(paths.scans / "new_export_2")
    requests, _ = _sensor_tick(new_scans_sensor, live, cursor)
    assert {r.partition_key for r in requests} == {bucket_of("new_export_1/x"), bucket_of("new_export_2/x")}
    for request in requests:  # one partition run per changed bucket
        _launch(live, "ingest_new_scans", request)
    scans = {row[0] for row in _query(live, "SELECT DISTINCT scan_id FROM slices")}
    assert len(scans) == len(split_before) + 2

    relabel = _launch(live, "relabel")
    split_meta = relabel.asset_materializations_for_node("dataset_split")[0].metadata
    assert split_meta["scans_waiting_for_labels"].value == 2 and split_meta["new_scans"].value == 0
    assert _query(live, "SELECT scan_id, split FROM dataset_split ORDER BY scan_id") == split_before

    versions_before = len(_versions(live, "single"))
    forced = {"ops": {"model_single": {"config": {**MODELS["ops"]["model_single"]["config"], "force": True}}}}
    result = live["defs"].resolve_job_def("retrain_models").execute_in_process(
        run_config=forced, instance=dg.DagsterInstance.get(), asset_selection=[dg.AssetKey("model_single")],
        raise_on_error=False)
    assert result.success
    assert len(_versions(live, "single")) == versions_before + 1


def test_training_that_hits_the_safety_cap_is_not_registered(live) -> None:
    versions_before = [v.version for v in _versions(live, "single")]
    capped = {"ops": {"model_single": {"config": {"epochs": 3, "max_minutes": 1e-5, "force": True}}}}
    result = live["defs"].resolve_job_def("retrain_models").execute_in_process(
        run_config=capped, instance=dg.DagsterInstance.get(), asset_selection=[dg.AssetKey("model_single")],
        raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "safety cap" in failure.message or "safety cap" in str(failure.event_specific_data.error)
    assert [v.version for v in _versions(live, "single")] == versions_before
    client = mlflow.MlflowClient(tracking_uri=live["tracking_uri"])
    experiment = client.get_experiment_by_name("cmr-slice-classification")
    incomplete = client.search_runs([experiment.experiment_id], "tags.`cmr.complete` = 'false'")
    assert len(incomplete) == 1 and incomplete[0].data.tags["stop_reason"] == "time_cap"
