"""The checks of `make test-cluster` (started by scripts/test_cluster.sh, which owns the processes).

scripts/test_cluster.sh starts a throw-away PostgreSQL, writes a Dagster instance on it
(deploy/cluster-test/dagster.yaml: Postgres storage, QueuedRunCoordinator, DefaultRunLauncher) and
runs this script twice around starting `dagster-daemon`:

- `pause-automation`: stops every sensor and schedule in that instance before the daemon starts, so
  the only runs are the ones launched here (the sensors default to RUNNING, and the archive filter's
  automation condition would follow fresh slices).
- `check`: writes a small synthetic DICOM cohort (plus a few bad files) into one source folder and
  submits one `ingest_new_scans` run per hash bucket that holds files (the keys of
  `cmr_assets.ingest.assets.SCAN_BUCKETS`, tag `dagster/partition`; buckets from
  `cmr_assets.ingest.partitions.bucket_of`) at once to the queued run coordinator. It waits for them
  (failing on any failed run, or after `--timeout` seconds), ingests the same folder in one process
  with `cmr-assets ingest` into a second data folder sharing the scan-id key, and requires `scans`,
  `slices` and `rejected_files` (timestamps aside) and the stored images to be equal. Then it trains
  one epoch on the ingested slices, logs, registers and promotes the model through
  cmr_assets.mlflow_store / cmr_assets.promotion against MLflow on the same PostgreSQL, loads the
  champion back and compares its outputs. Prints the figures at the end.

Each run executes in one process (the job has `executor_def=dg.in_process_executor`,
cmr_assets/automation/sensors.py). Runs are created and submitted in this process like `dagster job
launch` does (its helper `dagster._cli.job._create_run`, pinned dagster 1.13.27), with one workspace
load for all of them.

Environment (set by scripts/test_cluster.sh): DAGSTER_HOME (the Postgres instance), CMR_DATA_DIR (the
cluster's data folder, also the daemon's), MLFLOW_TRACKING_URI (postgresql://...), MLFLOW_ARTIFACT_ROOT.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORKSPACE = PROJECT_ROOT / "workspace.yaml"
INGEST_JOB = "ingest_new_scans"
PARTITION_TAG = "dagster/partition"
TIMESTAMP_COLUMNS = ("ingested_at", "rejected_at")
TABLE_KEYS = {"scans": ["scan_id"], "slices": ["slice_id"], "rejected_files": ["source_root_hash", "path", "reason"]}
TERMINAL = ("SUCCESS", "FAILURE", "CANCELED")


class CheckFailed(RuntimeError):
    """A check did not hold; the message says which and why."""


def say(message: str) -> None:
    print(f"[cluster-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# the Dagster instance and workspace


@contextmanager
def instance_and_workspace() -> Iterator[tuple[Any, Any, Any, Any]]:
    """The instance of $DAGSTER_HOME, and workspace.yaml loaded once: (instance, workspace, location, repo)."""
    import dagster as dg
    from dagster._cli.workspace.cli_target import (
        get_code_location_from_workspace,
        get_remote_repository_from_code_location,
        get_workspace_from_cli_opts,
    )
    from dagster_shared.cli import WorkspaceOpts

    with dg.DagsterInstance.get() as instance, get_workspace_from_cli_opts(
            instance, version=dg.__version__, workspace_opts=WorkspaceOpts(workspace=[str(WORKSPACE)])) as workspace:
        location = get_code_location_from_workspace(workspace, None)
        repo = get_remote_repository_from_code_location(location, None)
        yield instance, workspace, location, repo


def pause_automation() -> int:
    """Stop every sensor and schedule in the instance (they default to RUNNING once a daemon runs)."""
    with instance_and_workspace() as (instance, _workspace, _location, repo):
        storage = type(instance.run_storage).__name__
        if "Postgres" not in storage:
            raise CheckFailed(f"DAGSTER_HOME={os.environ.get('DAGSTER_HOME')} is not a Postgres instance ({storage})")
        stopped = []
        for sensor in repo.get_sensors():
            instance.stop_sensor(sensor.get_remote_origin_id(), sensor.selector_id, sensor)
            stopped.append(sensor.name)
        for schedule in repo.get_schedules():
            instance.stop_schedule(schedule.get_remote_origin_id(), schedule.selector_id, schedule)
            stopped.append(schedule.name)
    say(f"instance on {storage}; stopped {len(stopped)} sensors/schedules: {', '.join(sorted(stopped))}")
    return 0


def wait_for_daemon(instance: Any, since: float, timeout_s: float) -> None:
    """Until the daemon's queued-run coordinator has sent a heartbeat after `since`."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        beat = instance.get_daemon_heartbeats().get("QUEUED_RUN_COORDINATOR")
        if beat is not None and beat.timestamp >= since:
            return
        time.sleep(1)
    raise CheckFailed(f"no heartbeat from dagster-daemon's QUEUED_RUN_COORDINATOR within {timeout_s:.0f} s "
                      "(see the daemon log printed below)")


