"""`cmr-assets bench [--quick]`: run every benchmark, print a table, write `reports/benchmarks.json`.

Why one run: each figure is a ratio against a plain baseline measured in the same run on the same
machine, so load on a shared machine hits both sides alike; the JSON records the machine and its
load average before and after.

Public API:
- `BenchSettings` and `QUICK`, `FULL`: sizes per mode (quick: a smoke run under a minute, used by
  the tests; full: the figures in docs/benchmarks.md, several minutes on 2 cores).
- `run_benchmarks(quick=False, paths=None, settings=None) -> int`: 0 when every benchmark ran (aims
  met or not; unmet aims are listed in the JSON and the table), 1 when one of them failed (its
  error is recorded and the others still run).
- `collect_benchmarks(settings, paths) -> dict`: the JSON document, without writing or printing it.
- `format_report(document) -> str`: the printed tables.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tabulate import tabulate

from benchmarks.end_to_end import read_demo_profile
from cmr_assets.run_context import machine_info
from cmr_assets.settings import DataPaths

REPORT_NAME = "benchmarks.json"


@dataclass(frozen=True)
class BenchSettings:
    """Problem sizes of one mode."""

    mode: str
    ingestion_scans: int
    ingestion_repeats: int
    training_images: int
    training_input_size: int
    training_batch_size: int
    training_epochs: int
    training_repeats: int
    training_threads: int
    training_with_augmentation: bool
    ranking_sizes: tuple[tuple[int, int], ...]
    choix_max_items: int
    growth_sizes: tuple[int, ...]
    growth_timeout_s: float


QUICK = BenchSettings(mode="quick", ingestion_scans=4, ingestion_repeats=1, training_images=128, training_input_size=64,
                      training_batch_size=32, training_epochs=2, training_repeats=1, training_threads=1,
                      training_with_augmentation=False, ranking_sizes=((1_000, 375), (10_000, 4_000)),
                      choix_max_items=2_000, growth_sizes=(20, 100), growth_timeout_s=120)
# 60 scans hold > 2 x MIN_FILES_PER_WORKER files, so ingestion's pool really starts with 2 workers;
# 3 repeats (best of each side) because the figures come from a shared machine.
FULL = BenchSettings(mode="full", ingestion_scans=60, ingestion_repeats=3, training_images=768, training_input_size=96,
                     training_batch_size=64, training_epochs=2, training_repeats=3, training_threads=2,
                     training_with_augmentation=True,
                     ranking_sizes=((3_323, 1_250), (100_000, 40_000)), choix_max_items=10_000,
                     growth_sizes=(300, 3_000, 30_000, 100_000), growth_timeout_s=1800)


def _progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _guarded(name: str, work: Callable[[], dict[str, Any]], errors: list[str]) -> dict[str, Any]:
    """Run one benchmark; a failure is recorded (and printed) and the next benchmark still runs."""
    _progress(f"{name} ...")
    started = time.perf_counter()
    try:
        result = work()
    except Exception as exc:  # one broken benchmark must not hide the others
        traceback.print_exc()
        errors.append(f"{name}: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - started}
    result["seconds"] = time.perf_counter() - started
    _progress(f"{name} done in {result['seconds']:.1f} s")
    return result


def collect_benchmarks(settings: BenchSettings, paths: DataPaths) -> dict[str, Any]:
    """Run all five benchmarks in a scratch folder under the data dir (removed afterwards).

    The benchmark modules are imported here, not at module level: ingestion's spawned workers
    re-import the caller's `__main__`, and torch/choix in there would be timed as pool start-up.
    """
    from benchmarks.growth import bench_growth
    from benchmarks.ingestion import bench_ingestion
    from benchmarks.ranking import bench_ranking
    from benchmarks.training import bench_training

    paths.root.mkdir(parents=True, exist_ok=True)
    work_dir = Path(tempfile.mkdtemp(prefix="bench-", dir=paths.root))  # same disk: demo files hard-link
    errors: list[str] = []
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    machine_before = machine_info()
    try:
        ingestion = _guarded("ingestion", lambda: bench_ingestion(
            work_dir / "ingestion", settings.ingestion_scans, demo_scans=paths.synthetic_scans,
            repeats=settings.ingestion_repeats), errors)
        training = _guarded("training", lambda: bench_training(
            settings.training_images, settings.training_input_size, settings.training_batch_size,
            settings.training_epochs, repeats=settings.training_repeats, threads=settings.training_threads,
            with_augmentation=settings.training_with_augmentation), errors)
        ranking = _guarded("ranking", lambda: bench_ranking(
            settings.ranking_sizes, choix_max_items=settings.choix_max_items), errors)
        growth = _guarded("growth", lambda: bench_growth(
            settings.growth_sizes, work_dir / "growth", ingestion.get("our_header_pass_files_per_s"),
            settings.growth_timeout_s), errors)
        end_to_end = read_demo_profile(paths.reports)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    sections = {"ingestion": ingestion, "training": training, "ranking": ranking}
    comparisons = [row for section in sections.values() for row in section.get("comparisons", [])]
    return {
        "mode": settings.mode,
        "started_at": started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_before,
        "load_average_after": machine_info()["load_average_1_5_15"],
        "settings": asdict(settings),
        "comparisons": comparisons,
        "aims_not_met": [row["name"] for row in comparisons if not row["aim_met"]],
        "errors": errors,
        "ingestion": ingestion,
        "training": training,
        "ranking": ranking,
        "growth": growth,
        "end_to_end": end_to_end,
    }


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _growth_table(growth: dict[str, Any]) -> str:
    runs = [run for run in growth.get("runs", []) if "error" not in run]
    if not runs:
        return f"growth: {growth.get('error') or growth.get('runs')}"
    stage_names = [stage["stage"] for stage in runs[0]["stages"]]
    rows = []
    for run in runs:
        seconds = {stage["stage"]: stage["seconds"] for stage in run["stages"]}
        rows.append([f"{run['n_scans']:,}", f"{run['n_slices']:,}", f"{run['n_ranking_batches']:,}",
                     *(_number(seconds[name], 1) for name in stage_names), _number(run["ours_seconds"], 1),
                     _number(run.get("header_read_seconds_extrapolated"), 0), _number(run["peak_rss_mb"], 0)])
    exponents = growth["time_scaling_exponents"]
    rows.append(["exponent", "", "", *(_number(exponents.get(name)) for name in stage_names),
                 _number(exponents.get("ours_seconds")), "1 (by construction)", ""])
    headers = ["scans", "slices", "batches", *stage_names, "ours total s", "header read s (extrap.)",
               "peak RSS MB"]
    return tabulate(rows, headers=headers, disable_numparse=True)


def _ingestion_line(ingestion: dict[str, Any]) -> str:
    """The issue 12 verdict: per-file-seen ratios against their aims, with the load they ran under."""
    if "comparisons" not in ingestion:
        return f"ingestion: {ingestion.get('error')}"
    per_file_seen = [row for row in ingestion["comparisons"] if "per file seen" in row["name"]]
    verdicts = [f"workers={run['workers']} {row['ratio']:.2f}x (aim {row['aim']}: "
                f"{'met' if row['aim_met'] else 'NOT met'})"
                for run, row in zip(ingestion["ours"], per_file_seen, strict=True)]
    verdicts += [f"{row['name']} {row['ratio']:.2f}x (aim {row['aim']}: {'met' if row['aim_met'] else 'NOT met'})"
                 for row in ingestion["comparisons"] if "partition" in row["name"]]
    before, after = ingestion["load_average_1min_before_after"]
    return (f"ingestion vs bare dcmread(...).pixel_array on the same {ingestion['n_files']:,} files: "
            f"{'; '.join(verdicts)}; load average {before:.2f} -> {after:.2f} during the section, "
            f"best of {ingestion['repeats']}, pool {ingestion['pool_start_method']}ed")


def format_report(document: dict[str, Any]) -> str:
    """Comparison table, the ingestion verdict, growth table, end-to-end table and the machine line."""
    machine = document["machine"]
    lines = [f"cmr-assets bench ({document['mode']}) on {machine['cpu_model']}, {machine['cpu_cores_usable']} cores, "
             f"{machine['memory_gib']} GiB, Python {machine['python']}, torch {machine['versions']['torch']}; "
             f"load average {machine['load_average_1_5_15']} -> {document['load_average_after']}", ""]
    rows = [[row["name"], _number(row["ours"]), _number(row["baseline"]), row["unit"], _number(row["ratio"]),
             row["aim"], "yes" if row["aim_met"] else "NO"] for row in document["comparisons"]]
    lines += [tabulate(rows, headers=["benchmark", "ours", "baseline", "unit", "ratio", "aim", "met"],
                       disable_numparse=True), "", _ingestion_line(document["ingestion"]), ""]
    lines += ["growth of the metadata path (seconds per stage):", _growth_table(document["growth"]), ""]
    demo = document["end_to_end"]
    if demo["status"] == "measured":
        lines.append(f"make demo: {demo['wall_seconds']:.0f} s wall, peak RSS {demo['peak_rss_mb']:.0f} MB "
                     f"(profile of {demo['measured_at']})")
        lines.append(tabulate([[s["asset"], _number(s["seconds"], 1), _number(s["peak_rss_mb"], 0)]
                               for s in demo["steps"]], headers=["asset", "seconds", "peak RSS MB"],
                              disable_numparse=True))
    else:
        lines.append(f"make demo: {demo['message']}")
    if document["errors"]:
        lines += ["", "ERRORS:", *document["errors"]]
    return "\n".join(lines)


def run_benchmarks(quick: bool = False, paths: DataPaths | None = None, settings: BenchSettings | None = None) -> int:
    """Run, print the tables, write `reports/benchmarks.json`; 1 if a benchmark failed."""
    paths = paths or DataPaths.default()
    settings = settings or (QUICK if quick else FULL)
    document = collect_benchmarks(settings, paths)
    paths.reports.mkdir(parents=True, exist_ok=True)
    target = paths.reports / REPORT_NAME
    target.write_text(json.dumps(document, indent=2, default=str))
    print(format_report(document))
    print(f"\nwrote {target}")
    return 1 if document["errors"] else 0
