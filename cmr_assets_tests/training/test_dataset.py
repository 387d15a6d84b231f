"""Training rows of one labels table: the train and val rows and the hashes logged with the model."""

from __future__ import annotations

import pandas as pd

from cmr_assets.training.dataset import frame_hash, label_hash, labelled_rows, training_rows


def test_training_rows_are_the_labelled_rows_of_train_and_val_with_their_hashes() -> None:
    slices = pd.DataFrame({"slice_id": [f"s{i}" for i in range(6)], "scan_id": ["a", "a", "b", "b", "c", "c"],
                           "array_path": ["x.npy"] * 6, "array_index": range(6)})
    split = pd.DataFrame({"scan_id": ["a", "b", "c"], "split": ["train", "val", "test"]})
    labels = pd.DataFrame({"slice_id": [f"s{i}" for i in range(6)],
                           "label": ["too_basal", "lv", "lv", None, "lv", "too_apical"],
                           "artefact_excluded": [False, True, False, False, False, False],
                           "p_too_basal": 0.2, "p_lv": 0.6, "p_too_apical": 0.2})
    rows = training_rows(slices, split, labels)
    assert rows.train["slice_id"].tolist() == ["s0"] and rows.val["slice_id"].tolist() == ["s2"]
    assert rows.train.equals(labelled_rows(slices, split, labels, "train"))
    assert rows.label_hash == label_hash(rows.train, rows.val)
    assert rows.split_hash == frame_hash(split, ["scan_id", "split"])
    assert training_rows(slices, split, labels, soft_labels=True).label_hash != rows.label_hash
