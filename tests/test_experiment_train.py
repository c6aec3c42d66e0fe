"""experiments/_train.py: the optimisers, steps, timing and plots the experiments share."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from matplotlib.figure import Figure

from experiments._train import (
    accuracy,
    compile_seconds,
    compile_timed,
    count_params,
    fast_init,
    init_ema_state,
    init_state,
    loop_timing,
    make_adamw,
    make_clipped_adam,
    make_step,
    plot_curves,
    plot_losses,
    smooth,
)
from jaxmath.run.loop import TrainResult, TrainTiming
from tests.tolerances import F32_ATOL, F32_LOOSE, F32_RTOL

OPTIM = ml_collections.ConfigDict({"learning_rate": 0.1, "warmup_steps": 4,
                                   "weight_decay": 0.01})


def test_step_is_adamw_with_the_scheduled_rate():
    """Three updates of make_step against AdamW written out in NumPy (float64)."""
    num_steps = 10
    w0, b0 = np.array([1.0, -2.0]), 0.5
    x = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])

    def loss_fn(p, batch):
        loss = jnp.mean((batch @ p["w"] + p["b"]) ** 2)
        return loss, {"aux": 2 * loss}

    optimizer = make_adamw(OPTIM, num_steps)
    step = jax.jit(make_step(loss_fn, optimizer))
    params = {"w": jnp.asarray(w0, jnp.float32), "b": jnp.float32(b0)}
    state = init_state(lambda key: params, jax.random.key(0), optimizer)

    theta = np.append(w0, b0)                       # [w, b]
    m, v = np.zeros(3), np.zeros(3)
    b1, b2, eps = 0.9, 0.999, 1e-8                  # optax.adamw's defaults
    for t in range(1, 4):
        state, metrics = step(state, jnp.asarray(x, jnp.float32))
        r = x @ theta[:2] + theta[2]
        np.testing.assert_allclose(metrics["loss"], np.mean(r ** 2), rtol=F32_RTOL)
        np.testing.assert_allclose(metrics["aux"], 2 * metrics["loss"], rtol=F32_RTOL)
        g = 2 / len(x) * np.append(x.T @ r, r.sum())
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        rate = OPTIM.learning_rate * (t - 1) / OPTIM.warmup_steps  # linear warm-up from 0
        np.testing.assert_allclose(metrics["learning_rate"], rate, rtol=F32_RTOL)
        theta = theta - rate * (m_hat / (np.sqrt(v_hat) + eps) + OPTIM.weight_decay * theta)
    got = np.append(state["params"]["w"], state["params"]["b"])
    np.testing.assert_allclose(got, theta, rtol=F32_LOOSE, atol=F32_ATOL)


def test_schedule_peaks_then_decays_to_zero():
    optimizer = make_adamw(OPTIM, 10)
    zeros = {"w": jnp.zeros(1)}
    state, rates, update = optimizer.init(zeros), [], jax.jit(optimizer.update)
    for _ in range(11):  # the rate update t used is stored by update t
        _, state = update(zeros, state, zeros)
        rates.append(float(state.hyperparams["learning_rate"]))
    np.testing.assert_allclose(rates[:5], [0.0, 0.025, 0.05, 0.075, 0.1], rtol=F32_RTOL)
    assert rates[-1] == pytest.approx(0.0, abs=F32_ATOL) and max(rates) == pytest.approx(0.1)


def test_clipped_adam_is_adam_on_clipped_gradients_with_its_schedule(rng):
    """Eight updates of make_clipped_adam against Adam and the schedule written out in NumPy."""
    optim = {"learning_rate": 0.1, "warmup_steps": 2, "decay_steps": 6, "end_factor": 0.1,
             "grad_clip": 1.0}
    lr, end, warmup, decay = 0.1, 0.01, 2, 6

    def rate(t):  # linear warm-up, cosine decay to end at decay_steps, then constant
        if t < warmup:
            return lr * t / warmup
        frac = min(t - warmup, decay - warmup) / (decay - warmup)
        return end + (lr - end) * 0.5 * (1 + np.cos(np.pi * frac))

    tx = make_clipped_adam(optim)
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    m, v = np.zeros(3), np.zeros(3)
    b1, b2, eps = 0.9, 0.999, 1e-8                  # optax.adam's defaults
    for t in range(8):  # gradients of norm about 0.3 to 5: some clipped, some not
        g = rng.normal(size=3) * (5.0 if t % 2 else 0.2)
        updates, state = jax.jit(tx.update)({"w": jnp.asarray(g, jnp.float32)}, state, params)
        g = g * min(1.0, optim["grad_clip"] / np.linalg.norm(g))
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g ** 2
        m_hat, v_hat = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
        np.testing.assert_allclose(updates["w"], -rate(t) * m_hat / (np.sqrt(v_hat) + eps),
                                   rtol=F32_LOOSE, atol=F32_ATOL)


def test_ema_state_starts_at_the_parameters():
    params = {"w": jnp.ones(3)}
    state = init_ema_state(params, optax.adam(0.1))
    assert set(state) == {"params", "opt_state", "ema"}
    np.testing.assert_array_equal(state["ema"]["w"], params["w"])


def test_fast_init_and_count_params():
    params = fast_init(lambda key: {"a": jax.random.normal(key, (3, 4, 2, 2)),
                                    "b": jnp.zeros(5)}, jax.random.key(0))
    assert count_params(params) == 3 * 4 * 2 * 2 + 5
    assert params["a"].shape == (3, 4, 2, 2)


def test_accuracy_matches_numpy(rng):
    logits = rng.normal(size=(40, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 40)
    assert float(accuracy(logits, labels)) == pytest.approx(
        np.mean(np.argmax(logits, 1) == labels))
    assert float(jax.jit(accuracy)(logits, labels)) == float(accuracy(logits, labels))


def test_compile_timed_returns_the_value_and_two_times():
    out, compile_s, run_s = compile_timed(lambda x, y: x @ y, jnp.eye(3), jnp.arange(3.0))
    np.testing.assert_array_equal(out, [0.0, 1.0, 2.0])
    assert compile_s >= 0 and run_s >= 0


def test_plot_curves_draws_losses_and_accuracies():
    history = [{"step": s, "loss": 1.0 / s, "acc": 0.5 + s / 10} for s in (1, 2, 3)]
    fig = plot_curves(history, {"train": "loss"}, {"test": "acc"}, target=0.7)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert len(fig.axes[1].lines) == 2  # the curve and the target line


def test_plot_losses_draws_raw_and_smoothed_curves():
    fig = plot_losses({"a": [3.0, 2.0, 1.0], "b": [1.0, 0.5, 0.25]}, [1, 2, 3], "loss", "t",
                      window=2)
    (ax,) = fig.axes
    assert len(ax.lines) == 4  # raw and moving average per curve
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [3.0, 2.5, 1.5])


def test_smooth_is_a_trailing_moving_average():
    values = np.array([1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(smooth(values, 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(smooth(values, 10), np.cumsum(values) / np.arange(1, 5))


def test_loop_timing_puts_the_loops_timing_in_the_summary():
    timing = TrainTiming(compile_s=1.5, first_steps=10, steps=90, steps_s=0.5, eval_s=0.2,
                         checkpoint_s=0.1, steps_per_call=10, examples_per_step=32,
                         flops_per_step=2e6, peak_flops=1e12)
    best = {"step": 40, "metric": "acc", "value": 0.9, "directory": "w/checkpoints_best"}
    assert loop_timing(TrainResult({}, [], timing, best), 3.0) == {
        "train_s": 3.0, "train_compile_s": 1.5, "train_steps_per_s": 180.0,
        "train_examples_per_s": 5760.0, "train_flops_per_step": 2e6,
        "train_flops_per_s": 3.6e8, "train_mfu": 3.6e-4, "steps_per_call": 10,
        "best_step": 40, "best_value": 0.9}
    assert loop_timing(TrainResult({}, []), 0.1) == {  # a finished run: nothing ran
        "train_s": 0.1, "train_compile_s": None, "train_steps_per_s": None,
        "train_examples_per_s": None, "train_flops_per_step": None, "train_flops_per_s": None,
        "train_mfu": None, "steps_per_call": None}


def test_compile_seconds_counts_compilation_only_inside_the_block():
    def f(x):
        return jnp.sin(x) @ jnp.cos(x).T

    x = jnp.ones((7, 5))
    with compile_seconds() as total:
        jax.jit(f)(x).block_until_ready()
    compiled = total[0]
    assert compiled > 0
    with compile_seconds() as again:
        jax.jit(f)(x).block_until_ready()  # the same program: cached, nothing compiled
    assert again[0] < compiled
    jax.jit(lambda x: f(x) + 1)(x)  # outside any block: not counted
    assert total[0] == compiled
