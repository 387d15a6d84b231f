"""Training-data provenance tags: synthetic, real or mixed scans; simulated or human labels."""

import pandas as pd

from cmr_assets.domain import SYNTHETIC_MODEL_NAME
from cmr_assets.training.provenance import provenance_tags


def _scans(models: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame({"scan_id": [f"s{k}" for k in range(len(models))], "manufacturer_model": models})


def test_phantom_scans_with_simulated_experts():
    tags = provenance_tags(_scans([SYNTHETIC_MODEL_NAME] * 3), ["sim-expert-1", "sim-expert-2"])
    assert tags == {"cmr.training_data": "synthetic", "cmr.label_source": "simulated_experts", "cmr.n_scans": "3"}


def test_real_and_mixed_scans_and_people():
    assert provenance_tags(_scans(["Signa HDx", None]), ["dr_lee"])["cmr.training_data"] == "real"
    mixed = provenance_tags(_scans(["Signa HDx", SYNTHETIC_MODEL_NAME]), ["dr_lee", "sim-expert-1"])
    assert mixed["cmr.training_data"] == "mixed" and mixed["cmr.label_source"] == "mixed"
    assert provenance_tags(_scans(["Signa HDx"]), ["dr_lee"])["cmr.label_source"] == "annotators"
