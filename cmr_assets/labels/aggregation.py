"""Turn raw annotations of both strategies into one label per slice (``labels_single``, ``labels_ranking``).

Single-image strategy (``aggregate_single``): each slice's label is the mode of its usable votes
(votes with ``artefact`` false and a label). When several classes tie for the mode, the label is
the median vote (classes are ordinal), and when the median falls between two classes (an even
number of votes split across them, e.g. one ``too_basal`` and one ``lv``) it is ``lv``: every such
split borders ``lv``, and keeping a slice by mistake costs the clinical filter less than dropping
an LV slice. ``p_*`` are the vote fractions among usable votes.

Ranking strategy (``aggregate_ranking``): a Plackett-Luce fit (``plackett_luce``) places every
ranked slice on one latent axis that increases toward the apex. Every view of an image in a batch
implies a class from the two divider positions; an ordered-logit (cumulative logit) model
``P(class <= c | s) = sigmoid(slope * (cut_c - s))`` for c in {too_basal, lv} is fitted by maximum
likelihood to all those implied classes at the images' latent scores, which turns the dividers into
two cut points on the latent axis. How an image's label follows (``RANKING_METHODS``; compared on
simulated campaigns in docs/methods.md, ``scripts/ranking_aggregation_experiment.py``):

- ``score_cuts``: the ordered logit's class probabilities at the image's score, argmax (the first
  method; it ignores the image's own divider votes and the score's standard error).
- ``divider_majority``: the most frequent class its views' dividers imply, ties by ``score_cuts``.
- ``dawid_skene``: the divider-implied classes weighted by each expert's confusion matrix, fitted
  by EM (Dawid & Skene 1979) with one class prior for all images.
- ``score_dawid_skene`` (default): Dawid-Skene whose per-image prior is the ordered logit at the
  image's score, widened by the score's Laplace standard error (probit approximation
  ``slope / sqrt(1 + pi slope^2 se^2 / 8)``): an image's own dividers decide where they are clear,
  its place on the shared axis where they split. The posterior is the soft label (``p_*``).

Artefacts (both strategies): a slice is ``artefact_excluded`` when more than half of its views
flagged it (as the paper excluded artefact images); it keeps its row and its statistics, but its
label is null. Excluded images still take part in the Plackett-Luce fit (the expert did rank them)
but not in the cut-point fit.

Records that contradict the tasks or slices (defensive: ingestion validates first) are skipped
with a warning naming ``source_file`` and ``line``; the rest is aggregated.

Public API:
- ``aggregate_single(raw_single, tasks_single) -> DataFrame`` columns ``SINGLE_COLUMNS``
- ``aggregate_ranking(raw_ranking, slices, alpha=0.01, method="score_dawid_skene") -> RankingAggregation``
- ``RankingAggregation(labels, cut_points, slope, fit)``; ``labels`` columns ``RANKING_COLUMNS``
- ``fit_ordered_logit(scores, classes) -> (cut_points, slope)``,
  ``ordered_logit_probabilities(scores, cut_points, slope) -> (n, 3)``
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.optimize import minimize
from scipy.special import expit, log_expit

from cmr_assets.domain import BATCH_SIZE, CLASS_INDEX, CLASS_NAMES, N_CLASSES
from cmr_assets.labels.plackett_luce import PlackettLuceFit, fit_plackett_luce

logger = logging.getLogger(__name__)

PROBABILITY_COLUMNS = tuple(f"p_{name}" for name in CLASS_NAMES)
SINGLE_COLUMNS = (
    "slice_id", "label", *PROBABILITY_COLUMNS, "n_votes", "n_views", "n_annotators",
    "n_artefact_flags", "artefact_excluded",
)
RANKING_METHODS = ("score_cuts", "divider_majority", "dawid_skene", "score_dawid_skene")
DEFAULT_RANKING_METHOD = "score_dawid_skene"
RANKING_COLUMNS = (
    "slice_id", "label", *PROBABILITY_COLUMNS, "latent_score", "score_se", "n_views", "n_annotators",
    "n_artefact_flags", "artefact_excluded",
)


@dataclass(frozen=True)
class RankingAggregation:
    """Ranking labels plus the fitted ordered-logit cut points (latent units) and slope."""

    labels: pd.DataFrame
    cut_points: tuple[float, float]
    slope: float
    fit: PlackettLuceFit


def _skip_records(frame: pd.DataFrame, bad: pd.Series, reason: str) -> pd.DataFrame:
    """Log every bad record by file and line, and return the good ones."""
    for record in frame.loc[bad].itertuples():
        logger.warning("skipping annotation %s line %s: %s", record.source_file, record.line, reason)
    return frame.loc[~bad]


def artefact_majority(n_artefact_flags: np.ndarray, n_views: np.ndarray) -> np.ndarray:
    """True where more than half of the views flagged the image as artefact."""
    return 2 * np.asarray(n_artefact_flags) > np.asarray(n_views)


def _vote_label(counts: np.ndarray) -> np.ndarray:
    """Mode of the votes per row of ``counts`` (n, 3); ties -> median vote; split median -> lv."""
    n_votes = counts.sum(axis=1)
    cumulative = counts.cumsum(axis=1)
    lower_median = (cumulative > ((n_votes - 1) // 2)[:, None]).argmax(axis=1)
    upper_median = (cumulative > (n_votes // 2)[:, None]).argmax(axis=1)
    median = np.where(lower_median == upper_median, lower_median, CLASS_INDEX["lv"])
    tied = (counts == counts.max(axis=1, keepdims=True)).sum(axis=1) > 1
    return np.where(tied, median, counts.argmax(axis=1))


def _class_names(indices: np.ndarray, labelled: np.ndarray) -> list[str | None]:
    """Class names for labelled rows, None elsewhere."""
    return [CLASS_NAMES[i] if keep else None for i, keep in zip(indices, labelled, strict=True)]


def aggregate_single(raw_single: pd.DataFrame, tasks_single: pd.DataFrame) -> pd.DataFrame:
    """One row per annotated slice: majority label, vote fractions and artefact exclusion."""
    tasks = tasks_single.set_index("task_id")
    task_slice = raw_single["task_id"].map(tasks["slice_id"])
    records = _skip_records(raw_single, task_slice.isna(), "unknown task_id")
    records = _skip_records(
        records, records["slice_id"] != task_slice.loc[records.index], "slice_id differs from its task's"
    )
    label_known = records["label"].isin(CLASS_NAMES)
    invalid_label = ~(label_known | (records["label"].isna() & records["artefact"].astype(bool)))
    records = _skip_records(records, invalid_label, "label missing or not in the class set")
    artefact = records["artefact"].astype(bool)
    usable = records.loc[~artefact & records["label"].notna()]
    grouped = records.groupby("slice_id", sort=True)
    slice_ids = grouped.size().index
    counts = (
        pd.crosstab(usable["slice_id"], pd.Categorical(usable["label"], categories=CLASS_NAMES))
        .reindex(index=slice_ids, columns=list(CLASS_NAMES), fill_value=0)
        .to_numpy()
    )
    n_views = grouped.size().to_numpy()
    n_flags = artefact.groupby(records["slice_id"]).sum().reindex(slice_ids).to_numpy()
    excluded = artefact_majority(n_flags, n_views)
    n_votes = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = counts / n_votes[:, None]
    labels = pd.DataFrame(
        {
            "slice_id": slice_ids.to_numpy(),
            "label": _class_names(_vote_label(counts), ~excluded & (n_votes > 0)),
            **{column: fractions[:, c] for c, column in enumerate(PROBABILITY_COLUMNS)},
            "n_votes": n_votes,
            "n_views": n_views,
            "n_annotators": grouped["annotator_id"].nunique().to_numpy(),
            "n_artefact_flags": n_flags.astype(int),
            "artefact_excluded": excluded,
        }
    )
    return labels.loc[:, list(SINGLE_COLUMNS)]


def ordered_logit_probabilities(
    scores: np.ndarray, cut_points: tuple[float, float], slope: float, score_se: np.ndarray | None = None
) -> np.ndarray:
    """Class probabilities (n, 3) of the cumulative-logit model at latent ``scores``; with
    ``score_se`` averaged over each score's normal uncertainty (probit approximation)."""
    scores = np.asarray(scores, dtype=float)
    slopes = np.full(len(scores), slope) if score_se is None else \
        slope / np.sqrt(1.0 + np.pi * slope**2 * np.asarray(score_se, dtype=float) ** 2 / 8.0)
    below = expit(slopes[:, None] * (np.asarray(cut_points)[None, :] - scores[:, None]))  # P(y <= c)
    return np.diff(np.column_stack([np.zeros(len(scores)), below, np.ones(len(scores))]), axis=1)


