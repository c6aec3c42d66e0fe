r"""The digits MLP trained for every learning rate x seed of a grid, as one compiled program.

Data. scikit-learn's 1,797 8x8 handwritten digits (grey levels 0..16 scaled to [0, 1], 10
classes), split 75/25 stratified by class (``experiments._data.load_sklearn``, split seed
``data.split_seed``), as in :mod:`experiments.mlp`.

Model and training. The :class:`experiments.mlp.MLP` of hidden widths ``model.hidden``
(relu layers, then linear logits :math:`z`), trained on the mean label-smoothed softmax
cross-entropy (:func:`jaxmath.softmax_cross_entropy`, smoothing :math:`\varepsilon` =
``label_smoothing``) over minibatches of ``batch_size`` examples drawn uniformly with
replacement (:func:`experiments.mlp.sample_batch`, the batch of step :math:`t` from
``fold_in(key, t)``). The update is AdamW (``optax.adamw``, decoupled weight decay
``optim.weight_decay``) at the rate

.. math:: \eta_t = \eta \, u(t), \qquad
          u(t) = \begin{cases} t / t_w & t < t_w \\
          \tfrac12 \bigl(1 + \cos \frac{\pi (t - t_w)}{T - t_w}\bigr) & t \ge t_w \end{cases}

(linear warm-up over :math:`t_w` = ``optim.warmup_steps``, cosine decay to 0 at
:math:`T` = ``num_steps``), injected with ``optax.inject_hyperparams``. A training run is
its initial state, :math:`T` updates (:func:`experiments._train.make_step`) and the
final scores (:func:`make_training`).

Sweep. A configuration is a peak rate :math:`\eta` and a seed (the initialisation and
the minibatches), both read from ``config.sweep`` (:func:`jaxmath.run.sweep.from_config`: a
grid of log-spaced rates x seeds). Both are traced values, so every configuration's
training is ONE jit-compiled ``jax.vmap`` program (:func:`jaxmath.run.sweep_train.train_sweep`),
traced and compiled once whatever the number of rates, run as segments of
``checkpoint_every`` updates of a ``lax.scan``; the state of all runs is saved to the
workdir after each segment, so a killed sweep run again resumes where it stopped and
writes the same table. Its table, with each run's final loss on the whole training
set, its train and test accuracies and its loss curve (the minibatch loss every
``log_every`` steps), is written to ``sweep.jsonl`` (:func:`jaxmath.run.sweep.write_table`).
The data sit on the device and the updates of a segment happen inside one call, so
there is no per-step dispatch to remove; the summary gives the sweep's time, its
compilation (JAX's tracing, lowering and XLA compile time) and the training steps per
second of all runs together without it. A run whose minibatch loss becomes nan or
infinite is marked as diverged (``diverged`` and ``diverged_step`` in the table, its
state frozen before that update), as is one whose final training loss is not finite
(``diverged_step`` = ``num_steps``); it is left out of the statistics and plots and
listed in the summary (``diverged_members``), and the other runs go on unchanged.

Target. The best learning rate, the one of highest mean test accuracy over the seeds,
reaches a mean digits test accuracy >= ``target_accuracy`` (0.97, as
:mod:`experiments.mlp`).

Plots. ``accuracy_vs_lr.png``: test accuracy against the learning rate, one line per
seed and their mean, the best rate marked, and the final training loss against the
rate; ``loss_curves.png``: minibatch loss curves (mean over the seeds) for
``num_curves`` rates spread over the grid.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from jax.sharding import Mesh
from matplotlib.figure import Figure

from jaxmath.losses import softmax_cross_entropy
from jaxmath.run.config import config_to_dict
from jaxmath.run.mesh import batch_sharding, check_batch, on_every_device
from jaxmath.run.mesh import from_config as mesh_from_config
from jaxmath.run.report import save_figure
from jaxmath.run.sweep import from_config, write_table
from jaxmath.run.sweep_train import diverged_members, train_sweep
from jaxmath.run.writers import write_sweep_members

from ._data import DIGITS_MAX, Split, load_sklearn
from ._train import accuracy, compile_seconds, count_params, init_state, make_step
from .mlp import MLP, sample_batch, smoothed_loss_floor


def load_digits(data_config) -> Split:
    """The digits split of ``data_config``, grey levels scaled to [0, 1], as jax arrays."""
    d = load_sklearn("digits", data_config.test_fraction, data_config.split_seed,
                     standardize=False)
    return Split(jnp.asarray(d.x_train / DIGITS_MAX), jnp.asarray(d.y_train),
                 jnp.asarray(d.x_test / DIGITS_MAX), jnp.asarray(d.y_test), d.num_classes)


class Training(NamedTuple):
    """One configuration's training, in the three parts :func:`train_sweep` runs."""
    init: Callable[[dict], dict]                  # hp -> state
    step: Callable[[dict, dict, jax.Array], tuple[dict, dict]]  # (state, hp, t) -> (state, metrics)
    finish: Callable[[dict, dict], dict]          # (state, hp) -> results


