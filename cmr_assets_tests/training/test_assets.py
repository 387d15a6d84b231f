"""The model assets' config: settings left out take the device's defaults; unusable values are refused."""

import pytest

from cmr_assets.training.assets import SAFETY_CAP_MINUTES, ModelConfig
from cmr_assets.training.core import TrainConfig, default_config, select_device


def test_settings_left_out_take_the_device_defaults() -> None:
    defaults = default_config(select_device(TrainConfig(device="cpu")))
    config = ModelConfig(device="cpu").train_config()
    assert (config.architecture, config.input_size, config.epochs, config.batch_size, config.lr) == (
        defaults.architecture, defaults.input_size, defaults.epochs, defaults.batch_size, defaults.lr)
    assert config.max_minutes == SAFETY_CAP_MINUTES


def test_settings_given_are_used() -> None:
    config = ModelConfig(device="cpu", architecture="small_cnn", input_size=48, epochs=2, batch_size=16,
                         max_minutes=0.5, learning_rate=0.01, seed=7, soft_labels=True).train_config()
    assert (config.architecture, config.input_size, config.epochs, config.batch_size) == ("small_cnn", 48, 2, 16)
    assert (config.max_minutes, config.lr, config.seed, config.soft_labels) == (0.5, 0.01, 7, True)


@pytest.mark.parametrize("setting", ["input_size", "epochs", "batch_size", "max_minutes", "learning_rate"])
def test_zero_is_refused_rather_than_read_as_default(setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        ModelConfig(device="cpu", **{setting: 0}).train_config()
