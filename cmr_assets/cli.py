"""Console script `cmr-assets`: the pipeline's entry points for people and scripts."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cmr_assets.app.cli import register_cli
from cmr_assets.settings import PROJECT_ROOT


def _default_dagster_home() -> None:
    """Runs launched from the CLI land in the project's Dagster instance unless DAGSTER_HOME says otherwise."""
    if not os.environ.get("DAGSTER_HOME"):
        home = PROJECT_ROOT / ".dagster_home"
        home.mkdir(exist_ok=True)
        os.environ["DAGSTER_HOME"] = str(home)


def _cmd_demo(args: argparse.Namespace) -> int:
    _default_dagster_home()
    from cmr_assets.pipeline_runs import run_demo

    return run_demo(n_scans=args.n_scans, seed=args.seed)


def _cmd_experiment(args: argparse.Namespace) -> int:
    _default_dagster_home()
    from cmr_assets.pipeline_runs import run_experiment

    return run_experiment(args.repeats)


def _cmd_ingest(args: argparse.Namespace) -> int:
    _default_dagster_home()
    from cmr_assets.pipeline_runs import run_ingest

    return run_ingest(Path(args.source_dir), workers=args.workers)


def _cmd_filter(args: argparse.Namespace) -> int:
    from cmr_assets.inference.slice_filter import run_filter_cli

    return run_filter_cli(Path(args.series_dir), model=args.model, as_json=args.json, out_dir=args.out,
                          lv_share=args.lv_share)


def _cmd_simulate(args: argparse.Namespace) -> int:
    _default_dagster_home()
    from cmr_assets.pipeline_runs import run_simulated_experts

    return run_simulated_experts(seed=args.seed)


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from cmr_assets.labelling.calibration import calibrate_from_files
    from cmr_assets.labelling.simulator import load_simulator_params
    from cmr_assets.settings import data_dir

    out = Path(args.out) if args.out else data_dir() / "simulator_params.json"
    base = load_simulator_params(args.base) if args.base else None
    try:
        calibration = calibrate_from_files([Path(p) for p in args.paths], base, args.seed)
    except ValueError as error:
        print(f"calibrate-experts: {error}", file=sys.stderr)
        return 2
    calibration.write(out)
    for name, value in calibration.report()["fitted"].items():
        print(f"{name:32s} {value}")
    print(f"wrote {out}; use it with CMR_SIMULATOR_PARAMS={out} (or the params_file config of "
          "simulated_annotations_* and strategy_sensitivity)")
    return 0


BENCH_NEEDS_CHECKOUT = ("cmr-assets bench: the benchmarks are not part of the installed package; run it from a "
                        "source checkout: PYTHONPATH=. cmr-assets bench (or make bench)")


def _cmd_bench(args: argparse.Namespace) -> int:
    try:
        from benchmarks.run import run_benchmarks
    except ModuleNotFoundError as error:
        if error.name not in ("benchmarks", "benchmarks.run"):
            raise  # a dependency of the benchmarks is missing: say which
        print(BENCH_NEEDS_CHECKOUT, file=sys.stderr)
        return 2
    return run_benchmarks(quick=args.quick)


def _cmd_record_results(args: argparse.Namespace) -> int:
    from cmr_assets.evaluation.results_record import readme_block, record_results, write_record
    from cmr_assets.settings import DataPaths

    try:
        document = record_results(DataPaths.default().reports, args.name, args.note)
    except (FileNotFoundError, ValueError) as error:
        print(f"cmr-assets record-results: {error}", file=sys.stderr)
        return 2
    path = write_record(document, Path(args.results_dir))
    print(f"wrote {path}; README block:\n\n{readme_block(document)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmr-assets",
        description="CMR short-axis slice labelling and classification pipeline (Dagster + MLflow + DuckDB).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="generate the synthetic cohort (if needed) and materialise the whole graph")
    demo.add_argument("--n-scans", type=int, default=None, help="synthetic cohort size (default 300)")
    demo.add_argument("--seed", type=int, default=None, help="synthetic cohort seed (default 0)")
    demo.set_defaults(func=_cmd_demo)

    experiment = sub.add_parser("experiment", help="repeat the strategy comparison on today's labels "
                                                   "(after demo), redraw learning curves and the report")
    experiment.add_argument("--repeats", type=int, default=5, help="repeats in all, incl. the registered "
                                                                  "models (default 5)")
    experiment.set_defaults(func=_cmd_experiment)

    ingest = sub.add_parser("ingest", help="ingest any folder of DICOM into the current data dir")
    ingest.add_argument("source_dir", help="folder to search for DICOM files (nested folders, any names)")
    ingest.add_argument("--workers", type=int, default=2, help="processes working, this one included (default 2)")
    ingest.set_defaults(func=_cmd_ingest)

    filt = sub.add_parser("filter", help="classify the slices of one series with the registered model")
    filt.add_argument("series_dir", help="folder holding one short-axis cine series (single-frame files or "
                                         "Enhanced MR; localizers and other series beside it are skipped)")
    filt.add_argument("--model", default="ranking",
                      help="'ranking' or 'single' (the registry's champion) or an MLflow model URI")
    filt.add_argument("--json", action="store_true",
                      help="print JSON, one object per slice position, base first ('files' relative to "
                           "SERIES_DIR; 'frames': 1-based frame numbers per multi-frame file)")
    filt.add_argument("--out", default=None, help="copy the kept DICOM files, unchanged, into this folder")
    filt.add_argument("--lv-share", type=float, default=None,
                      help="share of LV slices expected in the stack: the class prior the filter decides under "
                           "(default $CMR_FILTER_LV_SHARE or 0.5; 0.333 = the model's own balanced decision)")
    filt.set_defaults(func=_cmd_filter)

    sim = sub.add_parser("simulate-experts", help="write simulated expert annotation files for current tasks")
    sim.add_argument("--seed", type=int, default=0)
    sim.set_defaults(func=_cmd_simulate)

    calibrate = sub.add_parser(
        "calibrate-experts", help="fit the simulated experts' parameters to a pilot's annotation files",
        description="Fit SimulatorParams to a pilot with real experts (repeats of single images and of "
                    "ranked batches, e.g. campaign.design_pilot_tasks) and write the parameter file the "
                    "simulated campaigns and strategy_sensitivity accept.")
    calibrate.add_argument("paths", nargs="+", help="annotation files (*.jsonl) or folders of them")
    calibrate.add_argument("--out", default="",
                           help="parameter file to write (default $CMR_DATA_DIR/simulator_params.json)")
    calibrate.add_argument("--base", default="",
                           help="parameter file whose unfitted fields to keep (default: built-in)")
    calibrate.add_argument("--seed", type=int, default=0, help="seed of the stand-in cohort the pilot is simulated on")
    calibrate.set_defaults(func=_cmd_calibrate)

    record = sub.add_parser("record-results", help="copy the last run's reports into docs/results/NAME.json "
                                                    "and print its README table")
    record.add_argument("name", help="lowercase name of the record, e.g. demo-cpu-2026-12-01")
    record.add_argument("--note", default="", help="one line on how the run was made")
    record.add_argument("--results-dir", default=str(PROJECT_ROOT / "docs" / "results"),
                        help="where records go (default docs/results)")
    record.set_defaults(func=_cmd_record_results)

    bench = sub.add_parser("bench", help="benchmarks against plain baselines; writes reports/benchmarks.json")
    bench.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    bench.set_defaults(func=_cmd_bench)

    register_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
