"""A live labelling campaign, measured: the Dagster daemon, the labelling app and annotator clients.

Scaled-down version of the scenario in issue 13 (the figures it reports are what the issue asks
for): a tiny pipeline run gives v1 of both models; new scans arrive and a second wave of tasks is
designed for people; the real `dagster-daemon` runs the sensors, the run queue and the runs; the app
(uvicorn on loopback) takes answers from annotator threads for `--minutes`; then the probe waits
for the automation to settle and reports runs per job, the most runs waiting or in progress at
once, queued leftovers, model versions with their label hashes and promotion decisions, and
whether every acknowledged answer reached the raw annotation tables.

    PYTHONPATH=. .venv/bin/python scripts/live_campaign_probe.py --minutes 4 --quiet-minutes 1 --out probe.json

(in the repository root: it builds its scans with `cmr_assets_tests.conftest`, which is not installed).

Everything lives under `--root` (default: a new temporary folder); nothing in the project changes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
IN_PROGRESS = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
JOBS = ("relabel", "retrain_models")


def _environment(root: Path, quiet_minutes: float) -> dict[str, str]:
    home = root / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / ".dagster_home" / "dagster.yaml", home / "dagster.yaml")
    return {"CMR_DATA_DIR": str(root / "data"), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "MLFLOW_ARTIFACT_ROOT": (root / "artifacts").as_uri(), "DAGSTER_HOME": str(home),
            "CMR_RETRAIN_QUIET_MINUTES": str(quiet_minutes),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}


def _prepare(args: argparse.Namespace, annotators: list[str]) -> None:
    """v1 of both models, then new scans and a second wave of tasks for the people."""
    import dagster as dg

    from cmr_assets.definitions import build_definitions
    from cmr_assets.labelling.roster import ScryptParams, add_annotator
    from cmr_assets.pipeline_runs import run_job
    from cmr_assets.settings import DataPaths
    from cmr_assets_tests.conftest import SeriesSpec, write_series

    models = {"model_single": {"config": {"epochs": args.epochs}},
              "model_ranking": {"config": {"epochs": args.epochs, "soft_labels": True}}}
    first = run_job("cmr_pipeline", {"ops": {"synthetic_cohort": {"config": {"n_scans": args.n_scans, "workers": 1}},
                                             **models}})
    if not first.success:
        raise SystemExit("the initial pipeline run failed")
    paths = DataPaths.default()
    for k in range(args.new_scans):
        write_series(paths.scans / f"new_export_{k}", SeriesSpec(n_positions=8, rows=64, cols=64))
    if not run_job("ingest_new_scans").success:
        raise SystemExit("ingesting the new scans failed")
    for name in annotators:
        add_annotator(paths, name, "probe-password", ScryptParams(n=2**10, r=8, p=1))
    defs = build_definitions()
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    campaign = {"annotators": annotators}
    designed = dg.materialize(
        assets, selection=["labelling_tasks_single", "labelling_tasks_ranking"], resources=dict(defs.resources),
        instance=dg.DagsterInstance.get(),
        run_config={"ops": {"labelling_tasks_single": {"config": campaign},
                            "labelling_tasks_ranking": {"config": {**campaign,
                                                                   "adaptive_batches": args.adaptive_batches}}}})
    if not designed.success:
        raise SystemExit("designing the second wave failed")


class RunSampler:
    """Every `interval_s`: runs of each job waiting (QUEUED) and in progress, from the instance."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self.max_queued: Counter[str] = Counter()
        self.max_in_progress: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def counts(self) -> dict[str, dict[str, int]]:
        import dagster as dg

        instance = dg.DagsterInstance.get()
        result = {}
        for job in JOBS:
            queued = instance.get_runs_count(dg.RunsFilter(job_name=job, statuses=[dg.DagsterRunStatus.QUEUED]))
            busy = instance.get_runs_count(dg.RunsFilter(
                job_name=job, statuses=[dg.DagsterRunStatus[s] for s in IN_PROGRESS]))
            result[job] = {"queued": queued, "in_progress": busy}
        return result

    def _run(self) -> None:
        while not self._stop.is_set():
            for job, numbers in self.counts().items():
                self.max_queued[job] = max(self.max_queued[job], numbers["queued"])
                self.max_in_progress[job] = max(self.max_in_progress[job], numbers["in_progress"])
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RunSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _annotate(base_url: str, name: str, until: float, interval_s: float, seed: int,
              acknowledged: list[str], latencies: list[float], errors: list[str],
              pause: tuple[float, float] | None = None) -> None:
    """One annotator: log in, then answer both strategies in turn until `until` or no tasks are left;
    `pause` = (start, end) on the monotonic clock: a break everybody takes (a quiet period)."""
    import re

    import httpx

    rng = random.Random(seed)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/login").text).group(1)
        client.post("/login", data={"name": name, "password": "probe-password", "csrf": token})
        token = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text).group(1)
        open_strategies = ["single", "ranking"]
        while open_strategies and time.monotonic() < until:
            if pause and pause[0] <= time.monotonic() < pause[1]:
                time.sleep(pause[1] - time.monotonic())
                continue
            strategy = rng.choice(open_strategies)
            task = client.get(f"/api/{strategy}/next").json()["task"]
            if task is None:
                open_strategies.remove(strategy)
                continue
            if strategy == "single":
                body = {"ticket": task["ticket"], "label": rng.choices(["too_basal", "lv", "too_apical"],
                                                                       [1, 3, 1])[0], "artefact": False}
            else:
                order = list(range(8))
                rng.shuffle(order)
                body = {"ticket": task["ticket"], "order": order, "dividers": sorted(rng.sample(range(9), 2)),
                        "artefacts": []}
            started = time.perf_counter()
            response = client.post(f"/api/{strategy}/submit", json=body, headers={"X-CSRF-Token": token})
            latencies.append(time.perf_counter() - started)
            if response.status_code == 200:
                acknowledged.append(task["ticket"])
            else:
                errors.append(f"{response.status_code} {response.text[:100]}")
            time.sleep(rng.uniform(0.5, 1.5) * interval_s)


