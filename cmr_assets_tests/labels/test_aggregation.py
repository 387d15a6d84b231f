import logging

import numpy as np
import pandas as pd
import pytest

from benchmarks.ranking import balanced_batches
from cmr_assets.labels.aggregation import (
    RANKING_COLUMNS,
    SINGLE_COLUMNS,
    aggregate_ranking,
    aggregate_single,
    dawid_skene,
    fit_ordered_logit,
    ordered_logit_probabilities,
)

GUMBEL_MEDIAN = -np.log(np.log(2))
LATENT_SPAN = 10.0  # planted latent score = LATENT_SPAN * position01
CUTS01 = (0.2, 0.8)


def cohort_slices(n_scans: int = 60, n_slices: int = 10) -> pd.DataFrame:
    rows = [
        {"slice_id": f"scan{s:03d}-{i:02d}", "scan_id": f"scan{s:03d}", "slice_from_base": i,
         "n_slices": n_slices, "position_mm": 8.0 * i}
        for s in range(n_scans) for i in range(n_slices)
    ]
    return pd.DataFrame(rows)


def simulate_ranking_annotations(
    slices: pd.DataFrame, views_per_image: int = 4, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray]:
    """Experts order batches of 8 by perceived position (planted score + Gumbel noise, i.e. exact
    Plackett-Luce) and put the dividers where the perceived score crosses the planted cuts."""
    rng = np.random.default_rng(seed)
    position01 = (slices["slice_from_base"] + rng.uniform(size=len(slices))) / slices["n_slices"]
    latent = LATENT_SPAN * position01.to_numpy()
    n_batches = len(slices) * views_per_image // 8
    batches = balanced_batches(len(slices), n_batches, 8, rng)
    perceived = latent[batches] - rng.gumbel(size=batches.shape)
    order = np.argsort(perceived, axis=1)
    batches = np.take_along_axis(batches, order, axis=1)
    perceived = np.take_along_axis(perceived, order, axis=1)
    ids = slices["slice_id"].to_numpy()
    records = pd.DataFrame({
        "submission_id": [f"sub-{b}" for b in range(n_batches)],
        "annotator_id": [f"sim-expert-{b % 3 + 1}" for b in range(n_batches)],
        "batch_id": [f"r-{b:06d}" for b in range(n_batches)],
        "order": [list(ids[row]) for row in batches],
        "divider_a": (perceived < LATENT_SPAN * CUTS01[0]).sum(axis=1),
        "divider_b": (perceived < LATENT_SPAN * CUTS01[1]).sum(axis=1),
        "artefact_ids": [[] for _ in range(n_batches)],
        "started_at": pd.Timestamp("2026-01-01", tz="UTC"),
        "submitted_at": pd.Timestamp("2026-01-01 00:01", tz="UTC"),
        "source_file": "ranking-sim.jsonl",
        "line": np.arange(1, n_batches + 1),
    })
    return records, latent


