"""The evaluation report: ranking-trained vs single-trained model, with the labelling cost beside it.

`evaluation.json` carries the contract keys that outside checks rely on (`validate_report`) plus richer fields;
`evaluation.md` lays the numbers out like the paper's result, our two models beside the paper's.

Public API:
- The report's blocks from the tables: `labelling_cost(raw, labels) -> dict`,
  `label_kappa_vs_reference(labels, reference) -> float | None`, `agreement_summary(rows) -> dict`.
- `StrategyEvaluation`: one strategy's inputs to the report (test metrics from
  `metrics.classification_metrics`, labelling cost, label quality, registry ids).
- `PAPER_RESULTS`: the numbers of Zaman et al. 2023 (abstract) used as the reference columns.
- `build_evaluation_report(per_strategy, comparison, agreement, n_test_images, pictures=None,
  reference_source=None) -> dict`: `per_strategy` maps "ranking"/"single" to `StrategyEvaluation`;
  `comparison` is `metrics.paired_comparison(y_true, pred_ranking, pred_single, groups=scan_ids)`
  (model a = ranking, b = single); `agreement` has `kappa_intra` and `kappa_inter` (single-image
  labelling; None when not measured) and any extra agreement figures; `pictures` maps a caption
  to a path relative to the reports folder.
- `validate_report(report) -> None`: raises `ReportContractError` listing every missing contract key.
- `write_report(report, reports_dir) -> (json_path, md_path)`: validates, then writes
  `evaluation.json` and `evaluation.md` atomically.
- `render_markdown(report) -> str`: the Markdown text (also handy for Dagster asset metadata).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cmr_assets.domain import STRATEGIES
from cmr_assets.evaluation.metrics import classification_metrics
from cmr_assets.fileio import write_atomically
from cmr_assets.labelling.campaign import expert_hours_spent
from cmr_assets.labels.agreement import label_accuracy

STRATEGY_CONTRACT_KEYS = ("test_accuracy", "test_macro_f1", "test_roc_auc", "label_accuracy_vs_reference",
                          "expert_hours", "images_labelled", "min_views_per_image")
PAPER_RESULTS: dict[str, Any] = {
    "source": "Zaman et al., J Med Artif Intell 2023;6:4, doi 10.21037/jmai-22-55 (abstract)",
    "strategies": {
        "ranking": {"test_accuracy": 0.86, "test_macro_f1": 0.86, "test_roc_auc": 0.95,
                    "expert_hours": 5.0, "min_views_per_image": 3},
        "single": {"test_accuracy": 0.72, "test_macro_f1": 0.75, "test_roc_auc": 0.86,
                   "expert_hours": 5.0, "min_views_per_image": 1},
    },
    "mcnemar_p": 0.02,
    "kappa_intra": 0.90,
    "kappa_inter": 0.77,
    "n_images": 3323,
}



def labelling_cost(raw: pd.DataFrame, labels: pd.DataFrame) -> dict:
    """Expert-hours spent, images that got a label, and views per labelled image."""
    labelled = labels[labels["label"].notna()]
    views = labelled["n_views"] if len(labelled) else pd.Series([0])
    return {"expert_hours": float(expert_hours_spent(raw).sum()), "images_labelled": len(labelled),
            "min_views_per_image": int(views.min()), "mean_views_per_image": float(views.mean())}


def label_kappa_vs_reference(labels: pd.DataFrame, reference: pd.DataFrame) -> float | None:
    """Cohen's kappa between a strategy's labels and the reference, over slices both label."""
    result = label_accuracy(labels, reference)
    return result["kappa"] if result["n"] else None


def agreement_summary(rows: pd.DataFrame) -> dict:
    """The agreement table as the report's `agreement` block (None for what was not measured), with
    the kappas' 95% intervals from their `detail` (`kappa_intra_ci95`, `kappa_inter_ci95`)."""
    values = {m: (None if pd.isna(v) else float(v)) for m, v in zip(rows.get("metric", []), rows.get("value", []),
                                                                     strict=True)}
    details = dict(zip(rows.get("metric", []), rows.get("detail", [None] * len(rows)), strict=True))
    intervals = {f"{m}_ci95": json.loads(details[m]).get("ci95") if details.get(m) else None
                 for m in ("kappa_intra", "kappa_inter")}
    return {"kappa_intra": values.get("kappa_intra"), "kappa_inter": values.get("kappa_inter"), **intervals,
            "kendall_tau_ranking": values.get("kendall_tau_ranking"),
            **{m: v for m, v in values.items() if m.startswith("label_accuracy_")}}


