"""experiments/cnn.py: the convolutional network on the 8x8 digits."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import experiments.cnn
from configs.cnn import get_config
from experiments._train import count_params, fast_init
from experiments.cnn import CNN, load_digits, predict, random_shift, sample_batch
from jaxmath.run.cli import run_experiment
from jaxmath.run.config import ConfigError
from tests import _experiment_runs as runs
from tests.test_local_data import write_cifar
from tests.tolerances import F32_ATOL, F32_LOOSE

CONFIG = runs.config_path("cnn")
SUMMARY_KEYS = {"test_accuracy", "target", "target_met", "target_metric", "train_accuracy",
                "test_errors", "num_test", "final_loss", "num_steps", "num_params", "train_s",
                "train_compile_s", "train_steps_per_s", "steps_per_call",
                "train_examples_per_s", "train_flops_per_step", "train_flops_per_s", "train_mfu",
                "best_step", "best_value"}


quick = runs.quick_fixture(CONFIG)


def test_quick_run_writes_its_files(quick):
    summary, tmp_path = quick
    runs.assert_run_files(tmp_path, "metrics.jsonl", "plots/curves.png", "plots/misclassified.png",
                          "plots/filters.png")
    runs.assert_stored_summary(tmp_path, summary, SUMMARY_KEYS)
    rows = runs.metrics_rows(tmp_path)
    assert [row["step"] for row in rows] == [5, 10]
    assert all({"loss", "learning_rate", "train_accuracy", "test_accuracy"} <= set(row)
               for row in rows)
    assert summary["num_test"] == 450 and summary["target"] == 0.98
    assert summary["test_errors"] == round((1 - summary["test_accuracy"]) * 450)
    model = get_config("quick").model
    assert summary["num_params"] == _num_params(*model.features, model.hidden)
    runs.assert_loop_timing(summary, scan_steps=5)


def test_scan_path_gives_the_same_run(quick, tmp_path):
    runs.check_scan_path(CONFIG, quick, tmp_path, scan_steps=5)


def _num_params(c1, c2, c3, hidden, classes=10, channels=1, side=8):
    convs = 9 * channels * c1 + c1 + 9 * c1 * c2 + c2 + 9 * c2 * c3 + c3
    pooled = (side // 4) ** 2 * c3
    return convs + pooled * hidden + hidden + hidden * classes + classes


def test_quick_run_on_cifar10_batches(tmp_path, rng):
    """--config.data.path: CIFAR-10 python batches (32x32 RGB, 30 + 15 images) as the data."""
    write_cifar(tmp_path / "cifar", rng)
    workdir = tmp_path / "run"
    summary = run_experiment(f"{CONFIG}:quick", workdir,
                             [f"--config.data.path={tmp_path / 'cifar'}"], verbose=False)
    runs.assert_run_files(workdir, "metrics.jsonl", "plots/curves.png",
                          "plots/misclassified.png", "plots/filters.png")
    assert summary["data_format"] == "cifar10" and summary["image_shape"] == "32x32x3"
    assert summary["num_test"] == 15 and 0 <= summary["test_accuracy"] <= 1
    model = get_config("quick").model
    assert summary["num_params"] == _num_params(*model.features, model.hidden, channels=3,
                                                side=32)


@pytest.mark.parametrize("files, match", [
    ({"x": np.zeros((8, 3, 3), np.uint8), "y": np.arange(8) % 2},
     r"config.data.path='.*d.npz': the CNN pools twice by 2, so images must be at least 4x4, "
     r"got 3x3"),
    ({"x": np.zeros((8, 4, 4), np.uint8), "y": np.arange(8) - 1},
     r"config.data.path='.*d.npz' \(format 'auto'\): d.npz\[y\]: labels must be integers "
     r"0..K-1, found -1"),
], ids=["too small", "negative label"])
def test_bad_data_is_a_config_error_before_training(tmp_path, files, match):
    np.savez(tmp_path / "d.npz", **files)
    with pytest.raises(ConfigError, match=match):
        run_experiment(f"{CONFIG}:quick", tmp_path / "run",
                       [f"--config.data.path={tmp_path / 'd.npz'}"], verbose=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


class _FlaxCNN(nn.Module):
    """The same network with flax.linen.Conv: the reference for jaxmath's Conv2D."""

    features: tuple

    @nn.compact
    def __call__(self, x):
        c1, c2, c3 = self.features
        x = nn.relu(nn.Conv(c1, (3, 3), padding="SAME", name="Conv2D_0")(x))
        x = nn.relu(nn.Conv(c2, (3, 3), padding="SAME", name="Conv2D_1")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(c3, (3, 3), padding="SAME", name="Conv2D_2")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(16, name="Dense_0")(x.reshape(x.shape[0], -1)))
        return nn.Dense(10, name="Dense_1")(x)


