"""experiments/mlp.py: the MLP on two-moons and digits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from configs.mlp import get_config
from experiments._train import count_params, fast_init
from experiments.mlp import MLP, sample_batch, smoothed_loss_floor
from jaxmath.losses import softmax_cross_entropy
from jaxmath.run.cli import main, run_experiment
from jaxmath.run.config import ConfigError, load_config
from tests import _experiment_runs as runs
from tests.test_local_data import png_folder
from tests.tolerances import F32_ATOL, F32_LOOSE, F32_RTOL

CONFIG = runs.config_path("mlp")
SUMMARY_KEYS = {"test_accuracy", "target", "target_met", "target_metric",
                "digits_test_accuracy", "digits_train_accuracy", "two_moons_test_accuracy",
                "two_moons_train_accuracy", "digits_test_errors", "digits_num_test",
                "final_loss", "num_steps", "num_params", "train_s", "train_compile_s",
                "train_steps_per_s", "steps_per_call",
                "train_examples_per_s", "train_flops_per_step", "train_flops_per_s", "train_mfu",
                "best_step", "best_value"}
ROW_KEYS = {"step", "loss", "loss_digits", "loss_two_moons", "learning_rate",
            "digits_test_accuracy", "two_moons_test_accuracy"}


quick = runs.quick_fixture(CONFIG)


def test_quick_run_writes_its_files(quick):
    summary, tmp_path = quick
    runs.assert_run_files(tmp_path, "metrics.jsonl", "plots/curves.png",
                          "plots/decision_boundary.png")
    runs.assert_stored_summary(tmp_path, summary, SUMMARY_KEYS)
    rows = runs.metrics_rows(tmp_path)
    assert [row["step"] for row in rows] == [10, 20] and summary["num_steps"] == 20
    assert all(ROW_KEYS <= set(row) for row in rows)
    assert summary["test_accuracy"] == summary["digits_test_accuracy"]
    assert summary["target"] == 0.97 and isinstance(summary["target_met"], bool)
    assert summary["digits_num_test"] == 450  # 25% of scikit-learn's 1,797 digits
    hidden = get_config("quick").model.hidden[0]
    assert summary["num_params"] == sum(d * hidden + hidden + hidden * k + k
                                        for d, k in ((2, 2), (64, 10)))
    report = (tmp_path / "report.md").read_text()
    assert "curves.png" in report and "decision_boundary.png" in report
    runs.assert_loop_timing(summary, scan_steps=10)


def test_scan_path_gives_the_same_run(quick, tmp_path):
    runs.check_scan_path(CONFIG, quick, tmp_path, scan_steps=10)


def test_quick_run_on_a_folder_of_images(tmp_path, rng):
    """--config.data.path: the user's 8x8 PNGs (3 classes of 20) replace the digits."""
    png_folder(tmp_path / "images", rng, n=60)
    workdir = tmp_path / "run"
    summary = run_experiment(f"{CONFIG}:quick", workdir,
                             [f"--config.data.path={tmp_path / 'images'}"], verbose=False)
    runs.assert_run_files(workdir, "metrics.jsonl", "plots/curves.png")
    assert summary["digits_data_format"] == "image_folder"
    assert summary["digits_image_shape"] == "8x8x1"
    assert summary["digits_num_test"] == 15  # a quarter of each class held out
    assert 0 <= summary["digits_test_accuracy"] <= 1
    hidden = get_config("quick").model.hidden[0]
    assert summary["num_params"] == sum(d * hidden + hidden + hidden * k + k
                                        for d, k in ((2, 2), (64, 3)))
    assert [row["step"] for row in runs.metrics_rows(workdir)] == [10, 20]


