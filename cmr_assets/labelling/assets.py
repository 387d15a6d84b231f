"""Labelling campaigns as assets: tasks of both strategies and the simulated experts' annotation files."""


from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from cmr_assets.domain import BATCH_SIZE
from cmr_assets.duckdb_io import append_rows, read_table
from cmr_assets.labelling.campaign import (
    annotator_ids,
    budget_check,
    design_adaptive_batches,
    design_pilot_tasks,
    design_ranking_batches,
    design_single_tasks,
    next_wave,
    prefix_wave,
    ranking_design_summary,
    ranking_rounds_for_budget,
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

    def pilot(self, slices: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        params = load_simulator_params()
        return design_pilot_tasks(slices, self.roster(), self.pilot_minutes, params.seconds_per_single,
                                  params.seconds_per_batch, self.seed)


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
        slices = read_table(con, "slices", SLICE_COLUMNS)
        existing = read_table(con, "tasks_single")
        done = set(existing["slice_id"]) if not existing.empty else set()
        todo = slices[~slices["slice_id"].isin(done)]
        if todo.empty:
            return dg.MaterializeResult(metadata={"new_tasks": 0, "tasks": len(existing)})
        tasks = config.pilot(todo)[0] if config.pilot_minutes > 0 else design_single_tasks(
            todo["slice_id"].tolist(), config.roster(), config.intra_share, config.inter_share, config.seed,
            extra_vote_rounds=len(config.roster()) - 1 if config.fill_budget else 0)
        wave = next_wave(existing, "task_id")
        tasks["task_id"] = prefix_wave(tasks["task_id"], wave)
        append_rows(con, "tasks_single", tasks)
        total = con.execute("SELECT count(*) FROM tasks_single").fetchall()[0][0]
    context.log.info(f"designed {len(tasks)} single-image tasks (wave {wave}) for {len(todo)} new images")
    required = tasks[tasks["kind"] != "extra_vote"]
    budget = budget_check(required, load_simulator_params().seconds_per_single, config.hours_per_expert)
    return dg.MaterializeResult(metadata={
        "new_tasks": len(tasks), "tasks": int(total), "wave": int(wave),
        "by_kind": table(tasks.groupby("kind").size().rename("tasks").reset_index()),
        "by_annotator": table(tasks.groupby("annotator_id").size().rename("tasks").reset_index()),
        "fits_budget": bool(budget.fits), "hours_needed": float(budget.total_hours_needed),
        "extra_vote_tasks": int(len(tasks) - len(required)),
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
        slices = read_table(con, "slices", SLICE_COLUMNS)
        existing = read_table(con, "tasks_ranking")
        done = set(existing["slice_ids"].explode()) if not existing.empty else set()
        todo = slices[~slices["slice_id"].isin(done)]
        designed = []
        if not todo.empty and config.pilot_minutes > 0:
            designed.append(("pilot", config.pilot(todo)[1]))
        elif not todo.empty:
            rounds = ranking_rounds_for_budget(len(todo), len(config.roster()), config.hours_per_expert,
                                               load_simulator_params().seconds_per_batch, config.min_views,
                                               BATCH_SIZE) if config.fill_budget else config.min_views
            designed.append(("random", design_ranking_batches(todo, config.roster(), rounds,
                                                              BATCH_SIZE, config.seed)))
        labels = read_table(con, "labels_ranking", "slice_id, p_too_basal, p_lv, p_too_apical").dropna() \
            if config.adaptive_batches else pd.DataFrame()
        if not labels.empty:
            designed.append(("adaptive", design_adaptive_batches(
                slices, labels, config.roster(), config.adaptive_batches, BATCH_SIZE,
                seed=config.seed + len(existing))))
        metadata: dict = {"batches_before": len(existing)}
        for kind, batches in designed:
            wave = next_wave(read_table(con, "tasks_ranking"), "batch_id")
            batches["batch_id"] = prefix_wave(batches["batch_id"], wave)
            append_rows(con, "tasks_ranking", batches)
            context.log.info(f"designed {len(batches)} {kind} ranking batches (wave {wave})")
            budget = budget_check(batches, load_simulator_params().seconds_per_batch, config.hours_per_expert)
            metadata.update({f"{kind}_batches": len(batches), f"{kind}_wave": int(wave),
                             f"{kind}_hours_needed": float(budget.total_hours_needed)})
        total = con.execute("SELECT count(*) FROM tasks_ranking").fetchall()[0][0] if designed else len(existing)
    if not todo.empty:
        summary = ranking_design_summary(designed[0][1], todo["slice_id"].tolist())
        metadata.update({"new_images": len(todo), "min_views_per_image": int(summary.min_views),
                         "connected": bool(summary.connected),
                         "by_annotator": table(designed[0][1].groupby("annotator_id").size()
                                               .rename("batches").reset_index())})
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
