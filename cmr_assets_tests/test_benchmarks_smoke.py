"""Smoke test of `cmr-assets bench --quick`: every benchmark runs for real at small sizes and the
JSON holds the machine, ratios computed from both measured sides, growth per size and the demo
profile (or the message saying to run the demo first)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks.end_to_end import DEMO_PROFILE_NAME, read_demo_profile
from benchmarks.run import QUICK, REPORT_NAME, run_benchmarks
from cmr_assets.settings import DataPaths


def test_quick_bench_writes_measured_ratios(tmp_path, capsys):
    paths = DataPaths(tmp_path / "data")
    assert run_benchmarks(quick=True, paths=paths) == 0

    document = json.loads((paths.reports / REPORT_NAME).read_text())
    assert document["mode"] == "quick" and document["errors"] == []
    machine = document["machine"]
    assert machine["cpu_cores"] >= 1 and machine["memory_gib"] > 0 and machine["versions"]["torch"]

    names = [row["name"] for row in document["comparisons"]]
    assert any(name.startswith("ingestion, per file seen") for name in names)
    assert any(name.startswith("training steps") for name in names)
    for row in document["comparisons"]:
        assert row["ours"] > 0, row
        if row["baseline"] is not None:
            assert row["baseline"] > 0 and math.isclose(row["ratio"], row["ours"] / row["baseline"]), row
        assert isinstance(row["aim_met"], bool)
    assert document["aims_not_met"] == [row["name"] for row in document["comparisons"] if not row["aim_met"]]

    ingestion = document["ingestion"]
    assert ingestion["n_files"] > ingestion["n_chosen_slices"] > 0  # several phases, one decoded
    assert all(run["slices_new"] == ingestion["n_chosen_slices"] for run in ingestion["ours"])

    growth = document["growth"]["runs"]
    assert [run["n_scans"] for run in growth] == list(QUICK.growth_sizes)
    for run in growth:
        assert run["n_ranking_batches"] * 8 >= 3 * run["n_slices"]  # every image seen >= 3 times
        assert run["peak_rss_mb"] > 0 and {s["stage"] for s in run["stages"]} >= {"geometry", "tasks", "aggregation"}
    assert growth[1]["n_slices"] > growth[0]["n_slices"]

    assert document["end_to_end"]["status"] == "missing"
    out = capsys.readouterr().out
    assert "run make demo first" in out and "ratio" in out


def test_demo_profile_is_read_and_bad_profile_is_named(tmp_path):
    assert read_demo_profile(tmp_path)["status"] == "missing"
    profile = {"wall_seconds": 120.5, "peak_rss_mb": 900.0,
               "steps": [{"asset": "slices", "seconds": 30.0, "peak_rss_mb": 400.0},
                         {"asset": "model_ranking", "seconds": 60.0, "peak_rss_mb": 900.0}]}
    (tmp_path / DEMO_PROFILE_NAME).write_text(json.dumps(profile))
    read = read_demo_profile(tmp_path)
    assert read["status"] == "measured" and read["wall_seconds"] == pytest.approx(120.5)
    assert [step["asset"] for step in read["steps"]] == ["model_ranking", "slices"]  # slowest first

    (tmp_path / DEMO_PROFILE_NAME).write_text(json.dumps({"wall_seconds": 1.0}))
    invalid = read_demo_profile(tmp_path)
    assert invalid["status"] == "invalid" and DEMO_PROFILE_NAME in invalid["message"]


def test_growth_campaign_ends_before_now_even_for_a_biobank():
    """At 100,000 scans the experts need years of one-hour sessions; none may lie in the future."""
    from datetime import UTC, datetime, timedelta

    from benchmarks.growth import campaign_for_every_batch

    now = datetime(2026, 12, 4, tzinfo=UTC)
    params = campaign_for_every_batch(450_000, now=now)
    sessions = math.ceil(params.hours_per_expert * 60 / params.session_minutes)
    assert params.hours_per_expert >= 450_000 / 3 * params.seconds_per_batch / 3600
    assert params.campaign_start + timedelta(days=sessions) < now
