import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from benchmarks.ranking import simulate_rankings
from cmr_assets.domain import CLASS_NAMES
from cmr_assets.labels.agreement import (
    AGREEMENT_COLUMNS,
    agreement_table,
    cohen_kappa,
    label_accuracy,
    ranking_agreement,
    single_agreement,
)

EXPERTS = ("sim-expert-1", "sim-expert-2", "sim-expert-3")


def test_cohen_kappa_matches_sklearn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.integers(0, 3, size=60)
        b = np.where(rng.uniform(size=60) < 0.7, a, rng.integers(0, 3, size=60))
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert np.isnan(cohen_kappa([], []))


def simulate_single(n_slices: int = 240, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Primary tasks spread over experts; every 4th slice repeated by the same expert, every 3rd
    slice labelled by the two other experts; experts err with probability 0.15-0.3."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, size=n_slices)
    tasks, raw = [], []

    def add(slice_index: int, annotator: str, kind: str, error: float) -> None:
        task_id = f"s-{len(tasks):06d}"
        slice_id = f"scan-{slice_index:03d}"
        label = int(truth[slice_index]) if rng.uniform() > error else int(rng.integers(0, 3))
        artefact = bool(rng.uniform() < 0.03)
        tasks.append({"task_id": task_id, "annotator_id": annotator, "slice_id": slice_id, "kind": kind})
        raw.append({"submission_id": f"u-{task_id}", "annotator_id": annotator, "task_id": task_id,
                    "slice_id": slice_id, "label": None if artefact else CLASS_NAMES[label],
                    "artefact": artefact, "started_at": pd.Timestamp("2026-01-01", tz="UTC"),
                    "submitted_at": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(seconds=len(raw)),
                    "source_file": "single.jsonl", "line": len(raw) + 1})

    for i in range(n_slices):
        expert = EXPERTS[i % 3]
        add(i, expert, "primary", 0.15)
        if i % 4 == 0:
            add(i, expert, "intra_repeat", 0.15)
        if i % 3 == 0:
            for other in EXPERTS:
                if other != expert:
                    add(i, other, "inter_repeat", 0.3)
    return pd.DataFrame(raw), pd.DataFrame(tasks)


def usable(raw: pd.DataFrame) -> pd.DataFrame:
    return raw.loc[~raw["artefact"]]


def test_single_agreement_pairs_and_kappas_match_sklearn():
    raw, tasks = simulate_single()
    result = single_agreement(raw, tasks)
    merged = usable(raw).merge(tasks[["task_id", "kind"]], on="task_id")
    primary = merged.loc[merged["kind"] == "primary"].set_index("slice_id")["label"]
    repeats = merged.loc[merged["kind"] == "intra_repeat"]
    repeats = repeats.loc[repeats["slice_id"].isin(primary.index)]
    assert result["n_intra_pairs"] == len(repeats)
    assert result["kappa_intra"] == pytest.approx(
        cohen_kappa_score(repeats["label"], primary[repeats["slice_id"]].to_numpy()))

    first = merged.loc[merged["kind"] != "intra_repeat"]
    expected_a, expected_b = [], []
    for _, group in first.groupby("slice_id"):
        by_expert = group.set_index("annotator_id")["label"].sort_index()
        for i in range(len(by_expert)):
            for j in range(i + 1, len(by_expert)):
                expected_a.append(by_expert.iloc[i])
                expected_b.append(by_expert.iloc[j])
    assert result["n_inter_pairs"] == len(expected_a) > 100
    assert result["kappa_inter"] == pytest.approx(cohen_kappa_score(expected_a, expected_b))
    assert result["kappa_intra"] > result["kappa_inter"]  # repeats are less noisy by design
    assert sum(pair["n"] for pair in result["inter_per_expert_pair"].values()) == result["n_inter_pairs"]


def ranking_frame(orders: list[list[str]], annotators: list[str], batches: list[str]) -> pd.DataFrame:
    n = len(orders)
    return pd.DataFrame({
        "submission_id": [f"u{i}" for i in range(n)], "annotator_id": annotators, "batch_id": batches,
        "order": orders, "divider_a": 2, "divider_b": 6, "artefact_ids": [[] for _ in range(n)],
        "started_at": pd.Timestamp("2026-01-01", tz="UTC"), "submitted_at": pd.Timestamp("2026-01-01", tz="UTC"),
        "source_file": "ranking.jsonl", "line": range(1, n + 1),
    })


def test_ranking_agreement_on_shared_batches():
    order = [f"i{k}" for k in range(8)]
    swapped = [*order[:6], order[7], order[6]]  # one discordant pair out of 28
    raw = ranking_frame([order, order, swapped, order[::-1], order[::-1]],
                        ["e1", "e2", "e3", "e1", "e1"], ["b1", "b1", "b1", "b2", "b3"])
    result = ranking_agreement(raw)
    assert result["method"] == "shared_batches" and result["n"] == 3  # b1: 3 expert pairs
    assert result["kendall_tau"] == pytest.approx((1 + 2 * (1 - 2 / 28)) / 3)


def test_ranking_agreement_from_separate_fits_when_no_batch_is_shared():
    true_scores = np.random.default_rng(0).normal(size=160)
    ids = np.array([f"img{k:03d}" for k in range(160)])
    orders, annotators = [], []
    for e, expert in enumerate(EXPERTS):
        rankings = simulate_rankings(true_scores, 120, seed=10 + e)
        orders += [list(ids[row]) for row in rankings]
        annotators += [expert] * len(rankings)
    raw = ranking_frame(orders, annotators, [f"b{k}" for k in range(len(orders))])
    result = ranking_agreement(raw)
    assert result["method"] == "separate_fits" and len(result["detail"]) == 3
    assert 0.5 < result["kendall_tau"] < 1.0
    assert result["n"] == sum(pair["n_shared_images"] for pair in result["detail"].values())


def test_label_accuracy_counts_only_labelled_non_excluded_images():
    labels = pd.DataFrame({
        "slice_id": ["a", "b", "c", "d", "e", "f"],
        "label": ["lv", "lv", "too_basal", None, "too_apical", "lv"],
        "artefact_excluded": [False, False, False, True, True, False],
    })
    reference = pd.DataFrame({"slice_id": ["a", "b", "c", "d", "e", "f"],
                              "label": ["lv", "too_apical", "too_basal", "lv", "lv", None],
                              "position01": 0.5, "artefact": False})
    result = label_accuracy(labels, reference)
    assert result["n"] == 3 and result["accuracy"] == pytest.approx(2 / 3)
    assert result["confusion"] == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]  # rows = truth