def make_training(data: Split, hidden: Sequence[int], *, num_steps: int, batch_size: int,
                  warmup_steps: int, weight_decay: float, label_smoothing: float,
                  mesh: Mesh | None = None) -> Training:
    """One training run for ``hp = {"learning_rate", "seed"}``, as (init, step, finish).

    Both hyperparameters may be traced (``jax.vmap``, :func:`train_sweep`). ``init``
    draws the parameters from the seed's first key; ``step(state, hp, t)`` is update
    ``t + 1`` on the minibatch drawn from the seed's second key and ``t``, its metric the
    minibatch ``loss``; ``finish`` gives ``final_train_loss`` (the objective on the whole
    training set), ``train_accuracy`` and ``test_accuracy``. On a ``("sweep", "data")``
    ``mesh``, each run's minibatch is split over ``"data"``.
    """
    model = MLP(tuple(hidden), data.num_classes)
    unit = optax.warmup_cosine_decay_schedule(
        0.0, 1.0, min(warmup_steps, max(num_steps - 1, 1)), num_steps)

    def loss_fn(params, batch):
        x, y = batch
        logits = model.apply(params, x)
        return jnp.mean(softmax_cross_entropy(logits, y, label_smoothing=label_smoothing)), {}

    def optimizer(hp):  # AdamW at the rate peak * u(t), the peak a traced hyperparameter
        return optax.inject_hyperparams(optax.adamw)(
            learning_rate=lambda t: hp["learning_rate"] * unit(t), weight_decay=weight_decay)

    def keys(hp):  # (initialisation, minibatches)
        return jax.random.split(jax.random.key(hp["seed"]))

    def init(hp):
        return init_state(lambda k: model.init(k, data.x_train[:1]), keys(hp)[0], optimizer(hp))

    def step(state, hp, t):
        batch = sample_batch(keys(hp)[1], t, data.x_train, data.y_train, batch_size)
        if mesh is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding(mesh))
        state, metrics = make_step(loss_fn, optimizer(hp))(state, batch)
        return state, {"loss": metrics["loss"]}

    def finish(state, hp):
        params = state["params"]
        return {
            "final_train_loss": loss_fn(params, (data.x_train, data.y_train))[0],
            "train_accuracy": accuracy(model.apply(params, data.x_train), data.y_train),
            "test_accuracy": accuracy(model.apply(params, data.x_test), data.y_test),
        }

    return Training(init, step, finish)


def training_from_config(config, data: Split, mesh: Mesh | None = None) -> Training:
    """:func:`make_training` with the settings of ``config``."""
    return make_training(data, config.model.hidden, num_steps=config.num_steps,
                         batch_size=config.batch_size,
                         warmup_steps=config.optim.warmup_steps,
                         weight_decay=config.optim.weight_decay,
                         label_smoothing=config.label_smoothing, mesh=mesh)


def sweep_from_config(config, hparams: dict, training: Training, workdir, mesh: Mesh | None):
    """Every configuration's training run, resumable in ``workdir``
    (:func:`jaxmath.run.sweep_train.train_sweep` with the config's settings)."""
    # what the training functions close over: a sweep resumed with other values is refused
    identity = {k: config_to_dict(config)[k]
                for k in ("data", "model", "optim", "batch_size", "label_smoothing")}
    return train_sweep(training.init, training.step, training.finish, hparams,
                       num_steps=config.num_steps, log_every=config.log_every,
                       checkpoint_every=config.checkpoint_every or None, workdir=workdir,
                       chunk_size=config.sweep.chunk_size, mesh=mesh, identity=identity)


