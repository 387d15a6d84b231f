"""Tracking, registry aliases and failure messages against a temporary SQLite MLflow store."""

import os
import socket

import mlflow
import numpy as np
import pytest
import torch
from mlflow.entities import RunStatus

from cmr_assets import mlflow_store
from cmr_assets.mlflow_store import (
    ChampionNotFoundError,
    MlflowUnavailableError,
    check_tracking_store,
    load_champion,
    log_trained_model,
)
from cmr_assets.promotion import promote_if_better
from cmr_assets.resources import MlflowResource

MODEL = "cmr-slice-classifier-ranking"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3)
        self.norm = torch.nn.BatchNorm2d(2)
        self.head = torch.nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mlflow")
    return {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "artifact_location": (root / "artifacts").as_uri()}


@pytest.fixture(scope="module")
def logged(store):
    torch.manual_seed(0)
    model = TinyNet().train()
    result = log_trained_model(
        **store, strategy="ranking", model=model,
        params={"architecture": "tiny", "input_size": 16, "seed": 0},
        history=[{"epoch": 1, "train_loss": 1.0, "val_macro_f1": 0.5},
                 {"epoch": 2, "train_loss": 0.7, "val_macro_f1": 0.6, "val_roc_auc": float("nan")}],
        metrics={"best_val_macro_f1": 0.6, "note": "not a number"},
        input_example=np.zeros((1, 1, 16, 16), np.float32), pictures={"confusion_val": PNG},
        tags={"split_hash": "split-a"})
    return model, result


def _client(store) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=store["tracking_uri"])


def test_logged_model_run_and_challenger(store, logged):
    model, result = logged
    client = _client(store)
    assert model.training, "the caller's module must be left in its own mode"
    assert result.registered_model == MODEL
    assert client.get_model_version_by_alias(MODEL, "challenger").version == int(result.version)
    assert client.get_model_version(MODEL, result.version).run_id == result.run_id
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["architecture"] == "tiny" and run.data.params["strategy"] == "ranking"
    assert run.data.tags["split_hash"] == "split-a"
    assert [(m.step, m.value) for m in client.get_metric_history(result.run_id, "val_macro_f1")] == [(1, 0.5),
                                                                                                     (2, 0.6)]
    assert "val_roc_auc" not in run.data.metrics and "note" not in run.data.metrics
    assert run.data.metrics["best_val_macro_f1"] == 0.6
    pictures = [a.path for a in client.list_artifacts(result.run_id, "pictures")]
    assert pictures == ["pictures/confusion_val.png"]


def test_champion_loads_and_matches_the_trained_module(store, logged):
    model, result = logged
    client = _client(store)
    promote_if_better(client, MODEL, result.version, 0.6, "split-a")
    loaded = load_champion(MODEL, tracking_uri=store["tracking_uri"])
    batch = torch.rand(5, 1, 16, 16)  # a different batch size from the example: batch stays dynamic
    with torch.no_grad():
        expected = model.eval()(batch)
        model.train()
        assert torch.allclose(loaded(batch), expected, atol=1e-5)


def _new_version(store) -> str:
    return log_trained_model(**store, strategy="ranking", model=TinyNet(), params={}, history=[], metrics={},
                             input_example=np.zeros((1, 1, 16, 16), np.float32), pictures={}).version


def test_champion_moves_only_for_an_equal_or_better_score_on_the_same_split(store, logged):
    _, first = logged
    client = _client(store)
    client.delete_registered_model_alias(MODEL, "champion")

    decision = promote_if_better(client, MODEL, first.version, 0.80, "split-a")
    assert decision["decision"] == "first_champion" and decision["champion_before"] is None
    assert client.get_model_version_by_alias(MODEL, "champion").version == int(first.version)

    worse = _new_version(store)
    decision = promote_if_better(client, MODEL, worse, 0.70, "split-a")
    assert decision["decision"] == "kept_champion" and decision["champion_version"] == first.version
    assert client.get_model_version_by_alias(MODEL, "champion").version == int(first.version)
    assert client.get_model_version_by_alias(MODEL, "challenger").version == int(worse)
    tags = client.get_model_version(MODEL, worse).tags
    assert tags["promotion_decision"] == "kept_champion"
    assert float(tags["val_macro_f1"]) == 0.70 and float(tags["champion_val_macro_f1_before"]) == 0.80
    worse_run = client.get_model_version(MODEL, worse).run_id
    assert client.get_run(worse_run).data.tags["promotion_decision"] == "kept_champion"

    equal = _new_version(store)
    decision = promote_if_better(client, MODEL, equal, 0.80, "split-a")
    assert decision["decision"] == "promoted"
    assert decision["champion_before"] == {"version": first.version, "val_macro_f1": 0.80,
                                           "split_hash": "split-a"}
    assert client.get_model_version_by_alias(MODEL, "champion").version == int(equal)

    other_split = _new_version(store)
    decision = promote_if_better(client, MODEL, other_split, 0.10, "split-b")
    assert decision["decision"] == "replaced_other_split"
    assert client.get_model_version_by_alias(MODEL, "champion").version == int(other_split)
    assert client.get_model_version(MODEL, other_split).tags["split_hash"] == "split-b"


