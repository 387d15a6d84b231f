"""Simulated experts: calibrated kappas, comparative advantage, budgets, sessions and files."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from cmr_assets.domain import CLASS_INDEX
from cmr_assets.labelling.annotation_format import AnnotationContext, parse_annotation_file
from cmr_assets.labelling.campaign import (
    annotator_ids,
    design_ranking_batches,
    design_single_tasks,
    ranking_design_summary,
)
from cmr_assets.labelling.simulator import (
    ExpertPanel,
    SimulatorParams,
    fit_class_boundaries,
    reference_like_cohort,
    simulate_campaign_rows,
    simulate_ranking_campaign,
    simulate_single_campaign,
    simulate_single_rows,
)
from cmr_assets.labels.aggregation import aggregate_ranking, aggregate_single

ROSTER = annotator_ids(3)


@pytest.fixture(scope="module")
def cohort() -> tuple[pd.DataFrame, pd.DataFrame]:
    return reference_like_cohort(300, seed=11)


def read_records(paths: list[Path]) -> pd.DataFrame:
    rows = []
    for path in paths:
        parsed = parse_annotation_file(path)
        assert parsed.rejections == [] and not parsed.partial_last_line
        rows += [{**p.record.to_json_dict(), "file": path.name} for p in parsed.records]
    frame = pd.DataFrame(rows)
    for column in ("started_at", "submitted_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def test_single_image_kappas_match_the_paper_on_a_large_sample() -> None:
    _, reference = reference_like_cohort(1700, seed=5)  # about 20,000 images
    assert len(reference) > 19_000
    started = time.perf_counter()
    panel = ExpertPanel.build(reference, SimulatorParams(), seed=5)
    rng = np.random.default_rng(6)
    images = np.arange(len(reference))
    expert = images % 3
    first = panel.label_alone(expert, images, rng)
    repeat = panel.label_alone(expert, images, rng)
    other = panel.label_alone((expert + 1 + images // 3 % 2) % 3, images, rng)
    assert time.perf_counter() - started < 2.0
    assert cohen_kappa_score(first, repeat) == pytest.approx(0.90, abs=0.05)
    assert cohen_kappa_score(first, other) == pytest.approx(0.77, abs=0.05)
    assert (first != repeat).any()  # repeats are correlated, not identical


def test_side_by_side_judgement_is_less_noisy_than_alone() -> None:
    _, reference = reference_like_cohort(400, seed=2)
    panel = ExpertPanel.build(reference, SimulatorParams(), seed=2)
    rng = np.random.default_rng(0)
    images = np.arange(len(reference))
    alone = panel.perceive_alone(images % 3, images, rng) - panel.position01
    together = panel.perceive_side_by_side(images % 3, images, rng)[0] - panel.position01
    assert together.std() < 0.8 * alone.std()


def test_boundaries_fitted_from_the_truth(cohort) -> None:
    _, reference = cohort
    basal, apical = fit_class_boundaries(reference["position01"].to_numpy(), reference["label"].tolist())
    assert (basal, apical) == pytest.approx((0.0, 1.0), abs=0.02)  # the generator's base plane and apex
    assert reference.loc[reference["label"] == "lv", "position01"].between(basal, apical).all()
    shifted = fit_class_boundaries(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),
                                   ["too_basal", "too_basal", "lv", "lv", "too_apical", "too_apical"])
    assert shifted == pytest.approx((0.25, 0.45))


def test_default_budget_labels_every_image_and_gives_three_ranking_views(cohort, tmp_path: Path) -> None:
    slices, reference = cohort
    params = SimulatorParams()
    tasks_single = design_single_tasks(slices["slice_id"], ROSTER, seed=0)
    tasks_ranking = design_ranking_batches(slices, ROSTER, seed=0)
    context = AnnotationContext.from_tasks(tasks_single, tasks_ranking, set(ROSTER))

    single_files = simulate_single_campaign(tasks_single, reference, params, tmp_path, seed=0)
    single = read_records(single_files)
    assert len(single) == len(tasks_single)  # the budget covers every task incl. repeats
    assert set(single["image_ids"].str[0]) == set(slices["slice_id"])
    ranking_files = simulate_ranking_campaign(tasks_ranking, reference, params, tmp_path, seed=0)
    ranking = read_records(ranking_files)
    done = tasks_ranking[tasks_ranking["batch_id"].isin(ranking["batch_id"])]
    assert ranking_design_summary(done, slices["slice_id"].tolist()).min_views >= 3
    for path in single_files + ranking_files:
        assert not parse_annotation_file(path, context).rejections

    for records in (single, ranking):
        worked = (records["submitted_at"] - records["started_at"]).dt.total_seconds()
        hours = worked.groupby(records["annotator_id"]).sum() / 3600
        assert (hours <= params.hours_per_expert).all() and (hours > 3).all()
        session_span = records.groupby("file").agg(start=("started_at", "min"), end=("submitted_at", "max"))
        assert ((session_span["end"] - session_span["start"]).dt.total_seconds()
                <= params.session_minutes * 60).all()
        assert records.groupby("file")["annotator_id"].nunique().eq(1).all()

    # artefacts: flagged images mostly truly artefact, most true artefacts flagged
    truth = reference.set_index("slice_id")
    flagged = single.loc[single["artefact"], "image_ids"].str[0]
    assert truth.loc[flagged, "artefact"].mean() > 0.7
    assert single.loc[single["artefact"], "label"].isna().all()
    # ranking orders follow position, dividers mark the classes
    true_class = {s: CLASS_INDEX[c] for s, c in zip(reference["slice_id"], reference["label"], strict=True)}
    per_view_correct = []
    for order, (a, b) in zip(ranking["order"], ranking["dividers"], strict=True):
        classes = np.repeat([0, 1, 2], [a, b - a, 8 - b])
        per_view_correct.append(classes == np.array([true_class[s] for s in order]))
    labelled = single.dropna(subset=["label"])
    true_labels = truth.loc[labelled["image_ids"].str[0], "label"].to_numpy()
    single_accuracy = labelled["label"].to_numpy() == true_labels
    assert np.mean(per_view_correct) > single_accuracy.mean() > 0.8


def test_budget_runs_out(cohort, tmp_path: Path) -> None:
    slices, reference = cohort
    params = replace(SimulatorParams(), hours_per_expert=0.5, session_minutes=20)
    tasks = design_single_tasks(slices["slice_id"], ROSTER, seed=0)
    records = read_records(simulate_single_campaign(tasks, reference, params, tmp_path, seed=1))
    worked = (records["submitted_at"] - records["started_at"]).dt.total_seconds()
    per_expert = worked.groupby(records["annotator_id"]).sum()
    assert (per_expert <= 1800).all() and (per_expert > 1800 - 3 * params.seconds_per_single).all()
    assert len(records) < len(tasks)
    # each expert did the first tasks of their queue, in order
    for annotator, done in records.groupby("annotator_id"):
        queue = tasks[tasks["annotator_id"] == annotator].sort_values("task_id")["task_id"]
        assert done["task_id"].tolist() == queue.head(len(done)).tolist()
    assert records.groupby("annotator_id")["file"].nunique().min() >= 2  # several sessions


def test_same_seed_writes_the_same_files(cohort, tmp_path: Path) -> None:
    slices, reference = cohort
    tasks = design_ranking_batches(slices, ROSTER, seed=0).head(30)
    first = simulate_ranking_campaign(tasks, reference, SimulatorParams(), tmp_path / "a", seed=4)
    second = simulate_ranking_campaign(tasks, reference, SimulatorParams(), tmp_path / "b", seed=4)
    assert [p.name for p in first] == [p.name for p in second]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second, strict=True))


def test_more_annotators_than_simulated_experts_is_an_error(cohort, tmp_path: Path) -> None:
    slices, reference = cohort
    tasks = design_single_tasks(slices["slice_id"].head(40), annotator_ids(4), seed=0)
    with pytest.raises(ValueError, match="4 annotators"):
        simulate_single_campaign(tasks, reference, SimulatorParams(), tmp_path)


def test_rows_are_the_files_content_and_a_smaller_budget_is_a_prefix(cohort, tmp_path: Path) -> None:
    slices, reference = cohort
    tasks_single = design_single_tasks(slices["slice_id"], ROSTER, seed=0)
    tasks_ranking = design_ranking_batches(slices, ROSTER, seed=0)
    full = simulate_campaign_rows(tasks_single, tasks_ranking, reference, SimulatorParams(), seed=3)
    files = read_records(simulate_ranking_campaign(tasks_ranking, reference, SimulatorParams(), tmp_path, seed=3))
    by_id = files.set_index("submission_id")
    assert set(by_id.index) == set(full.ranking["submission_id"])
    ranked = full.ranking.set_index("submission_id")
    assert (by_id.loc[ranked.index, "order"].tolist() == ranked["order"].tolist())
    assert by_id.loc[ranked.index, "dividers"].tolist() == ranked[["divider_a", "divider_b"]].to_numpy().tolist()

    short = simulate_campaign_rows(tasks_single, tasks_ranking, reference,
                                   replace(SimulatorParams(), hours_per_expert=1.0), seed=3)
    for strategy in ("single", "ranking"):
        small, large = getattr(short, strategy), getattr(full, strategy)
        hours = (small["submitted_at"] - small["started_at"]).dt.total_seconds().groupby(small["annotator_id"]).sum()
        assert (hours <= 3600).all() and (hours > 3500).all()
        for annotator, rows in small.groupby("annotator_id"):
            prefix = large[large["annotator_id"] == annotator].head(len(rows))
            pd.testing.assert_frame_equal(rows.reset_index(drop=True), prefix.reset_index(drop=True))
    # the rows go straight into aggregation
    assert aggregate_single(short.single, tasks_single)["label"].notna().sum() > 850  # ~3 x 327 looks
    assert aggregate_ranking(short.ranking, slices).labels["label"].notna().sum() > 900


def test_with_extra_votes_single_labelling_spends_the_whole_budget(cohort) -> None:
    slices, reference = cohort
    params = SimulatorParams()
    tasks = design_single_tasks(slices["slice_id"], ROSTER, seed=0, extra_vote_rounds=2)
    rows = simulate_single_rows(tasks, reference, params, seed=0)
    hours = (rows["submitted_at"] - rows["started_at"]).dt.total_seconds().groupby(rows["annotator_id"]).sum() / 3600
    assert (hours <= params.hours_per_expert).all() and (hours > params.hours_per_expert - 0.01).all()
    kinds = rows["task_id"].map(tasks.set_index("task_id")["kind"])
    assert set(tasks.loc[tasks["kind"] != "extra_vote", "task_id"]) <= set(rows["task_id"])  # required first
    assert (kinds == "extra_vote").sum() > 500  # the time left bought further votes
