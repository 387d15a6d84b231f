"""Labelling campaigns as assets: tasks of both strategies and the simulated experts' annotation files."""


from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from cmr_assets.duckdb_io import append_rows, read_table
from cmr_assets.labelling.campaign import (
    CampaignPlan,
    annotator_ids,
    ranking_design_summary,
    ranking_waves,
    single_wave,
)
from cmr_assets.labelling.simulator import (
    SimulatorParams,
    load_simulator_params,
    simulate_ranking_campaign,
    simulate_single_campaign,
)
from cmr_assets.metadata import table
from cmr_assets.resources import DataPathsResource
from cmr_assets.settings import DEFAULT_HOURS_PER_ANNOTATOR

GROUP = "labelling"
SLICE_COLUMNS = "slice_id, scan_id, slice_from_base, n_slices, position_mm"


class CampaignConfig(dg.Config):
    """Campaign design; the defaults follow the paper (3 experts, batches of 8, >= 3 views per image)."""

    n_experts: int = 3
    annotators: list[str] = []  # people's roster names; empty means simulated experts sim-expert-1..n

    def roster(self) -> list[str]:
        return list(self.annotators) or annotator_ids(self.n_experts)
    intra_share: float = 0.05
    inter_share: float = 0.05
    min_views: int = 3
    adaptive_batches: int = 0  # ranking only: extra batches aimed at images the current labels leave uncertain
    hours_per_expert: float = DEFAULT_HOURS_PER_ANNOTATOR
    # Equal expert time: plan more work than the hours allow (single: further votes from other
    # experts after every image has one; ranking: further rounds of batches), so the budget ends both.
    # Expected task times come from the simulator's parameters ($CMR_SIMULATOR_PARAMS, e.g. a pilot's).
    fill_budget: bool = True
    # > 0: this wave is a calibration pilot of that many minutes per expert per strategy
    # (`design_pilot_tasks`; then `cmr-assets calibrate-experts` on its annotation files).
    pilot_minutes: float = 0.0
    seed: int = 0

    def plan(self) -> CampaignPlan:
        """These settings with the expected task times of the simulator's parameters."""
        params = load_simulator_params()
        return CampaignPlan(
            roster=tuple(self.roster()), seconds_per_single=params.seconds_per_single,
            seconds_per_batch=params.seconds_per_batch, intra_share=self.intra_share, inter_share=self.inter_share,
            min_views=self.min_views, adaptive_batches=self.adaptive_batches, hours_per_expert=self.hours_per_expert,
            fill_budget=self.fill_budget, pilot_minutes=self.pilot_minutes, seed=self.seed)


class SimulationConfig(dg.Config):
    """Simulated experts (the embedded default). Turn off when real experts label in the web app.
    `params_file`: a parameter file from `cmr-assets calibrate-experts` (else `$CMR_SIMULATOR_PARAMS`,
    else the built-in assumptions)."""

    enabled: bool = True
    seed: int = 0
    params_file: str = ""


@dg.asset(group_name=GROUP, deps=["slices"], pool="duckdb", kinds={"duckdb"})
def labelling_tasks_single(context: dg.AssetExecutionContext, config: CampaignConfig,
                           duckdb: DuckDBResource) -> dg.MaterializeResult:
    """One image at a time: every image once over the experts, plus intra/inter-observer repeats.

    Existing tasks never change (annotations refer to them); new slices get a new wave of tasks.
    """
    with duckdb.get_connection() as con:
        existing = read_table(con, "tasks_single")
        designed = single_wave(read_table(con, "slices", SLICE_COLUMNS), existing, config.plan())
        if designed is None:
            return dg.MaterializeResult(metadata={"new_tasks": 0, "tasks": len(existing)})
        append_rows(con, "tasks_single", designed.tasks)
    tasks, wave = designed.tasks, designed.wave
    context.log.info(f"designed {len(tasks)} {designed.kind} single-image tasks (wave {wave}) covering "
                     f"{tasks['slice_id'].nunique()} new images")
    return dg.MaterializeResult(metadata={
        "new_tasks": len(tasks), "tasks": len(existing) + len(tasks), "wave": int(wave),
        "by_kind": table(tasks.groupby("kind").size().rename("tasks").reset_index()),
        "by_annotator": table(tasks.groupby("annotator_id").size().rename("tasks").reset_index()),
        "fits_budget": bool(designed.budget.fits), "hours_needed": float(designed.budget.total_hours_needed),
        "extra_vote_tasks": int((tasks["kind"] == "extra_vote").sum()),
    })