def _ordered_logit_log_likelihood(params: np.ndarray, by_class: tuple[np.ndarray, ...]) -> float:
    """Log-likelihood in (cut_0, log(cut_1 - cut_0), log slope), computed in log space, from the
    scores of the views of each class (split once: each term is evaluated on its own views only)."""
    cut_low, cut_high = params[0], params[0] + np.exp(params[1])
    slope = np.exp(params[2])
    below, lv, above = by_class
    # P(lv) = sigmoid(z_high) - sigmoid(z_low) = sigmoid(z_high) sigmoid(-z_low) (1 - exp(z_low - z_high))
    log_lv = (log_expit(slope * (cut_high - lv)) + log_expit(-slope * (cut_low - lv))
              + np.log1p(-np.exp(slope * (cut_low - cut_high))))
    return float(log_expit(slope * (cut_low - below)).sum() + log_lv.sum()
                 + log_expit(-slope * (cut_high - above)).sum())


class CutPointsError(ValueError):
    """The views do not imply all three classes, so the ranking's cut points cannot be placed (a
    campaign cut very early, or a cohort without one of the classes)."""


def fit_ordered_logit(scores: np.ndarray, classes: np.ndarray) -> tuple[tuple[float, float], float]:
    """Maximum-likelihood cut points (latent units, increasing) and slope (> 0) of a 3-class
    cumulative logit of ``classes`` (0/1/2) given latent ``scores``."""
    scores, classes = np.asarray(scores, float), np.asarray(classes)
    missing = [CLASS_NAMES[c] for c in range(N_CLASSES) if not (classes == c).any()]
    if missing:
        raise CutPointsError(f"cannot place cut points: no view implies class {missing}")
    share_low = (classes == 0).mean()
    share_upto_lv = (classes <= 1).mean()
    start_low, start_high = np.quantile(scores, [share_low, share_upto_lv])
    start = np.array([start_low, np.log(max(start_high - start_low, 1e-3)), 0.0])
    by_class = tuple(scores[classes == c] for c in range(N_CLASSES))
    result = minimize(lambda p: -_ordered_logit_log_likelihood(p, by_class), start, method="BFGS")
    if not np.isfinite(result.fun):
        raise ValueError(f"ordered-logit fit failed: {result.message}")
    cut_low = float(result.x[0])
    return (cut_low, cut_low + float(np.exp(result.x[1]))), float(np.exp(result.x[2]))