class ReportContractError(ValueError):
    """The report lacks keys that outside checks rely on (the product contract)."""


@dataclass(frozen=True)
class StrategyEvaluation:
    """One strategy's model on the common test set plus what its labels cost and how good they are.

    `metrics` is the dict from `classification_metrics`; `model` holds registry ids (e.g.
    `registered_model`, `version`, `run_id`, `model_uri`, `promotion_decision`).
    """

    metrics: Mapping[str, Any]
    expert_hours: float
    images_labelled: int
    min_views_per_image: int
    mean_views_per_image: float | None = None
    label_accuracy_vs_reference: float | None = None
    label_kappa_vs_reference: float | None = None
    model: Mapping[str, Any] = field(default_factory=dict)


def evaluate_strategy(strategy: str, y_true: np.ndarray, proba: np.ndarray, raw_answers: pd.DataFrame,
                      labels: pd.DataFrame, reference: pd.DataFrame, agreement: Mapping[str, Any],
                      model: Mapping[str, Any]) -> StrategyEvaluation:
    """One strategy's model on the common test set (`classification_metrics` of its class
    probabilities `proba` against `y_true`) beside what its labels cost (`labelling_cost` of its
    latest answers per task) and how they agree with the reference (accuracy from the `agreement`
    block, kappa over the slices both label). `model`: registry ids for the report."""
    return StrategyEvaluation(
        metrics=classification_metrics(y_true, proba), **labelling_cost(raw_answers, labels),
        label_accuracy_vs_reference=agreement.get(f"label_accuracy_{strategy}"),
        label_kappa_vs_reference=label_kappa_vs_reference(labels, reference), model=model)


def _jsonable(value: Any) -> Any:
    """Plain JSON types all the way down; NaN/inf become None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def _strategy_block(evaluation: StrategyEvaluation) -> dict[str, Any]:
    metrics = evaluation.metrics
    return {
        "test_accuracy": metrics["accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        "test_roc_auc": metrics["roc_auc"],
        "test_weighted_f1": metrics["weighted_f1"],
        "test_roc_auc_note": metrics.get("roc_auc_note"),
        "label_accuracy_vs_reference": evaluation.label_accuracy_vs_reference,
        "label_kappa_vs_reference": evaluation.label_kappa_vs_reference,
        "expert_hours": evaluation.expert_hours,
        "images_labelled": evaluation.images_labelled,
        "min_views_per_image": evaluation.min_views_per_image,
        "mean_views_per_image": evaluation.mean_views_per_image,
        "per_class": metrics["per_class"],
        "confusion_matrix": metrics["confusion_matrix"],
        "model": dict(evaluation.model),
    }


def build_evaluation_report(per_strategy: Mapping[str, StrategyEvaluation], comparison: Mapping[str, Any],
                            agreement: Mapping[str, Any], n_test_images: int,
                            pictures: Mapping[str, str] | None = None,
                            reference_source: str | None = None,
                            real_image_check: Mapping[str, Any] | None = None,
                            repeated: Mapping[str, Any] | None = None,
                            learning_curves: Mapping[str, Any] | None = None,
                            provenance: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the report dict (contract keys + detail); checks both models saw the same test set.

    `repeated` is `repeats.summarise_repeats(...)` over all repeats (repeat 0 = these models): its
    means and intervals join each strategy block (`test_accuracy_ci95`, ...) and `comparison`
    (`repeats`, `accuracy_diff_mean`, `accuracy_diff_ci95`, `per_repeat`). `learning_curves` is the
    `learning_curves` asset's document, kept as is. `provenance` (commit, machine, split, training
    settings) makes the figures reproducible.
    """
    missing = [s for s in STRATEGIES if s not in per_strategy]
    if missing:
        raise ValueError(f"per_strategy: missing strategy/strategies {missing}; got {sorted(per_strategy)}")
    for strategy in STRATEGIES:
        n_scored = per_strategy[strategy].metrics.get("n")
        if n_scored != n_test_images:
            raise ValueError(f"per_strategy[{strategy!r}]: metrics cover {n_scored} images but "
                             f"n_test_images is {n_test_images}; both models must use the same test set")
    if "mcnemar_p" not in comparison:
        raise ValueError("comparison: missing 'mcnemar_p' (build it with metrics.paired_comparison)")
    absent = [k for k in ("kappa_intra", "kappa_inter") if k not in agreement]
    if absent:
        raise ValueError(f"agreement: missing {absent} (use None when not measured)")
    strategy_blocks = {s: _strategy_block(per_strategy[s]) for s in STRATEGIES}
    comparison_block: dict[str, Any] = {"model_a": "ranking", "model_b": "single", **comparison}
    if repeated is not None:
        for strategy in STRATEGIES:
            strategy_blocks[strategy].update(repeated["strategies"][strategy])
        comparison_block.update({key: repeated[key] for key in ("repeats", "accuracy_diff_mean",
                                                                "accuracy_diff_ci95", "per_repeat")})
        comparison_block["repeats_interval"] = repeated["interval"]
    report = {
        "format_version": 1,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "n_test_images": int(n_test_images),
        "reference_source": reference_source,
        "strategies": strategy_blocks,
        "comparison": comparison_block,
        "agreement": dict(agreement),
        "paper": PAPER_RESULTS,
        "pictures": dict(pictures or {}),
        "real_image_check": dict(real_image_check) if real_image_check is not None else None,
        "learning_curves": dict(learning_curves) if learning_curves is not None else None,
        "provenance": dict(provenance or {}),
    }
    return _jsonable(report)


