"""The real-image check on the Sunnybrook patients shipped in the repository (real_data/)."""

import pytest
import torch

from cmr_assets.evaluation.real_check import (
    APEX,
    BASE,
    LV,
    REAL_DATA_DIR,
    load_real_series,
    real_image_check,
    slice_truth,
)


class ConstantModel(torch.nn.Module):
    """Says the same class for every image (what a collapsed model does): the check must show it."""

    def __init__(self, class_index: int):
        super().__init__()
        self.class_index = class_index

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.full((images.shape[0], 3), 0.05)
        out[:, self.class_index] = 0.9
        return out


@pytest.fixture(scope="module")
def real_series():
    return load_real_series(REAL_DATA_DIR)


def test_shipped_real_data_reads_with_truth_from_contours(real_series):
    assert [s.name for s in real_series] == ["real 1", "real 2"]  # no patient ID leaves ingestion
    assert [len(s.series.slices) for s in real_series] == [12, 13]
    assert real_series[0].truth == (BASE,) * 2 + (LV,) * 9 + (APEX,)
    assert real_series[1].truth == (BASE,) * 2 + (LV,) * 9 + (APEX,) * 2
    assert all(sl.image_128.shape == (128, 128) for s in real_series for sl in s.series.slices)


def test_check_reports_lv_recall_and_decisions_outside_the_lv(real_series):
    always_lv = real_image_check(ConstantModel(1), real_series)["summary"]
    assert always_lv["n_lv"] == 18 and always_lv["lv_recall_model"] == always_lv["lv_recall_filter"] == 1.0
    assert always_lv["uncontoured_base"] == {"n": 4, "removed": 0, "model_classes": {"lv": 4}}
    assert always_lv["uncontoured_apex"]["removed"] == 0 and always_lv["n_ood"] == 0
    always_basal = real_image_check(ConstantModel(0), real_series)
    assert always_basal["summary"]["lv_recall_model"] == always_basal["summary"]["lv_recall_filter"] == 0.0
    assert always_basal["summary"]["uncontoured_base"]["removed"] == 4
    assert len(always_basal["slices"]) == 25 and always_basal["slices"][0]["ood_score"] is None


class UnsureModel(torch.nn.Module):
    """Leans a little to too apical over LV for every image, as the CPU model did on real mid-ventricular slices."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[0.12, 0.43, 0.45]]).expand(images.shape[0], 3)


def test_the_model_class_is_the_filter_s_under_the_deployment_prior(real_series):
    check = real_image_check(UnsureModel(), real_series, lv_share=0.5)["summary"]
    assert check["lv_share"] == 0.5
    assert check["lv_recall_balanced_prior"] == 0.0 and check["lv_recall_model"] == 1.0
    balanced = real_image_check(UnsureModel(), real_series, lv_share=1 / 3)["summary"]
    assert balanced["lv_recall_model"] == balanced["lv_recall_balanced_prior"] == 0.0


def test_truth_needs_a_contour():
    assert slice_truth([False, True, True, False]) == (BASE, LV, LV, APEX)
    with pytest.raises(ValueError, match="no contoured slice"):
        slice_truth([False, False])


def test_missing_truth_table_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="slices_truth.csv"):
        load_real_series(tmp_path)


def test_synthetic_vs_real_montage_matches_levels(real_series, tmp_path):
    from cmr_assets.evaluation.real_check import MATCHED_LEVELS, phantom_stacks, real_levels, synthetic_vs_real_png

    levels = real_levels(real_series[0].truth)
    assert levels[2] < 0.1 < levels[3] and levels[-1] > 1  # contoured slices span 0..1, the rest outside
    png = synthetic_vs_real_png(phantom_stacks(0, 1), real_series, path=tmp_path / "m.png")
    assert png.startswith(b"\x89PNG") and (tmp_path / "m.png").read_bytes() == png
    from PIL import Image

    width, height = Image.open(tmp_path / "m.png").size
    assert width > height * len(MATCHED_LEVELS) / 3 * 0.8  # 3 rows of 7 images


def test_decisions_picture_has_one_row_per_series(real_series, tmp_path):
    from PIL import Image

    from cmr_assets.evaluation.real_check import decisions_png

    png = decisions_png(real_image_check(ConstantModel(1), real_series), real_series, path=tmp_path / "d.png")
    width, height = Image.open(tmp_path / "d.png").size
    assert png.startswith(b"\x89PNG") and width > 3 * height  # 2 rows of 13
