"""One strategy's training step without Dagster or MLflow: what its registered version will carry."""

from pathlib import Path

import numpy as np
import pandas as pd

from cmr_assets.domain import CLASS_NAMES, SYNTHETIC_MODEL_NAME
from cmr_assets.training.core import TrainConfig
from cmr_assets.training.fitting import train_strategy


def _rows(root: Path, scan: str, n: int, seed: int) -> pd.DataFrame:
    """`n` slices of one scan with images whose brightness follows the class, as `labelled_rows` gives."""
    rng = np.random.default_rng(seed)
    targets = np.arange(n) % 3
    images = (rng.integers(0, 40, (n, 128, 128)) + 80 * targets[:, None, None]).astype(np.uint8)
    (root / "arrays").mkdir(exist_ok=True)
    np.save(root / "arrays" / f"{scan}.npy", images)
    labels = [CLASS_NAMES[t] for t in targets]
    probabilities = {f"p_{name}": [float(label == name) for label in labels] for name in CLASS_NAMES}
    return pd.DataFrame({"slice_id": [f"{scan}-{k:02d}" for k in range(n)], "scan_id": scan,
                         "array_path": f"arrays/{scan}.npy", "array_index": np.arange(n), "label": labels,
                         "target": targets, **probabilities})


def test_train_strategy_gathers_params_metrics_provenance_and_picture(tmp_path: Path) -> None:
    train, val = _rows(tmp_path, "scanA", 24, 0), _rows(tmp_path, "scanB", 9, 1)
    scans = pd.DataFrame({"scan_id": ["scanA", "scanB", "scanC"],
                          "manufacturer_model": [SYNTHETIC_MODEL_NAME, SYNTHETIC_MODEL_NAME, "Signa HDx"]})
    config = TrainConfig(input_size=32, epochs=1, batch_size=8, num_threads=1, device="cpu", seed=3)
    trained = train_strategy(tmp_path, "ranking", train, val, scans, ["sim-expert-1"], config)

    assert trained.complete and len(trained.fitted.result.history) == 1
    assert trained.provenance == {"cmr.training_data": "synthetic", "cmr.label_source": "simulated_experts",
                                  "cmr.n_scans": "2"}  # scanC trained nothing
    assert trained.params["n_train"] == 24 and trained.params["n_val"] == 9 and trained.params["seed"] == 3
    assert [trained.params[f"n_train_{name}"] for name in CLASS_NAMES] == [8, 8, 8]
    assert trained.metrics["epochs_run"] == 1 and 0.0 <= trained.metrics["val_macro_f1"] <= 1.0
    assert set(trained.ood_calibration) <= set(trained.metrics)
    assert trained.confusion_png.startswith(b"\x89PNG")
    assert trained.fitted.deployable.n_views == trained.params["test_time_views"] == 2
    assert trained.params["training_prior"] == "0.333 0.333 0.333"  # class-weighted: balanced


def test_the_training_prior_is_balanced_under_class_weights_else_the_labels_mix(tmp_path: Path) -> None:
    from dataclasses import replace

    from cmr_assets.training.fitting import training_class_prior

    rows = _rows(tmp_path, "scanA", 8, 0)  # classes 0 1 2 0 1 2 0 1: 3, 3, 2
    config = TrainConfig()
    np.testing.assert_allclose(training_class_prior(rows, config), [1 / 3] * 3)
    for soft_labels in (False, True):
        unweighted = replace(config, class_weighting=False, soft_labels=soft_labels)
        np.testing.assert_allclose(training_class_prior(rows, unweighted), [3 / 8, 3 / 8, 2 / 8])


def test_the_packaged_model_averages_symmetry_views_only_when_training_turned_the_images() -> None:
    from dataclasses import replace

    from cmr_assets.training.fitting import symmetry_views_for

    config = TrainConfig()
    assert config.augment and symmetry_views_for(config) == config.test_time_views == 2
    assert symmetry_views_for(replace(config, augment=False)) == 1
    assert symmetry_views_for(replace(config, test_time_views=8)) == 8
