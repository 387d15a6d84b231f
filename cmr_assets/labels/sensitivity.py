"""How much the strategy comparison rests on the simulated experts' side-by-side perception.

Only the single-image terms of `SimulatorParams` are constrained by the paper (its kappas); how
much better an expert judges an image beside seven others is an assumption. This module sweeps
it and reports, at equal expert-hours, both strategies' label accuracy against the reference:

- fresh noise side by side (`side_by_side_noise_sd`) from the default 0.012 up to the single-image
  value (`single_look_noise_sd`, 0.030: no comparative advantage in fresh noise);
- the share of the personal impression kept side by side (`side_by_side_impression_share`, 0..1);
- divider placement without (0) and with (1) the impression (`divider_impression_share`);
- and, because the perception sweep alone never reaches a break-even on the default cohort, the
  other assumption the comparison rests on: expert time per ranked batch of 8 (`seconds_per_batch`,
  36 s) from its default up to 8 single-image looks (8 x 11 s), at the default perception and at
  the most pessimistic one (single-image noise, full impression in order and dividers).

Equal expert-hours: both campaigns are designed to need more than the budget (single: further
votes from other experts after every image has one; ranking: as many rounds as the hours buy) and
stop at `hours_per_expert`. Everything else (cohort, tasks, the experts' impressions, boundary
biases and the images' ambiguity) is held fixed across the grid (common random numbers), so
differences between cells come from the swept assumption, not from noise. The single-image
strategy does not depend on the swept terms: its accuracy is one number.

Public API:
- `SensitivityGrid(noise_sd, impression_share, divider_share, seconds_per_batch)`,
  `SensitivityGrid.spanning(params, n_noise=4, n_share=3, n_seconds=4)`: the default grid,
  4 x 3 x 2 = 24 perception settings plus 4 x 2 = 8 batch times (about 15-30 s on 2 cores for the
  default cohort).
- `strategy_sensitivity(slices, reference, params, grid, seed=0) -> DataFrame`: one row per
  setting (`SENSITIVITY_COLUMNS`; `sweep` is `perception` or `time`).
- `break_even_summary(frame) -> dict`: where the ranking strategy stops being ahead.
- `sensitivity_study(slices, reference, params, grid, seed=0) -> SensitivityStudy`: the sweep and its
  summary on the ingested cohort when its reference covers every slice with a continuous position
  (the synthetic truth), else on a stand-in cohort (`reference_like_cohort`) of as many scans.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from cmr_assets.labelling.campaign import (
    annotator_ids,
    design_ranking_batches,
    design_single_tasks,
    ranking_rounds_for_budget,
)
from cmr_assets.labelling.simulator import (
    SimulatorParams,
    reference_like_cohort,
    simulate_ranking_rows,
    simulate_single_rows,
)
from cmr_assets.labels.aggregation import aggregate_ranking, aggregate_single
from cmr_assets.labels.agreement import label_accuracy

SENSITIVITY_COLUMNS = (
    "sweep", "side_by_side_noise_sd", "side_by_side_impression_share", "divider_impression_share",
    "seconds_per_batch", "ranking_label_accuracy", "single_label_accuracy", "ranking_minus_single",
    "ranking_hours_per_expert", "single_hours_per_expert",
)


@dataclass(frozen=True)
class SensitivityGrid:
    """The swept side-by-side perception settings."""

    noise_sd: tuple[float, ...]
    impression_share: tuple[float, ...]
    divider_share: tuple[float, ...] = (0.0, 1.0)
    seconds_per_batch: tuple[float, ...] = ()

    @classmethod
    def spanning(cls, params: SimulatorParams, n_noise: int = 4, n_share: int = 3, n_seconds: int = 4
                 ) -> SensitivityGrid:
        """Noise from the default side-by-side value up to the single-image value, shares 0..1,
        batch time from the default up to 8 single-image looks."""
        def span(low: float, high: float, n: int) -> tuple[float, ...]:
            return tuple(float(v) for v in np.round(np.linspace(low, high, n), 4))

        return cls(noise_sd=span(min(0.012, params.side_by_side_noise_sd), params.single_look_noise_sd, n_noise),
                   impression_share=span(0.0, 1.0, n_share),
                   seconds_per_batch=span(params.seconds_per_batch, 8 * params.seconds_per_single, n_seconds))

    @property
    def size(self) -> int:
        return (len(self.noise_sd) * len(self.impression_share) * len(self.divider_share)
                + 2 * len(self.seconds_per_batch))


def _hours(rows: pd.DataFrame) -> float:
    """Mean hours per expert actually spent."""
    seconds = (rows["submitted_at"] - rows["started_at"]).dt.total_seconds()
    return float(seconds.groupby(rows["annotator_id"]).sum().mean() / 3600)


def _settings(params: SimulatorParams, grid: SensitivityGrid) -> list[tuple[str, SimulatorParams]]:
    """Every swept setting as (sweep, parameters)."""
    settings = [("perception", replace(params, side_by_side_noise_sd=noise, side_by_side_impression_share=share,
                                       divider_impression_share=divider))
                for divider in grid.divider_share for share in grid.impression_share for noise in grid.noise_sd]
    pessimistic = replace(params, side_by_side_noise_sd=params.single_look_noise_sd,
                          side_by_side_impression_share=1.0, divider_impression_share=1.0)
    settings += [("time", replace(perception, seconds_per_batch=seconds))
                 for perception in (params, pessimistic) for seconds in grid.seconds_per_batch]
    return settings


def strategy_sensitivity(slices: pd.DataFrame, reference: pd.DataFrame, params: SimulatorParams,
                         grid: SensitivityGrid, seed: int = 0) -> pd.DataFrame:
    """Both strategies' label accuracy at `params.hours_per_expert` for every grid setting.

    `slices` (slice_id, scan_id, slice_from_base, n_slices) and `reference` (slice_id, label,
    position01, artefact) describe the cohort; the campaigns are designed here to fill the budget.
    """
    experts = annotator_ids(params.n_experts)
    tasks_single = design_single_tasks(slices["slice_id"], experts, seed=seed,
                                       extra_vote_rounds=len(experts) - 1)
    single_rows = simulate_single_rows(tasks_single, reference, params, seed)
    single_accuracy = label_accuracy(aggregate_single(single_rows, tasks_single), reference)["accuracy"]
    single_hours = _hours(single_rows)
    designs: dict[int, pd.DataFrame] = {}
    rows = []
    for sweep, assumed in _settings(params, grid):
        rounds = ranking_rounds_for_budget(len(slices), len(experts), assumed.hours_per_expert,
                                           assumed.seconds_per_batch)
        if rounds not in designs:
            designs[rounds] = design_ranking_batches(slices, experts, min_views=rounds, seed=seed)
        ranking_rows = simulate_ranking_rows(designs[rounds], reference, assumed, seed)
        accuracy = label_accuracy(aggregate_ranking(ranking_rows, slices).labels, reference)["accuracy"]
        rows.append((sweep, assumed.side_by_side_noise_sd, assumed.side_by_side_impression_share,
                     assumed.divider_impression_share, assumed.seconds_per_batch, accuracy, single_accuracy,
                     accuracy - single_accuracy, _hours(ranking_rows), single_hours))
    return pd.DataFrame(rows, columns=list(SENSITIVITY_COLUMNS))


def _break_even_seconds(curve: pd.DataFrame) -> float | None:
    """Batch time at which ranking minus single crosses zero (linear between swept points)."""
    curve = curve.sort_values("seconds_per_batch")
    x, y = curve["seconds_per_batch"].to_numpy(), curve["ranking_minus_single"].to_numpy()
    for k in range(1, len(x)):
        if y[k - 1] > 0 >= y[k]:
            return float(x[k - 1] + (x[k] - x[k - 1]) * y[k - 1] / (y[k - 1] - y[k]))
    return None


def break_even_summary(frame: pd.DataFrame) -> dict[str, Any]:
    """How many perception settings favour ranking, the worst one for it, for each divider
    assumption the largest impression share at which ranking is still ahead at every swept noise
    level, and the batch time at which ranking stops being ahead (default / pessimistic perception;
    None: ahead over the whole swept range)."""
    perception = frame[frame["sweep"] == "perception"]
    time = frame[frame["sweep"] == "time"]
    worst = perception.loc[perception["ranking_minus_single"].idxmin()]
    ahead_up_to = {}
    for divider, group in perception.groupby("divider_impression_share"):
        ahead = (group.groupby("side_by_side_impression_share")["ranking_minus_single"].min() > 0).cummin()
        ahead_up_to[f"divider_impression_share={divider:g}"] = float(ahead.index[ahead].max()) if ahead.any() \
            else None
    pessimistic = time["side_by_side_impression_share"] == 1.0
    return {
        "perception_settings": len(perception),
        "ranking_ahead": int((perception["ranking_minus_single"] > 0).sum()),
        "single_label_accuracy": float(frame["single_label_accuracy"].iloc[0]),
        "ranking_label_accuracy_range": [float(perception["ranking_label_accuracy"].min()),
                                         float(perception["ranking_label_accuracy"].max())],
        "worst_for_ranking": {k: float(worst[k]) for k in SENSITIVITY_COLUMNS[1:5] + ("ranking_minus_single",)},
        "ranking_ahead_at_every_noise_up_to_share": ahead_up_to,
        "break_even_seconds_per_batch": {
            "default_perception": _break_even_seconds(time[~pessimistic]) if len(time) else None,
            "pessimistic_perception": _break_even_seconds(time[pessimistic]) if len(time) else None},
    }


@dataclass(frozen=True)
class SensitivityStudy:
    """The sweep (`strategy_sensitivity` rows) and its summary (`break_even_summary` with the cohort
    it ran on, its images, hours per expert and seed)."""

    frame: pd.DataFrame
    summary: dict[str, Any]


def sensitivity_study(slices: pd.DataFrame, reference: pd.DataFrame, params: SimulatorParams,
                      grid: SensitivityGrid, seed: int = 0) -> SensitivityStudy:
    """`strategy_sensitivity` on the cohort's geometry and synthetic truth; without one (a real
    cohort with a CSV reference, which has no continuous position) on a stand-in cohort of as many
    scans (at least 30)."""
    covered = len(slices) and len(reference) and reference["position01"].notna().all() and \
        slices["slice_id"].isin(reference["slice_id"]).all()
    if covered:
        cohort = "synthetic truth of the ingested cohort"
    else:
        slices, reference = reference_like_cohort(max(slices["scan_id"].nunique() if len(slices) else 0, 30),
                                                  seed=seed)
        cohort = "stand-in cohort (reference_like_cohort)"
    frame = strategy_sensitivity(slices, reference, params, grid, seed)
    summary = {"cohort": cohort, "images": len(slices), "hours_per_expert": params.hours_per_expert,
               "seed": seed, **break_even_summary(frame)}
    return SensitivityStudy(frame, summary)