def _serve_app(port: int):
    import uvicorn

    from cmr_assets.app.web import AppConfig, create_app
    from cmr_assets.settings import DataPaths

    server = uvicorn.Server(uvicorn.Config(create_app(AppConfig(DataPaths.default())), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="off", proxy_headers=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _figures(acknowledged: list[str], latencies: list[float], errors: list[str],
             sampler: RunSampler) -> dict[str, Any]:
    import dagster as dg
    import duckdb
    import mlflow

    from cmr_assets.domain import REGISTERED_MODEL_NAMES
    from cmr_assets.settings import DataPaths

    instance = dg.DagsterInstance.get()
    runs = {job: Counter(r.status.value for r in instance.get_runs(dg.RunsFilter(job_name=job))) for job in JOBS}
    with duckdb.connect(str(DataPaths.default().duckdb), read_only=True) as con:
        stored = {row[0] for row in con.execute("SELECT submission_id FROM raw_annotations_single UNION ALL "
                                                "SELECT submission_id FROM raw_annotations_ranking").fetchall()}
    client = mlflow.MlflowClient()
    models = {}
    for strategy, name in REGISTERED_MODEL_NAMES.items():
        versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
        rows = []
        for version in versions:
            run = client.get_run(version.run_id)
            rows.append({"version": version.version, "label_hash": run.data.params.get("label_hash"),
                         "epochs_run": run.data.metrics.get("epochs_run"),
                         "decision": version.tags.get("promotion_decision"),
                         "comparison": version.tags.get("promotion_comparison"),
                         "val_macro_f1": version.tags.get("val_macro_f1"),
                         "champion_rescored": version.tags.get("champion_val_macro_f1_rescored")})
        hashes = [r["label_hash"] for r in rows]
        repeats = sum(a == b for a, b in zip(hashes, hashes[1:], strict=False))
        worse = [r["version"] for r in rows if r["decision"] == "promoted" and r["champion_rescored"] not in
                 (None, "none") and float(r["val_macro_f1"]) < float(r["champion_rescored"])]
        models[strategy] = {"versions": rows,
                            "champion": str(client.get_model_version_by_alias(name, "champion").version),
                            "consecutive_same_label_hash": repeats,
                            "promoted_while_worse": worse}
    ordered = sorted(latencies)
    return {
        "answers_acknowledged": len(acknowledged), "answer_errors": len(errors), "error_samples": errors[:5],
        "acknowledged_not_stored": len(set(acknowledged) - stored),
        "submit_latency_ms": {"p50": round(1000 * ordered[len(ordered) // 2], 1) if ordered else None,
                              "p95": round(1000 * ordered[int(len(ordered) * 0.95)], 1) if ordered else None},
        "runs": {job: dict(counts) for job, counts in runs.items()},
        "max_queued": dict(sampler.max_queued), "max_in_progress": dict(sampler.max_in_progress),
        "left_in_progress": sampler.counts(), "models": models,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="working folder (default: a new temporary one)")
    parser.add_argument("--n-scans", type=int, default=8)
    parser.add_argument("--new-scans", type=int, default=4)
    parser.add_argument("--adaptive-batches", type=int, default=12)
    parser.add_argument("--annotators", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=4.0, help="how long the annotators answer")
    parser.add_argument("--answer-interval-s", type=float, default=3.0)
    parser.add_argument("--pause-minutes", type=float, default=0.0,
                        help="a break every annotator takes halfway through (0: none); longer than the quiet "
                             "period, it gives the retrain sensor a second chance")
    parser.add_argument("--quiet-minutes", type=float, default=1.0, help="CMR_RETRAIN_QUIET_MINUTES")
    parser.add_argument("--settle-timeout-minutes", type=float, default=8.0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    root = (args.root or Path(tempfile.mkdtemp(prefix="cmr-live-"))).resolve()
    os.environ.update(_environment(root, args.quiet_minutes))
    annotators = [f"dr_{chr(ord('a') + k)}" for k in range(args.annotators)]
    print(f"probe: preparing in {root}", file=sys.stderr)
    _prepare(args, annotators)

    with open(root / "daemon.log", "wb") as daemon_log:  # the child keeps its own copy of the descriptor
        daemon = subprocess.Popen([str(Path(sys.executable).parent / "dagster-daemon"), "run", "-w",
                                   str(PROJECT_ROOT / "workspace.yaml")], cwd=PROJECT_ROOT, env=os.environ.copy(),
                                  stdout=daemon_log, stderr=subprocess.STDOUT, start_new_session=True)
    server, thread = _serve_app(_free_port())
    acknowledged: list[str] = []
    latencies: list[float] = []
    errors: list[str] = []
    try:
        with RunSampler() as sampler:
            start = time.monotonic()
            until = start + (args.minutes + args.pause_minutes) * 60
            pause = (start + args.minutes * 30, start + args.minutes * 30 + args.pause_minutes * 60) \
                if args.pause_minutes else None
            base_url = f"http://127.0.0.1:{server.config.port}"
            clients = [threading.Thread(target=_annotate, args=(base_url, name, until, args.answer_interval_s, k,
                                                                acknowledged, latencies, errors, pause))
                       for k, name in enumerate(annotators)]
            for client in clients:
                client.start()
            for client in clients:
                client.join()
            answered_s = time.monotonic() - start
            print(f"probe: {len(acknowledged)} answers in {answered_s:.0f} s; waiting for automation to settle",
                  file=sys.stderr)
            # settled: the quiet period and a sensor tick have passed, and nothing is waiting or running
            deadline = time.monotonic() + args.settle_timeout_minutes * 60
            earliest = time.monotonic() + args.quiet_minutes * 60 + 90
            while time.monotonic() < deadline:
                busy = sum(n["in_progress"] for n in sampler.counts().values())
                if busy == 0 and time.monotonic() > earliest:
                    break
                time.sleep(5)
        figures = _figures(acknowledged, latencies, errors, sampler)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
    figures["root"] = str(root)
    text = json.dumps(figures, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