def validate_report(report: Mapping[str, Any]) -> None:
    """Raise `ReportContractError` naming every contract key the report lacks."""
    missing: list[str] = []
    if not isinstance(report.get("n_test_images"), int):
        missing.append("n_test_images (int)")
    strategies = report.get("strategies")
    for strategy in STRATEGIES:
        block = strategies.get(strategy) if isinstance(strategies, Mapping) else None
        if not isinstance(block, Mapping):
            missing.append(f"strategies.{strategy}")
            continue
        missing += [f"strategies.{strategy}.{k}" for k in STRATEGY_CONTRACT_KEYS if k not in block]
    comparison = report.get("comparison")
    if not isinstance(comparison, Mapping) or "mcnemar_p" not in comparison:
        missing.append("comparison.mcnemar_p")
    agreement = report.get("agreement")
    missing += [f"agreement.{k}" for k in ("kappa_intra", "kappa_inter")
                if not isinstance(agreement, Mapping) or k not in agreement]
    if missing:
        raise ReportContractError(f"evaluation report lacks contract key(s): {', '.join(missing)}")


def _fmt(value: Any, kind: str = "num") -> str:
    if value is None:
        return "n/r"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "hours":
        return f"{value:.1f}"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "p":
        return f"{value:.3g}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _fmt_paper(value: Any, kind: str) -> str:
    """The paper's numbers with the precision it published (86%, 0.86, 5 h)."""
    if value is None:
        return "n/r"
    return f"{100 * value:.0f}%" if kind == "pct" else f"{value:g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render_markdown(report: Mapping[str, Any]) -> str:
    """The human report: the paper-style table first, then the paired test, agreement and detail."""
    ours = report["strategies"]
    paper = report["paper"]["strategies"]
    rows_spec = [
        ("Test accuracy", "test_accuracy", "pct"),
        ("Test F1 (macro)", "test_macro_f1", "num"),
        ("Test ROC AUC (macro one-vs-rest)", "test_roc_auc", "num"),
        ("Test F1 (weighted)", "test_weighted_f1", "num"),
        ("Expert hours", "expert_hours", "hours"),
        ("Images labelled", "images_labelled", "int"),
        ("Views per image (min)", "min_views_per_image", "int"),
        ("Label accuracy vs reference", "label_accuracy_vs_reference", "pct"),
    ]
    rows = [[label] + [_fmt(ours[s].get(key), kind) for s in STRATEGIES]
            + [_fmt_paper(paper[s].get(key), kind) for s in STRATEGIES] for label, key, kind in rows_spec]
    comparison = report["comparison"]
    agreement = report["agreement"]
    lines = [
        "# Evaluation: ranking-trained vs single-image-trained slice classifier",
        "",
        f"Common test set: {report['n_test_images']:,} images, reference labels: "
        f"{report.get('reference_source') or 'not stated'}. Generated {report.get('generated_at', '')}.",
        "",
        *_table(["", "Ours: ranking", "Ours: single", "Paper: ranking", "Paper: single"], rows),
        "",
        f"n/r = not reported. Paper: {report['paper']['source']}; its cohort had "
        f"{report['paper']['n_images']:,} images after artefact exclusion.",
        "",
        "## Paired comparison (same test images)",
        "",
        f"- Exact McNemar test: p = {_fmt(comparison['mcnemar_p'], 'p')} "
        f"(ranking right / single wrong: {comparison.get('mcnemar_b', 'n/r')}, "
        f"single right / ranking wrong: {comparison.get('mcnemar_c', 'n/r')}); "
        f"paper: P = {report['paper']['mcnemar_p']}.",
    ]
    if "accuracy_difference" in comparison:
        boot = comparison.get("bootstrap", {})
        lines.append(
            "- Accuracy difference (ranking - single): "
            f"{100 * comparison['accuracy_difference']:+.1f} points, "
            f"{100 * boot.get('confidence', 0.95):.0f}% bootstrap interval "
            f"[{100 * comparison['accuracy_difference_ci_low']:+.1f}, "
            f"{100 * comparison['accuracy_difference_ci_high']:+.1f}] "
            f"({boot.get('n_boot', '?')} resamples of {boot.get('n_units', '?')} "
            f"{boot.get('resampling_unit', 'unit')}s).")
    lines += _repeated_lines(report)
    lines += [
        "",
        "## Observer agreement (single-image labelling, Cohen's kappa; 95% interval resampling slices)",
        "",
        *_table(["", "Ours", "Paper"], [
            *[[label, _with_interval(agreement.get(key), agreement.get(f"{key}_ci95")),
               _fmt_paper(report["paper"][key], "")]
              for label, key in (("Intra-observer", "kappa_intra"), ("Inter-observer", "kappa_inter"))],
            *[[f"Label kappa vs reference ({s})", _fmt(ours[s].get("label_kappa_vs_reference")), "n/r"]
              for s in STRATEGIES],
        ]),
    ]
    for strategy in STRATEGIES:
        block = ours[strategy]
        per_class = block["per_class"]
        confusion = block["confusion_matrix"]
        lines += ["", f"## {strategy}-trained model", ""]
        if block.get("test_roc_auc_note"):
            lines += [f"Note: {block['test_roc_auc_note']}.", ""]
        model = block.get("model") or {}
        if model:
            lines += ["Registry: " + ", ".join(f"{k} `{v}`" for k, v in model.items()), ""]
        lines += _table(["class", "precision", "recall", "F1", "ROC AUC", "support"], [
            [name, _fmt(v["precision"]), _fmt(v["recall"]), _fmt(v["f1"]), _fmt(v["roc_auc"]),
             _fmt(v["support"], "int")] for name, v in per_class.items()])
        lines += ["", "Confusion matrix (rows = truth, columns = prediction):", ""]
        lines += _table(["truth \\ predicted", *confusion["labels"]],
                        [[name, *map(str, row)] for name, row in zip(confusion["labels"], confusion["matrix"],
                                                                     strict=True)])
    lines += _learning_curve_lines(report.get("learning_curves"))
    lines += _real_image_lines(report.get("real_image_check"))
    pictures = report.get("pictures") or {}
    if pictures:
        lines += ["", "## Pictures", ""]
        lines += [f"![{caption}]({path})" for caption, path in pictures.items()]
    return "\n".join(lines) + "\n"


