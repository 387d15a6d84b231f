"""Pictures shared by every domain (montages, confusion matrices, ROC curves, score distributions,
learning curves) for the reports, MLflow and the Dagster UI (matplotlib, headless Agg backend).

Every function returns the PNG bytes and, when `path` is given, also writes them there (parent
folders created), so the same picture can go to `reports/`, to MLflow and into asset metadata.

Public API:
- `confusion_matrix_png(matrix, class_names=CLASS_NAMES, title="", path=None) -> bytes`
- `roc_curves_png(y_true, probas: dict[model name, (n, 3) array], class_names=CLASS_NAMES,
  path=None) -> bytes`: one panel per class (one-vs-rest), every model's curve in each panel.
- `rank_score_distribution_png(frame, score_column="score", label_column="label",
  class_names=CLASS_NAMES, path=None) -> bytes`: histograms of the ranking's latent score per
  class (labels as names or indices).
- `montage(images: list of 2-D uint8 arrays, titles, ncols=8, path=None) -> bytes`.
- `strategy_sensitivity_png(frame, default=(noise, share, divider), path=None) -> bytes`: ranking
  minus single label accuracy over the side-by-side assumptions (`labels/sensitivity.py`), one
  panel per divider assumption, the break-even (difference 0) drawn as a line.
- `repeats_png(summary, path=None)`, `learning_curves_png(curves, path=None)`: the repeated comparison
  and the learning curves of the strategy experiment.
- `archive_decisions_png(decisions, path=None)`: where along the stacks the archive-wide filter
  keeps and removes slices.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import auc, roc_curve  # noqa: E402

from cmr_assets.domain import CLASS_NAMES  # noqa: E402

_DPI = 110


def _finish(fig: Figure, path: str | Path | None) -> bytes:
    """Render to PNG bytes, optionally write them, and always free the figure."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    data = buffer.getvalue()
    if path is not None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return data


def confusion_matrix_png(matrix: Any, class_names: Sequence[str] = CLASS_NAMES, title: str = "",
                         path: str | Path | None = None) -> bytes:
    """Counts with row-normalised shading (rows = truth), so recall per class reads off the colour."""
    counts = np.asarray(matrix, dtype=np.int64)
    k = len(class_names)
    if counts.shape != (k, k):
        raise ValueError(f"matrix: expected shape ({k}, {k}), got {counts.shape}")
    row_totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{counts[i, j]}\n{shares[i, j]:.0%}", ha="center", va="center",
                    color="white" if shares[i, j] > 0.6 else "black", fontsize=9)
    ax.set_xticks(range(k), class_names)
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    ax.set_title(title or "Confusion matrix")
    return _finish(fig, path)


def roc_curves_png(y_true: Any, probas: Mapping[str, Any], class_names: Sequence[str] = CLASS_NAMES,
                   path: str | Path | None = None) -> bytes:
    """One-vs-rest ROC per class with every model overlaid, to compare the strategies class by class."""
    truth = np.asarray(y_true)
    k = len(class_names)
    fig, axes = plt.subplots(1, k, figsize=(4.0 * k, 4.0), squeeze=False)
    for cls, (ax, name) in enumerate(zip(axes[0], class_names, strict=True)):
        positives = truth == cls
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        if positives.all() or not positives.any():
            ax.text(0.5, 0.5, "undefined:\nno positives or\nno negatives", ha="center", va="center")
        else:
            for model_name, proba in probas.items():
                scores = np.asarray(proba, dtype=np.float64)
                if scores.shape != (truth.size, k):
                    raise ValueError(f"probas[{model_name!r}]: expected shape ({truth.size}, {k}), "
                                     f"got {scores.shape}")
                fpr, tpr, _ = roc_curve(positives, scores[:, cls])
                ax.plot(fpr, tpr, label=f"{model_name} (AUC {auc(fpr, tpr):.3f})")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_title(f"{name} vs rest")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_aspect("equal")
    return _finish(fig, path)


