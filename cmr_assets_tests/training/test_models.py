"""Forward shapes and parameter counts of the two architectures (documented in models.py)."""

import pytest
import torch

from cmr_assets.training.models import ARCHITECTURES, build_model, count_parameters, normalise_batch


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("size", [64, 128])
def test_forward_gives_one_logit_per_class(architecture: str, size: int) -> None:
    torch.set_num_threads(1)
    model = build_model(architecture).eval()
    with torch.inference_mode():
        logits = model(normalise_batch(torch.randint(0, 256, (2, 1, size, size), dtype=torch.uint8)))
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()


def test_parameter_counts_match_the_documentation() -> None:
    assert count_parameters(build_model("small_cnn")) == 319_539
    assert count_parameters(build_model("resnet18")) == 11_171_779
    assert build_model("resnet18").conv1.in_channels == 1


def test_unknown_architecture_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="small_cnn, resnet18"):
        build_model("vgg16")


def test_normalise_batch_is_a_per_image_z_score() -> None:
    batch = torch.stack([torch.full((1, 8, 8), 10, dtype=torch.uint8), torch.arange(64).view(1, 8, 8).byte()])
    out = normalise_batch(batch)
    assert out.dtype == torch.float32
    assert torch.allclose(out[0], torch.zeros(1, 8, 8))  # a constant image carries no signal
    assert out[1].mean().abs() < 1e-5
    assert (out[1].std() - 1).abs() < 1e-3


def test_crop_and_resize_keeps_the_centre_of_the_field_of_view():
    from cmr_assets.training.models import crop_and_resize

    batch = torch.zeros(2, 1, 100, 100)
    batch[:, :, 40:60, 40:60] = 200.0  # the heart in the middle
    batch[:, :, :5, :] = 255.0  # chest wall at the top edge, outside the central 70%
    cropped = crop_and_resize(batch, 35, crop_fraction=0.7)
    assert cropped.shape == (2, 1, 35, 35)
    assert cropped.max() == 200.0 and cropped[:, :, 17, 17].min() == 200.0
    assert torch.equal(crop_and_resize(batch, 100), batch)
    with pytest.raises(ValueError, match="crop_fraction"):
        crop_and_resize(batch, 35, crop_fraction=1.5)