def dawid_skene(items: np.ndarray, raters: np.ndarray, classes: np.ndarray, prior: np.ndarray,
                fit_prior: bool, n_iter: int = 50) -> np.ndarray:
    """Posterior class probabilities (n_items, 3) of items rated by several raters (one row per
    rating: item, rater, class), each rater with their own confusion matrix fitted by EM.

    ``prior`` (n_items, 3) starts the EM; with ``fit_prior`` one class prior shared by every item is
    re-estimated (classic Dawid-Skene), otherwise ``prior`` stays each item's own prior.
    Items without a rating keep their prior."""
    n_items = len(prior)
    n_raters = int(raters.max()) + 1 if len(raters) else 0
    log_prior = np.log(np.clip(prior, 1e-12, None))
    posterior = prior.copy()
    # ratings counted per (item, rater and given class): both EM steps become products with this
    # sparse matrix, linear in the ratings, instead of gathers and scatters of every rating
    given = sp.csr_matrix((np.ones(len(items)), (items, raters * N_CLASSES + classes)),
                          shape=(n_items, n_raters * N_CLASSES))
    given_t = given.T.tocsr()
    for _ in range(n_iter):
        counts = 0.5 + (given_t @ posterior).reshape(n_raters, N_CLASSES, N_CLASSES)  # add-half smoothing
        counts = counts.transpose(0, 2, 1)  # [rater, true, given]
        log_confusion = np.log(counts / counts.sum(axis=2, keepdims=True))
        if fit_prior:
            log_prior = np.broadcast_to(np.log(posterior.mean(axis=0) + 1e-12), (n_items, N_CLASSES))
        # evidence per (rater, given) code for each true class: log_confusion[rater, true, given]
        log_post = log_prior + given @ log_confusion.transpose(0, 2, 1).reshape(n_raters * N_CLASSES, N_CLASSES)
        updated: np.ndarray = np.exp(log_post - log_post.max(axis=1, keepdims=True))
        updated /= updated.sum(axis=1, keepdims=True)
        if np.abs(updated - posterior).max() < 1e-6:
            return updated
        posterior = updated
    return posterior


