"""The registered model's contract: probabilities plus an OOD score that flags images unlike its training data."""

import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file

from cmr_assets.domain import CLASS_INDEX
from cmr_assets.ingest.pixels import normalise_stack, resize_field_of_view
from cmr_assets.mlflow_store import load_champion, log_trained_model
from cmr_assets.promotion import promote_if_better
from cmr_assets.synthetic.cohort import plan_scan, stored_slices
from cmr_assets.training.core import TrainConfig, train_classifier
from cmr_assets.training.packaging import (
    DIHEDRAL_VIEWS,
    DeployableClassifier,
    predict_slices,
    predict_slices_with_ood,
    symmetry_views,
    training_prior_of,
)

FAST = TrainConfig(input_size=64, epochs=3, batch_size=32, num_threads=1, lr=3e-3, device="cpu")


def _synthetic(seed: int, n_scans: int) -> tuple[np.ndarray, np.ndarray]:
    plans = [plan_scan(seed, k, n_phases=1) for k in range(n_scans)]
    images = np.concatenate([stored_slices(p) for p in plans])
    return images, np.array([CLASS_INDEX[c] for p in plans for c in p.true_classes])


def _ct_slice() -> np.ndarray:
    """A real CT image, stored the way ingestion stores a slice: an image from another modality."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    image = normalise_stack(ds.pixel_array.astype(np.float32)[None])[0]
    return resize_field_of_view(image, tuple(float(v) for v in ds.PixelSpacing))


@pytest.fixture(scope="module")
def calibrated():
    torch.set_num_threads(1)
    train_images, train_labels = _synthetic(0, 12)
    val_images, val_labels = _synthetic(1, 6)
    result = train_classifier(torch.from_numpy(train_images), torch.from_numpy(train_labels),
                              torch.from_numpy(val_images), torch.from_numpy(val_labels), FAST)
    model = DeployableClassifier(result.model, FAST.input_size).eval()
    calibration = model.calibrate_ood(train_images, train_labels, val_images)
    return model, calibration, val_images


def test_output_is_probabilities_then_the_ood_score(calibrated):
    model, calibration, val_images = calibrated
    out = model(torch.from_numpy(val_images[:5].astype(np.float32))[:, None])
    assert out.shape == (5, 4)
    assert torch.allclose(out[:, :3].sum(dim=1), torch.ones(5), atol=1e-5)
    probabilities, scores = predict_slices_with_ood(model, val_images)
    np.testing.assert_allclose(probabilities, predict_slices(model, val_images), atol=1e-6)
    assert calibration["ood_val_flagged"] <= 0.01 and np.mean(scores > 1) <= 0.01


def test_noise_and_a_ct_slice_are_flagged_out_of_distribution(calibrated):
    model, _, _ = calibrated
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(4, 128, 128), dtype=np.uint8)
    far = np.concatenate([noise, _ct_slice()[None]])
    _, scores = predict_slices_with_ood(model, far)
    assert (scores > 1).all(), scores


def test_an_uncalibrated_model_has_no_score(calibrated):
    model, _, val_images = calibrated
    plain = DeployableClassifier(model.network, FAST.input_size).eval()
    probabilities, scores = predict_slices_with_ood(plain, val_images[:3])
    assert probabilities.shape == (3, 3) and np.isnan(scores).all()


def test_score_prior_and_provenance_survive_the_registry(calibrated, tmp_path):
    import copy

    model, _, val_images = calibrated
    model = copy.deepcopy(model)
    model.training_prior.copy_(torch.tensor([0.25, 0.5, 0.25]))  # as a model trained without class weights
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logged = log_trained_model(tracking_uri, (tmp_path / "artifacts").as_uri(), "ranking", model, params={},
                               history=[], metrics={}, input_example=val_images[:1, None].astype(np.float32),
                               pictures={}, version_tags={"cmr.training_data": "synthetic"})
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    promote_if_better(client, logged.registered_model, logged.version, 0.5, "split")
    assert client.get_model_version(logged.registered_model, logged.version).tags["cmr.training_data"] == "synthetic"
    loaded = load_champion(logged.registered_model, tracking_uri=tracking_uri)
    expected = predict_slices_with_ood(model, val_images[:7])
    actual = predict_slices_with_ood(loaded, val_images[:7])
    for a, b in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(training_prior_of(loaded), [0.25, 0.5, 0.25], atol=1e-6)


def test_the_training_prior_travels_with_the_model_and_defaults_to_balanced(calibrated):
    model, _, _ = calibrated
    skewed = DeployableClassifier(model.network, FAST.input_size, training_prior=np.array([1.0, 2.0, 1.0]))
    np.testing.assert_allclose(training_prior_of(skewed), [0.25, 0.5, 0.25])
    assert "training_prior" in skewed.state_dict()
    del skewed._buffers["training_prior"]  # as a model registered before the prior travelled with it
    np.testing.assert_allclose(training_prior_of(skewed), [1 / 3] * 3)
    with pytest.raises(ValueError, match="training_prior"):
        DeployableClassifier(model.network, FAST.input_size, training_prior=np.array([1.0, 0.0, 1.0]))


def test_symmetry_views_are_the_eight_distinct_symmetries_of_the_square():
    image = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    views = symmetry_views(image, DIHEDRAL_VIEWS)
    assert views.shape == (8, 1, 4, 4)
    assert torch.equal(views[0], image[0])
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert torch.equal(symmetry_views(image, 2)[1], torch.flip(image, dims=(3,))[0])
    for wrong in (0, 9):
        with pytest.raises(ValueError, match="symmetry views"):
            symmetry_views(image, wrong)


def test_probabilities_are_the_mean_over_views_and_the_ood_score_uses_the_plain_view(calibrated):
    model, _, val_images = calibrated
    assert model.n_views == 2
    model = DeployableClassifier(model.network, FAST.input_size, n_views=DIHEDRAL_VIEWS).eval()
    batch = torch.from_numpy(val_images[:6].astype(np.float32))[:, None]
    single = DeployableClassifier(model.network, FAST.input_size, n_views=1).eval()
    with torch.no_grad():
        out = model(batch)
        per_view = [single(symmetry_views(batch, DIHEDRAL_VIEWS)[v * 6:(v + 1) * 6])[:, :3]
                    for v in range(DIHEDRAL_VIEWS)]
        plain_stages, _ = model._features_and_probabilities(batch, n_views=1)
        view_stages, _ = model._features_and_probabilities(batch)
    torch.testing.assert_close(out[:, :3], torch.stack(per_view).mean(dim=0), atol=1e-5, rtol=0)
    for plain, viewed in zip(plain_stages, view_stages, strict=True):
        torch.testing.assert_close(plain, viewed, atol=1e-5, rtol=0)
