"""Recorded results: every results table in the README comes from a file under `docs/results/`.

`cmr-assets record-results NAME` copies what a pipeline run wrote to `reports/` (the evaluation
report with its provenance: commit, machine, split, training settings and seeds; the learning
curves; the demo profile) into `docs/results/NAME.json`, and prints the README table rendered from
it. A test renders the table again from each committed file and checks that the README holds it
verbatim between `<!-- results: NAME -->` and `<!-- /results -->`, so a README figure cannot drift
from its source.

Public API:
- `record_results(reports_dir, name, note="") -> dict`: the document (also what gets written).
- `write_record(document, results_dir) -> Path`
- `render_results_table(document) -> str`: the markdown table for the README.
- `readme_block(document) -> str`: the table between its markers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cmr_assets.domain import STRATEGIES
from cmr_assets.fileio import write_atomically

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def record_results(reports_dir: Path, name: str, note: str = "") -> dict[str, Any]:
    """The run's report files gathered into one document; raises `FileNotFoundError` naming the
    missing report when the pipeline has not written it."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"name: expected lowercase letters, digits, '-' or '_' (up to 64), got {name!r}")
    evaluation_path = reports_dir / "evaluation.json"
    if not evaluation_path.exists():
        raise FileNotFoundError(f"{evaluation_path}: no evaluation report; run `cmr-assets demo` first")
    document: dict[str, Any] = {"name": name, "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
                                "note": note, "evaluation": json.loads(evaluation_path.read_text())}
    for key in ("demo_profile", "strategy_sensitivity"):
        path = reports_dir / f"{key}.json"
        if path.exists():
            document[key] = json.loads(path.read_text())
    return document


def write_record(document: dict[str, Any], results_dir: Path) -> Path:
    path = results_dir / f"{document['name']}.json"
    write_atomically(path, (json.dumps(document, indent=1, sort_keys=True) + "\n").encode())
    return path


def _pct(value: Any) -> str:
    return "n/r" if value is None else f"{100 * value:.1f}%"


def _num(value: Any, digits: int = 3) -> str:
    return "n/r" if value is None else f"{value:.{digits}f}"


def _interval(values: Any, pct: bool) -> str:
    if not values:
        return ""
    low, high = values
    return f" [{_pct(low)}, {_pct(high)}]" if pct else f" [{_num(low)}, {_num(high)}]"


def render_results_table(document: dict[str, Any]) -> str:
    """One row per figure, ranking and single side by side, intervals where the report has them."""
    report = document["evaluation"]
    ours, comparison, agreement = report["strategies"], report["comparison"], report["agreement"]
    repeats = comparison.get("repeats")

    def both(render: Callable[[dict[str, Any]], str]) -> list[str]:
        return [render(ours[s]) for s in STRATEGIES]

    rows = [
        ["label accuracy vs reference", *both(lambda b: _pct(b.get("label_accuracy_vs_reference")))],
        ["expert-hours (all experts) / images labelled",
         *both(lambda b: f"{b['expert_hours']:.1f} h / {b['images_labelled']:,}")],
        ["test accuracy, registered models", *both(lambda b: _pct(b["test_accuracy"]))],
        ["test macro-F1, registered models", *both(lambda b: _num(b["test_macro_f1"]))],
        ["test ROC AUC, registered models", *both(lambda b: _num(b["test_roc_auc"]))],
    ]
    if repeats:
        rows += [[f"test accuracy, mean of {repeats} repeats [95% interval]",
                  *both(lambda b: _pct(b.get("test_accuracy_mean")) + _interval(b.get("test_accuracy_ci95"), True))],
                 [f"test macro-F1, mean of {repeats} repeats [95% interval]",
                  *both(lambda b: _num(b.get("test_macro_f1_mean")) + _interval(b.get("test_macro_f1_ci95"), False))],
                 ["accuracy difference ranking - single [95% interval]",
                  f"{100 * comparison['accuracy_diff_mean']:+.1f} points"
                  + (" [{:+.1f}, {:+.1f}]".format(*(100 * v for v in comparison["accuracy_diff_ci95"]))
                     if comparison.get("accuracy_diff_ci95") else ""), ""],
                 ["McNemar p per repeat", ", ".join(f"{r['mcnemar_p']:.2g}" for r in comparison["per_repeat"]), ""]]
    else:
        rows.append(["McNemar p", f"{comparison['mcnemar_p']:.2g}", ""])
    rows.append(["kappa intra / inter (single labelling) [95% interval]", "",
                 " / ".join(_num(agreement.get(k), 2) + _interval(agreement.get(f"{k}_ci95"), False)
                            for k in ("kappa_intra", "kappa_inter"))])
    real = (report.get("real_image_check") or {}).get("strategies") or {}
    if real:
        rows.append(["real patients: contoured LV slices called `lv` / kept by the filter",
                     *[f"{_pct(real[s]['summary']['lv_recall_model'])} / {_pct(real[s]['summary']['lv_recall_filter'])}"
                       if s in real else "n/r" for s in STRATEGIES]])
    provenance = report.get("provenance") or {}
    machine = provenance.get("machine") or {}
    training = (provenance.get("training") or {}).get("ranking") or {}
    wall = (document.get("demo_profile") or {}).get("wall_seconds")
    lines = ["| | ranking | single |", "|---|---|---|", *("| " + " | ".join(r) + " |" for r in rows), "",
             f"Source: `docs/results/{document['name']}.json` (commit {provenance.get('git_commit', 'unknown')}, "
             f"{machine.get('cpu_cores', '?')} cores, {training.get('architecture', '?')} "
             f"{training.get('epochs', '?')} epochs on {training.get('device', '?')}"
             + (f", demo {wall / 60:.1f} min" if wall else "") + f"; recorded {document['recorded_at'][:10]})."]
    return "\n".join(lines)


def readme_block(document: dict[str, Any]) -> str:
    """The table with the markers the README test looks for."""
    return f"<!-- results: {document['name']} -->\n{render_results_table(document)}\n<!-- /results -->"