def test_agreement_table_rows_for_duckdb():
    raw_single, tasks = simulate_single(60)
    order = [f"i{k}" for k in range(8)]
    raw_ranking = ranking_frame([order, order], ["e1", "e2"], ["b1", "b1"])
    labels = pd.DataFrame({"slice_id": ["scan-000"], "label": ["lv"], "artefact_excluded": [False],
                           "label_monotone": ["lv"]})
    reference = pd.DataFrame({"slice_id": ["scan-000"], "label": ["lv"], "position01": 0.5, "artefact": False})
    table = agreement_table(raw_single, tasks, raw_ranking, {"ranking": labels}, reference)
    assert tuple(table.columns) == AGREEMENT_COLUMNS
    assert table["metric"].tolist() == ["kappa_intra", "kappa_inter", "kendall_tau_ranking",
                                        "label_accuracy_ranking", "label_accuracy_ranking_monotone"]
    assert table.set_index("metric").loc["kendall_tau_ranking", "value"] == pytest.approx(1.0)
    assert json.loads(table.set_index("metric").loc["label_accuracy_ranking", "detail"])["confusion"][1][1] == 1
    without_reference = agreement_table(raw_single, tasks, raw_ranking, {"ranking": labels})
    assert len(without_reference) == 3


def test_kappa_interval_resamples_slices_and_narrows_with_more_of_them():
    from cmr_assets.labels.agreement import kappa_bootstrap_ci

    rng = np.random.default_rng(0)

    def interval(n: int) -> tuple[float, float]:
        a = rng.integers(0, 3, n)
        b = np.where(rng.random(n) < 0.8, a, rng.integers(0, 3, n))
        low, high = kappa_bootstrap_ci(a, b, np.arange(n))
        assert low <= cohen_kappa(a, b) <= high
        return low, high

    small, large = interval(60), interval(2000)
    assert large[1] - large[0] < small[1] - small[0]
    assert kappa_bootstrap_ci(np.array([0, 1]), np.array([0, 1]), np.array(["s", "s"])) is None