# ---------------------------------------------------------------------------------------------
# the cohort and its partition runs


def write_cohort(staging: Path, n_scans: int, seed: int) -> list[Path]:
    """Synthetic scans (2 phases, to stay small) as staging/scan_NNNN/; returns the scan folders."""
    from cmr_assets.synthetic.cohort import generate_cohort

    summary = generate_cohort(staging, staging.parent / "truth.csv", n_scans=n_scans, seed=seed, n_phases=2,
                              workers=2)
    say(f"cohort: {summary.n_scans} scans, {summary.n_files} files, {summary.total_bytes / 1e6:.1f} MB "
        f"in {summary.seconds:.1f} s")
    return sorted(p for p in staging.iterdir() if p.is_dir())


def add_bad_files(folder: Path, scan_dirs: Sequence[Path]) -> int:
    """Files ingestion must reject: in folder/bad_export a text file, an empty file and a DICOM without
    pixels (a series of its own); in the last scan's folder a cut copy of one of its files.

    Each bad file stays in the top-level folder of what it relates to, so that a partition sees the
    same as the whole folder (a copy in another top-level folder is a cross-bucket duplicate).
    """
    import pydicom
    from pydicom.uid import generate_uid

    bad = folder / "bad_export"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "README.txt").write_text("export notes, not an image\n")
    (bad / "empty.dcm").write_bytes(b"")
    ds = pydicom.dcmread(sorted(scan_dirs[0].iterdir())[0])
    del ds.PixelData
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(bad / "no_pixels.dcm")
    original = sorted(scan_dirs[-1].iterdir())[0].read_bytes()
    (scan_dirs[-1] / "IM_cut.dcm").write_bytes(original[: 2 * len(original) // 3])
    return 4


def write_source(work: Path, n_scans: int, seed: int) -> tuple[Path, list[str]]:
    """The cohort and the bad files in work/source; returns it and the partition keys that hold files
    (one run each: an empty bucket starts no run)."""
    from cmr_assets.ingest.assets import SCAN_BUCKETS
    from cmr_assets.ingest.partitions import bucket_of

    source = work / "source"
    source.mkdir()
    scan_dirs = [scan_dir.rename(source / scan_dir.name) for scan_dir in write_cohort(work / "staging", n_scans, seed)]
    n_bad = add_bad_files(source, scan_dirs)
    used = {bucket_of(p.relative_to(source).as_posix()) for p in source.rglob("*") if p.is_file()}
    keys = [key for key in SCAN_BUCKETS.get_partition_keys() if key in used]
    say(f"{n_bad} bad files planted; {len(keys)} of {len(SCAN_BUCKETS.get_partition_keys())} buckets hold files: "
        f"{', '.join(keys)}")
    return source, keys


# ---------------------------------------------------------------------------------------------
# launching and waiting


def launch_runs(instance: Any, workspace: Any, location: Any, repo: Any, source: Path, keys: Sequence[str],
                workers: int) -> list[str]:
    """Create and submit one partition run per key through the instance's (queued) run coordinator."""
    from dagster._cli.job import _create_run
    from dagster._cli.workspace.cli_target import get_remote_job_from_remote_repo

    coordinator = type(instance.run_coordinator).__name__
    if coordinator != "QueuedRunCoordinator":
        raise CheckFailed(f"the instance's run coordinator is {coordinator}, expected QueuedRunCoordinator")
    remote_job = get_remote_job_from_remote_repo(repo, INGEST_JOB)
    config = {"source_dir": str(source), "workers": workers}
    run_config = {"ops": {"raw_scans": {"config": config}, "slices": {"config": config}}}
    run_ids = []
    for key in keys:
        run = _create_run(instance=instance, code_location=location, remote_repo=repo, remote_job=remote_job,
                          run_config=run_config, tags={PARTITION_TAG: key}, op_selection=None, run_id=None)
        submitted = instance.submit_run(run.run_id, workspace)
        run_ids.append(submitted.run_id)
        say(f"submitted partition {key}: run {submitted.run_id[:8]} ({submitted.status.value})")
    return run_ids


def run_errors(instance: Any, run_id: str) -> list[str]:
    """The failure messages of a run's event log (step failures, run failure, engine errors)."""
    errors = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or not event.is_failure and event.event_type_value not in ("ENGINE_EVENT", "RUN_FAILURE"):
            continue
        data = event.event_specific_data
        error = getattr(data, "error", None)
        if error is not None:
            errors.append(f"{event.step_key or 'run'}: {error.message.strip()}")
        elif event.event_type_value == "RUN_FAILURE":
            errors.append(f"run: {event.message}")
    return errors


def wait_for_runs(instance: Any, run_ids: Sequence[str], labels: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """Poll until every run is finished; raise on a failed/canceled run or after `timeout_s`."""
    deadline = time.time() + timeout_s
    seen: dict[str, str] = {}
    max_in_progress = 0
    while True:
        records = {run_id: instance.get_run_record_by_id(run_id) for run_id in run_ids}
        statuses = {run_id: record.dagster_run.status.value for run_id, record in records.items()}
        for run_id, label in zip(run_ids, labels, strict=True):
            if seen.get(run_id) != statuses[run_id]:
                say(f"  {label} ({run_id[:8]}): {statuses[run_id]}")
                seen[run_id] = statuses[run_id]
        max_in_progress = max(max_in_progress, sum(s in ("STARTING", "STARTED") for s in statuses.values()))
        bad = [(run_id, label) for run_id, label in zip(run_ids, labels, strict=True)
               if statuses[run_id] in ("FAILURE", "CANCELED")]
        if bad:
            details = "\n".join(f"  {label} ({run_id}): {statuses[run_id]}\n    "
                                + "\n    ".join(run_errors(instance, run_id)[:5] or ["(no error event)"])
                                for run_id, label in bad)
            raise CheckFailed(f"{len(bad)} of {len(run_ids)} runs did not succeed:\n{details}")
        if all(s in TERMINAL for s in statuses.values()):
            return {"records": records, "max_in_progress": max_in_progress}
        if time.time() > deadline:
            waiting = ", ".join(f"{label}={statuses[r]}" for r, label in zip(run_ids, labels, strict=True))
            raise CheckFailed(f"runs not finished after {timeout_s:.0f} s: {waiting}")
        time.sleep(2)


# ---------------------------------------------------------------------------------------------
# the single-process reference and the comparison


def share_scan_id_key(cluster_root: Path, reference_root: Path) -> None:
    """One keyed-hash secret for both data folders (scan ids are HMACs of the SeriesInstanceUID)."""
    from cmr_assets.ingest.deid import KEY_FILE_NAME, load_or_create_key
    from cmr_assets.settings import DataPaths

    cluster, reference = DataPaths(cluster_root).ensure(), DataPaths(reference_root).ensure()
    load_or_create_key(cluster.secret)
    shutil.copy2(cluster.secret / KEY_FILE_NAME, reference.secret / KEY_FILE_NAME)


def ingest_single_process(reference_root: Path, source: Path, dagster_home: Path) -> float:
    """`cmr-assets ingest` of the source folder into `reference_root`; returns wall seconds."""
    cli = Path(sys.executable).parent / "cmr-assets"
    dagster_home.mkdir(parents=True, exist_ok=True)  # its own (SQLite) instance: not the cluster's
    env = {**os.environ, "CMR_DATA_DIR": str(reference_root), "DAGSTER_HOME": str(dagster_home)}
    started = time.perf_counter()
    done = subprocess.run([str(cli), "ingest", str(source)], env=env, cwd=PROJECT_ROOT, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise CheckFailed(f"cmr-assets ingest {source} exited {done.returncode}:\n"
                          f"{(done.stdout + done.stderr)[-4000:]}")
    say(f"single process: {done.stdout.strip().splitlines()[-1:]}")
    return time.perf_counter() - started


def read_tables(root: Path) -> dict[str, Any]:
    """`scans`, `slices`, `rejected_files` of a data folder, timestamps dropped, sorted by their keys."""
    from cmr_assets.duckdb_io import read_only
    from cmr_assets.settings import DataPaths

    out = {}
    with read_only(DataPaths(root).duckdb) as con:
        for table, keys in TABLE_KEYS.items():
            frame = con.execute(f"SELECT * FROM {table}").df()
            frame = frame.drop(columns=[c for c in TIMESTAMP_COLUMNS if c in frame.columns])
            for column in frame.columns:  # lists (heart_crop) compare as tuples
                if frame[column].dtype == object:
                    frame[column] = frame[column].map(lambda v: tuple(v) if hasattr(v, "__len__")
                                                      and not isinstance(v, str) else v)
            out[table] = frame.sort_values(keys).reset_index(drop=True)
    return out


def compare_tables(cluster: dict[str, Any], reference: dict[str, Any]) -> dict[str, int]:
    """Equal tables or a CheckFailed naming the first differences."""
    import pandas as pd

    problems, rows = [], {}
    for table, keys in TABLE_KEYS.items():
        a, b = cluster[table], reference[table]
        rows[table] = len(b)
        if sorted(a.columns) != sorted(b.columns):
            problems.append(f"{table}: columns differ: {sorted(a.columns)} vs {sorted(b.columns)}")
            continue
        a = a[list(b.columns)]
        try:
            pd.testing.assert_frame_equal(a, b, check_dtype=False)
        except AssertionError as error:
            only_a = set(map(tuple, a[keys].to_numpy())) - set(map(tuple, b[keys].to_numpy()))
            only_b = set(map(tuple, b[keys].to_numpy())) - set(map(tuple, a[keys].to_numpy()))
            problems.append(f"{table}: {len(a)} rows (cluster) vs {len(b)} (single process); "
                            f"only in cluster: {sorted(only_a)[:3]}; only in single process: {sorted(only_b)[:3]}; "
                            f"{str(error).splitlines()[:6]}")
    if problems:
        raise CheckFailed("cluster and single-process ingestion differ:\n  " + "\n  ".join(problems))
    return rows


def compare_images(cluster_root: Path, reference_root: Path, slices: Any) -> int:
    """Every slice's PNG and every scan's array file byte-identical in both data folders."""
    files = sorted(set(slices["png_path"]) | set(slices["array_path"]))
    differ = []
    for relative in files:
        digests = []
        for root in (cluster_root, reference_root):
            path = root / relative
            digests.append(hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "missing")
        if digests[0] != digests[1]:
            differ.append(f"{relative} ({digests[0][:8]} vs {digests[1][:8]})")
    if differ:
        raise CheckFailed(f"{len(differ)} of {len(files)} image files differ: {differ[:5]}")
    return len(files)


# ---------------------------------------------------------------------------------------------
# MLflow on PostgreSQL through the project's own code


def position_targets(slices: Any) -> Any:
    """A stand-in label from the slice position (base / middle / apex thirds): the check is the plumbing."""
    import numpy as np

    fraction = slices["slice_from_base"] / (slices["n_slices"] - 1).clip(lower=1)
    return np.digitize(fraction.to_numpy(), [1 / 3, 2 / 3])


def check_mlflow(data_root: Path, slices: Any) -> dict[str, Any]:
    """Train one epoch on the ingested slices, log/register/promote, load the champion back, compare."""
    import mlflow
    import numpy as np

    from cmr_assets.domain import CHAMPION, REGISTERED_MODEL_NAMES
    from cmr_assets.mlflow_store import load_champion, log_trained_model
    from cmr_assets.promotion import promote_if_better
    from cmr_assets.settings import mlflow_artifact_root, mlflow_tracking_uri
    from cmr_assets.training.core import TrainConfig
    from cmr_assets.training.fitting import fit_classifier
    from cmr_assets.training.packaging import input_example, predict_slices

    tracking_uri, artifacts = mlflow_tracking_uri(), mlflow_artifact_root()
    if not tracking_uri.startswith("postgresql"):
        raise CheckFailed(f"MLFLOW_TRACKING_URI={tracking_uri!r}: expected the cluster's postgresql:// store")
    rows = slices.assign(target=position_targets(slices))
    scan_ids = sorted(rows["scan_id"].unique())
    val_scans = set(scan_ids[::4])
    train, val = rows[~rows["scan_id"].isin(val_scans)], rows[rows["scan_id"].isin(val_scans)]
    config = TrainConfig(epochs=1, input_size=48, batch_size=32, augment=False, test_time_views=1, patience=1,
                         num_threads=1, device="cpu", max_minutes=3.0)
    started = time.perf_counter()
    fitted = fit_classifier(data_root, train, val, config)
    say(f"mlflow: trained 1 epoch on {len(train)} slices ({len(val)} validation) in "
        f"{time.perf_counter() - started:.1f} s; val macro-F1 {fitted.val_metrics['macro_f1']:.3f}")
    split_hash = hashlib.sha256(json.dumps(sorted(val_scans)).encode()).hexdigest()[:16]
    logged = log_trained_model(
        tracking_uri, artifacts, "ranking", fitted.deployable,
        params={"architecture": config.architecture, "input_size": config.input_size, "epochs": config.epochs},
        history=fitted.result.history, metrics=fitted.val_metrics, input_example=input_example(fitted.val_images),
        pictures={}, tags={"split_hash": split_hash, "kind_detail": "cluster-check"})
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    decision = promote_if_better(client, logged.registered_model, logged.version,
                                 float(fitted.val_metrics["macro_f1"]), split_hash)
    name = REGISTERED_MODEL_NAMES["ranking"]
    champion = client.get_model_version_by_alias(name, CHAMPION)
    if decision["decision"] != "first_champion" or str(champion.version) != logged.version:
        raise CheckFailed(f"promotion: expected {name} v{logged.version} as first champion, got {decision} "
                          f"(champion v{champion.version})")
    loaded = load_champion(name, tracking_uri)
    expected = predict_slices(fitted.deployable, fitted.val_images)
    got = predict_slices(loaded, fitted.val_images)
    if not np.allclose(expected, got, atol=1e-5):
        raise CheckFailed(f"the champion loaded back predicts differently: max |diff| {np.abs(expected - got).max()}")
    run = client.get_run(logged.run_id)
    artifact_uri = run.info.artifact_uri
    if not artifact_uri.startswith(artifacts.rstrip("/")):
        raise CheckFailed(f"run artifacts at {artifact_uri}, expected under MLFLOW_ARTIFACT_ROOT {artifacts}")
    say(f"mlflow: {name} v{logged.version} registered, {decision['decision']}, loaded back from "
        f"models:/{name}@{CHAMPION}: {len(got)} predictions equal; artifacts under {artifact_uri}")
    return {"model": name, "version": logged.version, "decision": decision["decision"], "predictions": len(got)}


# ---------------------------------------------------------------------------------------------


def check(args: argparse.Namespace) -> int:
    from cmr_assets.settings import data_dir

    work = Path(args.work).resolve()
    cluster_root, reference_root = data_dir(), work / "reference-data"
    if not str(cluster_root).startswith(str(work)):
        raise CheckFailed(f"CMR_DATA_DIR={cluster_root} is not under the test's folder {work}: refusing to use it")
    share_scan_id_key(cluster_root, reference_root)
    source, keys = write_source(work, args.n_scans, args.seed)
    labels = [f"partition {key}" for key in keys]

    with instance_and_workspace() as (instance, workspace, location, repo):
        wait_for_daemon(instance, args.daemon_since, args.daemon_timeout)
        say("dagster-daemon is up (queued run coordinator heartbeat)")
        launched = time.time()
        run_ids = launch_runs(instance, workspace, location, repo, source, keys, args.workers)
        outcome = wait_for_runs(instance, run_ids, labels, args.timeout)
    finished = max(record.end_time or record.update_timestamp.timestamp() for record in outcome["records"].values())
    cluster_wall = finished - launched
    run_seconds = [(r.end_time or 0) - (r.start_time or 0) for r in outcome["records"].values()]
    # submitted -> STARTED: waiting in the queue, then the run process starting and importing the code
    to_start = [(r.start_time or 0) - r.create_timestamp.timestamp() for r in outcome["records"].values()]
    say(f"all {len(run_ids)} runs succeeded, {cluster_wall:.1f} s from first submit to last run finished")

    single_wall = ingest_single_process(reference_root, source, work / "reference-dagster-home")
    cluster_tables, reference_tables = read_tables(cluster_root), read_tables(reference_root)
    rows = compare_tables(cluster_tables, reference_tables)
    n_files = compare_images(cluster_root, reference_root, reference_tables["slices"])
    reasons = reference_tables["rejected_files"]["reason"].str.split(":").str[0].value_counts().to_dict()
    say(f"tables equal: {rows}; {n_files} image files identical; rejections by kind {reasons}")
    if rows["scans"] == 0 or rows["rejected_files"] == 0:
        raise CheckFailed(f"nothing to compare: {rows}")

    mlflow_result = check_mlflow(cluster_root, cluster_tables["slices"])

    print("\n== make test-cluster: figures ==")
    print(f"  runs launched (queued)      {len(run_ids)} partition runs (buckets {', '.join(keys)})")
    print(f"  most runs in progress       {outcome['max_in_progress']}")
    print(f"  concurrent runs, wall       {cluster_wall:.1f} s (submit -> last finished; "
          f"per run {min(run_seconds):.1f}-{max(run_seconds):.1f} s of work after "
          f"{min(to_start):.0f}-{max(to_start):.0f} s queued and starting)")
    print(f"  single-process ingestion    {single_wall:.1f} s (cmr-assets ingest, every bucket)")
    print(f"  rows compared               scans {rows['scans']}, slices {rows['slices']}, "
          f"rejected_files {rows['rejected_files']} (+{n_files} image files)")
    print(f"  mlflow on postgres          {mlflow_result['model']} v{mlflow_result['version']} "
          f"{mlflow_result['decision']}, {mlflow_result['predictions']} predictions round-tripped")
    print("cluster check passed")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pause-automation", help="stop every sensor and schedule in $DAGSTER_HOME's instance")
    run = sub.add_parser("check", help="cohort, concurrent ingestion runs, comparison, MLflow")
    run.add_argument("--work", required=True, help="the test's temporary folder (holds CMR_DATA_DIR)")
    run.add_argument("--n-scans", type=int, default=12)
    run.add_argument("--seed", type=int, default=7)
    run.add_argument("--workers", type=int, default=1, help="ingestion processes per run")
    run.add_argument("--timeout", type=float, default=900, help="seconds for all runs to finish")
    run.add_argument("--daemon-since", type=float, default=0.0, help="epoch seconds the daemon was started")
    run.add_argument("--daemon-timeout", type=float, default=180)
    args = parser.parse_args(argv)
    try:
        return pause_automation() if args.command == "pause-automation" else check(args)
    except CheckFailed as error:
        print(f"\ncluster check FAILED: {error}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
