"""Scan-level split: deterministic, no scan in two splits, sizes and class mix as asked."""

import numpy as np
import pandas as pd
import pytest

from cmr_assets.training.split import SPLITS, assign_labelled_scans, class_mix_from_labels, split_by_scan


def _cohort(n_scans: int, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n_slices = rng.integers(8, 16, n_scans)
    basal = rng.integers(1, 4, n_scans)
    apical = rng.integers(0, 3, n_scans)
    return pd.DataFrame({
        "scan_id": [f"{i:016x}" for i in rng.permutation(10_000)[:n_scans]],
        "too_basal": basal,
        "lv": n_slices - basal - apical,
        "too_apical": apical,
    })


def test_same_seed_same_split_whatever_the_row_order() -> None:
    cohort = _cohort(60)
    first = split_by_scan(cohort, seed=3)
    shuffled = split_by_scan(cohort.sample(frac=1, random_state=0), seed=3)
    pd.testing.assert_frame_equal(first, shuffled)
    assert not first.equals(split_by_scan(cohort, seed=4))


def test_every_scan_in_exactly_one_split_with_the_asked_sizes() -> None:
    cohort = _cohort(101)
    split = split_by_scan(cohort, fractions=(0.6, 0.2, 0.2), seed=0)
    assert sorted(split["scan_id"]) == sorted(cohort["scan_id"])
    assert split["scan_id"].is_unique
    assert split["split"].value_counts().to_dict() == {"train": 61, "val": 20, "test": 20}


def test_each_lv_fraction_stratum_is_spread_over_the_splits() -> None:
    cohort = _cohort(200, seed=7)
    split = split_by_scan(cohort, seed=0).merge(cohort, on="scan_id")
    lv_fraction = split["lv"] / split[["too_basal", "lv", "too_apical"]].sum(axis=1)
    quartile = pd.qcut(lv_fraction.rank(method="first"), 4, labels=False)
    shares = pd.crosstab(quartile, split["split"], normalize="index")
    assert (shares["train"] - 0.6).abs().max() < 0.05
    assert (shares[["val", "test"]] - 0.2).abs().to_numpy().max() < 0.05
    per_split_mean = lv_fraction.groupby(split["split"]).mean()
    assert per_split_mean.max() - per_split_mean.min() < 0.02


def test_tiny_cohort_still_fills_every_split() -> None:
    split = split_by_scan(_cohort(3), seed=0)
    assert sorted(split["split"]) == sorted(SPLITS)


@pytest.mark.parametrize(
    ("table", "fractions", "message"),
    [
        (_cohort(5).drop(columns="lv"), (0.6, 0.2, 0.2), "lacks column"),
        (pd.concat([_cohort(4), _cohort(4).head(1)]), (0.6, 0.2, 0.2), "duplicate scan_id"),
        (_cohort(4).assign(lv=0, too_basal=0, too_apical=0), (0.6, 0.2, 0.2), "all-zero"),
        (_cohort(4), (0.5, 0.5), "three non-negative"),
    ],
)
def test_bad_input_is_named(table: pd.DataFrame, fractions: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_by_scan(table, fractions=fractions)


def test_class_mix_from_slice_labels() -> None:
    labels = pd.DataFrame({"scan_id": ["a", "a", "a", "b", "b"], "label": [0, 1, 1, 1, 2]})
    mix = class_mix_from_labels(labels)
    assert mix.to_dict("records") == [
        {"scan_id": "a", "too_basal": 1, "lv": 2, "too_apical": 0},
        {"scan_id": "b", "too_basal": 0, "lv": 1, "too_apical": 1},
    ]
    with pytest.raises(ValueError, match="outside 0..2"):
        class_mix_from_labels(labels.assign(label=[0, 1, 5, 1, 2]))


def test_scans_of_one_study_share_a_split_and_new_ones_follow_it():
    from cmr_assets.training.split import split_new_scans_by_group

    scans = [f"s{k:02d}" for k in range(30)]
    mix = pd.DataFrame({"scan_id": scans, "too_basal": 1, "lv": [8 + k % 3 for k in range(30)], "too_apical": 1})
    study = pd.Series({s: f"study{k // 2}" for k, s in enumerate(scans)})  # two cines per study
    study["s29"] = None  # no study key: its own study
    first = split_new_scans_by_group(mix[mix["scan_id"] < "s20"], study, pd.DataFrame(columns=["scan_id", "split"]))
    assert first.groupby(first["scan_id"].map(study))["split"].nunique().max() == 1
    assert set(first["split"]) == {"train", "val", "test"}
    later = split_new_scans_by_group(mix[mix["scan_id"] >= "s20"], study, first)
    assert later.groupby(later["scan_id"].map(study).fillna("own"))["split"].nunique().max() == 1
    # a scan whose study already has a split follows it
    extra = pd.DataFrame({"scan_id": ["s99"], "too_basal": [1], "lv": [9], "too_apical": [1]})
    follow = split_new_scans_by_group(extra, pd.concat([study, pd.Series({"s99": "study3"})]), first)
    assert follow["split"].iloc[0] == first.set_index("scan_id").loc["s06", "split"]


def test_split_group_is_the_patient_then_the_study_then_the_scan():
    from cmr_assets.training.split import split_group_of_scan

    scans = pd.DataFrame({"scan_id": ["a", "b", "c", "d"], "study_key": ["st1", "st2", None, None],
                          "patient_group": ["p1", None, "", None]})
    assert split_group_of_scan(scans).to_dict() == {"a": "p1", "b": "st2", "c": None, "d": None}
    old = scans[["scan_id", "study_key"]]  # a database from before patient_group
    assert split_group_of_scan(old).to_dict() == {"a": "st1", "b": "st2", "c": None, "d": None}
    assert split_group_of_scan(scans[["scan_id"]]).isna().all()


def test_assign_labelled_scans_adds_labelled_scans_and_keeps_the_rest_waiting() -> None:
    slices = pd.DataFrame({"slice_id": [f"s{i}" for i in range(8)],
                           "scan_id": ["a", "a", "b", "b", "c", "c", "d", "d"]})
    labels = pd.DataFrame({"slice_id": ["s0", "s1", "s2", "s3", "s4", "s5", "s6"],
                           "label": ["too_basal", "lv", "lv", "too_apical", "lv", "lv", None]})
    existing = pd.DataFrame({"scan_id": ["a"], "split": ["test"]})
    scans = pd.DataFrame({"scan_id": ["a", "b", "c", "d"]})
    update = assign_labelled_scans(slices, labels, existing, scans, (0.5, 0.5, 0.0), seed=0)
    assert update.new_scans == ["b", "c"] and update.waiting == 1  # d has no label yet; a kept its split
    assert sorted(update.assigned["scan_id"]) == ["b", "c"] and set(update.assigned["split"]) <= set(SPLITS)

    nothing = assign_labelled_scans(slices, labels.iloc[0:0], existing, scans)
    assert nothing.new_scans == [] and nothing.waiting == 3 and nothing.assigned.empty