def _with_interval(value: Any, interval: Any, kind: str = "num") -> str:
    """A value with its [low, high] interval when there is one."""
    if value is None or not interval:
        return _fmt(value, kind)
    return f"{_fmt(value, kind)} [{_fmt(interval[0], kind)}, {_fmt(interval[1], kind)}]"


def _repeated_lines(report: Mapping[str, Any]) -> list[str]:
    """Means and intervals over repeats, and each repeat's paired result."""
    comparison = report["comparison"]
    if "repeats" not in comparison:
        return []
    ours = report["strategies"]
    rows = [[label] + [_with_interval(ours[s].get(f"test_{key}_mean"), ours[s].get(f"test_{key}_ci95"), kind)
                       for s in STRATEGIES]
            for label, key, kind in (("Test accuracy", "accuracy", "pct"), ("Test F1 (macro)", "macro_f1", "num"),
                                     ("Test ROC AUC", "roc_auc", "num"))]
    low, high = comparison.get("accuracy_diff_ci95") or (None, None)
    lines = ["", f"## Repeated comparison ({comparison['repeats']} repeats: new scan-level split and training "
             "seed each; repeat 0 = the registered models)", "",
             *_table(["mean [95% interval]", "ranking", "single"], rows), "",
             f"Accuracy difference (ranking - single): {100 * comparison['accuracy_diff_mean']:+.1f} points"
             + (f", [{100 * low:+.1f}, {100 * high:+.1f}]" if low is not None and high is not None else "")
             + f"; {comparison.get('repeats_interval', '')}.", ""]
    return lines + _table(["repeat", "test images", "ranking accuracy", "single accuracy", "McNemar p"], [
        [str(r["repeat"]), _fmt(r["n_test_images"], "int"), _fmt(r["ranking"]["accuracy"], "pct"),
         _fmt(r["single"]["accuracy"], "pct"), _fmt(r["mcnemar_p"], "p")] for r in comparison["per_repeat"]])