def rank_score_distribution_png(frame: pd.DataFrame, score_column: str = "score",
                                label_column: str = "label", class_names: Sequence[str] = CLASS_NAMES,
                                path: str | Path | None = None) -> bytes:
    """Histogram of the ranking's latent (base -> apex) score per class: where the class cuts fall."""
    missing = [c for c in (score_column, label_column) if c not in frame.columns]
    if missing:
        raise ValueError(f"frame: missing column(s) {missing}; has {list(frame.columns)}")
    scores = pd.to_numeric(frame[score_column], errors="coerce").to_numpy(dtype=np.float64)
    labels = frame[label_column].map(lambda v: class_names[int(v)] if isinstance(v, int | np.integer) else v)
    finite = np.isfinite(scores)
    if not finite.any():
        raise ValueError(f"frame[{score_column!r}]: no finite scores to plot")
    bins = np.histogram_bin_edges(scores[finite], bins=40)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name in class_names:
        selected = finite & (labels == name).to_numpy()
        ax.hist(scores[selected], bins=bins.tolist(), alpha=0.55, label=f"{name} (n={int(selected.sum())})")
    ax.set_xlabel(f"latent rank score ({score_column}), base -> apex")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax.set_title("Ranking score by class")
    return _finish(fig, path)


def montage(images: Sequence[Any], titles: Sequence[str] | None = None, ncols: int = 8,
            path: str | Path | None = None) -> bytes:
    """Grid of grey-scale slices (e.g. one scan base -> apex with predicted classes as titles)."""
    if not images:
        raise ValueError("images: nothing to draw")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"titles: expected {len(images)} titles, got {len(titles)}")
    if ncols < 1:
        raise ValueError(f"ncols: must be at least 1, got {ncols}")
    ncols = min(ncols, len(images))
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.75 * nrows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= len(images):
            continue
        image = np.asarray(images[index])
        if image.ndim != 2:
            raise ValueError(f"images[{index}]: expected a 2-D grey-scale array, got shape {image.shape}")
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        if titles is not None:
            ax.set_title(titles[index], fontsize=7)
    return _finish(fig, path)