@pytest.mark.parametrize("variable", [None, "sqlite:///somewhere-else.db"])
def test_logging_leaves_the_tracking_uri_variable_alone(store, logged, monkeypatch, variable):
    if variable is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", variable)
    _new_version(store)
    assert os.environ.get("MLFLOW_TRACKING_URI") == variable


def test_interrupted_logging_leaves_aliases_alone(store, logged, monkeypatch):
    client = _client(store)
    aliases_before = client.get_registered_model(MODEL).aliases
    versions_before = len(client.search_model_versions(f"name='{MODEL}'"))

    def interrupted(*args, **kwargs):
        raise RuntimeError("killed while writing the model")

    monkeypatch.setattr(mlflow_store.mlflow.pytorch, "log_model", interrupted)
    with pytest.raises(RuntimeError, match="killed"):
        log_trained_model(**store, strategy="ranking", model=TinyNet(), params={}, history=[], metrics={},
                          input_example=np.zeros((1, 1, 16, 16), np.float32), pictures={})
    assert client.get_registered_model(MODEL).aliases == aliases_before
    assert len(client.search_model_versions(f"name='{MODEL}'")) == versions_before
    failed = client.search_runs([client.get_experiment_by_name("cmr-slice-classification").experiment_id],
                                order_by=["attribute.start_time DESC"], max_results=1)[0]
    assert failed.info.status == RunStatus.to_string(RunStatus.FAILED)


def test_load_champion_without_model_says_how_to_train(store, logged):
    with pytest.raises(ChampionNotFoundError, match="cmr-assets demo") as error:
        load_champion("cmr-slice-classifier-single", tracking_uri=store["tracking_uri"])
    assert store["tracking_uri"] in str(error.value)
    _client(store).create_registered_model("no-champion-yet")
    with pytest.raises(ChampionNotFoundError, match="no 'champion' alias"):
        load_champion("no-champion-yet", tracking_uri=store["tracking_uri"])


