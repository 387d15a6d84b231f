import itertools
import logging

import numpy as np
import pandas as pd
import pytest

from cmr_assets.labels.monotone import apply_monotone, enforce_monotone, is_monotone


def one_hot(labels: list[int], confidence: float = 0.8) -> np.ndarray:
    probabilities = np.full((len(labels), 3), (1 - confidence) / 2)
    probabilities[np.arange(len(labels)), labels] = confidence
    return probabilities


def log_probability(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.log(probabilities[np.arange(len(labels)), labels]).sum())


def test_repairs_planted_violations():
    assert enforce_monotone(one_hot([0, 0, 1, 2, 1, 1, 1, 2, 2])).tolist() == [0, 0, 1, 1, 1, 1, 1, 2, 2]
    assert enforce_monotone(one_hot([1, 0, 0, 0, 1, 1, 2])).tolist() == [0, 0, 0, 0, 1, 1, 2]
    # a confident outlier wins over weak neighbours
    probabilities = one_hot([0, 1, 1, 1], confidence=0.4)
    probabilities[0] = [0.01, 0.01, 0.98]
    assert enforce_monotone(probabilities).tolist() == [2, 2, 2, 2]


def test_leaves_monotone_inputs_alone():
    for labels in ([0, 0, 1, 1, 2], [1, 1, 1], [2], [0, 2, 2]):
        assert enforce_monotone(one_hot(labels)).tolist() == labels
    assert enforce_monotone(np.zeros((0, 3))).tolist() == []


def test_matches_brute_force_on_random_inputs():
    rng = np.random.default_rng(0)
    for _ in range(150):
        n = int(rng.integers(1, 8))
        probabilities = rng.dirichlet(np.ones(3) * 0.7, size=n)
        result = enforce_monotone(probabilities)
        assert is_monotone(result)
        best = max(
            log_probability(probabilities, np.array(labels))
            for labels in itertools.product(range(3), repeat=n)
            if is_monotone(labels)
        )
        assert log_probability(probabilities, result) == pytest.approx(best)


def test_rejects_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        enforce_monotone(np.ones((4, 2)))


def labels_table(rows: list[tuple[str, str | None, tuple[float, float, float], bool]]) -> pd.DataFrame:
    return pd.DataFrame({
        "slice_id": [r[0] for r in rows],
        "label": [r[1] for r in rows],
        "p_too_basal": [r[2][0] for r in rows],
        "p_lv": [r[2][1] for r in rows],
        "p_too_apical": [r[2][2] for r in rows],
        "artefact_excluded": [r[3] for r in rows],
    })


def test_apply_monotone_per_scan_with_single_votes_and_exclusions(caplog):
    slices = pd.DataFrame({
        "slice_id": [f"x-{i:02d}" for i in range(5)] + [f"y-{i:02d}" for i in range(3)],
        "scan_id": ["x"] * 5 + ["y"] * 3,
        "slice_from_base": list(range(5)) + list(range(3)),
    })
    one = {"too_basal": (1.0, 0.0, 0.0), "lv": (0.0, 1.0, 0.0), "too_apical": (0.0, 0.0, 1.0)}
    rows = [  # shuffled rows; scan x has an apical vote amid LV and an excluded slice
        ("x-03", "lv", one["lv"], False),
        ("x-00", "too_basal", one["too_basal"], False),
        ("x-02", "too_apical", (0.0, 1 / 3, 2 / 3), False),
        ("x-01", None, (np.nan, np.nan, np.nan), True),
        ("x-04", "lv", one["lv"], False),
        ("y-00", "lv", (0.5, 0.5, 0.0), False),  # a tie labelled lv: monotone scan stays as is
        ("y-01", "lv", one["lv"], False),
        ("y-02", "too_apical", one["too_apical"], False),
        ("z-00", "lv", one["lv"], False),  # unknown slice
    ]
    with caplog.at_level(logging.WARNING):
        result = apply_monotone(labels_table(rows), slices).set_index("slice_id")
    assert result["label_monotone"].to_dict() == {
        "x-03": "lv", "x-00": "too_basal", "x-02": "lv", "x-01": None, "x-04": "lv",
        "y-00": "lv", "y-01": "lv", "y-02": "too_apical", "z-00": None,
    }
    assert result.loc["x-02", "label"] == "too_apical"  # the original column is kept
    assert "z-00" in caplog.text


def test_apply_monotone_many_scans_of_different_lengths_matches_per_scan_repair():
    rng = np.random.default_rng(1)
    rows, slice_rows, expected = [], [], {}
    for scan in range(25):
        n = int(rng.integers(1, 12))
        probabilities = rng.dirichlet(np.ones(3), size=n)
        labels = probabilities.argmax(axis=1)
        smoothed = (probabilities + 0.05) / 1.15
        repaired = labels if is_monotone(labels) else enforce_monotone(smoothed)
        for i in range(n):
            slice_id = f"s{scan:02d}-{i:02d}"
            slice_rows.append({"slice_id": slice_id, "scan_id": f"s{scan:02d}", "slice_from_base": i})
            rows.append((slice_id, ("too_basal", "lv", "too_apical")[labels[i]], tuple(probabilities[i]), False))
            expected[slice_id] = ("too_basal", "lv", "too_apical")[repaired[i]]
    table = labels_table(rows).sample(frac=1, random_state=0)
    result = apply_monotone(table, pd.DataFrame(slice_rows)).set_index("slice_id")
    assert result["label_monotone"].to_dict() == expected
