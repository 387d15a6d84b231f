import sys

import pytest

from cmr_assets.cli import build_parser, main

SUBCOMMANDS = ["demo", "ingest", "filter", "simulate-experts", "calibrate-experts", "bench", "serve-labelling",
               "annotators"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: cmr-assets" in capsys.readouterr().out


def test_ingest_of_a_missing_folder_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    assert main(["ingest", str(tmp_path / "nope")]) == 2
    assert "is not a folder" in capsys.readouterr().out


def test_filter_defaults_to_the_ranking_champion():
    args = build_parser().parse_args(["filter", "series"])
    assert args.model == "ranking" and not args.json and args.lv_share is None
    assert build_parser().parse_args(["filter", "series", "--lv-share", "0.7"]).lv_share == 0.7


def test_bench_outside_a_source_checkout_says_how_to_run_it(monkeypatch, capsys):
    """The wheel ships only `cmr_assets`: without `benchmarks` importable, one clear line, exit 2."""
    monkeypatch.setitem(sys.modules, "benchmarks", None)  # None in sys.modules: the import fails
    monkeypatch.setitem(sys.modules, "benchmarks.run", None)
    assert main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "source checkout" in err and "PYTHONPATH=." in err


def test_ingest_runs_every_bucket_in_one_recorded_run_and_prints_one_line(tmp_path, capsys):
    import dagster as dg
    import duckdb

    from cmr_assets_tests.conftest import pipeline_environment, write_series

    for k in range(3):
        write_series(tmp_path / "source" / f"series{k}")
    with pipeline_environment(tmp_path):
        assert main(["ingest", str(tmp_path / "source")]) == 0
        runs = dg.DagsterInstance.get().get_runs()
    assert capsys.readouterr().out.splitlines()[-1] == "scans_new=3, slices_new=12, slices_total=12"
    assert len(runs) == 1 and runs[0].tags["dagster/asset_partition_range_end"] == "15"
    with duckdb.connect(str(tmp_path / "data" / "cmr.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM slices").fetchall() == [(12,)]
