"""The filter decides under the class mix of clinical stacks, not the balanced mix the model learnt under."""

import numpy as np
import pytest
import torch

from cmr_assets.inference.class_prior import (
    DEFAULT_LV_SHARE,
    LV_SHARE_ENV,
    deployment_predictions,
    deployment_prior,
    lv_share_from_env,
    shift_prior,
)
from cmr_assets.training.packaging import DeployableClassifier

BALANCED = np.full(3, 1 / 3)
UNSURE_BETWEEN_BASAL_AND_LV = [0.44, 0.43, 0.13]
SURE_TOO_BASAL = [0.8, 0.15, 0.05]


def test_the_same_prior_changes_nothing_and_the_balanced_share_keeps_the_argmax():
    p = np.array([UNSURE_BETWEEN_BASAL_AND_LV, SURE_TOO_BASAL, [0.1, 0.2, 0.7]])
    np.testing.assert_allclose(shift_prior(p, BALANCED, BALANCED), p)
    np.testing.assert_array_equal(shift_prior(p, BALANCED, deployment_prior(1 / 3)).argmax(axis=1), [0, 0, 2])


def test_an_lv_heavy_prior_keeps_the_unsure_slice_and_still_removes_the_sure_one():
    shifted = shift_prior(np.array([UNSURE_BETWEEN_BASAL_AND_LV, SURE_TOO_BASAL]), BALANCED, deployment_prior(0.5))
    np.testing.assert_allclose(shifted.sum(axis=1), 1.0)
    assert shifted.argmax(axis=1).tolist() == [1, 0]
    np.testing.assert_allclose(deployment_prior(0.5), [0.25, 0.5, 0.25])


@pytest.mark.parametrize("raw", ["0", "1", "1.5", "-0.2", "lots"])
def test_a_bad_share_is_refused_naming_the_variable(monkeypatch, raw):
    monkeypatch.setenv(LV_SHARE_ENV, raw)
    with pytest.raises(ValueError, match=LV_SHARE_ENV):
        lv_share_from_env()


def test_the_share_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(LV_SHARE_ENV, raising=False)
    assert lv_share_from_env() == DEFAULT_LV_SHARE
    monkeypatch.setenv(LV_SHARE_ENV, "0.7")
    assert lv_share_from_env() == 0.7


class _UnsureLogits(torch.nn.Module):
    """Logits that favour too basal a little over LV for every image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.tensor([UNSURE_BETWEEN_BASAL_AND_LV])).expand(x.shape[0], 3)


def _unsure_network() -> torch.nn.Sequential:
    """A network of the shape `models.build_model` makes (Sequential), unsure for every image."""
    return torch.nn.Sequential(_UnsureLogits())


def test_the_model_s_own_training_prior_is_what_is_shifted_from():
    images = np.zeros((2, 128, 128), dtype=np.uint8)
    balanced = DeployableClassifier(_unsure_network(), 32, n_views=1).eval()
    assert deployment_predictions(balanced, images, lv_share=0.5)[0].argmax(axis=1).tolist() == [1, 1]
    assert deployment_predictions(balanced, images, lv_share=1 / 3)[0].argmax(axis=1).tolist() == [0, 0]
    # a network that learnt under the deployment mix already is left as it is
    lv_heavy = DeployableClassifier(_unsure_network(), 32, n_views=1, training_prior=deployment_prior(0.5)).eval()
    probabilities, scores = deployment_predictions(lv_heavy, images, lv_share=0.5)
    np.testing.assert_allclose(probabilities[0], UNSURE_BETWEEN_BASAL_AND_LV, atol=1e-5)
    assert np.isnan(scores).all()
