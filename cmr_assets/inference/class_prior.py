"""The class mix the filter decides under: clinical short-axis stacks are mostly LV.

Why: training weights the classes by inverse frequency, so the network's probabilities are those of
a cohort with as many too-basal and too-apical slices as LV slices. A clinical stack is planned to
cover the LV: most of its positions hold LV myocardium and only one or two lie beyond each end. The
filter therefore re-weights each slice's probabilities from the model's training prior to the
deployment prior (Bayes' rule under label shift; Saerens et al., Neural Computation 2002):
p'(c) proportional to p(c) x deployment(c) / training(c). The same model then keeps an LV slice it
was unsure of (wrongly removing one loses patient data; keeping an extra one costs a reader a
glance) and still removes the slices it is sure lie beyond the heart.

Why 0.5 by default and not the clinical mix itself (0.7 to 0.97 LV): the shift is Bayes-optimal only
for a calibrated model, and the CPU model is not. Measured on the demo's synthetic test stacks
(docs/real_images.md), an LV share of 0.5 raised the ranking champion's LV recall from 0.77 to 0.87
for one point of balanced accuracy, while 0.8 called nearly every slice LV (too-basal and too-apical
recall near 0.2): the filter would no longer filter.

The deployment prior is a setting of the site, not of the model: `CMR_FILTER_LV_SHARE` (the share
of LV slices expected in the stacks filtered, default `DEFAULT_LV_SHARE`; the rest is split evenly
between too basal and too apical). 1/3 gives the network's own balanced decision.

Public API:
- `DEFAULT_LV_SHARE`, `LV_SHARE_ENV`, `lv_share_from_env() -> float`, `check_lv_share(value, source) -> float`
- `deployment_prior(lv_share) -> np.ndarray`
- `shift_prior(probabilities, training_prior, deployment_prior) -> np.ndarray`;
  `to_deployment(probabilities, model, lv_share=None) -> np.ndarray`
- `deployment_predictions(model, images, lv_share=None) -> (probabilities, ood_scores)`
"""

from __future__ import annotations

import os

import numpy as np
from torch import nn

from cmr_assets.domain import CLASS_INDEX, N_CLASSES
from cmr_assets.training.packaging import predict_slices_with_ood, training_prior_of

DEFAULT_LV_SHARE = 0.5  # LV as likely as the two other classes together: see the module docstring
LV_SHARE_ENV = "CMR_FILTER_LV_SHARE"


def check_lv_share(lv_share: float, source: str) -> float:
    """`lv_share` as a float when strictly between 0 and 1; raises `ValueError` naming `source`."""
    if not 0 < lv_share < 1:
        raise ValueError(f"{source}={lv_share!r}: the expected share of LV slices must lie strictly between 0 and 1")
    return float(lv_share)


def lv_share_from_env() -> float:
    """`$CMR_FILTER_LV_SHARE`, else `DEFAULT_LV_SHARE`; raises `ValueError` naming the variable."""
    raw = os.environ.get(LV_SHARE_ENV, "").strip()
    if not raw:
        return DEFAULT_LV_SHARE
    try:
        value = float(raw)
    except ValueError as error:
        raise ValueError(f"{LV_SHARE_ENV}={raw!r} is not a number between 0 and 1") from error
    return check_lv_share(value, LV_SHARE_ENV)


def deployment_prior(lv_share: float) -> np.ndarray:
    """Class shares in `CLASS_NAMES` order: `lv_share` for LV, the rest split evenly."""
    share = check_lv_share(lv_share, "lv_share")
    prior = np.full(N_CLASSES, (1 - share) / (N_CLASSES - 1))
    prior[CLASS_INDEX["lv"]] = share
    return prior


def shift_prior(probabilities: np.ndarray, training_prior: np.ndarray, deployment: np.ndarray) -> np.ndarray:
    """`(N, classes)` probabilities learnt under `training_prior`, re-weighted to `deployment` (rows sum to 1)."""
    weighted = np.asarray(probabilities, dtype=float) * (np.asarray(deployment) / np.asarray(training_prior))
    total = weighted.sum(axis=1, keepdims=True)
    return weighted / np.where(total > 0, total, 1.0)


def to_deployment(probabilities: np.ndarray, model: nn.Module, lv_share: float | None = None) -> np.ndarray:
    """`model`'s probabilities re-weighted from its training prior to the deployment prior of
    `lv_share` (default `lv_share_from_env()`)."""
    share = lv_share_from_env() if lv_share is None else lv_share
    return shift_prior(probabilities, training_prior_of(model), deployment_prior(share))


def deployment_predictions(model: nn.Module, images: np.ndarray,
                           lv_share: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The filter's view of `images`: probabilities under the deployment prior (`to_deployment`), and
    the OOD scores."""
    probabilities, ood_scores = predict_slices_with_ood(model, images)
    return to_deployment(probabilities, model, lv_share), ood_scores
