import pandas as pd
import pytest

from cmr_assets.evaluation.report import agreement_summary, label_kappa_vs_reference, labelling_cost


def test_label_kappa_counts_only_labelled_usable_slices():
    labels = pd.DataFrame({"slice_id": ["a", "b", "c", "d"], "label": ["lv", "too_basal", None, "lv"],
                           "artefact_excluded": [False, False, False, True]})
    reference = pd.DataFrame({"slice_id": ["a", "b", "c", "d"], "label": ["lv", "too_basal", "lv", "too_apical"]})
    assert label_kappa_vs_reference(labels, reference) == pytest.approx(1.0)
    reference.loc[1, "label"] = "lv"
    assert label_kappa_vs_reference(labels, reference) < 1.0
    assert label_kappa_vs_reference(labels.iloc[:0], reference) is None


def test_labelling_cost_and_agreement_summary():
    t = pd.Timestamp("2026-01-01T10:00:00Z")
    raw = pd.DataFrame({"annotator_id": ["x", "y"], "started_at": [t, t],
                        "submitted_at": [t + pd.Timedelta(hours=1)] * 2})
    labels = pd.DataFrame({"label": ["lv", None, "too_apical"], "n_views": [3, 3, 4]})
    cost = labelling_cost(raw, labels)
    assert cost == {"expert_hours": 2.0, "images_labelled": 2, "min_views_per_image": 3, "mean_views_per_image": 3.5}
    rows = pd.DataFrame({"metric": ["kappa_intra", "kappa_inter", "label_accuracy_single"],
                         "value": [0.9, float("nan"), 0.8]})
    summary = agreement_summary(rows)
    assert summary["kappa_intra"] == 0.9 and summary["kappa_inter"] is None
    assert summary["label_accuracy_single"] == 0.8 and summary["kendall_tau_ranking"] is None