def _ranking_probabilities(method: str, fit: PlackettLuceFit, cut_points: tuple[float, float], slope: float,
                           items: np.ndarray, raters: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Class probabilities (n_items, 3) of the ranked images by one of ``RANKING_METHODS``, from the
    kept views (item, rater, divider-implied class) and the score model."""
    at_score = ordered_logit_probabilities(fit.scores, cut_points, slope)
    if method == "score_cuts":
        return at_score
    votes = np.bincount(items * N_CLASSES + classes,
                        minlength=len(at_score) * N_CLASSES).reshape(len(at_score), N_CLASSES).astype(float)
    n_votes = votes.sum(axis=1, keepdims=True)
    majority = np.where(n_votes > 0, (votes + 1e-3 * at_score) / np.maximum(n_votes + 1e-3, 1e-12), at_score)
    if method == "divider_majority":
        return majority
    if method == "dawid_skene":
        return dawid_skene(items, raters, classes, majority, fit_prior=True)
    if method == "score_dawid_skene":
        widened = ordered_logit_probabilities(fit.scores, cut_points, slope, fit.standard_errors)
        return dawid_skene(items, raters, classes, widened, fit_prior=False)
    raise ValueError(f"unknown ranking aggregation method {method!r}; choose from {RANKING_METHODS}")


def _valid_rankings(raw_ranking: pd.DataFrame, known_slices: pd.Index) -> pd.DataFrame:
    """Ranking records with 8 known distinct ids and ordered in-range dividers; others skipped."""
    orders = raw_ranking["order"].map(list)
    wrong_size = orders.map(lambda order: len(order) != BATCH_SIZE or len(set(order)) != BATCH_SIZE)
    records = _skip_records(raw_ranking, wrong_size, f"order is not {BATCH_SIZE} distinct slice ids")
    known_set = set(known_slices)
    unknown = records["order"].map(lambda order: not known_set.issuperset(order))
    records = _skip_records(records, unknown, "order names a slice that is not in the slices table")
    a, b = records["divider_a"], records["divider_b"]
    return _skip_records(records, ~((a >= 0) & (a <= b) & (b <= BATCH_SIZE)), "dividers out of order")


def aggregate_ranking(
    raw_ranking: pd.DataFrame, slices: pd.DataFrame, alpha: float = 0.01, method: str = DEFAULT_RANKING_METHOD
) -> RankingAggregation:
    """One row per ranked slice: latent score (Plackett-Luce), class probabilities and label by
    ``method`` (``RANKING_METHODS``), views and artefact exclusion; plus the fitted cut points and slope."""
    if method not in RANKING_METHODS:
        raise ValueError(f"unknown ranking aggregation method {method!r}; choose from {RANKING_METHODS}")
    known = pd.Index(slices["slice_id"])
    records = _valid_rankings(raw_ranking, known)
    if records.empty:
        raise ValueError("no valid ranking annotations to aggregate")
    orders = np.array(records["order"].map(list).tolist(), dtype=object)
    positions = known.get_indexer(orders.ravel())  # every id is known (_valid_rankings)
    seen = np.unique(positions)
    item_ids = known[seen]  # slices-table order (scan, base -> apex)
    rankings = np.searchsorted(seen, positions).reshape(orders.shape)
    fit = fit_plackett_luce(rankings, len(item_ids), alpha=alpha)

    positions = np.arange(BATCH_SIZE)[None, :]
    view_class = (positions >= records["divider_a"].to_numpy()[:, None]).astype(int) + (
        positions >= records["divider_b"].to_numpy()[:, None]
    )
    items = rankings.ravel()
    n_items = len(item_ids)
    # a view is flagged when its record lists the image among its artefacts: (record, image) codes
    flags = records["artefact_ids"].reset_index(drop=True).explode().dropna()
    flagged_items = item_ids.get_indexer(flags.to_numpy())
    known_flag = flagged_items >= 0
    flag_codes = flags.index.to_numpy()[known_flag] * n_items + flagged_items[known_flag]
    flagged = np.isin(np.arange(len(records))[:, None] * n_items + rankings, flag_codes)
    n_views = np.bincount(items, minlength=n_items)
    n_flags = np.bincount(items, weights=flagged.ravel(), minlength=n_items).astype(int)
    excluded = artefact_majority(n_flags, n_views)
    annotators = np.repeat(records["annotator_id"].to_numpy(), BATCH_SIZE)
    rater_codes, raters = pd.factorize(annotators)
    # distinct (image, expert) pairs counted per image: one sort, not a groupby-nunique over the views
    n_annotators = np.bincount(np.unique(items * len(raters) + rater_codes) // len(raters), minlength=n_items)

    kept_views = ~excluded[items]
    cut_points, slope = fit_ordered_logit(fit.scores[items[kept_views]], view_class.ravel()[kept_views])
    probabilities = _ranking_probabilities(method, fit, cut_points, slope, items[kept_views],
                                           rater_codes[kept_views], view_class.ravel()[kept_views])
    labels = pd.DataFrame(
        {
            "slice_id": item_ids.to_numpy(),
            "label": _class_names(probabilities.argmax(axis=1), ~excluded),
            **{column: probabilities[:, c] for c, column in enumerate(PROBABILITY_COLUMNS)},
            "latent_score": fit.scores,
            "score_se": fit.standard_errors,
            "n_views": n_views,
            "n_annotators": n_annotators,
            "n_artefact_flags": n_flags,
            "artefact_excluded": excluded,
        }
    )
    return RankingAggregation(labels=labels.loc[:, list(RANKING_COLUMNS)], cut_points=cut_points,
                              slope=slope, fit=fit)
