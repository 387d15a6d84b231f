"""MLflow tracking and model registry for the two slice classifiers (plain functions, no Dagster).

One experiment (`settings.MLFLOW_EXPERIMENT`), one registered model per labelling strategy
(`domain.REGISTERED_MODEL_NAMES`). Alias protocol:
- every newly logged version gets `challenger`, set only after the model is fully logged and
  registered, so an interrupted run never leaves an alias on a half-logged model (at worst an
  un-aliased version that nothing loads);
- `champion` moves only by the promotion rule (`cmr_assets.promotion`);
- a run that did not complete (training stopped by its safety time cap) is logged with
  `cmr.complete=false` and no model is registered, so it can never become `challenger` or `champion`.

Models are logged with MLflow's default PyTorch format for this version ("pt2", torch.export: no
pickle on load). The export is traced in eval mode on CPU with a batch of 2 so the batch dimension
stays dynamic; `load_champion` therefore returns a `torch.fx.GraphModule` that takes
(N, 1, S, S) float32 and returns what the trained module's forward returned.

Public API:
- `MlflowUnavailableError`, `ChampionNotFoundError`
- `check_tracking_store(uri) -> None`
- `ensure_experiment(client, name, artifact_location) -> experiment_id`
- `log_trained_model(tracking_uri, artifact_location, strategy, model, params, history, metrics,
  input_example, pictures, tags=None, experiment_name=MLFLOW_EXPERIMENT, register=True,
  datasets=None) -> LoggedModel` (`datasets`: context -> `mlflow.data` dataset, logged as run inputs;
  metrics are attached to the logged model and to the `validation` dataset)
- `newest_version_params(client, model_name) -> dict[str, str]` (empty without a version)
- `load_champion(model_name_or_uri, tracking_uri=None, map_location="cpu") -> torch.nn.Module`
- `log_evaluation_run(tracking_uri, artifact_location, report, report_files, pictures, tags=None,
  experiment_name=MLFLOW_EXPERIMENT) -> run_id`
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sqlite3
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from cmr_assets.domain import CHALLENGER, CHAMPION, REGISTERED_MODEL_NAMES
from cmr_assets.settings import MLFLOW_EXPERIMENT, mlflow_tracking_uri

_TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
TRAIN_HOW = ("train one with `cmr-assets demo`, or materialise the `model_ranking` / `model_single` "
             "assets in the Dagster UI")


class MlflowUnavailableError(RuntimeError):
    """The MLflow tracking store cannot be reached or written; the message names the URI."""


class ChampionNotFoundError(LookupError):
    """No registered model, or no `champion` alias on it, to load."""


@dataclass(frozen=True)
class LoggedModel:
    """Where a trained model landed: its run, its logged-model URI and its registry version."""

    run_id: str
    model_uri: str
    registered_model: str
    version: str


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    raw = unquote(uri[len("sqlite:///"):].split("?", 1)[0])
    return None if raw in ("", ":memory:") else Path(raw)


def check_tracking_store(uri: str) -> None:
    """Fail fast, naming the URI, instead of a retry loop or stack trace deep inside MLflow.

    SQLite: the folder is created if missing (the default `mlflow/` on a fresh checkout) and the
    database must open for writing. HTTP(S): the server's `/health` must answer within 5 s. Other
    schemes are probed with one cheap client call.
    """
    sqlite_path = _sqlite_path(uri)
    if sqlite_path is not None:
        try:
            sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.closing(sqlite3.connect(sqlite_path, timeout=5)) as connection:
                connection.execute("BEGIN IMMEDIATE")  # takes the write lock, changes nothing
                connection.rollback()
        except (OSError, sqlite3.Error) as error:
            raise MlflowUnavailableError(
                f"MLflow tracking store {uri} is not usable: cannot create or write the SQLite file "
                f"{sqlite_path} ({error}). Set MLFLOW_TRACKING_URI to a writable location.") from error
        return
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                if response.status != 200:
                    raise MlflowUnavailableError(
                        f"MLflow tracking server {uri} answered /health with HTTP {response.status}")
        except (urllib.error.URLError, OSError) as error:
            raise MlflowUnavailableError(
                f"MLflow tracking server {uri} is unreachable ({error}). Start it, or unset "
                "MLFLOW_TRACKING_URI to use the local SQLite store.") from error
        return
    try:
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as error:  # any backend failure means the store is unusable; say which one
        raise MlflowUnavailableError(f"MLflow tracking store {uri} is not usable: {error}") from error


def ensure_experiment(client: mlflow.MlflowClient, name: str, artifact_location: str) -> str:
    """The experiment's id, created with an explicit artifact location (MLflow 3 needs one with SQLite)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created concurrently by another run
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent logging API reads a global URI; set it only for the duration of one run.

    `mlflow.set_tracking_uri` also writes `MLFLOW_TRACKING_URI` into the environment, which
    `settings.mlflow_tracking_uri()` reads, so the variable is restored exactly (or removed) too.
    """
    environment_before = os.environ.get(_TRACKING_URI_VARIABLE)
    uri_before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(uri_before)
        if environment_before is None:
            os.environ.pop(_TRACKING_URI_VARIABLE, None)
        else:
            os.environ[_TRACKING_URI_VARIABLE] = environment_before


def _pip_requirements() -> list[str]:
    """Pinned from the running environment (skips MLflow's ~9 s inference); local tags like +cu130 dropped."""
    return [f"{name}=={package_version(name).split('+', 1)[0]}" for name in ("torch", "torchvision", "numpy")]


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Numeric, finite entries only: MLflow metrics are floats, and None/NaN mean 'not defined'."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, int | float | np.number) and not isinstance(v, bool) and math.isfinite(v)}


def _log_pictures(pictures: Mapping[str, bytes], artifact_path: str) -> None:
    if not pictures:
        return
    with tempfile.TemporaryDirectory() as folder:
        for name, data in pictures.items():
            file_name = name if name.endswith(".png") else f"{name}.png"
            (Path(folder) / file_name).write_bytes(data)
        mlflow.log_artifacts(folder, artifact_path)


def _export_example(input_example: np.ndarray) -> np.ndarray:
    example = np.asarray(input_example, dtype=np.float32)
    if example.ndim != 4 or example.shape[1] != 1:
        raise ValueError(f"input_example: expected float32 of shape (N, 1, S, S), got {example.shape}")
    # torch.export fixes a size-1 batch dimension; a batch of 2 keeps it dynamic for N-slice stacks.
    return np.repeat(example[:1], 2, axis=0)


def log_trained_model(tracking_uri: str, artifact_location: str, strategy: str, model: torch.nn.Module,
                      params: Mapping[str, Any], history: Sequence[Mapping[str, Any]],
                      metrics: Mapping[str, Any], input_example: np.ndarray,
                      pictures: Mapping[str, bytes], tags: Mapping[str, str] | None = None,
                      experiment_name: str = MLFLOW_EXPERIMENT, register: bool = True,
                      datasets: Mapping[str, Any] | None = None,
                      version_tags: Mapping[str, str] | None = None) -> LoggedModel:
    """One training run: params, per-epoch metrics (step = `epoch` key, else list position), final
    metrics, pictures under `pictures/`, the model with signature/input example/pinned requirements,
    registered under the strategy's name with `version_tags` (also set on the run), then alias
    `challenger` on the new version.

    The model is copied to CPU in eval mode for export; the caller's module is left untouched.
    Call `promotion.promote_if_better` afterwards to decide on `champion`. With `register=False` (an
    incomplete run) only the run is logged, tagged `cmr.complete=false`: no model, no version,
    no alias; the returned `model_uri` and `version` are empty.
    """
    if strategy not in REGISTERED_MODEL_NAMES:
        raise ValueError(f"strategy: expected one of {sorted(REGISTERED_MODEL_NAMES)}, got {strategy!r}")
    registered_model = REGISTERED_MODEL_NAMES[strategy]
    check_tracking_store(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment_id = ensure_experiment(client, experiment_name, artifact_location)

    example = _export_example(input_example)
    export_model = copy.deepcopy(model).to("cpu").eval()
    with torch.no_grad():
        output = export_model(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, output)

    with _tracking_uri(tracking_uri), mlflow.start_run(
            experiment_id=experiment_id, run_name=f"train-{strategy}",
            tags={"strategy": strategy, "kind": "training", "cmr.complete": str(register).lower(),
                  **(tags or {}), **(version_tags or {})}) as run:
        mlflow.log_params({k: _param_value(v) for k, v in {"strategy": strategy, **params}.items()})
        for context, dataset in (datasets or {}).items():
            mlflow.log_input(dataset, context=context)
        for position, epoch_metrics in enumerate(history):
            step = int(epoch_metrics.get("epoch", position))
            values = _finite_metrics({k: v for k, v in epoch_metrics.items() if k != "epoch"})
            if values:
                mlflow.log_metrics(values, step=step)
        _log_pictures(pictures, "pictures")
        final_metrics = _finite_metrics(metrics)
        validation = (datasets or {}).get("validation")
        if not register:
            mlflow.log_metrics(final_metrics, dataset=validation)
            return LoggedModel(run_id=run.info.run_id, model_uri="", registered_model=registered_model, version="")
        info = mlflow.pytorch.log_model(
            export_model, name="model", signature=signature, input_example=example,
            pip_requirements=_pip_requirements(), registered_model_name=registered_model)
        # the final numbers belong to this model (MLflow 3 logged-model metrics) and to its validation data
        mlflow.log_metrics(final_metrics, model_id=info.model_id, dataset=validation)
        version = str(info.registered_model_version)
        client.set_model_version_tag(registered_model, version, "strategy", strategy)
        for key in ("label_hash", "split_hash", "dagster.run_id", "dagster.asset_key"):
            if tags and tags.get(key):
                client.set_model_version_tag(registered_model, version, key, tags[key])
        for key, value in (version_tags or {}).items():
            client.set_model_version_tag(registered_model, version, key, value)
        client.set_registered_model_alias(registered_model, CHALLENGER, version)
        mlflow.set_tags({"registered_model": registered_model, "registered_version": version})
    return LoggedModel(run_id=run.info.run_id, model_uri=info.model_uri,
                       registered_model=registered_model, version=version)


def newest_version_params(client: mlflow.MlflowClient, model_name: str) -> dict[str, str]:
    """The params of the training run behind the newest registered version (empty without one)."""
    try:
        versions = client.search_model_versions(f"name = '{model_name}'")
    except MlflowException:
        return {}
    if not versions:
        return {}
    newest = max(versions, key=lambda v: int(v.version))
    return dict(client.get_run(newest.run_id).data.params) if newest.run_id else {}



def load_champion(model_name_or_uri: str, tracking_uri: str | None = None,
                  map_location: str = "cpu") -> torch.nn.Module:
    """The module behind `champion` of a registered model (or any `models:/` / `runs:/` URI), ready for eval.

    Raises `ChampionNotFoundError` saying how to train a model when the registry has none.
    """
    uri = tracking_uri or mlflow_tracking_uri()
    check_tracking_store(uri)
    if ":/" in model_name_or_uri:  # models:/..., runs:/..., file:///...; registered names have no ":"
        model_uri = model_name_or_uri
    else:
        client = mlflow.MlflowClient(tracking_uri=uri)
        try:
            client.get_registered_model(model_name_or_uri)
        except MlflowException as error:
            raise ChampionNotFoundError(
                f"No registered model {model_name_or_uri!r} in MLflow store {uri}: {TRAIN_HOW}.") from error
        try:
            client.get_model_version_by_alias(model_name_or_uri, CHAMPION)
        except MlflowException as error:
            raise ChampionNotFoundError(
                f"Registered model {model_name_or_uri!r} in MLflow store {uri} has no {CHAMPION!r} alias "
                f"yet: {TRAIN_HOW}.") from error
        model_uri = f"models:/{model_name_or_uri}@{CHAMPION}"
    with _tracking_uri(uri):
        loaded = mlflow.pytorch.load_model(model_uri, map_location=map_location)
    return loaded


def _report_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """The headline numbers of an evaluation report, flattened as `<strategy>_<metric>`."""
    flat: dict[str, Any] = {}
    for strategy, block in report.get("strategies", {}).items():
        for key in ("test_accuracy", "test_macro_f1", "test_weighted_f1", "test_roc_auc",
                    "label_accuracy_vs_reference", "expert_hours", "images_labelled"):
            flat[f"{strategy}_{key}"] = block.get(key)
    comparison = report.get("comparison", {})
    for key in ("mcnemar_p", "accuracy_difference", "accuracy_difference_ci_low",
                "accuracy_difference_ci_high"):
        flat[key] = comparison.get(key)
    for key in ("kappa_intra", "kappa_inter"):
        flat[key] = report.get("agreement", {}).get(key)
    flat["n_test_images"] = report.get("n_test_images")
    return _finite_metrics(flat)


def log_run(tracking_uri: str, artifact_location: str, run_name: str, *, params: Mapping[str, Any] | None = None,
            metrics: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None,
            files: Sequence[str | Path] = (), files_path: str = "files", pictures: Mapping[str, bytes] | None = None,
            experiment_name: str = MLFLOW_EXPERIMENT) -> str:
    """A plain MLflow run (no model): params, finite metrics, files under `files_path`, pictures under
    `pictures/`. Returns the run id."""
    check_tracking_store(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment_id = ensure_experiment(client, experiment_name, artifact_location)
    with _tracking_uri(tracking_uri), mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                                                        tags=dict(tags or {})) as run:
        if params:
            mlflow.log_params({k: _param_value(v) for k, v in params.items()})
        mlflow.log_metrics(_finite_metrics(metrics or {}))
        for path in files:
            mlflow.log_artifact(str(path), files_path)
        _log_pictures(pictures or {}, "pictures")
    return run.info.run_id


def log_evaluation_run(tracking_uri: str, artifact_location: str, report: Mapping[str, Any],
                       report_files: Sequence[str | Path], pictures: Mapping[str, bytes],
                       tags: Mapping[str, str] | None = None,
                       experiment_name: str = MLFLOW_EXPERIMENT) -> str:
    """An `evaluate` run holding the report files under `report/`, pictures and headline metrics.

    Tags link the evaluated model versions (`<strategy>_model_version` from the report's
    `strategies.<s>.model.version`). Returns the run id.
    """
    model_tags = {f"{s}_model_version": str(block["model"]["version"])
                  for s, block in report.get("strategies", {}).items()
                  if isinstance(block.get("model"), Mapping) and "version" in block["model"]}
    return log_run(tracking_uri, artifact_location, "evaluate", metrics=_report_metrics(report),
                   tags={"kind": "evaluation", **model_tags, **(tags or {})}, files=report_files,
                   files_path="report", pictures=pictures, experiment_name=experiment_name)


def model_version_tags(model_name_or_uri: str, tracking_uri: str | None = None) -> dict[str, str]:
    """Tags of the version behind a registered name's `champion` or a `models:/name/N` / `models:/name@alias`
    URI; empty for other URIs (runs:/, files), which carry no registry provenance."""
    uri = tracking_uri or mlflow_tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=uri)
    target = model_name_or_uri if ":/" in model_name_or_uri else f"models:/{model_name_or_uri}@{CHAMPION}"
    if not target.startswith("models:/"):
        return {}
    name_and_ref = target.removeprefix("models:/")
    try:
        if "@" in name_and_ref:
            name, alias = name_and_ref.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = name_and_ref.rsplit("/", 1)
            version = client.get_model_version(name, number)
    except (MlflowException, ValueError):
        return {}
    return dict(version.tags)
