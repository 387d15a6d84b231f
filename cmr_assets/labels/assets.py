"""Annotations to labels as assets: validated raw annotations, aggregated labels, observer agreement.

The synthetic truth (or a reference you provide) enters only through `reference_labels`, which
only the simulated experts and evaluation read.
"""


import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster_duckdb import DuckDBResource

from cmr_assets.duckdb_io import read_table, replace_table
from cmr_assets.figures import rank_score_distribution_png, strategy_sensitivity_png
from cmr_assets.ingest.deid import load_or_create_key
from cmr_assets.labelling.annotation_ingest import ingest_annotation_files, latest_answer_per_task, read_raw_annotations
from cmr_assets.labelling.campaign import expert_hours_spent
from cmr_assets.labelling.roster import known_annotator_ids
from cmr_assets.labelling.simulator import load_simulator_params
from cmr_assets.labels.aggregation import aggregate_ranking, aggregate_single
from cmr_assets.labels.agreement import agreement_table
from cmr_assets.labels.monotone import apply_monotone
from cmr_assets.labels.reference import synthetic_reference, user_reference
from cmr_assets.labels.sensitivity import SensitivityGrid, sensitivity_study
from cmr_assets.labels.summary import CLASS_MIX_BOUNDS_TEXT, class_mix, class_mix_is_plausible, summarise_labels
from cmr_assets.metadata import picture, table
from cmr_assets.resources import DataPathsResource
from cmr_assets.settings import DEFAULT_HOURS_PER_ANNOTATOR

GROUP = "labels"
REFERENCE_COLUMNS = ["slice_id", "label", "position01", "artefact", "source"]


class ReferenceConfig(dg.Config):
    """Reference labels for evaluation: the synthetic truth by default, or your own CSV
    (`slice_id,label` with label in too_basal/lv/too_apical, e.g. an expert consensus)."""

    reference_csv: str = ""


