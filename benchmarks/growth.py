"""Growth of the metadata path (no pixels) from 300 to 100,000 scans: time and peak memory per stage.

Why: a cohort grows from a study to a biobank; what must keep up is everything that does not touch
pixels: geometry (group, validate, order, choose the phase), campaign design, annotation files in
and out, aggregation. Each size runs in its own process (`python -m benchmarks.growth N WORK_DIR`)
so its peak RSS (VmHWM, read after every stage) is its own.

Geometry input, documented honestly: writing 30,000 scans of DICOM (1 million files) is too slow
for a benchmark, so each scan's headers are built in memory from the generator's `plan_scan`
(exactly the values `generate_cohort` writes into the files) as `DicomHeader` objects, and the real
`plan_all_series` groups, validates, orders and picks phases from them. Reading those headers from
disk is not in the measured time; it is extrapolated from the header rate measured on real files
by the ingestion benchmark (`header_read_seconds_extrapolated`, linear in files by construction).

Stages (each timed, real project code):
- `headers_from_generator`: plan_scan + DicomHeader objects (stand-in for reading files; not ours).
- `geometry`: `plan_all_series` + keyed scan ids + the slices / reference frames.
- `tasks`: `design_single_tasks` + `design_ranking_batches` (3 experts, 3 views per image).
- `annotations_simulated`: `simulate_ranking_campaign` writing JSONL session files, with expert
  hours raised so every batch is annotated (a 5-hour budget would stop at ~1,500 batches).
- `annotations_ingested`: tasks into DuckDB, `ingest_annotation_files` (parse, validate, insert),
  `read_raw_annotations`.
- `aggregation`: `aggregate_ranking` (Plackett-Luce + ordered logit).

Public API:
- `headers_from_plan(plan) -> list[DicomHeader]`
- `run_metadata_path(n_scans, work_dir, seed=0) -> dict` (in this process)
- `bench_growth(sizes, work_dir, header_files_per_s=None, timeout_s=None) -> dict` (one process per size):
  wall and CPU seconds per stage, scaling exponents fitted over all sizes (`time_scaling_exponents`,
  `cpu_scaling_exponents`) and between the two largest (`last_step_exponents`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import pandas as pd

from benchmarks.common import peak_rss_mb
from cmr_assets.duckdb_io import append_rows
from cmr_assets.ingest.deid import scan_id_for
from cmr_assets.ingest.dicom_files import DicomHeader
from cmr_assets.ingest.stack_geometry import plan_all_series
from cmr_assets.labelling.annotation_ingest import ingest_annotation_files, read_raw_annotations
from cmr_assets.labelling.campaign import annotator_ids, design_ranking_batches, design_single_tasks
from cmr_assets.labelling.simulator import SimulatorParams, simulate_ranking_campaign
from cmr_assets.labels.aggregation import aggregate_ranking
from cmr_assets.synthetic.cohort import SLICE_SPACING_MM, SLICE_THICKNESS_MM, ScanPlan, plan_scan

N_EXPERTS = 3
_T = TypeVar("_T")


def headers_from_plan(plan: ScanPlan) -> list[DicomHeader]:
    """The whitelisted header of every file `write_scan` would write for `plan` (same values)."""
    positions = range(plan.n_positions) if plan.base_first_in_instances else reversed(range(plan.n_positions))
    orientation = tuple(round(float(v), 6) for v in (*plan.row_direction, *plan.col_direction))
    headers = []
    for order, k in enumerate(positions):
        image_position = tuple(round(float(v), 4) for v in plan.image_position(k))
        for phase in range(plan.n_phases):
            instance = order * plan.n_phases + phase + 1
            headers.append(DicomHeader(
                path=f"scan_{plan.index:04d}/IM_{plan.file_order[instance - 1]:04d}.dcm",
                series_uid=plan.series_uid, sop_uid=plan.uid("sop", instance), modality="MR",
                transfer_syntax=str(plan.transfer_syntax), rows=plan.rows, cols=plan.cols,
                image_position=image_position, image_orientation=orientation,  # type: ignore[arg-type]
                pixel_spacing=plan.pixel_spacing, slice_thickness=SLICE_THICKNESS_MM,
                spacing_between_slices=SLICE_SPACING_MM, trigger_time=plan.trigger_times_ms[phase],
                instance_number=instance, manufacturer_model="cmr_assets phantom"))
    return headers


class _Stages:
    """Times each stage (wall and this process's CPU) and records the process's peak RSS after it.

    CPU seconds too: on a shared machine the wall time of a stage swings with other people's load
    (a 100,000-scan step runs for minutes), so growth is judged on both."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def run(self, name: str, work: Callable[..., _T], *args: Any) -> _T:
        started, cpu_started = time.perf_counter(), time.process_time()
        result = work(*args)
        self.rows.append({"stage": name, "seconds": time.perf_counter() - started,
                          "cpu_seconds": time.process_time() - cpu_started, "peak_rss_mb_after": peak_rss_mb()})
        return result


def _geometry(headers: list[DicomHeader], plans: list[ScanPlan]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Group/order the headers, then the slices frame (keyed ids) and the simulator's reference."""
    series, rejections = plan_all_series(headers)
    if rejections or len(series) != len(plans):
        raise RuntimeError(f"geometry rejected {len(rejections)} files / kept {len(series)} of {len(plans)} scans")
    key = os.urandom(32)
    truth = {plan.series_uid: plan for plan in plans}
    slices, reference = [], []
    for stack in series:
        scan_id = scan_id_for(stack.series_uid, key)
        plan = truth[stack.series_uid]
        for k, position in enumerate(stack.positions):
            slice_id = f"{scan_id}-{k:02d}"
            slices.append((slice_id, scan_id, k, len(stack.positions), position.position_mm))
            reference.append((slice_id, plan.true_classes[k], float(plan.position01[k]),
                              bool(plan.artefact_kinds[k])))
    return (pd.DataFrame(slices, columns=["slice_id", "scan_id", "slice_from_base", "n_slices", "position_mm"]),
            pd.DataFrame(reference, columns=["slice_id", "label", "position01", "artefact"]))


def _ingest_annotations(tasks_single: pd.DataFrame, tasks_ranking: pd.DataFrame, incoming: Path,
                        database: Path, annotators: list[str]) -> pd.DataFrame:
    with closing(duckdb.connect(str(database))) as con:
        append_rows(con, "tasks_single", tasks_single)
        append_rows(con, "tasks_ranking", tasks_ranking)
        report = ingest_annotation_files(incoming, con, set(annotators))
        if report.rejected_added:
            raise RuntimeError(f"{report.rejected_added} simulated annotations rejected")
        return read_raw_annotations(con)[1]


def campaign_for_every_batch(n_batches: int, now: datetime | None = None) -> SimulatorParams:
    """Simulator parameters whose experts have time for every batch: hours raised to twice the expected
    work, and the campaign started far enough back that its last one-hour-a-day session ends before
    `now` (at 100,000 scans that is years of sessions; later ones would be rejected as from the future)."""
    params = SimulatorParams()
    batches_per_expert = math.ceil(n_batches / N_EXPERTS)
    hours = 2.0 * batches_per_expert * params.seconds_per_batch / 3600 + 1
    days = math.ceil(hours * 60 / params.session_minutes) + 2
    return replace(params, hours_per_expert=hours,
                   campaign_start=(now or datetime.now(UTC)) - timedelta(days=days))


def run_metadata_path(n_scans: int, work_dir: Path, seed: int = 0) -> dict[str, Any]:
    """Every metadata stage on `n_scans` synthetic scans, in this process; see the module docstring."""
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    stages = _Stages()
    rss_at_start = peak_rss_mb()
    plans = stages.run("headers_from_generator", lambda: [plan_scan(seed, k) for k in range(n_scans)])
    headers = stages.run("headers_from_generator",
                         lambda ps: [header for plan in ps for header in headers_from_plan(plan)], plans)
    slices, reference = stages.run("geometry", _geometry, headers, plans)
    n_files = len(headers)
    del headers, plans

    annotators = annotator_ids(N_EXPERTS)
    tasks_single = stages.run("tasks", lambda: design_single_tasks(slices["slice_id"], annotators, seed=seed))
    tasks_ranking = stages.run("tasks", lambda: design_ranking_batches(slices, annotators, seed=seed))
    params = campaign_for_every_batch(len(tasks_ranking))
    incoming = work_dir / "incoming"
    files = stages.run("annotations_simulated",
                       lambda: simulate_ranking_campaign(tasks_ranking, reference, params, incoming, seed=seed))
    raw_ranking = stages.run("annotations_ingested", lambda: _ingest_annotations(
        tasks_single, tasks_ranking, incoming, work_dir / "growth.duckdb", annotators))
    if len(raw_ranking) != len(tasks_ranking):
        raise RuntimeError(f"{len(raw_ranking)} of {len(tasks_ranking)} batches annotated")
    aggregation = stages.run("aggregation", lambda: aggregate_ranking(raw_ranking, slices))

    merged: dict[str, dict[str, float]] = {}
    for row in stages.rows:  # a stage run in two steps is reported once
        entry = merged.setdefault(row["stage"], {"seconds": 0.0, "cpu_seconds": 0.0, "peak_rss_mb_after": 0.0})
        entry["seconds"] += row["seconds"]
        entry["cpu_seconds"] += row["cpu_seconds"]
        entry["peak_rss_mb_after"] = row["peak_rss_mb_after"]
    shutil.rmtree(work_dir)
    return {
        "n_scans": n_scans,
        "n_files": n_files,
        "n_slices": len(slices),
        "n_single_tasks": len(tasks_single),
        "n_ranking_batches": len(tasks_ranking),
        "n_annotation_files": len(files),
        "pl_newton_steps": aggregation.fit.n_iter,
        "rss_mb_after_imports": rss_at_start,
        "stages": [{"stage": name, **values} for name, values in merged.items()],
        "ours_seconds": sum(v["seconds"] for name, v in merged.items() if name != "headers_from_generator"),
        "ours_cpu_seconds": sum(v["cpu_seconds"] for name, v in merged.items() if name != "headers_from_generator"),
        "peak_rss_mb": peak_rss_mb(),
    }


def _scaling_exponent(sizes: Sequence[float], values: Sequence[float]) -> float | None:
    """Slope of log(value) on log(size): 1 = linear growth."""
    if len(sizes) < 2 or min(values) <= 0:
        return None
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def _exponents(runs: Sequence[dict[str, Any]], measure: str) -> dict[str, float | None]:
    """Scaling exponent of the total (`ours_seconds` / `ours_cpu_seconds`) and of each stage over `runs`."""
    sizes = [run["n_scans"] for run in runs]
    total = "ours_seconds" if measure == "seconds" else "ours_cpu_seconds"
    exponents = {"ours_seconds": _scaling_exponent(sizes, [run[total] for run in runs])}
    for stage in (runs[0]["stages"] if runs else []):
        name = stage["stage"]
        exponents[name] = _scaling_exponent(
            sizes, [next(s[measure] for s in run["stages"] if s["stage"] == name) for run in runs])
    return exponents


def bench_growth(sizes: Sequence[int], work_dir: Path, header_files_per_s: float | None = None,
                 timeout_s: float | None = None) -> dict[str, Any]:
    """Run `run_metadata_path` in a fresh process per size; scaling exponents and memory per scan."""
    runs: list[dict[str, Any]] = []
    for n_scans in sizes:
        command = [sys.executable, "-m", "benchmarks.growth", str(n_scans), str(work_dir / f"growth_{n_scans}")]
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                                  cwd=Path(__file__).resolve().parent.parent, check=False)
        except subprocess.TimeoutExpired:  # what gives out first: record it, keep the smaller sizes
            runs.append({"n_scans": n_scans, "error": [f"timed out after {timeout_s} s"],
                         "process_seconds": time.perf_counter() - started})
            shutil.rmtree(work_dir / f"growth_{n_scans}", ignore_errors=True)
            continue
        if done.returncode != 0:
            runs.append({"n_scans": n_scans, "error": done.stderr.strip().splitlines()[-1:] or ["failed"],
                         "process_seconds": time.perf_counter() - started})
            continue
        run = json.loads(done.stdout.strip().splitlines()[-1])
        run["process_seconds"] = time.perf_counter() - started
        if header_files_per_s:
            run["header_read_seconds_extrapolated"] = run["n_files"] / header_files_per_s
        runs.append(run)
    ok = [run for run in runs if "error" not in run]
    exponents = _exponents(ok, "seconds")
    memory_growth = None
    if len(ok) >= 2:
        slope = (ok[-1]["peak_rss_mb"] - ok[0]["peak_rss_mb"]) / (ok[-1]["n_scans"] - ok[0]["n_scans"])
        memory_growth = {"mb_per_1000_scans": slope * 1000,
                         "baseline_mb": ok[0]["peak_rss_mb"] - slope * ok[0]["n_scans"]}
    return {"runs": runs, "time_scaling_exponents": exponents, "cpu_scaling_exponents": _exponents(ok, "cpu_seconds"),
            # between the two largest sizes: where n log n (~1.09 from 30,000 to 100,000) is the bound
            "last_step_exponents": {"seconds": _exponents(ok[-2:], "seconds"),
                                    "cpu_seconds": _exponents(ok[-2:], "cpu_seconds")},
            "peak_rss_linear_fit": memory_growth, "header_files_per_s_used": header_files_per_s}


if __name__ == "__main__":
    print(json.dumps(run_metadata_path(int(sys.argv[1]), Path(sys.argv[2]))))