def by_rate(lr: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rates [R], values [R, seeds, ...])``: the runs grouped by learning rate, ascending.

    Every rate must have been run with the same number of seeds (a grid).
    """
    rates, inverse = np.unique(lr, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    values = np.asarray(values)[order]
    return rates, values.reshape(len(rates), -1, *values.shape[1:])


def _mean_over_seeds(values: np.ndarray) -> np.ndarray:
    """``[R]``: the mean over the seeds (axis 1) of the runs that did not diverge (not nan);
    nan for a rate whose runs all diverged."""
    finite = ~np.isnan(values)
    total = np.where(finite, values, 0.0).sum(1)
    count = finite.sum(1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _plot_accuracy(lr, seed, test_acc, excess_loss, best_lr, target) -> Figure:
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    for c, s in enumerate(np.unique(seed)):
        m = seed == s
        order = np.argsort(lr[m])
        ax_acc.plot(lr[m][order], test_acc[m][order], ".-", ms=3, lw=0.8, color=f"C{c % 10}",
                    alpha=0.7, label=f"seed {s}")
        loss = np.asarray(excess_loss[m][order], np.float64)
        ax_loss.plot(lr[m][order], np.where(np.isfinite(loss), loss, np.nan), ".-", ms=3,
                     lw=0.8, color=f"C{c % 10}", label=f"seed {s}")
    rates, acc = by_rate(lr, test_acc)
    mean = _mean_over_seeds(acc)
    ax_acc.plot(rates, mean, color="black", lw=2, label="mean over seeds")
    ax_acc.plot([best_lr], [mean.max()], "*", ms=14, color="red",
                label=f"best: η = {best_lr:.3g}, {mean.max():.2%}")
    ax_acc.axhline(target, color="grey", ls="--", label=f"target {target:g}")
    for ax in (ax_acc, ax_loss):
        ax.axvline(best_lr, color="red", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    ax_acc.set(xlabel="peak learning rate η", ylabel="digits test accuracy",
               ylim=(max(0.0, min(target, float(np.nanmin(mean))) - 0.05), 1.0),
               title="test accuracy against the learning rate")
    ax_loss.set(yscale="log", xlabel="peak learning rate η",
                ylabel="final training loss - its minimum H(t)",
                title="final loss on the whole training set")
    ax_acc.legend(fontsize=8, loc="lower center")
    ax_loss.legend(fontsize=8)
    return fig


def _plot_curves(lr, excess_curves, log_every, num_curves, best_lr) -> Figure:
    rates, per_rate = by_rate(lr, excess_curves)
    per_rate = np.asarray(per_rate, np.float64)  # [R, seeds, num_logs]
    mean = np.stack([_mean_over_seeds(per_rate[..., j]) for j in range(per_rate.shape[2])], 1)
    picks = np.unique(np.linspace(0, len(rates) - 1, num_curves).round().astype(int))
    picks = np.union1d(picks, np.flatnonzero(rates == best_lr))
    cmap = matplotlib.colormaps["viridis"]
    logs = np.log10(rates)
    span = max(logs.max() - logs.min(), 1e-12)
    steps = log_every * np.arange(1, mean.shape[1] + 1)
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    for i in picks:
        best = rates[i] == best_lr
        ax.plot(steps, mean[i], color="red" if best else cmap((logs[i] - logs.min()) / span),
                lw=2 if best else 1.2, label=f"η = {rates[i]:.3g}" + (" (best)" if best else ""))
    ax.set(yscale="log", xlabel="step", ylabel="minibatch loss - H(t), mean over seeds",
           title="loss curves for a few learning rates")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def run(config, workdir) -> dict:
    workdir = Path(workdir)
    mesh = mesh_from_config(config.mesh)
    check_batch(config.batch_size, mesh)
    data = on_every_device(load_digits(config.data), mesh)
    hparams = from_config(config.sweep)
    lr = np.asarray(hparams["learning_rate"], np.float64)
    seed = np.asarray(hparams["seed"]).astype(int)
    training = training_from_config(config, data, mesh)
    traces = []

    def counted_step(state, hp, t):  # a Python side effect: runs once per trace
        traces.append(1)
        return training.step(state, hp, t)

    start = time.perf_counter()
    with compile_seconds() as compile_s:
        out = sweep_from_config(config, hparams, training._replace(step=counted_step),
                                workdir, mesh)
    sweep_s = time.perf_counter() - start
    total_steps = len(lr) * int(config.num_steps)

    # a diverged run (a non-finite minibatch loss, or a finite one whose last update made the
    # parameters non-finite: its final loss) is kept in the table, out of the statistics
    final_bad = ~np.isfinite(np.asarray(out.results["final_train_loss"], np.float64))
    diverged_step = np.where((out.diverged_step == 0) & final_bad, int(config.num_steps),
                             out.diverged_step)
    diverged = diverged_step > 0
    write_table(workdir, hparams, {**out.results, "loss_curve": out.curves["loss"],
                                   "diverged": diverged, "diverged_step": diverged_step})
    # each run's curves as a series of its own (TensorBoard: tensorboard/<hyperparameters>)
    write_sweep_members(config.get("logging"), workdir, hparams, out.curves,
                        config.log_every * np.arange(1, np.shape(out.curves["loss"])[1] + 1))
    final_loss = np.where(diverged, np.nan, np.asarray(out.results["final_train_loss"],
                                                       np.float64))
    test_acc = np.where(diverged, np.nan, np.asarray(out.results["test_accuracy"], np.float64))
    train_acc = np.where(diverged, np.nan, np.asarray(out.results["train_accuracy"], np.float64))

    rates, acc = by_rate(lr, test_acc)  # acc: [rates, seeds]
    mean = _mean_over_seeds(acc)
    best = int(np.argmax(np.where(np.isnan(mean), -np.inf, mean)))
    best_lr = float(rates[best])
    # the smoothed loss cannot go below H(t): plot what is left above it
    floor = smoothed_loss_floor(config.label_smoothing, data.num_classes)
    save_figure(_plot_accuracy(lr, seed, test_acc, final_loss - floor, best_lr,
                               config.target_accuracy), workdir, "accuracy_vs_lr")
    curves = np.where(diverged[:, None], np.nan, np.asarray(out.curves["loss"], np.float64))
    save_figure(_plot_curves(lr, curves - floor, config.log_every, config.num_curves, best_lr),
                workdir, "loss_curves")

    model = MLP(tuple(config.model.hidden), data.num_classes)
    num_params = count_params(jax.eval_shape(model.init, jax.random.key(0), data.x_train[:1]))
    best_mean = float(mean[best])
    best_acc = acc[best][np.isfinite(acc[best])]
    return {
        "best_mean_test_accuracy": best_mean,
        "target": float(config.target_accuracy),
        "target_met": bool(best_mean >= config.target_accuracy),  # False if nan
        "target_metric": "best mean (over seeds) digits test accuracy",
        "best_learning_rate": best_lr,
        "best_test_accuracy_min": float(best_acc.min()) if best_acc.size else math.nan,
        "best_test_accuracy_max": float(best_acc.max()) if best_acc.size else math.nan,
        "best_mean_train_accuracy": float(_mean_over_seeds(by_rate(lr, train_acc)[1])[best]),
        "num_configs": len(lr),
        "num_learning_rates": len(rates),
        "num_seeds": acc.shape[1],
        "num_steps": int(config.num_steps),
        "num_diverged": int(diverged.sum()),
        "diverged_members": diverged_members(hparams, diverged_step),
        "num_traces": len(traces),  # of the training step, for the whole sweep
        "sweep_s": sweep_s,  # compilation included
        "configs_per_s": len(lr) / sweep_s,
        "steps_per_s": total_steps / sweep_s,
        "train_compile_s": compile_s[0],  # tracing, lowering and XLA compilation
        "train_steps_per_s": total_steps / max(sweep_s - compile_s[0], 1e-9),
        "learning_rate_min": float(lr.min()),
        "learning_rate_max": float(lr.max()),
        "digits_num_test": len(data.y_test),
        "num_params": num_params,  # of one network
    }
