"""experiments/mlp_sweep.py: the digits MLP swept over learning rates x seeds in one program."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs.mlp_sweep import get_config
from experiments._train import fast_init
from experiments.mlp import MLP, sample_batch
from experiments.mlp_sweep import by_rate, load_digits, make_training
from jaxmath.losses import softmax_cross_entropy
from jaxmath.run import sweep_train
from jaxmath.run.cli import load_experiment, run_experiment
from jaxmath.run.config import ConfigError
from jaxmath.run.sweep import grid
from jaxmath.run.sweep_progress import PROGRESS_DIR
from jaxmath.run.sweep_train import train_sweep
from tests import _experiment_runs as runs
from tests.tolerances import F32_LOOSE

CONFIG = runs.config_path("mlp_sweep")
SUMMARY_KEYS = {"best_mean_test_accuracy", "target", "target_met", "target_metric",
                "best_learning_rate", "best_test_accuracy_min", "best_test_accuracy_max",
                "num_configs", "num_learning_rates", "num_seeds", "num_steps", "num_diverged",
                "diverged_members", "num_traces", "sweep_s", "configs_per_s", "num_params",
                "train_compile_s", "train_steps_per_s"}
SMALL = {"num_steps": 12, "batch_size": 16, "warmup_steps": 4, "weight_decay": 1e-4,
         "label_smoothing": 0.1}
LOG_EVERY = 3
HIDDEN = (8,)
HP = grid(learning_rate=[1e-3, 3e-2, 1e-1], seed=[0, 5])
WAIT_S = 300.0  # the slow kill test: generous, the machine is shared


@pytest.fixture(scope="module")
def digits():
    return load_digits(ml_collections.ConfigDict({"split_seed": 0, "test_fraction": 0.25}))


@pytest.fixture(scope="module")
def training(digits):
    return make_training(digits, HIDDEN, **SMALL)


@pytest.fixture(scope="module")
def swept(training):
    """The sweep of HP in chunks of 4 (two chunks, the second padded) and segments of 5
    (the last one masked), its step's traces and the segment programs compiled counted."""
    traces = []

    def step(state, hp, t):  # a new function: a cache entry of its own
        traces.append(1)
        return training.step(state, hp, t)

    before = sweep_train._segment_chunk._cache_size()
    out = train_sweep(training.init, step, training.finish, HP, num_steps=SMALL["num_steps"],
                      log_every=LOG_EVERY, checkpoint_every=5, chunk_size=4)
    return out, len(traces), sweep_train._segment_chunk._cache_size() - before


def _diverge_at_lr(original, threshold: float, seed: int):
    """``original`` (training_from_config) with a minibatch loss of nan from step 7 on for
    the runs of rate > ``threshold`` and ``seed``: a stand-in for a diverging run."""

    def patched(config, data, mesh=None):
        training = original(config, data, mesh)

        def step(state, hp, t):
            state, metrics = training.step(state, hp, t)
            bad = (hp["learning_rate"] > threshold) & (hp["seed"] == seed) & (t >= 6)
            return state, {"loss": jnp.where(bad, jnp.nan, metrics["loss"])}

        return training._replace(step=step)

    return patched


