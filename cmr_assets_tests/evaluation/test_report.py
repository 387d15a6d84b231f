"""The report carries the contract keys, the Markdown has the paper-style table, pictures render."""

import json

import numpy as np
import pandas as pd
import pytest

from cmr_assets import figures
from cmr_assets.evaluation.metrics import classification_metrics, paired_comparison
from cmr_assets.evaluation.report import (
    ReportContractError,
    StrategyEvaluation,
    build_evaluation_report,
    evaluate_strategy,
    validate_report,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _model_outputs(n: int, strength: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), _truth(n)] += strength
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def _truth(n: int) -> np.ndarray:
    return np.arange(n) % 3


@pytest.fixture
def report():
    n = 120
    y_true = _truth(n)
    proba = {"ranking": _model_outputs(n, 3.0, 1), "single": _model_outputs(n, 1.0, 2)}
    per_strategy = {
        "ranking": StrategyEvaluation(
            metrics=classification_metrics(y_true, proba["ranking"]), expert_hours=5.0, images_labelled=900,
            min_views_per_image=3, mean_views_per_image=3.4, label_accuracy_vs_reference=0.93,
            label_kappa_vs_reference=0.88,
            model={"registered_model": "cmr-slice-classifier-ranking", "version": "2", "run_id": "abc"}),
        "single": StrategyEvaluation(
            metrics=classification_metrics(y_true, proba["single"]), expert_hours=5.0, images_labelled=1500,
            min_views_per_image=1),
    }
    comparison = paired_comparison(y_true, proba["ranking"].argmax(1), proba["single"].argmax(1),
                                   groups=np.arange(n) // 6, n_boot=300)
    agreement = {"kappa_intra": 0.91, "kappa_inter": float("nan")}
    return build_evaluation_report(per_strategy, comparison, agreement,
                                   n_test_images=n, pictures={"ROC curves": "roc.png"},
                                   reference_source="synthetic truth")


def test_report_has_contract_keys_and_files(report, tmp_path):
    validate_report(report)
    json_path, md_path = write_report(report, tmp_path / "reports")
    assert (json_path.name, md_path.name) == ("evaluation.json", "evaluation.md")
    loaded = json.loads(json_path.read_text())
    validate_report(loaded)
    for strategy in ("ranking", "single"):
        block = loaded["strategies"][strategy]
        for key in ("test_accuracy", "test_macro_f1", "test_roc_auc", "label_accuracy_vs_reference",
                    "expert_hours", "images_labelled", "min_views_per_image"):
            assert key in block
    assert loaded["strategies"]["single"]["label_accuracy_vs_reference"] is None
    assert loaded["strategies"]["ranking"]["test_accuracy"] > loaded["strategies"]["single"]["test_accuracy"]
    assert 0 <= loaded["comparison"]["mcnemar_p"] <= 1
    assert loaded["agreement"] == {"kappa_intra": 0.91, "kappa_inter": None}  # NaN is not JSON
    assert loaded["n_test_images"] == 120

    markdown = md_path.read_text()
    assert "|  | Ours: ranking | Ours: single | Paper: ranking | Paper: single |" in markdown
    assert "| Test accuracy |" in markdown and "| 86% | 72% |" in markdown
    assert "| 0.95 | 0.86 |" in markdown and "| Intra-observer | 0.910 | 0.9 |" in markdown
    assert "P = 0.02" in markdown and "bootstrap interval" in markdown and "scans" in markdown
    assert "![ROC curves](roc.png)" in markdown
    assert not list(tmp_path.glob("reports/*.tmp"))


def test_validate_report_lists_every_missing_key(report):
    broken = json.loads(json.dumps(report))
    del broken["strategies"]["single"]["test_roc_auc"]
    del broken["comparison"]["mcnemar_p"]
    del broken["agreement"]["kappa_inter"]
    with pytest.raises(ReportContractError) as error:
        validate_report(broken)
    for key in ("strategies.single.test_roc_auc", "comparison.mcnemar_p", "agreement.kappa_inter"):
        assert key in str(error.value)


def test_models_on_different_test_sets_are_refused():
    metrics = classification_metrics([0, 1, 2], np.eye(3))
    evaluation = StrategyEvaluation(metrics=metrics, expert_hours=1.0, images_labelled=3,
                                    min_views_per_image=1)
    with pytest.raises(ValueError, match="same test set"):
        build_evaluation_report({"ranking": evaluation, "single": evaluation}, {"mcnemar_p": 1.0},
                                {"kappa_intra": None, "kappa_inter": None}, n_test_images=4)


def test_pictures_are_png_and_written(tmp_path):
    y_true = _truth(60)
    probas = {"ranking": _model_outputs(60, 2.0, 1), "single": _model_outputs(60, 0.5, 2)}
    cm = classification_metrics(y_true, probas["ranking"])["confusion_matrix"]["matrix"]
    scores = pd.DataFrame({"score": np.linspace(-2, 2, 60), "label": y_true})
    slices = [np.full((16, 16), v, np.uint8) for v in range(0, 250, 25)]
    outputs = [
        figures.confusion_matrix_png(cm, path=tmp_path / "pics" / "cm.png"),
        figures.roc_curves_png(y_true, probas),
        figures.rank_score_distribution_png(scores),
        figures.montage(slices, [str(i) for i in range(10)], ncols=4),
    ]
    assert all(data.startswith(PNG_MAGIC) for data in outputs)
    assert (tmp_path / "pics" / "cm.png").read_bytes() == outputs[0]
    with pytest.raises(ValueError, match=r"images\[0\]"):
        figures.montage([np.zeros((2, 2, 2), np.uint8)])


def test_evaluate_strategy_scores_the_model_beside_what_its_labels_cost():
    n = 60
    y_true = _truth(n)
    proba = _model_outputs(n, 3.0, 1)
    start = pd.Timestamp("2026-01-01T09:00", tz="UTC")
    raw = pd.DataFrame({"annotator_id": ["dr_a", "dr_a", "dr_b"], "started_at": [start] * 3,
                        "submitted_at": [start + pd.Timedelta(minutes=m) for m in (30, 60, 90)]})
    labels = pd.DataFrame({"slice_id": ["s1", "s2", "s3", "s4"], "label": ["lv", "lv", "too_basal", None],
                           "n_views": [3, 4, 3, 0], "artefact_excluded": [False, False, False, False]})
    reference = pd.DataFrame({"slice_id": ["s1", "s2", "s3", "s4"], "label": ["lv", "too_apical", "too_basal", "lv"]})
    model = {"registered_model": "cmr-slice-classifier-ranking", "version": "1", "run_id": "r"}
    evaluation = evaluate_strategy("ranking", y_true, proba, raw, labels, reference,
                                   {"label_accuracy_ranking": 0.75}, model)
    assert evaluation.metrics == classification_metrics(y_true, proba)
    assert evaluation.expert_hours == pytest.approx(3.0) and evaluation.images_labelled == 3
    assert (evaluation.min_views_per_image, evaluation.mean_views_per_image) == (3, pytest.approx(10 / 3))
    assert evaluation.label_accuracy_vs_reference == 0.75 and evaluation.model == model
    assert evaluation.label_kappa_vs_reference is not None and evaluation.label_kappa_vs_reference < 1