def test_unreachable_store_names_the_uri(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    uri = f"sqlite:///{blocker / 'mlflow' / 'mlflow.db'}"
    with pytest.raises(MlflowUnavailableError, match="not-a-folder"):
        check_tracking_store(uri)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    http_uri = f"http://127.0.0.1:{port}"
    with pytest.raises(MlflowUnavailableError, match=http_uri):
        check_tracking_store(http_uri)
    with pytest.raises(MlflowUnavailableError, match=http_uri):
        MlflowResource(tracking_uri=http_uri).client()


def test_evaluation_run_holds_report_and_headline_metrics(store, logged, tmp_path):
    report = {"strategies": {"ranking": {"test_accuracy": 0.9, "test_roc_auc": None,
                                         "model": {"version": "1"}},
                             "single": {"test_accuracy": 0.7}},
              "comparison": {"mcnemar_p": 0.03}, "agreement": {"kappa_intra": 0.9, "kappa_inter": None},
              "n_test_images": 40}
    report_file = tmp_path / "evaluation.md"
    report_file.write_text("# report\n")
    run_id = MlflowResource(**store).log_evaluation_run(report=report, report_files=[report_file],
                                                        pictures={"roc": PNG})
    client = _client(store)
    run = client.get_run(run_id)
    assert run.data.metrics == {"ranking_test_accuracy": 0.9, "single_test_accuracy": 0.7, "mcnemar_p": 0.03,
                                "kappa_intra": 0.9, "n_test_images": 40.0}
    assert run.data.tags["ranking_model_version"] == "1" and run.data.tags["kind"] == "evaluation"
    artifacts = {a.path for folder in ("report", "pictures") for a in client.list_artifacts(run_id, folder)}
    assert artifacts == {"report/evaluation.md", "pictures/roc.png"}


def test_resource_defaults_follow_settings(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////somewhere/else.db")
    resource = MlflowResource()
    assert resource.resolved_tracking_uri() == "sqlite:////somewhere/else.db"
    assert resource.resolved_artifact_location().startswith("file://")
    assert MlflowResource(tracking_uri="sqlite:///x.db").resolved_tracking_uri() == "sqlite:///x.db"


def _fresh_champion(store, score: float, split: str) -> str:
    client = _client(store)
    version = _new_version(store)
    if client.get_registered_model(MODEL).aliases.get("champion"):
        client.delete_registered_model_alias(MODEL, "champion")
    assert promote_if_better(client, MODEL, version, score, split)["decision"] == "first_champion"
    return version


def test_champion_is_rescored_on_the_new_validation_set_before_comparing(store, logged):
    client = _client(store)
    champion = _fresh_champion(store, 0.90, "split-a")  # its tagged score is from another split
    asked = []

    def rescore(uri: str) -> float:
        asked.append(uri)
        return 0.60

    worse = _new_version(store)
    decision = promote_if_better(client, MODEL, worse, 0.55, "split-b", rescore=rescore)
    assert asked == [f"models:/{MODEL}/{champion}"]
    assert (decision["decision"], decision["comparison"]) == ("kept_champion", "rescored_on_same_validation")
    assert client.get_model_version_by_alias(MODEL, "champion").version == int(champion)
    tags = client.get_model_version(MODEL, worse).tags
    assert float(tags["val_macro_f1"]) == 0.55 and float(tags["champion_val_macro_f1_rescored"]) == 0.60
    assert float(tags["champion_val_macro_f1_before"]) == 0.90
    assert tags["promotion_comparison"] == "rescored_on_same_validation"

    better = _new_version(store)  # a lower number than the champion's old tag, but better on the same data
    decision = promote_if_better(client, MODEL, better, 0.61, "split-b", rescore=lambda uri: 0.60)
    assert decision["decision"] == "promoted" and decision["champion_before"]["val_macro_f1_rescored"] == 0.60
    assert client.get_model_version_by_alias(MODEL, "champion").version == int(better)


def test_unloadable_champion_falls_back_to_the_tagged_comparison(store, logged):
    client = _client(store)
    champion = _fresh_champion(store, 0.90, "split-a")

    def broken(uri: str) -> float:
        raise OSError("artifact gone")

    same_split = _new_version(store)
    decision = promote_if_better(client, MODEL, same_split, 0.50, "split-a", rescore=broken)
    assert (decision["decision"], decision["comparison"]) == ("kept_champion", "tagged_score_same_split")
    assert client.get_model_version_by_alias(MODEL, "champion").version == int(champion)
    assert client.get_model_version(MODEL, same_split).tags["champion_val_macro_f1_rescored"] == "none"


def test_incomplete_run_is_logged_but_never_registered(store, logged):
    client = _client(store)
    aliases_before = client.get_registered_model(MODEL).aliases
    versions_before = len(client.search_model_versions(f"name='{MODEL}'"))
    result = log_trained_model(**store, strategy="ranking", model=TinyNet(), params={"label_hash": "h-incomplete"},
                               history=[{"epoch": 1, "val_macro_f1": 0.4}], metrics={"epochs_run": 1},
                               input_example=np.zeros((1, 1, 16, 16), np.float32), pictures={},
                               tags={"stop_reason": "time_cap"}, register=False)
    assert (result.version, result.model_uri) == ("", "")
    assert len(client.search_model_versions(f"name='{MODEL}'")) == versions_before
    assert client.get_registered_model(MODEL).aliases == aliases_before
    run = client.get_run(result.run_id)
    assert run.data.tags["cmr.complete"] == "false" and run.data.metrics["epochs_run"] == 1.0
    assert mlflow_store.newest_version_params(client, MODEL).get("label_hash") != "h-incomplete"


def test_lineage_tags_datasets_and_metrics_on_the_logged_model(store, logged):
    import pandas as pd
    from mlflow import data as mlflow_data

    rows = pd.DataFrame({"slice_id": ["a-00", "a-01"], "target": [0, 1]})
    datasets = {context: mlflow_data.from_pandas(rows, targets="target", name=f"labels-{context}", digest=context)
                for context in ("training", "validation")}
    lineage = {"dagster.run_id": "run-123", "dagster.asset_key": "model_ranking", "label_hash": "h-lineage",
               "split_hash": "split-c"}
    result = log_trained_model(**store, strategy="ranking", model=TinyNet(), params={"label_hash": "h-lineage"},
                               history=[], metrics={"val_macro_f1": 0.7},
                               input_example=np.zeros((1, 1, 16, 16), np.float32), pictures={}, tags=lineage,
                               datasets=datasets)
    client = _client(store)
    run = client.get_run(result.run_id)
    assert {k: run.data.tags[k] for k in lineage} == lineage and run.data.tags["cmr.complete"] == "true"
    inputs = {d.dataset.name: {t.key: t.value for t in d.tags} for d in run.inputs.dataset_inputs}
    assert inputs["labels-training"]["mlflow.data.context"] == "training"
    assert inputs["labels-validation"]["mlflow.data.context"] == "validation"
    version = client.get_model_version(MODEL, result.version)
    assert {k: version.tags[k] for k in ("label_hash", "dagster.run_id", "dagster.asset_key")} == {
        "label_hash": "h-lineage", "dagster.run_id": "run-123", "dagster.asset_key": "model_ranking"}
    model = client.get_logged_model(version.model_id or result.model_uri.removeprefix("models:/"))
    assert [(m.key, m.value) for m in model.metrics] == [("val_macro_f1", 0.7)]
    assert mlflow_store.newest_version_params(client, MODEL).get("label_hash") == "h-lineage"