def test_cnn_matches_the_same_network_built_with_flax_conv(rng):
    model = CNN(features=(3, 4, 5), hidden=16)
    x = jnp.asarray(rng.uniform(size=(6, 8, 8, 1)), jnp.float32)
    params = fast_init(lambda key: model.init(key, x), jax.random.key(0))
    assert count_params(params) == _num_params(3, 4, 5, 16)
    got = jax.jit(model.apply)(params, x)
    assert got.shape == (6, 10)
    want = jax.jit(_FlaxCNN((3, 4, 5)).apply)(params, x)  # same parameter names and layouts
    np.testing.assert_allclose(got, want, rtol=F32_LOOSE, atol=F32_ATOL)


def test_predict_in_chunks_matches_one_pass(monkeypatch, rng):
    model = CNN(features=(2, 2, 2), hidden=4)
    x = jnp.asarray(rng.uniform(size=(11, 8, 8, 1)), jnp.float32)
    params = fast_init(lambda key: model.init(key, x), jax.random.key(0))
    whole = np.asarray(predict(model, params, x))
    monkeypatch.setattr(experiments.cnn, "EVAL_BATCH", 4)  # 3 chunks, the last one padded
    np.testing.assert_array_equal(predict(model, params, x), whole)
    np.testing.assert_array_equal(whole, np.argmax(model.apply(params, x), axis=-1))


def _translations(image, s):
    """All (2s+1)^2 zero-filled translations of an [H, W, C] image, by NumPy."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((s, s), (s, s), (0, 0)))
    return [padded[i:i + h, j:j + w] for i in range(2 * s + 1) for j in range(2 * s + 1)]


def test_random_shift_is_a_translation_of_each_image(rng):
    images = rng.uniform(size=(64, 8, 8, 1)).astype(np.float32)
    shifted = np.asarray(random_shift(jax.random.key(3), images, 1))
    assert shifted.shape == images.shape and shifted.dtype == np.float32
    used = set()
    for image, out in zip(images, shifted, strict=True):
        matches = [k for k, t in enumerate(_translations(image, 1)) if np.array_equal(out, t)]
        assert len(matches) == 1
        used.add(matches[0])
    assert used == set(range(9))  # 64 images draw every one of the 9 offsets
    np.testing.assert_array_equal(random_shift(jax.random.key(3), images, 0), images)


def test_sample_batch_is_a_function_of_the_step():
    x = jnp.arange(20 * 64, dtype=jnp.float32).reshape(20, 8, 8, 1)
    y = jnp.arange(20, dtype=jnp.int32)
    key = jax.random.key(0)
    a, b = sample_batch(key, 3, x, y, 8, 1), sample_batch(key, 3, x, y, 8, 1)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], sample_batch(key, 4, x, y, 8, 1)[0])
    # unshifted, each image is the training image its label names
    xb, yb = sample_batch(key, 3, x, y, 8, 0)
    np.testing.assert_array_equal(xb, np.asarray(x)[np.asarray(yb)])


def test_digits_are_images_in_the_unit_interval():
    data = load_digits(get_config())
    assert data.x_train.shape == (1347, 8, 8, 1) and data.x_test.shape == (450, 8, 8, 1)
    assert float(data.x_train.min()) == 0.0 and float(data.x_train.max()) == 1.0
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    assert set(np.unique(data.y_test)) == set(range(10)) and data.num_classes == 10
    assert data.format == "sklearn_digits"


@pytest.mark.parametrize("call, match", [
    (lambda: get_config("full"), "unknown variant 'full'"),
    (lambda: random_shift(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), -1), "max_shift"),
    (lambda: random_shift(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), 8), r"\[0, 8\)"),
    (lambda: random_shift(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), 1.0), "max_shift"),
    (lambda: random_shift(jax.random.key(0), jnp.zeros((8, 8, 1)), 1), "images"),
    (lambda: sample_batch(jax.random.key(0), 0, jnp.zeros((4, 8, 8, 1)), jnp.zeros(4), 2, 9),
     "max_shift"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.slow
def test_default_config_reaches_its_target(tmp_path):
    summary = runs.default_run(CONFIG, tmp_path)
    assert summary["test_accuracy"] >= 0.98 and summary["test_errors"] <= 9
