"""Where a model's training data came from, as MLflow tags on every registered version.

Why: a model trained on the phantom alone must not pass for one that has seen real scans. The
filter reads `cmr.training_data` and warns when it is `synthetic`; reviewers read the label source
and the number of scans in the registry without opening the run.

Public API: `TRAINING_DATA_TAG`, `provenance_tags(scans, annotator_ids) -> dict[str, str]`.
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from cmr_assets.domain import SYNTHETIC_MODEL_NAME
from cmr_assets.labelling.campaign import SIMULATED_ANNOTATOR_PREFIX

TRAINING_DATA_TAG = "cmr.training_data"
LABEL_SOURCE_TAG = "cmr.label_source"
N_SCANS_TAG = "cmr.n_scans"


def _kind(flags: pd.Series, when_all: str, when_none: str) -> str:
    if flags.empty:
        return "none"
    return when_all if flags.all() else when_none if not flags.any() else "mixed"


def provenance_tags(scans: pd.DataFrame, annotator_ids: Iterable[str]) -> dict[str, str]:
    """Tags for a model trained on `scans` (columns scan_id, manufacturer_model: the training and
    validation scans) with labels from `annotator_ids` (everyone whose answers made those labels)."""
    synthetic = scans["manufacturer_model"].fillna("").eq(SYNTHETIC_MODEL_NAME)
    simulated = pd.Series([str(a).startswith(SIMULATED_ANNOTATOR_PREFIX) for a in set(annotator_ids)], dtype=bool)
    return {
        TRAINING_DATA_TAG: _kind(synthetic, "synthetic", "real"),
        LABEL_SOURCE_TAG: _kind(simulated, "simulated_experts", "annotators"),
        N_SCANS_TAG: str(scans["scan_id"].nunique()),
    }