def test_bad_data_path_exits_2_before_training(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = main(["run", f"{CONFIG}:quick", "--workdir", str(workdir),
                 f"--config.data.path={tmp_path / 'missing'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "config.data.path=" in err and "missing' does not exist" in err
    assert not (workdir / "metrics.jsonl").exists() and not (workdir / "checkpoints").exists()
    assert not (workdir / "config.json").exists()  # so the corrected command may use it


def test_unknown_data_format_is_a_config_error(tmp_path):
    png_folder(tmp_path / "images", np.random.default_rng(0), n=6)
    with pytest.raises(ConfigError, match=r"config.data.path='.*images' \(format 'csv'\): "
                                          r"format must be 'auto' or one of"):
        run_experiment(f"{CONFIG}:quick", tmp_path / "run",
                       [f"--config.data.path={tmp_path / 'images'}", "--config.data.format=csv"])


def test_sample_batch_is_a_function_of_the_step(rng):
    x = jnp.asarray(rng.normal(size=(50, 3)), jnp.float32)
    y = jnp.arange(50, dtype=jnp.int32)  # the label names the row
    key = jax.random.key(1)
    xb, yb = sample_batch(key, 7, x, y, 16)
    xb2, yb2 = sample_batch(key, 7, x, y, 16)
    np.testing.assert_array_equal(xb, xb2)
    np.testing.assert_array_equal(yb, yb2)
    assert not np.array_equal(yb, sample_batch(key, 8, x, y, 16)[1])
    assert xb.shape == (16, 3) and yb.shape == (16,)
    np.testing.assert_array_equal(xb, np.asarray(x)[np.asarray(yb)])  # rows stay paired


def test_mlp_shapes_and_parameter_count():
    model = MLP(hidden=(5, 4), num_classes=3)
    params = fast_init(lambda key: model.init(key, jnp.zeros((1, 6))), jax.random.key(0))
    assert jax.jit(model.apply)(params, jnp.zeros((7, 6))).shape == (7, 3)
    assert count_params(params) == 6 * 5 + 5 + 5 * 4 + 4 + 4 * 3 + 3


@pytest.mark.parametrize("smoothing, classes", [(0.1, 10), (0.1, 2), (0.0, 5), (1.0, 3)])
def test_smoothed_loss_floor_is_the_minimum_of_the_loss(smoothing, classes):
    floor = smoothed_loss_floor(smoothing, classes)
    target = np.full(classes, smoothing / classes)
    target[0] += 1 - smoothing
    assert floor == pytest.approx(scipy.stats.entropy(target), rel=F32_RTOL)
    best = np.log(np.maximum(target, 1e-30))  # logits = log t reach the floor
    loss = softmax_cross_entropy(best[None], np.array([0]), label_smoothing=smoothing)
    assert float(loss[0]) == pytest.approx(floor, rel=F32_LOOSE, abs=F32_ATOL)
    worse = softmax_cross_entropy(np.zeros((1, classes)), np.array([0]),
                                  label_smoothing=smoothing)
    assert float(worse[0]) >= floor - F32_ATOL


@pytest.mark.parametrize("call, exc, match", [
    (lambda: get_config("fast"), ValueError, "unknown variant 'fast'"),
    (lambda: load_config(CONFIG, ["--config.optim.learnin_rate=1"]), ConfigError,
     "learning_rate"),
    (lambda: load_config(CONFIG, ["--config.num_steps=ten"]), ConfigError, "num_steps"),
    (lambda: sample_batch(jax.random.key(0), 0, jnp.zeros((4, 2)), jnp.zeros(4), 0),
     ValueError, "batch_size must be a positive int"),
    (lambda: sample_batch(jax.random.key(0), 0, jnp.zeros((4, 2)), jnp.zeros(3), 2),
     ValueError, r"x.shape=\(4, 2\), y.shape=\(3,\)"),
    (lambda: sample_batch(jax.random.key(0), 0, jnp.zeros((0, 2)), jnp.zeros(0), 2),
     ValueError, "positive number of examples"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.slow
def test_default_config_reaches_its_target(tmp_path):
    summary = runs.default_run(CONFIG, tmp_path)
    assert summary["digits_test_accuracy"] >= 0.97
    assert summary["two_moons_test_accuracy"] >= 0.95  # noisy moons: the classes overlap