def _learning_curve_lines(curves: Mapping[str, Any] | None) -> list[str]:
    """The learning-curve table: both strategies at each budget of expert-hours per expert."""
    if not curves:
        return []
    model = curves.get("model")
    if model:
        length = f"{model['steps']} steps of {model['batch_size']}" if "steps" in model else f"{model['epochs']} epochs"
        note = (f"models: {model['architecture']} at {model['input_size']} px, {length}"
                + ("" if model.get("augment", True) else ", no augmentation"))
    else:
        note = "no models trained"
    return ["", f"## Learning curves (campaigns cut at each budget; {note})", "",
            *_table(["strategy", "h per expert", "images labelled", "label accuracy", "model test accuracy"], [
                [p["strategy"], f"{p['hours_per_expert']:g}", _fmt(p["images_labelled"], "int"),
                 _fmt(p["label_accuracy"], "pct"), _fmt(p["test_accuracy"], "pct")] for p in curves["points"]])]


def _real_image_lines(check: Mapping[str, Any] | None) -> list[str]:
    """The real-image check section: champions on real DICOM, raw model and filter decision."""
    if not check:
        return []
    lines = ["", "## Real-image check (champions on real scanner DICOM)", "", f"Data: {check.get('data')}.", ""]
    if check.get("error"):
        return lines + [f"Not run: {check['error']}."]
    rows = []
    for strategy, block in check.get("strategies", {}).items():
        summary = block["summary"]
        rows.append([
            f"{strategy} v{block['model']['version']} ({block['model'].get('training_data', 'unknown')})",
            f"{summary['n_lv']}", _fmt(summary.get("lv_recall_balanced_prior"), "pct"),
            _fmt(summary["lv_recall_model"], "pct"), _fmt(summary["lv_recall_filter"], "pct"),
            *[f"{summary[k]['removed']} of {summary[k]['n']} removed" for k in ("uncontoured_base",
                                                                                 "uncontoured_apex")],
            f"{summary['n_ood']} of {summary['n_slices']}"])
    shares = {block["summary"].get("lv_share") for block in check.get("strategies", {}).values()} - {None}
    prior = f"an LV share of {', '.join(f'{s:g}' for s in sorted(shares))}" if shares else "the deployment prior"
    return lines + _table(["champion (training data)", "contoured LV slices", "LV recall, balanced-prior argmax",
                           "LV recall, model class", "LV recall, filter keep", "uncontoured base",
                           "uncontoured apex", "OOD slices"], rows) + [
        "", f"Model class: the model's call before the monotone step under {prior} (the filter's class prior, "
        "docs/real_images.md); balanced-prior argmax: the network's own call, trained on balanced classes.",
        "Uncontoured slices are weaker evidence than contours: reported as decisions, not scored."]


def write_report(report: Mapping[str, Any], reports_dir: str | Path) -> tuple[Path, Path]:
    """Validate, then write `evaluation.json` and `evaluation.md` (atomic: no half-written report)."""
    validate_report(report)
    folder = Path(reports_dir)
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / "evaluation.json", folder / "evaluation.md"
    write_atomically(json_path, (json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n").encode())
    write_atomically(md_path, render_markdown(report).encode())
    return json_path, md_path
