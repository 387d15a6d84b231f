"""The archive-wide filter's core: which scans to decide, each scan judged as a stack, rows that fit the table."""

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cmr_assets.figures import archive_decisions_png
from cmr_assets.inference.archive import decide_scans, decision_summary, scans_to_decide
from cmr_assets.partitioned_tables import PartitionStore
from cmr_assets.settings import DataPaths
from cmr_assets.tables import SLICE_DECISIONS_COLUMNS

BASAL, LV, APICAL, STRANGE = 0, 128, 255, 60  # image brightness the toy model reads as its answer


class BrightnessModel(nn.Module):
    """A model with the registered contract ((N, 1, 128, 128) -> 3 probabilities + OOD score) whose
    answer is the image's brightness: dark too basal, mid-grey LV, white too apical, 60 out of distribution."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        level = images.mean(dim=(1, 2, 3))
        probabilities = torch.stack([(level < 64).float(), ((level >= 64) & (level < 192)).float(),
                                     (level >= 192).float()], dim=1) * 0.9 + 0.1 / 3
        strange = (level - STRANGE).abs() < 1
        probabilities[strange] = torch.tensor([0.8, 0.1, 0.1])
        ood = torch.where(strange, torch.tensor(3.0), torch.tensor(0.2))
        return torch.cat([probabilities, ood[:, None]], dim=1)


def _stack(scan: str, levels: list[int]) -> tuple[pd.DataFrame, np.ndarray]:
    rows = pd.DataFrame({"slice_id": [f"{scan}-{k:02d}" for k in range(len(levels))], "scan_id": scan,
                         "slice_from_base": range(len(levels))})
    return rows, np.stack([np.full((128, 128), v, dtype=np.uint8) for v in levels])


def test_each_scan_is_judged_as_a_stack_whatever_the_row_order(tmp_path) -> None:
    a_rows, a_images = _stack("a", [BASAL, LV, LV, BASAL, LV, APICAL])  # a stray basal call mid-stack
    b_rows, b_images = _stack("b", [LV, STRANGE, LV, APICAL])
    rows = pd.concat([a_rows, b_rows], ignore_index=True)
    images = np.concatenate([a_images, b_images])
    shuffled = np.random.default_rng(0).permutation(len(rows))
    decisions = decide_scans(rows.iloc[shuffled], images[shuffled], BrightnessModel(), "m", "7",
                             datetime.now(UTC))
    assert list(decisions.columns) == list(SLICE_DECISIONS_COLUMNS)
    by_id = decisions.set_index("slice_id")
    assert by_id.loc["a-03", "model_class"] == "too_basal" and by_id.loc["a-03", "filter_class"] == "lv"
    assert by_id.loc[[f"a-0{k}" for k in range(6)], "keep"].tolist() == [False, True, True, True, True, False]
    strange = by_id.loc["b-01"]
    assert strange["ood"] and strange["keep"] and "cannot judge" in strange["reason"]
    assert (decisions["model_version"] == "7").all()
    assert decision_summary(decisions) == {"scans": 2, "slices": 10, "kept": 7, "removed": 3,
                                           "out_of_distribution": 1, "filter_too_basal": 1, "filter_lv": 7,
                                           "filter_too_apical": 2}
    store = PartitionStore(DataPaths(tmp_path))
    store.write_partition("slice_decisions", "archive_filter", "03", decisions)
    stored = store.read("slice_decisions")
    assert list(stored.columns) == list(SLICE_DECISIONS_COLUMNS)
    as_rows = [(r.slice_id, bool(r.keep), bool(r.ood)) for r in stored.itertuples()]
    assert sorted(as_rows) == sorted((r.slice_id, bool(r.keep), bool(r.ood)) for r in decisions.itertuples())
    assert archive_decisions_png(decisions).startswith(b"\x89PNG")


def test_only_scans_without_this_champions_decision_are_decided_again() -> None:
    slices = pd.DataFrame({"slice_id": ["a-0", "a-1", "b-0", "c-0", "c-1"], "scan_id": ["a", "a", "b", "c", "c"]})
    decided = pd.DataFrame({"slice_id": ["a-0", "a-1", "b-0", "c-0"], "model_version": ["2", "2", "1", "2"]})
    assert scans_to_decide(slices, decided, "2") == ["b", "c"]  # b: older champion; c: a new slice
    assert scans_to_decide(slices, decided.iloc[0:0], "2") == ["a", "b", "c"]
    assert scans_to_decide(slices, pd.DataFrame(), "2") == ["a", "b", "c"]
    assert scans_to_decide(slices, decided, "2", redecide=True) == ["a", "b", "c"]  # e.g. a new class prior


class UnsureModel(nn.Module):
    """Leans a little to too basal over LV for every image."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[0.44, 0.43, 0.13, 0.2]]).expand(images.shape[0], 4)


def test_the_archive_decides_under_the_class_prior_asked_for() -> None:
    rows, images = _stack("a", [LV, LV, LV])
    for share, kept in ((0.5, [True] * 3), (1 / 3, [False] * 3)):
        decisions = decide_scans(rows, images, UnsureModel(), "m", "1", datetime.now(UTC), lv_share=share)
        assert decisions["keep"].tolist() == kept


def test_rows_and_images_must_match() -> None:
    rows, images = _stack("a", [LV, LV])
    with pytest.raises(ValueError, match="2 slice rows but 1 images"):
        decide_scans(rows, images[:1], BrightnessModel(), "m", "1", datetime.now(UTC))


@pytest.mark.parametrize(("config", "says"), [
    ({}, "no champion of cmr-slice-classifier-ranking"),
    ({"lv_share": 1.2}, "lv_share=1.2: the expected share of LV slices must lie strictly between 0 and 1"),
])
def test_the_asset_fails_clearly_without_a_champion_or_with_a_bad_share(tmp_path, config, says) -> None:
    import dagster as dg

    from cmr_assets.inference.assets import archive_filter
    from cmr_assets.resources import DataPathsResource, MlflowResource, duckdb_resource
    from cmr_assets.settings import DataPaths

    paths = DataPaths(tmp_path / "data").ensure()
    result = dg.materialize(
        [archive_filter], partition_key="00", raise_on_error=False, instance=dg.DagsterInstance.ephemeral(),
        run_config={"ops": {"archive_filter": {"config": config}}},
        resources={"data_paths": DataPathsResource(root=str(paths.root)), "duckdb": duckdb_resource(paths),
                   "mlflow": MlflowResource(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                            artifact_location=(tmp_path / "artifacts").as_uri())})
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert says in failure.step_failure_data.error.message
