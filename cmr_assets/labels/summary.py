"""What a labels table holds, in figures: its class mix, whether that mix is plausible for
short-axis stacks, and the counts the label assets report. Pure of Dagster: DataFrames in,
dicts and a dataclass out."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from cmr_assets.domain import CLASS_NAMES

# Share of labelled slices per class that a short-axis cohort plausibly has (inclusive bounds);
# outside them the labels are more likely broken than the cohort unusual.
CLASS_MIX_BOUNDS: dict[str, tuple[float, float]] = {"too_basal": (0.02, 0.4), "lv": (0.3, 0.95),
                                                    "too_apical": (0.02, 0.4)}
CLASS_MIX_BOUNDS_TEXT = ", ".join(f"{name} {100 * low:g}-{100 * high:g}%"
                                  for name, (low, high) in CLASS_MIX_BOUNDS.items())


def class_mix(labels: pd.DataFrame, column: str = "label") -> dict[str, float]:
    """Share of each class among the labelled rows (missing labels not counted; 0 for an empty table)."""
    counts = labels[column].dropna().value_counts()
    return {name: float(counts.get(name, 0) / max(counts.sum(), 1)) for name in CLASS_NAMES}


def class_mix_is_plausible(mix: dict[str, float]) -> bool:
    """Every class's share within `CLASS_MIX_BOUNDS`."""
    return all(low <= mix[name] <= high for name, (low, high) in CLASS_MIX_BOUNDS.items())


@dataclass(frozen=True)
class LabelSummary:
    """One labels table in figures: rows (slices), labelled slices, slices excluded as artefacts,
    labels the monotone step changed, and the class mix of the labels."""

    slices: int
    labelled: int
    artefact_excluded: int
    changed_by_monotone_step: int
    class_mix: dict[str, float]


def summarise_labels(labels: pd.DataFrame) -> LabelSummary:
    """The figures of a labels table (columns label, label_monotone, artefact_excluded)."""
    labelled = labels["label"].notna()
    changed = (labels["label"] != labels["label_monotone"]) & labelled
    return LabelSummary(slices=len(labels), labelled=int(labelled.sum()),
                        artefact_excluded=int(labels["artefact_excluded"].sum()),
                        changed_by_monotone_step=int(changed.sum()), class_mix=class_mix(labels))
