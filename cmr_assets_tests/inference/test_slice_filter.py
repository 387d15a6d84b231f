import json
from pathlib import Path

import numpy as np

from cmr_assets.inference.decisions import decide, series_verdict
from cmr_assets.inference.slice_filter import copy_kept, format_table, model_uri_for, synthetic_only_warning
from cmr_assets.ingest.dicom_series import OrderedSeries, OrderedSlice


def _series(n: int) -> OrderedSeries:
    blank = np.zeros((4, 4), dtype=np.uint8)
    slices = tuple(OrderedSlice(k, 10.0 * k, 0.0, blank, blank, (f"p{k}/a.dcm", f"p{k}/b.dcm")) for k in range(n))
    return OrderedSeries(Path("."), "min_trigger_time", 10.0, slices, ())


def test_decide_keeps_lv_after_the_monotone_step():
    probabilities = np.array([
        [0.9, 0.05, 0.05],   # too basal
        [0.1, 0.8, 0.1],     # lv
        [0.1, 0.3, 0.6],     # an apical-looking slice between LV slices: the anatomy says lv
        [0.1, 0.8, 0.1],     # lv
        [0.05, 0.05, 0.9],   # too apical
    ])
    decisions = decide(_series(5), probabilities)
    assert [d.predicted_class for d in decisions] == ["too_basal", "lv", "lv", "lv", "too_apical"]
    assert [d.keep for d in decisions] == [False, True, True, True, False]
    assert decisions[2].model_class == "too_apical"
    assert "model said too_apical" in format_table(decisions)


def test_copy_kept_copies_only_kept_files_unchanged(tmp_path):
    source = tmp_path / "series"
    for k in range(3):
        (source / f"p{k}").mkdir(parents=True)
        for name in ("a.dcm", "b.dcm"):
            (source / f"p{k}" / name).write_bytes(bytes([k]) * 10)
    decisions = decide(_series(3), np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9]]))
    assert copy_kept(source, decisions, tmp_path / "out") == 2
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.dcm")) == \
        ["p1/a.dcm", "p1/b.dcm"]
    assert (tmp_path / "out" / "p1" / "a.dcm").read_bytes() == bytes([1]) * 10


def test_model_choice():
    assert model_uri_for("ranking") == "cmr-slice-classifier-ranking"
    assert model_uri_for("models:/x/3") == "models:/x/3"


def test_a_slice_the_model_cannot_judge_is_kept_and_says_why():
    probabilities = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9], [0.05, 0.05, 0.9]])
    decisions = decide(_series(4), probabilities, np.array([0.2, 0.3, 0.4, 3.5]))
    assert [d.keep for d in decisions] == [False, True, False, True]
    assert [d.ood for d in decisions] == [False, False, False, True]
    assert decisions[3].ood_score == 3.5 and "out of distribution" in decisions[3].reason
    assert decisions[0].reason == "removed: too basal"
    assert "out of distribution" in format_table(decisions)


def test_a_series_mostly_out_of_distribution_keeps_every_slice():
    probabilities = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9]])
    scores = np.array([1.5, 0.5, 2.0])
    assert series_verdict(scores) == "out_of_distribution"
    assert series_verdict(np.array([0.1, 0.5, 2.0])) == "in_distribution"
    assert series_verdict(np.full(3, np.nan)) == "unknown"
    decisions = decide(_series(3), probabilities, scores)
    assert all(d.keep and d.ood for d in decisions)
    assert all("series out of distribution" in d.reason for d in decisions)


def test_without_ood_calibration_the_score_is_none_and_decisions_unchanged():
    decisions = decide(_series(2), np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]]))
    assert [d.ood_score for d in decisions] == [None, None] and not any(d.ood for d in decisions)


def test_synthetic_only_models_get_a_warning():
    assert "synthetic" in synthetic_only_warning({"cmr.training_data": "synthetic"})
    assert "synthetic" in synthetic_only_warning({})  # no provenance: assume the worst
    assert synthetic_only_warning({"cmr.training_data": "mixed"}) is None
    assert synthetic_only_warning({"cmr.training_data": "real"}) is None


def test_decide_names_the_frames_of_a_multiframe_file():
    blank = np.zeros((8, 8), dtype=np.uint8)
    slices = tuple(OrderedSlice(k, 10.0 * k, 0.0, blank, blank, ("enhanced.dcm",),
                                {"enhanced.dcm": (k + 4, k + 1)}) for k in range(3))
    series = OrderedSeries(Path("."), "min_trigger_time", 10.0, slices, ())
    decisions = decide(series, np.tile([0.1, 0.8, 0.1], (3, 1)))
    assert [d.files for d in decisions] == [["enhanced.dcm"]] * 3
    assert [d.frames for d in decisions] == [{"enhanced.dcm": [4, 1]}, {"enhanced.dcm": [5, 2]},
                                             {"enhanced.dcm": [6, 3]}]


def test_cli_says_when_a_whole_series_is_out_of_distribution(monkeypatch, capsys, tmp_path):
    from cmr_assets.inference import slice_filter

    probabilities = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9]])
    monkeypatch.setattr(slice_filter, "load_champion", lambda *args, **kwargs: object())
    monkeypatch.setattr(slice_filter, "model_version_tags", lambda *args, **kwargs: {"cmr.training_data": "real"})
    for scores, says in (([1.5, 0.5, 2.0], True), ([0.2, 0.5, 2.0], False)):
        monkeypatch.setattr(slice_filter, "filter_series",
                            lambda *args, scores=scores: decide(_series(3), probabilities, np.array(scores)))
        assert slice_filter.run_filter_cli(tmp_path) == 0
        err = capsys.readouterr().err
        assert ("every slice is kept" in err) == says and "synthetic" not in err


def test_the_cli_decides_under_the_share_asked_for_and_refuses_a_bad_one(monkeypatch, capsys, tmp_path):
    import torch

    from cmr_assets.inference import slice_filter

    class Unsure(torch.nn.Module):  # a registry model leaning a little to too basal everywhere
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[0.44, 0.43, 0.13, 0.2]]).expand(images.shape[0], 4)

    series = _series(3)
    monkeypatch.setattr(slice_filter, "read_series", lambda path: series)
    monkeypatch.setattr(slice_filter, "load_champion", lambda *args, **kwargs: Unsure())
    monkeypatch.setattr(slice_filter, "model_version_tags", lambda *args, **kwargs: {"cmr.training_data": "real"})
    for share, kept in ((0.5, True), (1 / 3, False)):
        assert slice_filter.run_filter_cli(tmp_path, as_json=True, lv_share=share) == 0
        out, err = capsys.readouterr()
        rows = json.loads(out)
        assert f"LV share of {share:g}" in err and "synthetic" not in err
        assert [row["keep"] for row in rows] == [kept] * 3 and {row["model_class"] for row in rows} == (
            {"lv"} if kept else {"too_basal"})
    assert slice_filter.run_filter_cli(tmp_path, lv_share=1.5) == 1
    assert "--lv-share=1.5" in capsys.readouterr().err
