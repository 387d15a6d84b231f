"""Training core on CPU with 1 thread: learns a separable toy set, soft labels, stopping, errors."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from cmr_assets.training import core
from cmr_assets.training.core import (
    EpochMetrics,
    TrainConfig,
    TrainingDataError,
    TrainingResourceError,
    predict_proba,
    select_device,
    train_classifier,
)

SIZE = 32
FAST = TrainConfig(input_size=SIZE, epochs=4, batch_size=32, num_threads=1, lr=3e-3, device="cpu")


def _toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three shapes (left bar, ring, disc) in noise: separable, but only by spatial pattern."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    radius = ((yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2).sqrt()
    ring = (radius > SIZE * 0.2) & (radius < SIZE * 0.3)
    shapes = torch.stack([xx < SIZE * 0.4, ring, radius < SIZE * 0.3])
    images = torch.rand(n, SIZE, SIZE, generator=generator) * 90 + 120 * shapes[labels].float()
    return images.clamp(0, 255).to(torch.uint8), labels


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_learns_a_separable_toy_set_and_reports_each_epoch() -> None:
    images, labels = _toy(300, seed=0)
    val_images, val_labels = _toy(90, seed=1)
    test_images, test_labels = _toy(90, seed=2)
    seen: list[EpochMetrics] = []
    result = train_classifier(images, labels, val_images, val_labels, FAST, on_epoch=seen.append)

    probabilities = predict_proba(result.model, test_images, SIZE, crop_fraction=FAST.crop_fraction)
    accuracy = (probabilities.argmax(axis=1) == test_labels.numpy()).mean()
    assert accuracy >= 0.9
    assert [m.epoch for m in seen] == [h["epoch"] for h in result.history]
    assert set(result.history[0]) == {
        "epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr", "images_per_s", "seconds",
    }
    assert result.best_val_macro_f1 == max(h["val_macro_f1"] for h in result.history)
    assert result.device == "cpu" and result.images_per_s > 0
    assert not result.model.training
    assert next(result.model.parameters()).device.type == "cpu"


def test_soft_labels_train_and_are_checked() -> None:
    images, labels = _toy(300, seed=3)
    val_images, val_labels = _toy(60, seed=4)
    soft = torch.full((300, 3), 0.1)
    soft[torch.arange(300), labels] = 0.8
    result = train_classifier(images, soft, val_images, val_labels, replace(FAST, soft_labels=True))
    assert result.best_val_macro_f1 >= 0.9

    with pytest.raises(TrainingDataError, match="not probabilities"):
        train_classifier(images, soft * 2, val_images, val_labels, FAST)
    with pytest.raises(TrainingDataError, match="soft_labels=True needs"):
        train_classifier(images, labels, val_images, val_labels, TrainConfig(soft_labels=True))


def test_same_seed_gives_the_same_run() -> None:
    images, labels = _toy(60, seed=5)
    config = replace(FAST, epochs=2, batch_size=16)
    first = train_classifier(images, labels, images[:30], labels[:30], config)
    second = train_classifier(images, labels, images[:30], labels[:30], config)
    assert [h["train_loss"] for h in first.history] == [h["train_loss"] for h in second.history]


def test_early_stopping_when_validation_f1_stops_improving() -> None:
    # Blank images: every prediction is one class, so balanced validation F1 can never improve.
    images, labels = torch.zeros(60, SIZE, SIZE, dtype=torch.uint8), torch.arange(60) % 3
    config = replace(FAST, epochs=20, patience=2, batch_size=16)
    result = train_classifier(images, labels, images[:30], labels[:30], config)
    assert result.stopped_early and result.stop_reason == "patience"
    assert result.best_epoch == 1 and len(result.history) == 3


def test_time_cap_stops_training() -> None:
    images, labels = _toy(60, seed=6)
    config = replace(FAST, epochs=20, max_minutes=1e-4)
    result = train_classifier(images, labels, images[:30], labels[:30], config)
    assert result.stop_reason == "time_cap" and len(result.history) == 1


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.tensor([0, 1] * 30), r"too_apical \(0\)"),
        (torch.tensor([0, 1] * 29 + [2, 0]), r"too_apical \(1\)"),
    ],
)
def test_missing_or_rare_class_is_a_clear_error(labels: torch.Tensor, message: str) -> None:
    images, _ = _toy(60, seed=7)
    with pytest.raises(TrainingDataError, match=message):
        train_classifier(images, labels, images[:30], labels[:30], FAST)


def test_mismatched_inputs_are_clear_errors() -> None:
    images, labels = _toy(30, seed=8)
    with pytest.raises(TrainingDataError, match="30 training images but 29 targets"):
        train_classifier(images, labels[:29], images, labels, FAST)
    with pytest.raises(TrainingDataError, match="uint8"):
        train_classifier(images.float(), labels, images, labels, FAST)
    with pytest.raises(TrainingDataError, match="no validation images"):
        train_classifier(images, labels, images[:0], labels[:0], FAST)


def test_out_of_memory_names_the_setting_to_lower(monkeypatch: pytest.MonkeyPatch) -> None:
    def out_of_memory(*_args: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(core, "_train_one_epoch", out_of_memory)
    images, labels = _toy(30, seed=9)
    with pytest.raises(TrainingResourceError, match=r"lower TrainConfig.batch_size.*input_size"):
        train_classifier(images, labels, images, labels, FAST)


def test_macro_f1_agrees_with_scikit_learn() -> None:
    truth = np.array([0, 0, 1, 1, 1, 0, 1])  # class 2 absent from truth, predicted once
    predicted = np.array([0, 1, 1, 1, 2, 0, 0])
    confusion = np.zeros((3, 3), dtype=int)
    np.add.at(confusion, (truth, predicted), 1)
    macro_f1, accuracy = core._macro_f1_and_accuracy(confusion.tolist())
    assert macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert accuracy == pytest.approx((truth == predicted).mean())


def test_cuda_requested_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(TrainingResourceError, match="CUDA is not available"):
        select_device(TrainConfig(device="cuda"))
    assert select_device(TrainConfig(device="auto", num_threads=1)).type == "cpu"