def strategy_sensitivity_png(frame: pd.DataFrame, default: tuple[float, float, float] | None = None,
                             path: str | Path | None = None) -> bytes:
    """Ranking minus single label accuracy (percentage points) at equal expert-hours. Heat maps:
    side-by-side fresh noise (x) against the share of the personal impression kept (y), one per
    divider assumption (black line = break-even, square = the simulator's default). Last panel:
    against expert time per ranked batch, at the default and the most pessimistic perception."""
    perception = frame[frame["sweep"] == "perception"]
    time = frame[frame["sweep"] == "time"]
    dividers = sorted(perception["divider_impression_share"].unique())
    limit = max(float(np.abs(frame["ranking_minus_single"]).max()) * 100, 0.5)
    n_panels = len(dividers) + (1 if len(time) else 0)
    fig, axes = plt.subplots(1, n_panels, figsize=(4.3 * n_panels + 0.8, 4.0), squeeze=False, layout="constrained")
    mesh = None
    for ax, divider in zip(axes[0], dividers, strict=False):
        grid = perception[perception["divider_impression_share"] == divider].pivot(
            index="side_by_side_impression_share", columns="side_by_side_noise_sd", values="ranking_minus_single")
        x, y, z = grid.columns.to_numpy(), grid.index.to_numpy(), grid.to_numpy() * 100
        mesh = ax.pcolormesh(x, y, z, cmap="RdBu", vmin=-limit, vmax=limit, shading="nearest")
        if z.min() < 0 < z.max():
            ax.contour(x, y, z, levels=[0.0], colors="black", linewidths=2)
        for (i, j), value in np.ndenumerate(z):
            ax.text(x[j], y[i], f"{value:+.1f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(value) > 0.6 * limit else "black")
        if default is not None and default[2] == divider:
            ax.plot(default[0], default[1], marker="s", mfc="none", color="black", markersize=26, mew=2)
        ax.set_xlabel("side-by-side fresh noise sd (position01)")
        if ax is axes[0, 0]:
            ax.set_ylabel("share of personal impression kept side by side")
        ax.set_title(f"dividers placed {'with' if divider > 0 else 'without'} the impression", fontsize=9)
    if mesh is not None:
        fig.colorbar(mesh, ax=axes[0, len(dividers) - 1], label="ranking - single (points)")
    if len(time):
        ax = axes[0, -1]
        pessimistic = time["side_by_side_impression_share"] == 1.0
        for name, curve in (("default perception", time[~pessimistic]), ("pessimistic perception", time[pessimistic])):
            curve = curve.sort_values("seconds_per_batch")
            ax.plot(curve["seconds_per_batch"], curve["ranking_minus_single"] * 100, marker="o", label=name)
        ax.axhline(0.0, color="black", linewidth=1)
        ax.set_xlabel("expert seconds per ranked batch of 8")
        ax.set_ylabel("ranking - single (points)")
        ax.set_title("expert time per batch (single: 11 s per image)", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"Label accuracy at equal expert-hours (single: {frame['single_label_accuracy'].iloc[0]:.1%}); "
                 "above 0 / blue: ranking ahead", fontsize=9)
    return _finish(fig, path)


def repeats_png(summary: Mapping[str, Any], path: str | Path | None = None) -> bytes:
    """Each repeat's test accuracy per strategy (dots joined per repeat: the pairing), with each
    strategy's mean and interval from `repeats.summarise_repeats`."""
    per_repeat = summary["per_repeat"]
    strategies = list(summary["strategies"])
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for block in per_repeat:
        ax.plot(range(len(strategies)), [block[s]["accuracy"] for s in strategies], "o-", color="0.6",
                alpha=0.7, markersize=4)
    for x, strategy in enumerate(strategies):
        stats = summary["strategies"][strategy]
        low, high = stats["test_accuracy_ci95"] or (np.nan, np.nan)
        ax.errorbar(x + 0.12, stats["test_accuracy_mean"],
                    yerr=[[stats["test_accuracy_mean"] - low], [high - stats["test_accuracy_mean"]]],
                    fmt="s", color="C0" if x == 0 else "C1", capsize=5, label=f"{strategy}: mean, 95% interval")
    ax.set_xticks(range(len(strategies)), strategies)
    ax.set_xlim(-0.5, len(strategies) - 0.5)
    ax.set_ylabel("test accuracy")
    diff_low, diff_high = summary["accuracy_diff_ci95"] or (np.nan, np.nan)
    ax.set_title(f"{summary['repeats']} repeats; ranking - single {100 * summary['accuracy_diff_mean']:+.1f} "
                 f"points [{100 * diff_low:+.1f}, {100 * diff_high:+.1f}]", fontsize=9)
    ax.legend(fontsize=7, loc="lower center")
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def learning_curves_png(curves: pd.DataFrame, path: str | Path | None = None) -> bytes:
    """Label accuracy and model test accuracy against expert-hours per expert, one line per strategy
    (frame columns: strategy, hours_per_expert, label_accuracy, test_accuracy)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    for strategy, rows in curves.sort_values("hours_per_expert").groupby("strategy", sort=True):
        for ax, column in zip(axes, ("label_accuracy", "test_accuracy"), strict=True):
            ax.plot(rows["hours_per_expert"], rows[column], "o-", label=strategy)
    for ax, title in zip(axes, ("labels vs reference", "model on the test set"), strict=True):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("expert-hours per expert")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _finish(fig, path)


ARCHIVE_OUTCOMES = ("removed: too basal", "kept: LV", "kept: cannot judge", "removed: too apical")


def archive_decisions_png(decisions: pd.DataFrame, path: str | Path | None = None) -> bytes:
    """Share of each decision by relative position in the stack (base 0 -> apex 1, tenths), with the
    number of slices per tenth: a filter that holds removes at the ends and keeps the middle."""
    last = decisions.groupby("scan_id")["slice_from_base"].transform("max").clip(lower=1)
    tenth = np.minimum((decisions["slice_from_base"] / last * 10).astype(int), 9)
    outcome = np.where(decisions["ood"], ARCHIVE_OUTCOMES[2], np.where(
        decisions["keep"], ARCHIVE_OUTCOMES[1],
        np.where(decisions["filter_class"] == "too_basal", ARCHIVE_OUTCOMES[0], ARCHIVE_OUTCOMES[3])))
    counts = pd.crosstab(tenth, outcome).reindex(index=range(10), columns=list(ARCHIVE_OUTCOMES), fill_value=0)
    shares = counts.div(counts.sum(axis=1).replace(0, 1), axis=0)
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    bottom = np.zeros(10)
    for name, colour in zip(ARCHIVE_OUTCOMES, ("C1", "C2", "0.6", "C0"), strict=True):
        ax.bar(np.arange(10) / 10 + 0.05, shares[name], width=0.09, bottom=bottom, color=colour, label=name)
        bottom += shares[name].to_numpy()
    for x, n in enumerate(counts.sum(axis=1)):
        ax.text(x / 10 + 0.05, 1.01, str(int(n)), ha="center", va="bottom", fontsize=6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("position in the stack (base 0 -> apex 1)")
    ax.set_ylabel("share of slices")
    ax.set_title(f"archive filter: {decisions['scan_id'].nunique()} scans, {len(decisions)} slices, "
                 f"{int(decisions['keep'].sum())} kept", fontsize=9)
    ax.legend(fontsize=7, loc="lower center", ncol=2)
    return _finish(fig, path)