def test_quick_run_writes_its_files(tmp_path, monkeypatch):
    """The quick variant, its fastest rate made to diverge for one seed."""
    config = get_config("quick")
    rates = np.logspace(*config.sweep.axes.learning_rate.logspace)
    # the module jaxmath run loads (by its file), not the one imported here
    module = load_experiment(runs.ROOT / "experiments", "mlp_sweep")
    monkeypatch.setattr(module, "training_from_config",
                        _diverge_at_lr(module.training_from_config, rates[-2], seed=1))
    summary = run_experiment(f"{CONFIG}:quick", tmp_path, verbose=False)
    runs.assert_run_files(tmp_path, "sweep.jsonl", "plots/accuracy_vs_lr.png",
                          "plots/loss_curves.png")
    assert SUMMARY_KEYS <= set(summary)
    rows = [json.loads(line) for line in (tmp_path / "sweep.jsonl").read_text().splitlines()]
    num_rates = config.sweep.axes.learning_rate.logspace[2]
    num_seeds = len(config.sweep.axes.seed)
    assert len(rows) == summary["num_configs"] == num_rates * num_seeds
    assert {"learning_rate", "seed", "test_accuracy", "final_train_loss", "loss_curve",
            "diverged", "diverged_step"} <= set(rows[0])
    assert {r["seed"] for r in rows} == set(config.sweep.axes.seed)
    assert len({r["learning_rate"] for r in rows}) == num_rates == summary["num_learning_rates"]
    assert all(len(r["loss_curve"]) == config.num_steps // config.log_every for r in rows)
    assert summary["num_traces"] == 1  # the whole sweep: one trace of the training step
    assert 0 < summary["train_compile_s"] < summary["sweep_s"]
    assert summary["train_steps_per_s"] > summary["steps_per_s"] > 0  # without compilation
    # the diverged run: marked, listed, kept out of the statistics
    bad = [r for r in rows if r["diverged"]]
    assert [(r["learning_rate"], r["seed"], r["diverged_step"]) for r in bad] == [
        (rates[-1], 1, 7)]
    assert bad[0]["loss_curve"][0] is not None and bad[0]["loss_curve"][1:] == [None] * 3
    assert summary["num_diverged"] == 1
    assert summary["diverged_members"] == [
        {"index": bad[0]["index"], "learning_rate": rates[-1], "seed": 1, "step": 7}]
    report = (tmp_path / "report.md").read_text()
    assert "## diverged_members" in report and "accuracy_vs_lr.png" in report
    assert f"- index = {bad[0]['index']}, learning_rate = 0.1, seed = 1, step = 7" in report
    best = [r["test_accuracy"] for r in rows if not r["diverged"]
            and np.isclose(r["learning_rate"], summary["best_learning_rate"])]
    np.testing.assert_allclose(summary["best_mean_test_accuracy"], np.mean(best),
                               rtol=F32_LOOSE)
    assert summary["best_test_accuracy_min"] == pytest.approx(min(best))
    assert summary["target"] == 0.97 and isinstance(summary["target_met"], bool)
    hidden = config.model.hidden[0]
    assert summary["num_params"] == 64 * hidden + hidden + hidden * 10 + 10
    stored = json.loads((tmp_path / "summary.json").read_text())
    assert {k: stored[k] for k in SUMMARY_KEYS} == {k: summary[k] for k in SUMMARY_KEYS}
    # the progress: one finished chunk (the whole sweep)
    assert sorted(p.name for p in (tmp_path / PROGRESS_DIR).iterdir()) == [
        "group0_chunk0.npz", "manifest.json"]
    # num_steps may change on resume for a training run, not for a finished sweep: refused
    # with a ConfigError (exit 2) before any work, and the recorded config.json kept
    before = (tmp_path / "config.json").read_bytes()
    with pytest.raises(ConfigError, match="holds the progress of a different sweep"):
        run_experiment(f"{CONFIG}:quick", tmp_path, ["--config.num_steps=40"], verbose=False)
    assert (tmp_path / "config.json").read_bytes() == before


def _direct_run(training, hp, num_steps):
    """One configuration's training as a Python loop of jitted init, step and finish."""
    state, losses = jax.jit(training.init)(hp), []
    step = jax.jit(training.step)
    for t in range(num_steps):
        state, metrics = step(state, hp, np.int32(t))
        losses.append(float(metrics["loss"]))
    return jax.jit(training.finish)(state, hp), np.asarray(losses)


def test_sweep_equals_direct_runs(training, swept):
    out, _, _ = swept
    for s in range(len(HP["seed"])):
        hp = {"learning_rate": np.float32(HP["learning_rate"][s]), "seed": np.int32(HP["seed"][s])}
        results, losses = _direct_run(training, hp, SMALL["num_steps"])
        for name, value in results.items():
            np.testing.assert_allclose(out.results[name][s], value, rtol=F32_LOOSE,
                                       atol=F32_LOOSE, err_msg=f"{name}, configuration {s}")
        np.testing.assert_allclose(out.curves["loss"][s], losses[LOG_EVERY - 1::LOG_EVERY],
                                   rtol=F32_LOOSE)
    assert out.curves["loss"].shape == (len(HP["seed"]), SMALL["num_steps"] // LOG_EVERY)
    assert not out.diverged.any()
    # the hyperparameters matter: different rates and seeds give different runs
    assert len(np.unique(out.results["final_train_loss"])) == len(HP["seed"])


def test_train_compiles_once_for_the_whole_sweep(swept):
    _, num_traces, num_compiled = swept
    assert num_traces == 1 and num_compiled == 1


def test_training_equals_an_optax_adamw_loop(digits, swept):
    # independent reference: the same initialisation and minibatches, updated by optax.adamw
    # with its own warm-up + cosine schedule of concrete peak lr, in a Python loop
    out, _, _ = swept
    index = 3
    lr, seed, steps = float(HP["learning_rate"][index]), int(HP["seed"][index]), SMALL["num_steps"]
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
    np.testing.assert_allclose(out.curves["loss"][index], losses[LOG_EVERY - 1::LOG_EVERY],
                               rtol=F32_LOOSE)
    np.testing.assert_allclose(out.results["final_train_loss"][index],
                               loss(params, digits.x_train, digits.y_train), rtol=F32_LOOSE)
    test_acc = np.mean(np.argmax(model.apply(params, digits.x_test), -1) == digits.y_test)
    np.testing.assert_allclose(out.results["test_accuracy"][index], test_acc, atol=F32_LOOSE)


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


def _jaxmath_run(workdir, *overrides: str) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(runs.ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "jaxmath", "run", f"{CONFIG}:quick", "--workdir", str(workdir),
         *overrides], cwd=runs.ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_killed_sweep_writes_the_table_of_an_uninterrupted_one(tmp_path):
    """``jaxmath run`` killed with SIGKILL mid-sweep (chunk 0 done, chunk 1 mid-way) and
    run again writes the sweep.jsonl of an uninterrupted run."""
    overrides = ("--config.num_steps=400", "--config.checkpoint_every=20",
                 "--config.sweep.chunk_size=4")
    reference = _jaxmath_run(tmp_path / "uninterrupted", *overrides)
    workdir = tmp_path / "killed"
    progress = workdir / PROGRESS_DIR
    proc = _jaxmath_run(workdir, *overrides)
    deadline = time.monotonic() + WAIT_S
    while not ((progress / "group0_chunk0.npz").exists()
               and (progress / "group0_chunk1.running.npz").exists()):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "timed out waiting for chunk 1 to be saved"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=WAIT_S)
    proc.stdout.close()
    assert not (workdir / "sweep.jsonl").exists()
    out, _ = _jaxmath_run(workdir, *overrides).communicate(timeout=WAIT_S)
    assert "summary" in out, out
    ref_out, _ = reference.communicate(timeout=WAIT_S)
    assert reference.returncode == 0, ref_out
    assert (workdir / "sweep.jsonl").read_bytes() == (
        tmp_path / "uninterrupted" / "sweep.jsonl").read_bytes()
