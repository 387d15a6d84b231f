"""Assemble training, validation and test sets from the slice store, the split and a labels table.

Pure functions over DataFrames and arrays so tests can build tiny stores by hand.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cmr_assets.domain import CLASS_INDEX, CLASS_NAMES

PROBABILITY_COLUMNS = [f"p_{name}" for name in CLASS_NAMES]


def load_slice_images(root: Path, slices: pd.DataFrame) -> np.ndarray:
    """uint8 `(N, 128, 128)` images for the rows of `slices` (columns array_path, array_index), in row order.

    Each scan's array file is read once.
    """
    if slices.empty:
        return np.zeros((0, 128, 128), dtype=np.uint8)
    out: np.ndarray | None = None
    positions = np.arange(len(slices))
    for array_path, rows in slices.assign(_row=positions).groupby("array_path", sort=False):
        stack = np.load(root / array_path, mmap_mode="r")
        if out is None:
            out = np.empty((len(slices), *stack.shape[1:]), dtype=np.uint8)
        out[rows["_row"].to_numpy()] = stack[rows["array_index"].to_numpy()]
    if out is None:  # every array_path missing (NaN): groupby yields no group
        raise ValueError("slices: no row names an array_path")
    return out


def labelled_rows(slices: pd.DataFrame, split: pd.DataFrame, labels: pd.DataFrame, which: str,
                  label_column: str = "label") -> pd.DataFrame:
    """Slices of one split with a usable label from `labels` (artefact-excluded and unlabelled ones dropped).

    Adds `target` (class index) and keeps the class-probability columns for soft-label training.
    """
    scans = split.loc[split["split"] == which, "scan_id"]
    keep = labels[labels[label_column].notna() & ~labels["artefact_excluded"].astype(bool)]
    rows = slices[slices["scan_id"].isin(scans)].merge(
        keep[["slice_id", label_column, *PROBABILITY_COLUMNS]], on="slice_id")
    rows = rows.sort_values("slice_id", ignore_index=True)
    rows["target"] = rows[label_column].map(CLASS_INDEX).astype("int64")
    return rows


def evaluation_rows(slices: pd.DataFrame, split: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """The common test set: test-split slices with a reference label; artefact slices excluded, as in the paper."""
    scans = split.loc[split["split"] == "test", "scan_id"]
    ref = reference[~reference["artefact"].astype(bool)][["slice_id", "label"]]
    rows = slices[slices["scan_id"].isin(scans)].merge(ref, on="slice_id").sort_values("slice_id", ignore_index=True)
    rows["target"] = rows["label"].map(CLASS_INDEX).astype("int64")
    return rows


def frame_hash(frame: pd.DataFrame, columns: list[str]) -> str:
    """A short content hash of some columns (row order independent), for lineage params and tags."""
    rows = frame[columns].astype(str).agg("|".join, axis=1).sort_values()
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()[:16]


SOFT_LABEL_DECIMALS = 2


def label_hash(train: pd.DataFrame, val: pd.DataFrame, soft_labels: bool = False) -> str:
    """What a model learns from (train + val slice ids and targets, and the class probabilities
    when it trains on soft labels, to `SOFT_LABEL_DECIMALS`): logged with every model, and compared
    by the sensor and nightly schedule to decide whether labels changed since the champion."""
    rows = pd.concat([train, val])
    if not soft_labels:
        return frame_hash(rows, ["slice_id", "target"])
    rounded = rows[PROBABILITY_COLUMNS].astype(float).round(SOFT_LABEL_DECIMALS) + 0.0  # -0.0 -> 0.0
    return frame_hash(rows[["slice_id", "target"]].join(rounded), ["slice_id", "target", *PROBABILITY_COLUMNS])


def array_hash(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainingRows:
    """What one strategy's model trains and selects its epoch on, with the hashes that identify them:
    `label_hash` (train + val slice ids and targets, see `label_hash`) and `split_hash` (the whole
    split), both logged with the model and compared to decide whether to retrain."""

    train: pd.DataFrame
    val: pd.DataFrame
    label_hash: str
    split_hash: str


def training_rows(slices: pd.DataFrame, split: pd.DataFrame, labels: pd.DataFrame, label_column: str = "label",
                  soft_labels: bool = False) -> TrainingRows:
    """The train and val rows of one labels table (`labelled_rows`) and their hashes."""
    train = labelled_rows(slices, split, labels, "train", label_column)
    val = labelled_rows(slices, split, labels, "val", label_column)
    return TrainingRows(train, val, label_hash(train, val, soft_labels), frame_hash(split, ["scan_id", "split"]))
