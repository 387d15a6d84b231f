"""Reference labels for evaluation: the generator's truth mapped onto de-identified slices, or a
user's own table (e.g. an expert consensus), checked."""

from __future__ import annotations

import pandas as pd

from cmr_assets.domain import CLASS_NAMES
from cmr_assets.ingest.deid import scan_id_for
from cmr_assets.ingest.slice_store import slice_id_for


def synthetic_reference(truth: pd.DataFrame, key: bytes) -> pd.DataFrame:
    """Map the generator's truth rows (series UID, position) onto de-identified slice ids."""
    scan_ids = {uid: scan_id_for(uid, key) for uid in truth["series_uid"].unique()}
    return pd.DataFrame({
        "slice_id": [slice_id_for(scan_ids[u], int(i)) for u, i in zip(truth["series_uid"], truth["slice_from_base"],
                                                                         strict=True)],
        "label": truth["true_class"].astype(str),
        "position01": truth["position01"].astype(float),
        "artefact": truth["artefact"].astype(bool),
        "source": "synthetic_truth",
    })


def user_reference(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """A user's reference table, checked: known classes only (bad rows are a clear failure)."""
    bad = ~frame["label"].isin(CLASS_NAMES)
    if bad.any():
        raise ValueError(f"{source}: {int(bad.sum())} rows with a label outside {CLASS_NAMES}, "
                         f"e.g. row {int(bad.idxmax()) + 2}: {frame.loc[bad.idxmax(), 'label']!r}")
    return pd.DataFrame({"slice_id": frame["slice_id"].astype(str), "label": frame["label"].astype(str),
                         "position01": float("nan"), "artefact": False, "source": source})