def test_ranking_recovers_cut_points_and_labels():
    slices = cohort_slices()
    raw, latent = simulate_ranking_annotations(slices)
    result = aggregate_ranking(raw, slices)
    labels = result.labels
    assert tuple(labels.columns) == RANKING_COLUMNS and len(labels) == len(slices)
    # the fitted axis is an affine image of the planted one (the ML scale is inflated with few
    # views); map the cut points back: a view's class flips where latent - cut = Gumbel median
    assert np.corrcoef(labels["latent_score"], latent)[0, 1] > 0.9
    scale, shift = np.polyfit(latent, labels["latent_score"], 1)
    cuts01 = ((np.array(result.cut_points) - shift) / scale - GUMBEL_MEDIAN) / LATENT_SPAN
    np.testing.assert_allclose(cuts01, CUTS01, atol=0.05)
    truth = np.digitize(latent, [LATENT_SPAN * c for c in CUTS01])
    predicted = labels["label"].map({"too_basal": 0, "lv": 1, "too_apical": 2}).to_numpy()
    assert (predicted == truth).mean() > 0.8
    probabilities = labels[["p_too_basal", "p_lv", "p_too_apical"]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert (labels["n_views"] >= 4).all() and (labels["n_annotators"] >= 1).all()
    assert (labels["score_se"] > 0).all()


def test_ranking_excludes_images_most_viewers_flagged():
    slices = cohort_slices(n_scans=20)
    raw, _ = simulate_ranking_annotations(slices, seed=1)
    flagged_always, flagged_once = slices["slice_id"].iloc[3], slices["slice_id"].iloc[5]
    views_of_once = raw.index[raw["order"].map(lambda order: flagged_once in order)]
    raw["artefact_ids"] = [
        [s for s in order if s == flagged_always or (s == flagged_once and i == views_of_once[0])]
        for i, order in zip(raw.index, raw["order"], strict=True)
    ]
    labels = aggregate_ranking(raw, slices).labels.set_index("slice_id")
    assert labels.loc[flagged_always, "artefact_excluded"]
    assert pd.isna(labels.loc[flagged_always, "label"])
    assert labels.loc[flagged_always, "n_artefact_flags"] == labels.loc[flagged_always, "n_views"]
    assert not labels.loc[flagged_once, "artefact_excluded"]
    assert labels.loc[flagged_once, "n_artefact_flags"] == 1
    assert pd.notna(labels.loc[flagged_once, "label"])
    assert labels["n_artefact_flags"].sum() == raw["artefact_ids"].map(len).sum()  # no flag lands elsewhere


def test_ranking_skips_invalid_records_with_file_and_line(caplog):
    slices = cohort_slices(n_scans=20)
    raw, _ = simulate_ranking_annotations(slices, seed=2)
    raw.at[0, "order"] = ["nope-00", *raw.at[0, "order"][1:]]
    raw.at[1, "divider_a"] = 7
    raw.at[1, "divider_b"] = 3
    with caplog.at_level(logging.WARNING):
        labels = aggregate_ranking(raw, slices).labels
    assert "ranking-sim.jsonl line 1: order names a slice" in caplog.text
    assert "ranking-sim.jsonl line 2: dividers out of order" in caplog.text
    assert "nope-00" not in set(labels["slice_id"])


def test_ordered_logit_recovers_planted_cut_points_and_slope():
    rng = np.random.default_rng(0)
    scores = rng.uniform(-6, 6, size=6000)
    planted_cuts, planted_slope = (-2.0, 1.5), 1.7
    probabilities = ordered_logit_probabilities(scores, planted_cuts, planted_slope)
    classes = (rng.uniform(size=len(scores))[:, None] > probabilities.cumsum(axis=1)).sum(axis=1)
    cuts, slope = fit_ordered_logit(scores, classes)
    np.testing.assert_allclose(cuts, planted_cuts, atol=0.1)
    assert slope == pytest.approx(planted_slope, rel=0.1)


def test_ordered_logit_needs_every_class():
    with pytest.raises(ValueError, match="too_apical"):
        fit_ordered_logit(np.array([0.0, 1.0, 2.0]), np.array([0, 1, 1]))


def single_frames(votes: dict[str, list[tuple[str, str | None, bool]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """votes: slice_id -> [(annotator_id, label, artefact)]; one task per vote."""
    raw, tasks = [], []
    for slice_id, slice_votes in votes.items():
        for annotator, label, artefact in slice_votes:
            task_id = f"s-{len(tasks):06d}"
            tasks.append({"task_id": task_id, "annotator_id": annotator, "slice_id": slice_id, "kind": "primary"})
            raw.append({"submission_id": f"u-{task_id}", "annotator_id": annotator, "task_id": task_id,
                        "slice_id": slice_id, "label": label, "artefact": artefact,
                        "started_at": pd.Timestamp("2026-01-01", tz="UTC"),
                        "submitted_at": pd.Timestamp("2026-01-01", tz="UTC"),
                        "source_file": "single-sim.jsonl", "line": len(raw) + 1})
    return pd.DataFrame(raw), pd.DataFrame(tasks)


def test_single_majority_ties_and_fractions():
    raw, tasks = single_frames({
        "a-00": [("e1", "too_basal", False)],
        "a-01": [("e1", "lv", False), ("e2", "lv", False), ("e3", "too_apical", False)],
        "a-02": [("e1", "too_basal", False), ("e2", "lv", False)],  # split median -> lv
        "a-03": [("e1", "lv", False), ("e2", "too_apical", False)],  # split median -> lv
        "a-04": [("e1", "too_basal", False), ("e2", "too_apical", False)],  # median lv
        "a-05": [("e1", "too_basal", False), ("e2", "too_basal", False), ("e3", "too_apical", False),
                 ("e1", "too_apical", False), ("e2", "lv", False)],  # 0,0,1,2,2 tie -> median lv
        "a-06": [("e1", "too_apical", False), ("e2", "too_apical", False), ("e3", "lv", False),
                 ("e1", "lv", False), ("e2", "too_apical", False), ("e3", "too_basal", False)],
        "a-07": [("e1", "too_basal", False), ("e2", "too_basal", False), ("e3", "lv", False),
                 ("e1", "lv", False), ("e2", "too_apical", False), ("e3", "too_apical", False)],  # 3-way: lv
    })
    labels = aggregate_single(raw, tasks).set_index("slice_id")
    assert tuple(labels.reset_index().columns) == SINGLE_COLUMNS
    assert labels["label"].to_dict() == {
        "a-00": "too_basal", "a-01": "lv", "a-02": "lv", "a-03": "lv", "a-04": "lv", "a-05": "lv",
        "a-06": "too_apical", "a-07": "lv",
    }
    assert labels.loc["a-01", ["p_too_basal", "p_lv", "p_too_apical"]].tolist() == pytest.approx([0, 2 / 3, 1 / 3])
    assert labels.loc["a-01", "n_votes"] == 3 and labels.loc["a-01", "n_annotators"] == 3


def test_single_ties_between_upper_classes_can_go_basal_side():
    raw, tasks = single_frames({"b-00": [("e1", "too_basal", False), ("e2", "too_basal", False),
                                         ("e3", "lv", False), ("e1", "lv", False), ("e2", "too_basal", False)]})
    assert aggregate_single(raw, tasks)["label"].tolist() == ["too_basal"]


def test_single_artefact_majority_excludes_and_minority_is_ignored():
    raw, tasks = single_frames({
        "c-00": [("e1", None, True), ("e2", None, True), ("e3", "lv", False)],
        "c-01": [("e1", None, True), ("e2", "too_apical", False)],
        "c-02": [("e1", "lv", True), ("e2", "too_basal", False), ("e3", "too_basal", False)],
    })
    labels = aggregate_single(raw, tasks).set_index("slice_id")
    assert labels.loc["c-00", "artefact_excluded"] and pd.isna(labels.loc["c-00", "label"])
    assert labels.loc["c-00", "n_artefact_flags"] == 2 and labels.loc["c-00", "n_views"] == 3
    assert not labels.loc["c-01", "artefact_excluded"] and labels.loc["c-01", "label"] == "too_apical"
    assert labels.loc["c-01", "n_votes"] == 1
    # a flagged vote does not count even when it carries a label
    assert labels.loc["c-02", "label"] == "too_basal" and labels.loc["c-02", "p_lv"] == 0


def test_single_skips_records_that_contradict_their_task(caplog):
    raw, tasks = single_frames({"d-00": [("e1", "lv", False), ("e2", "too_apical", False)],
                                "d-01": [("e1", "lv", False)]})
    raw.loc[1, "slice_id"] = "d-01"
    raw.loc[2, "task_id"] = "s-999999"
    with caplog.at_level(logging.WARNING):
        labels = aggregate_single(raw, tasks).set_index("slice_id")
    assert "single-sim.jsonl line 2: slice_id differs" in caplog.text
    assert "single-sim.jsonl line 3: unknown task_id" in caplog.text
    assert labels["n_votes"].to_dict() == {"d-00": 1}


def test_dawid_skene_down_weights_an_expert_whose_dividers_are_noise():
    """Three experts rate 400 items; expert 2 answers at random. Majority is fooled where expert 2
    sides with one of two disagreeing experts; the fitted confusion matrices are not."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, 400)
    items = np.repeat(np.arange(400), 3)
    raters = np.tile([0, 1, 2], 400)
    given = np.where(rng.random(1200) < 0.85, truth[items], rng.integers(0, 3, 1200))
    given[raters == 2] = rng.integers(0, 3, 400)
    votes = np.zeros((400, 3))
    np.add.at(votes, (items, given), 1.0)
    flat = np.full((400, 3), 1 / 3)
    posterior = dawid_skene(items, raters, given, (votes + 1e-3) / (votes + 1e-3).sum(1, keepdims=True),
                            fit_prior=True)
    assert (posterior.argmax(1) == truth).mean() > (votes.argmax(1) == truth).mean() + 0.02
    # an item-level prior decides where the raters leave it open, and stays put without ratings
    kept = dawid_skene(items[:0], raters[:0], given[:0], flat, fit_prior=False)
    np.testing.assert_allclose(kept, flat)


def _dawid_skene_rating_by_rating(items: np.ndarray, raters: np.ndarray, given: np.ndarray, prior: np.ndarray,
                                  fit_prior: bool, n_iter: int = 50) -> np.ndarray:
    """The textbook EM, one rating at a time: what the sparse-count version must reproduce."""
    n_raters = raters.max() + 1
    posterior, log_prior = prior.copy(), np.log(np.clip(prior, 1e-12, None))
    for _ in range(n_iter):
        counts = np.full((n_raters, 3, 3), 0.5)
        for item, rater, c in zip(items, raters, given, strict=True):
            counts[rater, :, c] += posterior[item]
        log_confusion = np.log(counts / counts.sum(axis=2, keepdims=True))
        if fit_prior:
            log_prior = np.broadcast_to(np.log(posterior.mean(axis=0) + 1e-12), prior.shape)
        log_post = log_prior.copy()
        for item, rater, c in zip(items, raters, given, strict=True):
            log_post[item] += log_confusion[rater, :, c]
        updated = np.exp(log_post - log_post.max(axis=1, keepdims=True))
        updated /= updated.sum(axis=1, keepdims=True)
        if np.abs(updated - posterior).max() < 1e-6:
            return updated
        posterior = updated
    return posterior


@pytest.mark.parametrize("fit_prior", [True, False])
def test_dawid_skene_matches_the_rating_by_rating_em(fit_prior):
    rng = np.random.default_rng(4)
    items = rng.integers(0, 60, 250)  # some items rated twice by one rater, some never
    raters = rng.integers(0, 4, 250)
    given = rng.integers(0, 3, 250)
    prior = rng.dirichlet(np.ones(3), size=70)
    np.testing.assert_allclose(dawid_skene(items, raters, given, prior, fit_prior),
                               _dawid_skene_rating_by_rating(items, raters, given, prior, fit_prior), atol=1e-12)


def test_ranking_views_and_distinct_experts_per_image():
    from cmr_assets.labelling.campaign import annotator_ids, design_ranking_batches
    from cmr_assets.labelling.simulator import SimulatorParams, reference_like_cohort, simulate_ranking_rows

    slices, reference = reference_like_cohort(40, seed=3)
    raw = simulate_ranking_rows(design_ranking_batches(slices, annotator_ids(3), seed=3), reference,
                                SimulatorParams(), seed=3)
    labels = aggregate_ranking(raw, slices).labels.set_index("slice_id")
    views = raw[["annotator_id", "order"]].explode("order")
    assert labels["n_views"].to_dict() == views["order"].value_counts().to_dict()
    assert labels["n_annotators"].to_dict() == views.groupby("order")["annotator_id"].nunique().to_dict()
    ranked = slices["slice_id"][slices["slice_id"].isin(views["order"])]
    assert labels.index.tolist() == ranked.tolist()  # slices-table order


def test_ranking_methods_on_a_simulated_campaign():
    """The default (scores as prior, each image's own dividers as Dawid-Skene evidence) beats the
    score-and-cut-points label; probabilities are distributions; an unknown method is refused."""
    from cmr_assets.labelling.campaign import annotator_ids, design_ranking_batches
    from cmr_assets.labelling.simulator import SimulatorParams, reference_like_cohort, simulate_ranking_rows
    from cmr_assets.labels.aggregation import DEFAULT_RANKING_METHOD
    from cmr_assets.labels.agreement import label_accuracy

    slices, reference = reference_like_cohort(120, seed=7)
    raw = simulate_ranking_rows(design_ranking_batches(slices, annotator_ids(3), seed=7), reference,
                                SimulatorParams(), seed=7)
    accuracy = {m: label_accuracy(aggregate_ranking(raw, slices, method=m).labels, reference)["accuracy"]
                for m in ("score_cuts", DEFAULT_RANKING_METHOD)}
    assert accuracy[DEFAULT_RANKING_METHOD] > accuracy["score_cuts"]
    labels = aggregate_ranking(raw, slices).labels
    np.testing.assert_allclose(labels[["p_too_basal", "p_lv", "p_too_apical"]].sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="unknown ranking aggregation"):
        aggregate_ranking(raw, slices, method="vote")
