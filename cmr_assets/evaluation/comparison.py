"""Both strategies' models on one test set, beside what their labels cost: the computation behind the
`evaluation_report` asset.

Pure of Dagster and MLflow: the tables, the loaded models and the run's provenance in, an `Evaluation`
(the report, its pictures, log lines) out, so tests and scripts call it directly and the asset only
reads, loads, writes and logs.

Public API:
- `ModelUnderTest`: one registered model version, loaded.
- `EvaluationTables`: the DuckDB tables the evaluation reads.
- `EvaluationInputError`: no reference labels, or none for a test image.
- `evaluate_models(tables, root, reports_dir, challengers, champions, provenance, real_data_dir) -> Evaluation`
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from cmr_assets.domain import STRATEGIES
from cmr_assets.evaluation.learning_curves import load_stored_curves
from cmr_assets.evaluation.metrics import paired_comparison
from cmr_assets.evaluation.real_check import (
    REAL_DATA_DIR,
    RealSeries,
    decisions_png,
    load_real_series,
    real_image_check,
    stacks_of_test_scans,
    synthetic_vs_real_png,
)
from cmr_assets.evaluation.repeats import load_stored_repeats, predictions_frame, summarise_repeats
from cmr_assets.evaluation.report import (
    StrategyEvaluation,
    agreement_summary,
    build_evaluation_report,
    evaluate_strategy,
)
from cmr_assets.figures import confusion_matrix_png, rank_score_distribution_png, repeats_png, roc_curves_png
from cmr_assets.labelling.annotation_ingest import latest_answer_per_task
from cmr_assets.training.dataset import evaluation_rows, load_slice_images
from cmr_assets.training.packaging import predict_slices

REAL_DATA_CITATION = "real_data/sunnybrook (Sunnybrook Cardiac Data, CC0; 2 patients, ED phase)"


class EvaluationInputError(ValueError):
    """The tables cannot be evaluated: no reference labels, or no test image with one."""


@dataclass(frozen=True)
class ModelUnderTest:
    """One registered model version, loaded (a `DeployableClassifier` or what the registry gives back)."""

    registered_model: str
    version: str
    run_id: str
    model: nn.Module
    training_data: str = "unknown"

    def ids(self) -> dict[str, str]:
        return {"registered_model": self.registered_model, "version": self.version, "run_id": self.run_id}


@dataclass(frozen=True)
class EvaluationTables:
    """What the evaluation reads from the store."""

    slices: pd.DataFrame  # slice_id, scan_id, array_path, array_index
    split: pd.DataFrame
    reference: pd.DataFrame
    raw: dict[str, pd.DataFrame]  # strategy -> raw annotations
    labels: dict[str, pd.DataFrame]  # strategy -> labels_<strategy>
    agreement: pd.DataFrame


@dataclass(frozen=True)
class Evaluation:
    """The report (contract keys included), its pictures by file name, and what to log."""

    report: dict[str, Any]
    figures: dict[str, bytes]
    per_strategy: dict[str, StrategyEvaluation]
    comparison: dict[str, Any]
    repeated: dict[str, Any]
    n_test_images: int
    log: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _real_image_check(champions: Mapping[str, ModelUnderTest], real_series: list[RealSeries],
                      figures: dict[str, bytes], log: list[str]) -> dict[str, Any]:
    """Each champion on the shipped real DICOM; its per-slice decisions picture goes into `figures`."""
    results = {}
    for strategy in STRATEGIES:
        champion = champions[strategy]
        check = real_image_check(champion.model, real_series)
        results[strategy] = {"model": {"registered_model": champion.registered_model, "version": champion.version,
                                       "training_data": champion.training_data}, **check}
        figures[f"real_image_check_{strategy}.png"] = decisions_png(check, real_series)
        summary = check["summary"]
        log.append(f"{strategy} champion v{champion.version} on real images: LV recall model "
                   f"{summary['lv_recall_model']:.3f}, filter {summary['lv_recall_filter']:.3f} "
                   f"({summary['n_lv']} contoured slices), {summary['n_ood']} slices out of distribution")
    return {"data": REAL_DATA_CITATION, "strategies": results}


def evaluate_models(tables: EvaluationTables, root: Path, reports_dir: Path,
                    challengers: Mapping[str, ModelUnderTest], champions: Mapping[str, ModelUnderTest],
                    provenance: dict[str, Any], real_data_dir: Path = REAL_DATA_DIR) -> Evaluation:
    """Score each strategy's newest model (`challengers`) on the common test scans, compare them
    (McNemar, scan-level bootstrap, stored repeats and learning curves from `reports_dir`), and each
    champion on the real DICOM in `real_data_dir` (skipped, with a warning, when it cannot be read).

    Raises `EvaluationInputError` when there are no reference labels for the test scans."""
    if tables.reference.empty:
        raise EvaluationInputError("evaluation needs reference labels for the test scans: the synthetic truth, or "
                                   "your own CSV via the reference_labels asset's `reference_csv` config")
    test = evaluation_rows(tables.slices, tables.split, tables.reference)
    if test.empty:
        raise EvaluationInputError("no test image has a reference label: check dataset_split and reference_labels")
    images = load_slice_images(root, test)
    y_true = test["target"].to_numpy()
    agreement = agreement_summary(tables.agreement)
    log: list[str] = []
    warnings: list[str] = []
    probas: dict[str, np.ndarray] = {}
    per_strategy: dict[str, StrategyEvaluation] = {}
    figures: dict[str, bytes] = {}
    for strategy in STRATEGIES:
        challenger = challengers[strategy]
        probas[strategy] = predict_slices(challenger.model, images)
        per_strategy[strategy] = evaluate_strategy(
            strategy, y_true, probas[strategy], latest_answer_per_task(tables.raw[strategy]),
            tables.labels[strategy], tables.reference, agreement, model=challenger.ids())
        metrics = per_strategy[strategy].metrics
        figures[f"confusion_{strategy}.png"] = confusion_matrix_png(
            metrics["confusion_matrix"]["matrix"], title=f"{strategy}-trained model, test set")
        log.append(f"{strategy}: test accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}")
    try:
        real_series = load_real_series(real_data_dir)
    except (OSError, ValueError) as error:
        warnings.append(f"real-image check skipped: {error}")
        real_check: dict[str, Any] = {"data": str(real_data_dir), "error": str(error), "strategies": {}}
    else:
        real_check = _real_image_check(champions, real_series, figures, log)
        figures["synthetic_vs_real.png"] = synthetic_vs_real_png(
            stacks_of_test_scans(test, images, tables.reference), real_series)
    predictions = {s: probas[s].argmax(axis=1) for s in STRATEGIES}
    comparison = paired_comparison(y_true, predictions["ranking"], predictions["single"], groups=test["scan_id"])
    stored, stale = load_stored_repeats(reports_dir, tables.labels)
    if stale:
        warnings.append(f"{stale} stored repeat(s) were trained on other labels and are left out; "
                        "materialise strategy_repeats to redo them")
    # repeat 0 = today's models on the standing test set, beside the stored repeats on today's labels
    own = pd.concat([predictions_frame(0, s, test, probas[s]) for s in STRATEGIES], ignore_index=True)
    repeated = summarise_repeats(pd.concat([own, stored], ignore_index=True))
    figures["strategy_repeats.png"] = repeats_png(repeated)
    curves = load_stored_curves(reports_dir, tables.labels)
    if curves is None:
        warnings.append("no learning curves drawn from today's labels: materialise learning_curves")
    else:
        figures["learning_curves.png"] = (reports_dir / "learning_curves.png").read_bytes()
    figures["roc_curves.png"] = roc_curves_png(y_true, probas)
    ranked = tables.labels["ranking"].dropna(subset=["label"])
    figures["rank_score_distribution.png"] = rank_score_distribution_png(ranked, score_column="latent_score")
    report = build_evaluation_report(per_strategy, comparison, agreement, len(test),
                                     pictures={name: name for name in figures},
                                     reference_source=str(tables.reference["source"].iloc[0]),
                                     real_image_check=real_check, repeated=repeated, learning_curves=curves,
                                     provenance=provenance)
    return Evaluation(report=report, figures=figures, per_strategy=per_strategy, comparison=comparison,
                      repeated=repeated, n_test_images=len(test), log=log, warnings=warnings)
