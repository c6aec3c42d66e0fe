"""experiments/ddpm_digits.py: DDPM with the UNet on the 8x8 digits, checked by pixel-space MMD."""

import numpy as np
import pytest

from configs.ddpm_digits import get_config
from experiments.ddpm_digits import _grid, load_digits, nearest_distance
from jaxmath.run.cli import run_experiment
from jaxmath.run.config import ConfigError, apply_overrides
from tests import _experiment_runs as runs
from tests.test_local_data import write_mnist

CONFIG = runs.config_path("ddpm_digits")


quick = runs.quick_fixture(CONFIG)


def test_quick_run_writes_its_files(quick):
    summary, tmp_path = quick
    runs.assert_run_files(tmp_path, "metrics.jsonl", "plots/samples.png", "plots/loss.png")
    assert any((tmp_path / "checkpoints").iterdir())
    for key in ("mmd_samples", "mmd_reference", "mmd_baseline", "mmd_ratio", "target",
                "target_mmd", "target_met", "sample_s", "train_s", "pixel_mean_abs_diff",
                "classifier_confidence_samples", "classes_covered", "wall_time_s",
                "train_compile_s", "train_steps_per_s", "steps_per_call"):
        assert key in summary, key
    runs.assert_loop_timing(summary, scan_steps=5)
    assert summary["mmd_samples"] > 0 and summary["mmd_reference"] > 0
    assert summary["num_samples"] == 36 and summary["sampling_steps"] == 5
    assert summary["target_mmd"] == pytest.approx(2.0 * summary["mmd_reference"])
    rows = runs.metrics_rows(tmp_path)
    assert [r["step"] for r in rows] == [5, 10]
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_scan_path_gives_the_same_run(quick, tmp_path):
    runs.check_scan_path(CONFIG, quick, tmp_path, scan_steps=5)


def test_digits_are_scaled_to_minus_one_one():
    data = load_digits(get_config())
    train, test, labels = data.x_train, data.x_test, data.y_train
    assert train.shape[1:] == test.shape[1:] == (8, 8, 1)
    assert len(train) + len(test) == 1797 and len(labels) == len(train)
    assert train.min() == -1.0 and train.max() == 1.0
    # pixel values 0..16 map to multiples of 1/8
    np.testing.assert_array_equal((train + 1) * 8, np.round((train + 1) * 8))


def test_idx_images_are_scaled_to_minus_one_one(tmp_path, rng):
    x_train = write_mnist(tmp_path, rng, n_train=40, n_test=10)[0]
    config = apply_overrides(get_config("quick"), [f"--config.data.path={tmp_path}"])
    data = load_digits(config)
    assert data.x_train.shape == (40, 28, 28, 1) and data.format == "idx"
    np.testing.assert_allclose(data.x_train[..., 0], x_train / 127.5 - 1, atol=1e-6)


@pytest.mark.parametrize("overrides, match", [
    (["--config.model.channel_mults=(1, 2, 2, 2)"],
     r"images of 28x28 cannot go through the UNet's 4 levels \(model.channel_mults=\(1, 2, 2, "
     r"2\)\): height and width must be divisible by 2\^3 = 8"),
    (["--config.sample.num_samples=41"],
     r"40 training images, fewer than sample.num_samples=41"),
], ids=["image size", "too few images"])
def test_data_the_unet_cannot_take_is_a_config_error_before_training(tmp_path, rng, overrides,
                                                                     match):
    write_mnist(tmp_path / "mnist", rng, n_train=40, n_test=10)
    with pytest.raises(ConfigError, match=r"config.data.path='.*mnist': " + match):
        run_experiment(f"{CONFIG}:quick", tmp_path / "run",
                       [f"--config.data.path={tmp_path / 'mnist'}", *overrides], verbose=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow  # compiles the UNet at 28x28: ~12 s
def test_quick_run_on_mnist_idx_files(tmp_path, rng):
    write_mnist(tmp_path / "mnist", rng, n_train=48, n_test=12, gz=True)
    workdir = tmp_path / "run"
    summary = run_experiment(f"{CONFIG}:quick", workdir,
                             [f"--config.data.path={tmp_path / 'mnist'}"], verbose=False)
    runs.assert_run_files(workdir, "metrics.jsonl", "plots/samples.png", "plots/loss.png")
    assert summary["data_format"] == "idx" and summary["image_shape"] == "28x28x1"
    assert summary["num_train"] == 48 and summary["num_test"] == 12
    assert summary["mmd_samples"] > 0 and summary["mmd_reference"] > 0
    assert all(np.isfinite(r["loss"]) for r in runs.metrics_rows(workdir))


def test_grid_tiles_colour_images():
    images = np.arange(2, dtype=float)[:, None, None, None] * np.ones((2, 4, 3, 3))
    canvas = _grid(images, rows=1)
    assert canvas.shape == (4, 7, 3)
    assert (canvas[:, :3] == 0).all() and (canvas[:, 4:] == 1).all()
    assert np.isnan(canvas[:, 3]).all()


def test_grid_tiles_images_row_major():
    images = np.arange(4, dtype=float)[:, None, None, None] * np.ones((4, 8, 8, 1))
    canvas = _grid(images, rows=2)
    assert canvas.shape == (17, 17)
    assert canvas[0, 0] == 0 and canvas[0, 9] == 1 and canvas[9, 0] == 2 and canvas[16, 16] == 3
    assert np.isnan(canvas[8]).all() and np.isnan(canvas[:, 8]).all()


def test_nearest_distance_is_zero_for_copies():
    rng = np.random.default_rng(0)
    train = rng.uniform(-1, 1, size=(20, 8, 8, 1))
    assert nearest_distance(train[:5], train) == pytest.approx(0.0, abs=1e-6)
    shifted = train[:3] + 0.5  # every pixel 0.5 away from its source: distance 0.5 * 8
    assert nearest_distance(shifted, train[:3]) == pytest.approx(4.0)


@pytest.mark.slow
def test_default_config_meets_its_target(tmp_path):
    summary = runs.default_run(CONFIG, tmp_path)
    assert summary["mmd_samples"] <= summary["target_mmd"]
    # the structure-free pixel Gaussian fails the same target
    assert summary["mmd_baseline"] > summary["target_mmd"]
    assert summary["classes_covered"] == 10
    # not copies of the training set: as far from it as held-out digits are, roughly
    assert summary["nn_distance_samples_to_train"] > 0.5 * summary["nn_distance_test_to_train"]
