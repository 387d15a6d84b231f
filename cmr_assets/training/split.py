"""Patient-level train/val/test split, stratified by each scan's class mix.

Why by scan: slices of one scan are strongly correlated, so a slice-level split would leak a
patient's anatomy from training into test and inflate every metric. Why stratified: scans differ in
how many slices are LV versus too basal / too apical (coverage, slice spacing), and both models
must be compared on a test set with the same class mix as training.

Method (documented for the closing note): scans are sorted by scan_id (so the result does not depend
on row order), binned by LV fraction (quantile bins) and by number of labelled slices (quantile
bins), shuffled within each bin with a seeded generator, and then dealt out in bin order by
"largest deficit" systematic allocation: each scan goes to the split furthest below its target
share so far. Every bin thus receives the target fractions up to rounding, and the split sizes are
exactly the largest-remainder rounding of ``fractions * n_scans`` (each split with a positive
fraction gets at least one scan when there are enough scans).

Public API:
- ``SPLITS = ("train", "val", "test")``
- ``split_by_scan(scan_class_mix, fractions=(0.6, 0.2, 0.2), seed=0) -> DataFrame(scan_id, split)``
- ``split_group_of_scan(scans) -> Series``: each scan's split unit from the ``scans`` table: its
  ``patient_group`` (keyed hash of the PatientID), else its ``study_key``, else the scan itself;
  tables from before either column still work.
- ``split_new_scans_by_group(scan_class_mix, group_of_scan, existing, fractions, seed)``: the same
  as ``split_by_scan``, with every scan of one group (one patient) in the split of its group.
- ``class_mix_from_labels(labels) -> DataFrame(scan_id, too_basal, lv, too_apical)``: per-scan
  counts from a slice-level label table (columns ``scan_id``, ``label``), the usual input of
  ``split_by_scan``.
- ``assign_labelled_scans(slices, labels, existing, scans, fractions, seed) -> SplitUpdate``: what
  the ``dataset_split`` asset appends: the scans not yet in the split that have a label, assigned by
  ``split_new_scans_by_group``; scans without a label wait.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pandas as pd

from cmr_assets.domain import CLASS_INDEX, CLASS_NAMES, N_CLASSES

SPLITS: Final[tuple[str, ...]] = ("train", "val", "test")
_N_LV_BINS: Final[int] = 4
_N_SIZE_BINS: Final[int] = 3


def class_mix_from_labels(labels: pd.DataFrame) -> pd.DataFrame:
    """Count labelled slices per scan and class from columns ``scan_id`` and ``label`` (int class)."""
    missing = {"scan_id", "label"} - set(labels.columns)
    if missing:
        raise ValueError(f"labels table lacks column(s) {sorted(missing)}")
    bad = ~labels["label"].isin(range(N_CLASSES))
    if bad.any():
        raise ValueError(f"labels table has {int(bad.sum())} label(s) outside 0..{N_CLASSES - 1}")
    counts = pd.crosstab(labels["scan_id"], labels["label"]).reindex(columns=range(N_CLASSES), fill_value=0)
    counts.columns = list(CLASS_NAMES)
    return counts.reset_index().rename_axis(columns=None)


def _validated_mix(scan_class_mix: pd.DataFrame) -> pd.DataFrame:
    missing = {"scan_id", *CLASS_NAMES} - set(scan_class_mix.columns)
    if missing:
        raise ValueError(f"scan_class_mix lacks column(s) {sorted(missing)}; expected scan_id, {CLASS_NAMES}")
    mix = scan_class_mix[["scan_id", *CLASS_NAMES]].copy()
    duplicated = mix["scan_id"][mix["scan_id"].duplicated()]
    if not duplicated.empty:
        raise ValueError(f"scan_class_mix has duplicate scan_id(s): {sorted(duplicated.unique())[:5]}")
    values = mix[list(CLASS_NAMES)].to_numpy(dtype=float)
    invalid_rows = ~np.isfinite(values).all(axis=1) | (values < 0).any(axis=1) | (values.sum(axis=1) <= 0)
    if invalid_rows.any():
        bad_ids = mix["scan_id"][invalid_rows].tolist()[:5]
        raise ValueError(f"scan(s) {bad_ids} have negative, missing or all-zero class counts")
    return mix.sort_values("scan_id", kind="stable").reset_index(drop=True)


def _split_sizes(n_scans: int, fractions: np.ndarray) -> np.ndarray:
    """Largest-remainder rounding, then give each positive-fraction split at least one scan."""
    exact = fractions * n_scans
    sizes: np.ndarray = np.floor(exact).astype(int)
    order = np.argsort(-(exact - sizes), kind="stable")
    sizes[order[: n_scans - sizes.sum()]] += 1
    for i in np.flatnonzero((sizes == 0) & (fractions > 0)):
        donor = int(np.argmax(sizes))
        if sizes[donor] > 1:
            sizes[donor] -= 1
            sizes[i] += 1
    return sizes


def _quantile_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    if len(np.unique(values)) <= 1:
        return np.zeros(len(values), dtype=int)
    ranks: np.ndarray = pd.Series(values).rank(method="average", pct=True).to_numpy()
    bins: np.ndarray = np.minimum((ranks * n_bins).astype(int), n_bins - 1)
    return bins


def split_by_scan(
    scan_class_mix: pd.DataFrame, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0
) -> pd.DataFrame:
    """Assign every scan to exactly one of train/val/test, stratified by class mix; deterministic.

    ``scan_class_mix`` has ``scan_id`` and one column per class name (counts or fractions; counts also
    stratify by number of labelled slices). Returns ``DataFrame(scan_id, split)`` sorted by scan_id.
    """
    fractions_arr = np.asarray(fractions, dtype=float)
    if fractions_arr.shape != (len(SPLITS),) or (fractions_arr < 0).any() or fractions_arr.sum() <= 0:
        raise ValueError(f"fractions must be three non-negative numbers for {SPLITS}, got {fractions!r}")
    fractions_arr = fractions_arr / fractions_arr.sum()
    mix = _validated_mix(scan_class_mix)
    if mix.empty:
        return pd.DataFrame({"scan_id": pd.Series(dtype=object), "split": pd.Series(dtype=object)})

    values = mix[list(CLASS_NAMES)].to_numpy(dtype=float)
    totals = values.sum(axis=1)
    lv_bin = _quantile_bins(values[:, CLASS_NAMES.index("lv")] / totals, _N_LV_BINS)
    size_bin = _quantile_bins(totals, _N_SIZE_BINS)
    shuffle_key = np.random.default_rng(seed).random(len(mix))
    order = np.lexsort((shuffle_key, size_bin, lv_bin))

    sizes = _split_sizes(len(mix), fractions_arr)
    assigned = np.zeros(len(SPLITS), dtype=int)
    split_of = np.empty(len(mix), dtype=object)
    for step, row in enumerate(order, start=1):
        deficit = sizes * step / len(mix) - assigned
        deficit[assigned >= sizes] = -np.inf
        chosen = int(np.argmax(deficit))
        assigned[chosen] += 1
        split_of[row] = SPLITS[chosen]
    return pd.DataFrame({"scan_id": mix["scan_id"].to_numpy(), "split": split_of})


def split_group_of_scan(scans: pd.DataFrame) -> pd.Series:
    """scan_id -> split unit: patient group, else study key, else None (the scan is its own unit)."""
    if scans.empty:
        return pd.Series(dtype=object)
    group = pd.Series(None, index=scans["scan_id"].to_numpy(), dtype=object)
    for column in ("study_key", "patient_group"):  # later columns take precedence where present
        if column in scans.columns:
            values = scans[column].to_numpy(dtype=object)
            present = pd.notna(values) & (values != "")
            group[present] = values[present]
    return group.astype(object).where(group.notna(), None)


def _groups(scan_ids: pd.Series, group_of_scan: pd.Series) -> np.ndarray:
    """The group of each scan; a scan without one is its own group."""
    group = scan_ids.map(group_of_scan).fillna("").astype(str)
    groups: np.ndarray = group.where(group != "", "scan:" + scan_ids.astype(str)).to_numpy()
    return groups


def split_new_scans_by_group(scan_class_mix: pd.DataFrame, group_of_scan: pd.Series, existing: pd.DataFrame,
                             fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0) -> pd.DataFrame:
    """Assign new scans so that all scans of one group (patient) share a split (no patient on both sides).

    ``group_of_scan`` maps scan_id -> group (missing or empty: the scan is its own group);
    ``existing`` holds earlier assignments (scan_id, split), which never change. A new scan of a
    group that already has a split follows it; the remaining groups are split as units by
    ``split_by_scan`` on their summed class mix. Returns ``DataFrame(scan_id, split)`` for the scans
    of ``scan_class_mix``, sorted by scan_id.
    """
    mix = _validated_mix(scan_class_mix)
    mix = mix.assign(group=_groups(mix["scan_id"], group_of_scan))
    known = existing.assign(group=_groups(existing["scan_id"], group_of_scan)) if len(existing) else \
        pd.DataFrame(columns=["scan_id", "split", "group"])
    group_split = known.drop_duplicates("group").set_index("group")["split"]
    follows = mix["group"].isin(group_split.index)
    fresh = mix[~follows].groupby("group", as_index=False)[list(CLASS_NAMES)].sum()
    by_group = split_by_scan(fresh.rename(columns={"group": "scan_id"}), fractions, seed)
    group_split = pd.concat([group_split, by_group.set_index("scan_id")["split"]])
    out = pd.DataFrame({"scan_id": mix["scan_id"], "split": mix["group"].map(group_split).to_numpy()})
    return out.sort_values("scan_id", ignore_index=True)


@dataclass(frozen=True)
class SplitUpdate:
    """Scans newly assigned to a split (rows to append: scan_id, split; empty when none) and how many
    scans not yet in the split still wait for their first label."""

    assigned: pd.DataFrame
    new_scans: list[str]
    waiting: int


def assign_labelled_scans(slices: pd.DataFrame, labels: pd.DataFrame, existing: pd.DataFrame,
                          scans: pd.DataFrame, fractions: Sequence[float] = (0.6, 0.2, 0.2),
                          seed: int = 0) -> SplitUpdate:
    """The scans of ``slices`` (slice_id, scan_id) not in ``existing`` (scan_id, split) that have at
    least one label in ``labels`` (slice_id, label as class name), assigned by
    ``split_new_scans_by_group`` with the patient groups of ``scans``; stratified by the class mix
    of their labels. Earlier assignments never change; a scan without a label waits (its class mix
    is not known yet)."""
    unassigned = set(slices["scan_id"]) - set(existing.get("scan_id", []))
    labelled = slices.merge(labels.dropna(subset=["label"]), on="slice_id") if len(labels) else \
        slices.iloc[0:0].assign(label=pd.Series(dtype=object))
    new_scans = sorted(unassigned & set(labelled["scan_id"]))
    waiting = len(unassigned) - len(new_scans)
    if not new_scans:
        return SplitUpdate(pd.DataFrame(columns=["scan_id", "split"]), [], waiting)
    labelled = labelled.assign(label=labelled["label"].map(CLASS_INDEX))
    mix = class_mix_from_labels(labelled[labelled["scan_id"].isin(new_scans)])
    assigned = split_new_scans_by_group(mix, split_group_of_scan(scans), existing, fractions, seed)
    return SplitUpdate(assigned, new_scans, waiting)
