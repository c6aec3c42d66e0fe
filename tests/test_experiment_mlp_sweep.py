"""experiments/mlp_sweep.py: the digits MLP swept over learning rates x seeds in one program."""

import json

import jax
import ml_collections
import numpy as np
import optax
import pytest

from configs.mlp_sweep import get_config
from experiments._train import fast_init
from experiments.mlp import MLP, sample_batch
from experiments.mlp_sweep import by_rate, load_digits, make_train
from jaxmath.losses import softmax_cross_entropy
from jaxmath.run import sweep
from jaxmath.run.cli import run_experiment
from jaxmath.run.sweep import grid, run_sweep
from tests import _experiment_runs as runs
from tests.tolerances import F32_LOOSE

CONFIG = runs.config_path("mlp_sweep")
SUMMARY_KEYS = {"best_mean_test_accuracy", "target", "target_met", "target_metric",
                "best_learning_rate", "best_test_accuracy_min", "best_test_accuracy_max",
                "num_configs", "num_learning_rates", "num_seeds", "num_steps", "num_diverged",
                "num_traces", "sweep_s", "configs_per_s", "num_params", "train_compile_s",
                "train_steps_per_s"}
SMALL = {"num_steps": 12, "batch_size": 16, "log_every": 3, "warmup_steps": 4,
         "weight_decay": 1e-4, "label_smoothing": 0.1}
HIDDEN = (8,)
HP = grid(learning_rate=[1e-3, 1e-2, 1e-1], seed=[0, 5])


@pytest.fixture(scope="module")
def digits():
    return load_digits(ml_collections.ConfigDict({"split_seed": 0, "test_fraction": 0.25}))


@pytest.fixture(scope="module")
def train(digits):
    return make_train(digits, HIDDEN, **SMALL)


@pytest.fixture(scope="module")
def swept(train):
    """The sweep of HP in chunks of 4 (two calls, the second padded), its traces counted."""
    traces = []

    def fn(hp):  # a new function: a cache entry of its own
        traces.append(1)
        return train(hp)

    before = sweep._sweep_chunk._cache_size()
    out = run_sweep(fn, HP, chunk_size=4)
    return out, len(traces), sweep._sweep_chunk._cache_size() - before


