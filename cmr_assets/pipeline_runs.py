"""Runs the CLI starts: the whole graph (`demo`), the repeated strategy comparison (`experiment`),
ingestion of a folder, simulated experts.

Each one executes Dagster jobs in this process against the project's instance (DAGSTER_HOME),
so the runs, their logs and the materialisations appear in the Dagster UI like any other run.
`demo` also writes `reports/demo_profile.json`: wall time and peak memory by asset.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from cmr_assets.settings import DataPaths


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class MemorySampler:
    """Samples this process's resident memory in a thread, so peaks can be attributed to steps."""

    interval_s: float = 0.2
    samples: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), _rss_mb()))
            self._stop.wait(self.interval_s)

    def peak_between(self, start: float, end: float) -> float:
        inside = [rss for t, rss in self.samples if start - self.interval_s <= t <= end + self.interval_s]
        return max(inside) if inside else 0.0


def step_profile(run_id: str, sampler: MemorySampler) -> list[dict[str, Any]]:
    """Seconds and peak RSS per step, from the run's step start/finish events in the instance."""
    starts: dict[str, float] = {}
    steps = []
    for entry in dg.DagsterInstance.get().all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        key = event.step_key
        if event.event_type_value == "STEP_START":
            starts[key] = entry.timestamp
        elif event.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and key in starts:
            steps.append({"asset": key, "seconds": round(entry.timestamp - starts[key], 2),
                          "peak_rss_mb": round(sampler.peak_between(starts[key], entry.timestamp), 1),
                          "status": "success" if event.event_type_value == "STEP_SUCCESS" else "failure"})
    return steps


def demo_run_config(n_scans: int | None = None, seed: int | None = None) -> dict[str, Any]:
    cohort = {k: v for k, v in {"n_scans": n_scans, "seed": seed}.items() if v is not None}
    return {"ops": {"synthetic_cohort": {"config": cohort}}} if cohort else {}


def run_job(job_name: str, run_config: dict[str, Any] | None = None) -> dg.ExecuteInProcessResult:
    """Execute one job in process against the current instance, with resources bound to the current
    settings; a job with partitioned assets runs every partition, in this one run."""
    from cmr_assets.definitions import build_definitions
    from cmr_assets.ingest.assets import ALL_BUCKETS_TAGS

    job = build_definitions().resolve_job_def(job_name)
    return job.execute_in_process(run_config=run_config or {}, instance=dg.DagsterInstance.get(),
                                  tags=ALL_BUCKETS_TAGS if job.partitions_def is not None else None,
                                  raise_on_error=False)


def run_demo(n_scans: int | None = None, seed: int | None = None) -> int:
    """Materialise the whole graph; print where everything landed; write the demo profile."""
    from cmr_assets.definitions import PIPELINE_JOB

    paths = DataPaths.default().ensure()
    started = time.time()
    with MemorySampler() as sampler:
        result = run_job(PIPELINE_JOB, demo_run_config(n_scans, seed))
    wall_seconds = round(time.time() - started, 1)
    peak_rss_mb = round(max((r for _, r in sampler.samples), default=0.0), 1)
    steps = step_profile(result.run_id, sampler)
    profile = {"wall_seconds": wall_seconds, "peak_rss_mb": peak_rss_mb,
               "success": result.success, "run_id": result.run_id, "steps": steps}
    (paths.reports / "demo_profile.json").write_text(json.dumps(profile, indent=2))
    for step in steps:
        print(f"  {step['asset']:<32} {step['seconds']:>8.1f} s  {step['peak_rss_mb']:>8.0f} MB  {step['status']}")
    print(f"demo {'succeeded' if result.success else 'FAILED'} in {profile['wall_seconds']:.0f} s "
          f"(peak {profile['peak_rss_mb']:.0f} MB); run {result.run_id}")
    print(f"  DuckDB:  {paths.duckdb}\n  report:  {paths.reports / 'evaluation.md'}\n"
          f"  UI:      make ui  (Dagster http://127.0.0.1:3000, MLflow http://127.0.0.1:5000)")
    return 0 if result.success else 1


def run_experiment(repeats: int) -> int:
    """Repeat the strategy comparison `repeats` times on today's labels, redraw the learning curves
    and the report (after `demo`: the registered models are repeat 0)."""
    config = {"ops": {"strategy_repeats": {"config": {"repeats": repeats}}}}
    result = run_job("strategy_experiment", config)
    paths = DataPaths.default()
    print(f"experiment {'succeeded' if result.success else 'FAILED'}; report: {paths.reports / 'evaluation.md'}")
    return 0 if result.success else 1


def run_ingest(source_dir: Path, workers: int = 2) -> int:
    """Ingest one folder (raw inventory + slices) through the Dagster assets, as a recorded run."""
    if not source_dir.is_dir():
        print(f"cmr-assets ingest: {source_dir} is not a folder")
        return 2
    config = {"source_dir": str(source_dir.resolve()), "workers": workers}
    result = run_job("ingest_new_scans", {"ops": {"raw_scans": {"config": config}, "slices": {"config": config}}})
    slices = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("slices")]
    if slices:  # one event per bucket, all with the run's figures
        meta = slices[0].materialization.metadata
        print(", ".join(f"{k}={meta[k].value}" for k in ("scans_new", "slices_new", "slices_total") if k in meta))
    return 0 if result.success else 1


def run_simulated_experts(seed: int = 0) -> int:
    """Simulated experts write annotation files for the current tasks (the sensor picks them up)."""
    selection = ["simulated_annotations_single", "simulated_annotations_ranking"]
    result = run_job("simulate_experts", {"ops": {name: {"config": {"seed": seed}} for name in selection}})
    return 0 if result.success else 1