@dg.asset(group_name=GROUP, deps=["slices"], pool="duckdb", kinds={"duckdb"})
def labelling_tasks_ranking(context: dg.AssetExecutionContext, config: CampaignConfig,
                            duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Batches of 8 images across scans and positions: each image in >= 3 batches, one connected graph.

    With `adaptive_batches: N` it also appends N batches aimed at the images whose class the
    current `labels_ranking` leaves most uncertain (read if present; not a declared dependency,
    since labels depend on these tasks).
    """
    with duckdb.get_connection() as con:
        existing = read_table(con, "tasks_ranking")
        labels = read_table(con, "labels_ranking", "slice_id, p_too_basal, p_lv, p_too_apical").dropna() \
            if config.adaptive_batches else pd.DataFrame()
        todo, waves = ranking_waves(read_table(con, "slices", SLICE_COLUMNS), existing, labels, config.plan())
        for designed in waves:
            append_rows(con, "tasks_ranking", designed.tasks)
    metadata: dict = {"batches_before": len(existing)}
    for designed in waves:
        context.log.info(f"designed {len(designed.tasks)} {designed.kind} ranking batches (wave {designed.wave})")
        metadata.update({f"{designed.kind}_batches": len(designed.tasks), f"{designed.kind}_wave": int(designed.wave),
                         f"{designed.kind}_hours_needed": float(designed.budget.total_hours_needed)})
    if not todo.empty:
        first = waves[0].tasks
        summary = ranking_design_summary(first, todo["slice_id"].tolist())
        metadata.update({"new_images": len(todo), "min_views_per_image": int(summary.min_views),
                         "connected": bool(summary.connected),
                         "by_annotator": table(first.groupby("annotator_id").size().rename("batches").reset_index())})
    total = len(existing) + sum(len(designed.tasks) for designed in waves)
    return dg.MaterializeResult(metadata={**metadata, "batches": int(total)})


def _simulate(context: dg.AssetExecutionContext, config: SimulationConfig, duckdb: DuckDBResource,
              data_paths: DataPathsResource, tasks_table: str,
              simulate: Callable[[pd.DataFrame, pd.DataFrame, SimulatorParams, Path, int], list[Path]],
              ) -> dg.MaterializeResult:
    if not config.enabled:
        return dg.MaterializeResult(metadata={"simulated": False, "files_written": 0})
    with duckdb.get_connection() as con:
        tasks = read_table(con, tasks_table)
        reference = read_table(con, "reference_labels", "slice_id, label, position01, artefact")
    if reference.empty:
        raise dg.Failure(
            "simulated experts need the synthetic truth (table reference_labels is empty): "
            "simulate only the synthetic cohort, or set enabled: false and label in the web app")
    incoming = data_paths.paths().annotations_incoming
    files = simulate(tasks, reference, load_simulator_params(config.params_file), incoming, config.seed)
    context.log.info(f"simulated experts wrote {len(files)} annotation files into {incoming}")
    return dg.MaterializeResult(metadata={"simulated": True, "files_written": len(files),
                                          "incoming_dir": dg.MetadataValue.path(str(incoming))})


@dg.asset(group_name=GROUP, deps=["labelling_tasks_single", "reference_labels"], pool="duckdb", kinds={"python"})
def simulated_annotations_single(context: dg.AssetExecutionContext, config: SimulationConfig,
                                 duckdb: DuckDBResource, data_paths: DataPathsResource) -> dg.MaterializeResult:
    """Simulated experts label images one at a time within their time budget (annotation files)."""
    return _simulate(context, config, duckdb, data_paths, "tasks_single", simulate_single_campaign)


@dg.asset(group_name=GROUP, deps=["labelling_tasks_ranking", "reference_labels"], pool="duckdb",
          kinds={"python"})
def simulated_annotations_ranking(context: dg.AssetExecutionContext, config: SimulationConfig,
                                  duckdb: DuckDBResource, data_paths: DataPathsResource) -> dg.MaterializeResult:
    """Simulated experts rank batches of 8 base -> apex and place the two dividers (annotation files)."""
    return _simulate(context, config, duckdb, data_paths, "tasks_ranking", simulate_ranking_campaign)


labelling_assets = [labelling_tasks_single, labelling_tasks_ranking,
                    simulated_annotations_single, simulated_annotations_ranking]