def test_quick_run_writes_its_files(tmp_path):
    summary = run_experiment(f"{CONFIG}:quick", tmp_path, verbose=False)
    runs.assert_run_files(tmp_path, "sweep.jsonl", "plots/accuracy_vs_lr.png",
                          "plots/loss_curves.png")
    assert SUMMARY_KEYS <= set(summary)
    config = get_config("quick")
    rows = [json.loads(line) for line in (tmp_path / "sweep.jsonl").read_text().splitlines()]
    num_rates = config.sweep.axes.learning_rate.logspace[2]
    num_seeds = len(config.sweep.axes.seed)
    assert len(rows) == summary["num_configs"] == num_rates * num_seeds
    assert {"learning_rate", "seed", "test_accuracy", "final_train_loss", "loss_curve",
            "diverged"} <= set(rows[0])
    assert {r["seed"] for r in rows} == set(config.sweep.axes.seed)
    assert len({r["learning_rate"] for r in rows}) == num_rates == summary["num_learning_rates"]
    assert all(len(r["loss_curve"]) == config.num_steps // config.log_every for r in rows)
    assert summary["num_traces"] == 1  # the whole sweep: one trace of the train function
    assert 0 < summary["train_compile_s"] < summary["sweep_s"]
    assert summary["train_steps_per_s"] > summary["steps_per_s"] > 0  # without compilation
    best = [r["test_accuracy"] for r in rows
            if np.isclose(r["learning_rate"], summary["best_learning_rate"])]
    np.testing.assert_allclose(summary["best_mean_test_accuracy"], np.mean(best),
                               rtol=F32_LOOSE)
    assert summary["best_test_accuracy_min"] == pytest.approx(min(best))
    assert summary["target"] == 0.97 and isinstance(summary["target_met"], bool)
    hidden = config.model.hidden[0]
    assert summary["num_params"] == 64 * hidden + hidden + hidden * 10 + 10
    stored = json.loads((tmp_path / "summary.json").read_text())
    assert {k: stored[k] for k in SUMMARY_KEYS} == {k: summary[k] for k in SUMMARY_KEYS}
    assert "accuracy_vs_lr.png" in (tmp_path / "report.md").read_text()


def test_sweep_equals_direct_runs(train, swept):
    out, _, _ = swept
    direct = jax.jit(train)
    for s in range(len(HP["seed"])):
        one = direct({"learning_rate": np.float32(HP["learning_rate"][s]),
                      "seed": np.int32(HP["seed"][s])})
        for name, value in one.items():
            np.testing.assert_allclose(out[name][s], value, rtol=F32_LOOSE, atol=F32_LOOSE,
                                       err_msg=f"{name}, configuration {s}")
    assert out["loss_curve"].shape == (len(HP["seed"]), SMALL["num_steps"] // SMALL["log_every"])
    # the hyperparameters matter: different rates and seeds give different runs
    assert len(np.unique(out["final_train_loss"])) == len(HP["seed"])


def test_train_compiles_once_for_the_whole_sweep(swept):
    _, num_traces, num_compiled = swept
    assert num_traces == 1 and num_compiled == 1


def test_train_equals_an_optax_adamw_loop(digits, train):
    # independent reference: the same initialisation and minibatches, updated by optax.adamw
    # with its own warm-up + cosine schedule of concrete peak lr, in a Python loop
    lr, seed, steps = 3e-2, 2, SMALL["num_steps"]
    model = MLP(HIDDEN, digits.num_classes)
    key_init, key_batch = jax.random.split(jax.random.key(seed))
    params = fast_init(lambda k: model.init(k, digits.x_train[:1]), key_init)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, SMALL["warmup_steps"], steps)
    opt = optax.adamw(schedule, weight_decay=SMALL["weight_decay"])
    opt_state = opt.init(params)

    def loss(p, x, y):
        return softmax_cross_entropy(model.apply(p, x), y,
                                     label_smoothing=SMALL["label_smoothing"]).mean()

    @jax.jit
    def update(params, opt_state, t):
        x, y = sample_batch(key_batch, t, digits.x_train, digits.y_train, SMALL["batch_size"])
        value, grads = jax.value_and_grad(loss)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    losses = []
    for t in range(steps):
        params, opt_state, value = update(params, opt_state, t)
        losses.append(float(value))
    got = jax.jit(train)({"learning_rate": lr, "seed": seed})
    log_every = SMALL["log_every"]
    np.testing.assert_allclose(got["loss_curve"], losses[log_every - 1::log_every],
                               rtol=F32_LOOSE)
    np.testing.assert_allclose(got["final_train_loss"],
                               loss(params, digits.x_train, digits.y_train), rtol=F32_LOOSE)
    test_acc = np.mean(np.argmax(model.apply(params, digits.x_test), -1) == digits.y_test)
    np.testing.assert_allclose(got["test_accuracy"], test_acc, atol=F32_LOOSE)


def test_by_rate_groups_the_seeds_of_each_rate():
    lr = np.array([0.1, 0.01, 0.1, 0.01, 1.0, 1.0])
    values = np.array([1, 2, 3, 4, 5, 6])
    rates, grouped = by_rate(lr, values)
    np.testing.assert_array_equal(rates, [0.01, 0.1, 1.0])
    np.testing.assert_array_equal(grouped, [[2, 4], [1, 3], [5, 6]])
    curves = np.arange(12).reshape(6, 2)
    assert by_rate(lr, curves)[1].shape == (3, 2, 2)


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown variant"):
        get_config("huge")


@pytest.mark.slow
def test_default_config_meets_its_target(tmp_path):
    summary = runs.default_run(CONFIG, tmp_path)
    assert summary["best_mean_test_accuracy"] >= 0.97
    assert summary["num_learning_rates"] >= 32 and summary["num_seeds"] == 4
    assert summary["num_traces"] == 1
