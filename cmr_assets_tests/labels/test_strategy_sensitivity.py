"""The strategy_sensitivity sweep: equal hours, common random numbers, break-even, the asset's reports."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
from dagster_duckdb import DuckDBResource

from cmr_assets.duckdb_io import replace_table
from cmr_assets.labelling.simulator import SimulatorParams, params_to_json, reference_like_cohort
from cmr_assets.labels.assets import strategy_sensitivity as strategy_sensitivity_asset
from cmr_assets.labels.sensitivity import (
    SENSITIVITY_COLUMNS,
    SensitivityGrid,
    break_even_summary,
    sensitivity_study,
    strategy_sensitivity,
)
from cmr_assets.resources import DataPathsResource


@pytest.fixture(scope="module")
def cohort() -> tuple[pd.DataFrame, pd.DataFrame]:
    return reference_like_cohort(60, seed=2)


def test_sweep_at_equal_hours_and_the_pessimistic_end_costs_ranking_accuracy(cohort) -> None:
    slices, reference = cohort
    params = replace(SimulatorParams(), hours_per_expert=0.8)  # a 60-scan cohort needs less than 5 h
    grid = SensitivityGrid(noise_sd=(0.012, 0.030), impression_share=(0.0, 1.0), divider_share=(0.0, 1.0),
                           seconds_per_batch=(36.0, 88.0))
    frame = strategy_sensitivity(slices, reference, params, grid, seed=1)
    assert list(frame.columns) == list(SENSITIVITY_COLUMNS) and len(frame) == grid.size == 12
    # both strategies spend the budget (within one task), whatever the assumption
    assert frame["single_hours_per_expert"].between(0.8 - 11 / 3600, 0.8).all()
    assert frame["ranking_hours_per_expert"].between(0.8 - 88 / 3600, 0.8).all()
    assert frame["single_label_accuracy"].nunique() == 1  # the sweep only touches side-by-side terms
    perception = frame[frame["sweep"] == "perception"].set_index(list(SENSITIVITY_COLUMNS[1:4]))
    best = perception.loc[(0.012, 0.0, 0.0), "ranking_label_accuracy"]
    worst = perception.loc[(0.030, 1.0, 1.0), "ranking_label_accuracy"]
    assert best > worst + 0.01
    summary = break_even_summary(frame)
    assert summary["perception_settings"] == 8 and 0 <= summary["ranking_ahead"] <= 8
    assert set(summary["break_even_seconds_per_batch"]) == {"default_perception", "pessimistic_perception"}


def test_asset_writes_json_and_picture(cohort, tmp_path: Path) -> None:
    slices, reference = cohort
    database = tmp_path / "cmr.duckdb"
    with duckdb.connect(str(database)) as con:
        replace_table(con, "slices", slices)
        replace_table(con, "reference_labels", reference)
    params_file = tmp_path / "params.json"  # the file calibrate-experts writes; here a shorter budget
    params_file.write_text(json.dumps(params_to_json(replace(SimulatorParams(), hours_per_expert=0.8))))
    result = dg.materialize(
        [strategy_sensitivity_asset],
        resources={"data_paths": DataPathsResource(root=str(tmp_path)),
                   "duckdb": DuckDBResource(database=str(database))},
        run_config={"ops": {"strategy_sensitivity": {"config": {
            "n_noise": 2, "n_share": 2, "n_seconds": 2, "params_file": str(params_file)}}}})
    assert result.success
    report = json.loads((tmp_path / "reports" / "strategy_sensitivity.json").read_text())
    assert report["cohort"] == "synthetic truth of the ingested cohort" and len(report["rows"]) == 12
    assert report["hours_per_expert"] == 0.8
    assert (tmp_path / "reports" / "strategy_sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    metadata = result.asset_materializations_for_node("strategy_sensitivity")[0].metadata
    assert "data:image/png;base64" in metadata["break_even"].value


def test_study_runs_on_the_cohort_with_positions_else_on_a_stand_in(cohort) -> None:
    slices, reference = cohort
    params = replace(SimulatorParams(), hours_per_expert=0.3)
    grid = SensitivityGrid(noise_sd=(0.012,), impression_share=(0.0,), divider_share=(0.0,), seconds_per_batch=(36.0,))
    own = sensitivity_study(slices, reference, params, grid, seed=1)
    assert own.summary["cohort"] == "synthetic truth of the ingested cohort"
    assert own.summary["images"] == len(slices) and own.summary["hours_per_expert"] == 0.3
    no_positions = reference.assign(position01=float("nan"))  # a user's CSV reference: no continuous position
    stand_in = sensitivity_study(slices, no_positions, params, grid, seed=1)
    assert stand_in.summary["cohort"] == "stand-in cohort (reference_like_cohort)"
    assert stand_in.summary["images"] == len(reference_like_cohort(60, seed=1)[0])
    assert list(stand_in.frame.columns) == list(SENSITIVITY_COLUMNS)