@dg.asset(group_name=GROUP, deps=["slices", "synthetic_cohort"], pool="duckdb", kinds={"duckdb"})
def reference_labels(context: dg.AssetExecutionContext, config: ReferenceConfig, data_paths: DataPathsResource,
                     duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Reference class per slice (synthetic truth or your CSV), for the simulator and evaluation only."""
    paths = data_paths.paths()
    if config.reference_csv:
        reference = user_reference(pd.read_csv(config.reference_csv), Path(config.reference_csv).name)
    elif paths.synthetic_truth.exists():
        reference = synthetic_reference(pd.read_csv(paths.synthetic_truth), load_or_create_key(paths.secret))
    else:
        reference = pd.DataFrame(columns=REFERENCE_COLUMNS)
    with duckdb.get_connection() as con:
        known = set(read_table(con, "slices", "slice_id")["slice_id"])
        reference = reference[reference["slice_id"].isin(known)].reset_index(drop=True)
        replace_table(con, "reference_labels", reference)
    context.log.info(f"{len(reference)} reference labels for {len(known)} slices")
    return dg.MaterializeResult(metadata={
        "rows": len(reference), "slices": len(known),
        "class_mix": table(reference.groupby("label").size().rename("slices").reset_index()) if len(reference)
        else "no reference",
    })


@dg.multi_asset(
    group_name=GROUP, pool="duckdb",
    specs=[dg.AssetSpec("raw_annotations_single", deps=["labelling_tasks_single", "simulated_annotations_single"],
                        kinds={"duckdb"}, description="Validated single-image annotation records."),
           dg.AssetSpec("raw_annotations_ranking", deps=["labelling_tasks_ranking", "simulated_annotations_ranking"],
                        kinds={"duckdb"}, description="Validated ranking annotation records.")],
)
def raw_annotations(context: dg.AssetExecutionContext, data_paths: DataPathsResource,
                    duckdb: DuckDBResource) -> Iterator[dg.MaterializeResult]:
    """Every annotation file in the incoming folder, validated; bad records go to `rejected_annotations`."""
    paths = data_paths.paths()
    with duckdb.get_connection() as con:
        tasks_single = read_table(con, "tasks_single", "annotator_id")
        tasks_ranking = read_table(con, "tasks_ranking", "annotator_id")
        known = set(tasks_single.get("annotator_id", [])) | set(tasks_ranking.get("annotator_id", []))
        report = ingest_annotation_files(paths.annotations_incoming, con, known | known_annotator_ids(paths))
        single, ranking = read_raw_annotations(con)
        rejected = con.execute("SELECT reason, count(*) AS records FROM rejected_annotations GROUP BY reason "
                               "ORDER BY records DESC").df()
    context.log.info(f"annotation files: {report.files_seen} seen, {report.files_read} read, "
                     f"+{report.single_added} single, +{report.ranking_added} ranking, "
                     f"+{report.rejected_added} rejected")
    common: dict[str, int | dg.MetadataValue] = {"files_seen": report.files_seen, "files_read": report.files_read,
              "rejected_total": int(rejected["records"].sum()) if len(rejected) else 0,
              "rejections_by_reason": table(rejected)}
    yield dg.MaterializeResult(asset_key="raw_annotations_single", metadata={
        **common, "records": len(single), "added": report.single_added,
        "expert_hours": float(expert_hours_spent(single).sum())})
    yield dg.MaterializeResult(asset_key="raw_annotations_ranking", metadata={
        **common, "records": len(ranking), "added": report.ranking_added,
        "expert_hours": float(expert_hours_spent(ranking).sum())})


def _labels_metadata(labels: pd.DataFrame) -> dict[str, int | dg.MetadataValue]:
    summary = summarise_labels(labels)
    return {"slices": summary.slices, "labelled": summary.labelled, "artefact_excluded": summary.artefact_excluded,
            "changed_by_monotone_step": summary.changed_by_monotone_step,
            "class_mix": dg.MetadataValue.json(summary.class_mix)}


@dg.asset(group_name=GROUP, deps=["raw_annotations_single"], pool="duckdb", kinds={"duckdb"})
def labels_single(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """One label per slice from one-image-at-a-time votes (majority; ties by the median class)."""
    with duckdb.get_connection() as con:
        raw_single, _ = read_raw_annotations(con)
        tasks = read_table(con, "tasks_single")
        slices = read_table(con, "slices", "slice_id, scan_id, slice_from_base")
        labels = apply_monotone(aggregate_single(latest_answer_per_task(raw_single), tasks), slices)
        replace_table(con, "labels_single", labels)
    context.log.info(f"labels_single: {int(labels['label'].notna().sum())} labelled slices")
    return dg.MaterializeResult(metadata=_labels_metadata(labels))


@dg.asset(group_name=GROUP, deps=["raw_annotations_ranking"], pool="duckdb", kinds={"duckdb"})
def labels_ranking(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """One label per slice from ranked batches: a Plackett-Luce latent axis cut by an ordered logit
    gives each image a prior, its own divider votes (Dawid-Skene weighted) the evidence."""
    with duckdb.get_connection() as con:
        _, raw_ranking = read_raw_annotations(con)
        slices = read_table(con, "slices", "slice_id, scan_id, slice_from_base, n_slices, position_mm")
        result = aggregate_ranking(latest_answer_per_task(raw_ranking), slices)
        labels = apply_monotone(result.labels, slices)
        replace_table(con, "labels_ranking", labels)
    fit = result.fit
    context.log.info(f"labels_ranking: Plackett-Luce on {len(raw_ranking)} rankings in {fit.seconds:.2f} s "
                     f"({fit.n_iter} iterations), cut points {result.cut_points}")
    png = rank_score_distribution_png(labels.dropna(subset=["label"]), score_column="latent_score")
    return dg.MaterializeResult(metadata={
        **_labels_metadata(labels), "cut_points": dg.MetadataValue.json(list(result.cut_points)),
        "slope": float(result.slope), "fit_seconds": float(fit.seconds), "fit_iterations": int(fit.n_iter),
        "rank_score_distribution": picture(png, "latent score by label")})


@dg.asset(group_name=GROUP, deps=["labels_single", "labels_ranking", "reference_labels"], pool="duckdb",
          kinds={"duckdb"})
def observer_agreement(context: dg.AssetExecutionContext, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Cohen's kappa intra/inter (single), Kendall's tau (ranking), label accuracy against the reference."""
    with duckdb.get_connection() as con:
        raw_single, raw_ranking = read_raw_annotations(con)
        tasks = read_table(con, "tasks_single")
        labels = {s: read_table(con, f"labels_{s}") for s in ("single", "ranking")}
        reference = read_table(con, "reference_labels")
        rows = agreement_table(latest_answer_per_task(raw_single), tasks, latest_answer_per_task(raw_ranking), labels,
                               reference if len(reference) else None)
        replace_table(con, "agreement", rows)
    context.log.info("agreement: " + ", ".join(f"{m}={v:.3f}" for m, v in zip(rows["metric"], rows["value"],
                                                                             strict=True)))
    return dg.MaterializeResult(metadata={
        **{m: float(v) for m, v in zip(rows["metric"], rows["value"], strict=True)},
        "table": table(rows[["metric", "value", "n"]])})


def _check_views(duckdb: DuckDBResource, min_views: int = 3) -> dg.AssetCheckResult:
    with duckdb.get_connection() as con:
        views = con.execute("""
            SELECT s.slice_id, count(r.slice_id) AS views FROM slices s LEFT JOIN (
                SELECT unnest("order") AS slice_id FROM raw_annotations_ranking) r USING (slice_id)
            GROUP BY s.slice_id""").df()
    below = views[views["views"] < min_views]
    return dg.AssetCheckResult(passed=below.empty, metadata={
        "images": len(views), "below_min_views": len(below), "min_views": int(views["views"].min())})


@dg.asset_check(asset="raw_annotations_ranking", description="Every eligible image was ranked at least 3 times.")
def every_image_ranked_three_times(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    return _check_views(duckdb)


def _unknown_label_check(duckdb: DuckDBResource, table_name: str) -> dg.AssetCheckResult:
    with duckdb.get_connection() as con:
        unknown = con.execute(f"SELECT count(*) FROM {table_name} WHERE slice_id NOT IN "
                              "(SELECT slice_id FROM slices)").fetchall()[0][0]
        mix = class_mix(read_table(con, table_name, "label"))
    return dg.AssetCheckResult(passed=unknown == 0 and class_mix_is_plausible(mix), metadata={
        "labels_for_unknown_images": int(unknown), "class_mix": dg.MetadataValue.json(mix),
        "class_mix_bounds": CLASS_MIX_BOUNDS_TEXT})


@dg.asset_check(asset=labels_single, blocking=True,
                description="No label for an unknown image; class mix within sane bounds. Blocking: a failure "
                            "stops what depends on these labels in the same run, and the retrain sensor.")
def labels_single_sane(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    return _unknown_label_check(duckdb, "labels_single")


@dg.asset_check(asset=labels_ranking, blocking=True,
                description="No label for an unknown image; class mix within sane bounds. Blocking: a failure "
                            "stops the split and training in the same run, and the retrain sensor.")
def labels_ranking_sane(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    return _unknown_label_check(duckdb, "labels_ranking")


def _budget_check(duckdb: DuckDBResource, table_name: str, hours: float) -> dg.AssetCheckResult:
    with duckdb.get_connection() as con:
        raw = read_table(con, table_name, "annotator_id, started_at, submitted_at")
    spent = expert_hours_spent(raw) if len(raw) else pd.Series(dtype=float)
    return dg.AssetCheckResult(passed=bool((spent <= hours + 1e-9).all()), metadata={
        "budget_hours_per_expert": hours, "hours_by_expert": dg.MetadataValue.json(
            json.loads(spent.round(3).to_json()))})


@dg.asset_check(asset="raw_annotations_single", description="No expert exceeded the time budget (single).")
def single_within_budget(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    return _budget_check(duckdb, "raw_annotations_single", DEFAULT_HOURS_PER_ANNOTATOR)


@dg.asset_check(asset="raw_annotations_ranking", description="No expert exceeded the time budget (ranking).")
def ranking_within_budget(duckdb: DuckDBResource) -> dg.AssetCheckResult:
    return _budget_check(duckdb, "raw_annotations_ranking", DEFAULT_HOURS_PER_ANNOTATOR)


class SensitivityConfig(dg.Config):
    """The swept side-by-side assumptions (`labels/sensitivity.py`); `params_file`: simulator
    parameters from `cmr-assets calibrate-experts` (else `$CMR_SIMULATOR_PARAMS`, else the defaults)."""

    n_noise: int = 4
    n_share: int = 3
    n_seconds: int = 4
    seed: int = 0
    params_file: str = ""


@dg.asset(group_name=GROUP, deps=["slices", "reference_labels"], kinds={"python"})
def strategy_sensitivity(context: dg.AssetExecutionContext, config: SensitivityConfig,
                         data_paths: DataPathsResource, duckdb: DuckDBResource) -> dg.MaterializeResult:
    """Both strategies' label accuracy at equal expert-hours across the side-by-side perception
    assumptions and the time per ranked batch: where the comparison's answer would flip.

    Runs on the cohort's geometry and synthetic truth; without one (a real cohort with a CSV
    reference, which has no continuous position) on a stand-in cohort of as many scans.
    """
    with duckdb.get_connection() as con:
        slices = read_table(con, "slices", "slice_id, scan_id, slice_from_base, n_slices")
        reference = read_table(con, "reference_labels", "slice_id, label, position01, artefact")
    params = load_simulator_params(config.params_file)
    grid = SensitivityGrid.spanning(params, config.n_noise, config.n_share, config.n_seconds)
    study = sensitivity_study(slices, reference, params, grid, config.seed)
    frame, summary = study.frame, study.summary
    reports = data_paths.paths().reports
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "strategy_sensitivity.json").write_text(json.dumps(
        {**summary, "rows": frame.to_dict(orient="records")}, indent=2), encoding="utf-8")
    png = strategy_sensitivity_png(frame, (params.side_by_side_noise_sd, params.side_by_side_impression_share,
                                           params.divider_impression_share),
                                   path=reports / "strategy_sensitivity.png")
    context.log.info(f"strategy_sensitivity: ranking ahead in {summary['ranking_ahead']} of "
                     f"{summary['perception_settings']} perception settings; break-even batch time "
                     f"{summary['break_even_seconds_per_batch']}")
    return dg.MaterializeResult(metadata={
        "summary": dg.MetadataValue.json(summary), "break_even": picture(png, "strategy sensitivity"),
        "table": table(frame.round(4), max_rows=len(frame)),
        "report": dg.MetadataValue.path(str(reports / "strategy_sensitivity.json"))})


labels_assets = [reference_labels, raw_annotations, labels_single, labels_ranking, observer_agreement,
                 strategy_sensitivity]
labels_checks = [every_image_ranked_three_times, labels_single_sane, labels_ranking_sane, single_within_budget,
                 ranking_within_budget]
