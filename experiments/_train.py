"""The training machinery the experiments share: optimisers, states, steps, timing and plots.

Two families of training, each used by more than one experiment:

* classifiers (:mod:`experiments.mlp`, :mod:`experiments.cnn`,
  :mod:`experiments.transformer`): AdamW with warm-up and cosine decay over the run
  (:func:`make_adamw`), the state ``{"params", "opt_state"}`` (:func:`init_state`) and one
  update on a loss's gradient (:func:`make_step`), together :func:`train_classifier`;
  scored by :func:`accuracy`, summarised by :func:`classifier_summary` and plotted by
  :func:`plot_curves`;
* denoising diffusion (:mod:`experiments.ddpm_2d`, :mod:`experiments.ddpm_digits`): Adam
  with gradient clipping and a schedule of its own length (:func:`make_clipped_adam`), a
  state that carries a moving average of the parameters (:func:`init_ema_state`), one
  update on a minibatch drawn from the step (:func:`make_diffusion_step`), together
  :func:`diffusion_training`; samplers timed by :func:`compile_timed` and losses plotted
  by :func:`plot_losses`.

Every step is a pure function of the state and the step's inputs, run by
:func:`run_loop` (:func:`jaxmath.run.loop.train_loop` with the config's ``num_steps``,
``log_every``, ``checkpoint_every`` and ``steps_per_call``: 0, the updates between two
log or checkpoint steps as one compiled ``lax.scan``, the minibatch drawn on the device
from the traced step number; 1, one call per update). What the loop's time went to is
put in the summary by :func:`loop_timing`, and a classifier's summary is built by
:func:`classifier_summary`; a program that trains in one call (a sweep) measures its
compilation with :func:`compile_seconds`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh
from matplotlib.figure import Figure

from jaxmath._checks import is_tracer
from jaxmath.run import writers as metric_writers
from jaxmath.run.config import config_to_dict
from jaxmath.run.loop import TrainResult, parse_profile_steps, train_loop
from jaxmath.run.mesh import (
    MIN_SHARD_SIZE,
    batch_sharding,
    check_batch,
    process_rows,
    shard_init,
)
from jaxmath.run.mesh import from_config as mesh_from_config

if TYPE_CHECKING:
    from jaxmath.diffusion.model import DiffusionModel

PyTree = Any


# ----------------------------------------------------------------- initialisation


def training_mesh(config) -> Mesh:
    """The run's device mesh from ``config.mesh`` (:mod:`jaxmath.run.mesh`), checked against
    ``config.batch_size``: a ConfigError names the values before any work."""
    mesh = mesh_from_config(config.mesh)
    check_batch(config.batch_size, mesh)
    return mesh


def fast_init(init_fn: Callable[[jax.Array], PyTree], key: jax.Array,
              mesh: Mesh | None = None, min_shard_size: int = MIN_SHARD_SIZE) -> PyTree:
    """``init_fn(key)`` (e.g. a Flax ``model.init``) in one jitted call, fast to compile.

    It is traced with the non-partitionable threefry: on CPU, XLA compiles the
    partitionable threefry (JAX's default) of every 3-D or 4-D parameter's initialiser in
    seconds, which dominated the start-up of the convolutional and attention models. The
    values differ from the default's, the distribution is the same. With a ``mesh``, the
    result is computed straight into :func:`jaxmath.run.mesh.state_shardings`' layout
    (same values).
    """
    # (a JAX without the switch just compiles the default, more slowly)
    switch = getattr(jax, "threefry_partitionable", None)
    with switch(False) if switch is not None else contextlib.nullcontext():
        if mesh is None:
            return jax.jit(init_fn)(key)
        return shard_init(init_fn, key, mesh=mesh, min_size=min_shard_size)


def count_params(params: PyTree) -> int:
    """The number of scalars in the pytree ``params``."""
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


# ----------------------------------------------------------------- classifiers


def make_adamw(optim, num_steps: int) -> optax.GradientTransformation:
    """AdamW with linear warm-up and cosine decay; the rate is a hyperparameter in the state."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, optim.learning_rate, min(optim.warmup_steps, max(num_steps - 1, 1)), num_steps)
    return optax.inject_hyperparams(optax.adamw)(learning_rate=schedule,
                                                 weight_decay=optim.weight_decay)


def init_state(init_params: Callable[[jax.Array], PyTree], key: jax.Array,
               optimizer: optax.GradientTransformation, mesh: Mesh | None = None,
               min_shard_size: int = MIN_SHARD_SIZE) -> dict:
    """The training state ``{"params", "opt_state"}``, a plain pytree (what is checkpointed).

    ``init_params(key)`` initialises the parameters (see :func:`fast_init`), placed on
    ``mesh`` if given.
    """
    def init(key):
        params = init_params(key)
        return {"params": params, "opt_state": optimizer.init(params)}

    return fast_init(init, key, mesh, min_shard_size)


def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """``step(state, batch) -> (state, metrics)``: one optimiser update on ``loss_fn``'s gradient.

    ``loss_fn(params, batch) -> (loss, aux metrics)``; the metrics are ``aux`` plus
    ``loss`` and the ``learning_rate`` the update used.
    """
    def step(state: dict, batch: Any) -> tuple[dict, dict]:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # inject_hyperparams stores the rate this update used in the new state
        return ({"params": params, "opt_state": opt_state},
                {"loss": loss, "learning_rate": opt_state.hyperparams["learning_rate"], **aux})
    return step


def train_classifier(config, workdir, init_params: Callable[[jax.Array], PyTree],
                     key: jax.Array, loss_fn: Callable, batch_fn: Callable, *, desc: str,
                     metrics_fn: Callable, mesh: Mesh,
                     examples_per_step: int | None = None) -> tuple[TrainResult, dict[str, Any]]:
    """A classifier's training: AdamW on the config's schedule (:func:`make_adamw`), the
    state from ``init_params(key)`` (:func:`init_state`) on ``mesh``, one update per step
    on ``loss_fn`` (:func:`make_step`), run by :func:`run_loop`: ``(result, timing)``."""
    optimizer = make_adamw(config.optim, config.num_steps)
    state = init_state(init_params, key, optimizer, mesh, config.mesh.min_shard_size)
    return run_loop(config, workdir, state, make_step(loss_fn, optimizer), batch_fn, desc=desc,
                    metrics_fn=metrics_fn, mesh=mesh, examples_per_step=examples_per_step)


def process_batches(batch_fn: Callable, mesh: Mesh, batch_size: int) -> Callable:
    """``batch_fn(step)`` (the global batch) as the loop takes it on ``mesh``.

    Traced (the loop's scan), it is ``batch_fn`` itself: the loop splits the global
    batch over the devices. Called with a Python int (one call per step), it returns
    this process's rows of the global batch (:func:`jaxmath.run.mesh.process_rows`):
    all of them in a single process.
    """
    rows = process_rows(batch_size, batch_sharding(mesh))
    if rows == slice(0, batch_size):
        return batch_fn

    def local(step):
        batch = batch_fn(step)
        return batch if is_tracer(step) else jax.tree.map(lambda x: x[rows], batch)
    return local


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of examples whose largest logit is the label."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def plot_curves(history: Sequence[Mapping[str, float]], losses: Mapping[str, str],
                accuracies: Mapping[str, str], target: float | None = None,
                accuracy_label: str = "test accuracy",
                loss_label: str = "loss on the minibatch") -> Figure:
    """Losses (log scale) and accuracies against the step; ``{label: metrics key}`` each."""
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    steps = [row["step"] for row in history]
    for label, key in losses.items():
        ax_loss.plot(steps, [row[key] for row in history], label=label)
    ax_loss.set(yscale="log", xlabel="step", ylabel=loss_label, title="training loss")
    for label, key in accuracies.items():
        ax_acc.plot(steps, [row[key] for row in history], marker=".", label=label)
    if target is not None:
        ax_acc.axhline(target, color="grey", linestyle="--", label=f"target {target:g}")
    ax_acc.set(xlabel="step", ylabel=accuracy_label, title=accuracy_label)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


# ----------------------------------------------------------------- diffusion


def make_clipped_adam(optim: Mapping[str, Any]) -> optax.GradientTransformation:
    """Adam with gradient clipping and a warm-up + cosine learning-rate schedule.

    The rate rises linearly from 0 over ``warmup_steps``, then decays along a cosine to
    ``end_factor * learning_rate`` at ``decay_steps`` and stays there. The schedule's
    length is its own config field, not ``num_steps``: a run extended past it (or
    stopped early and resumed) follows the same schedule as an uninterrupted one.
    """
    decay_steps = int(optim["decay_steps"])
    warmup = min(int(optim["warmup_steps"]), max(decay_steps - 1, 0))
    lr = optax.warmup_cosine_decay_schedule(
        0.0, optim["learning_rate"], warmup, max(decay_steps, warmup + 1),
        end_value=optim["learning_rate"] * optim["end_factor"])
    return optax.chain(optax.clip_by_global_norm(optim["grad_clip"]), optax.adam(lr))


def init_ema_state(params: PyTree, tx: optax.GradientTransformation) -> dict[str, PyTree]:
    """The training state: parameters, optimiser state and their exponential moving average."""
    return {"params": params, "opt_state": tx.init(params), "ema": params}


def make_diffusion_step(model: DiffusionModel, tx: optax.GradientTransformation,
                        batch_size: int, ema_decay: float, mesh: Mesh | None = None) -> Callable:
    r"""``step(state, s, data, key) -> (state, loss)``: one Adam update on a minibatch.

    The minibatch (``batch_size`` rows of ``data`` drawn with replacement) and the loss's
    timesteps and noise come from ``fold_in(key, s)``: a function of the step alone. The
    moving average :math:`\bar\theta \leftarrow \beta \bar\theta + (1 - \beta)\theta`
    (:math:`\beta` = ``ema_decay``) is what is sampled from. On a ``mesh``, the
    minibatch is split over its data axes (each device draws its own rows of it).
    """
    def step(state: PyTree, s: jax.Array, data: jax.Array, key: jax.Array):
        k_batch, k_loss = jax.random.split(jax.random.fold_in(key, s))
        x0 = data[jax.random.randint(k_batch, (batch_size,), 0, data.shape[0])]
        if mesh is not None:
            x0 = jax.lax.with_sharding_constraint(x0, batch_sharding(mesh))
        loss, grads = jax.value_and_grad(
            lambda p: model.apply(p, x0, k_loss, method="loss"))(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        ema = optax.incremental_update(params, state["ema"], 1 - ema_decay)
        return {"params": params, "opt_state": opt_state, "ema": ema}, loss
    return step


def diffusion_training(model: DiffusionModel, config,
                       mesh: Mesh | None = None) -> tuple[Callable, Callable]:
    """``(init_state, step)`` of a diffusion model trained on the config.

    ``init_state(params)`` is :func:`init_ema_state` with the optimiser of
    :func:`make_clipped_adam` on ``config.optim``, and ``step`` is
    :func:`make_diffusion_step` with ``config.batch_size`` and ``config.optim.ema_decay``,
    its minibatch split over ``mesh``.
    """
    tx = make_clipped_adam(config.optim)
    step = make_diffusion_step(model, tx, config.batch_size, config.optim.ema_decay, mesh)
    return (lambda params: init_ema_state(params, tx)), step


def step_number(step: int) -> int:
    """The loop's ``batch_fn`` for a step that draws its own minibatch: the step number."""
    return step


# ----------------------------------------------------------------- the loop, timing and plots


def run_loop(config, workdir, state: PyTree, step_fn: Callable, batch_fn: Callable, *,
             desc: str, metrics_fn: Callable | None = None, mesh: Mesh | None = None,
             examples_per_step: int | None = None) -> tuple[TrainResult, dict[str, Any]]:
    """``train_loop`` on the config's schedule, timed: ``(result, loop_timing(...))``.

    The config gives ``num_steps``, ``log_every``, ``checkpoint_every`` and
    ``steps_per_call``, and optionally ``eval_every`` (``metrics_fn``, the evaluation on
    held-out data, every this many steps; default every log step), ``best_metric`` and
    ``best_mode`` (the best checkpoint by that evaluation metric), ``batch_size`` (the
    examples per step for examples/s, unless ``examples_per_step`` says otherwise) and
    ``profile_steps`` (``"A:B"``: a profiler trace of those updates); ``desc`` labels the
    progress bar. With a ``mesh``, ``batch_fn`` returns the global
    batch and the loop splits it over the mesh's data axes (:func:`process_batches`);
    the state arrives placed on the mesh. The rows also go to the writers of the config's
    ``logging`` block, if it has one (:func:`jaxmath.run.writers.from_config`: TensorBoard
    in ``workdir/tensorboard``, W&B), closed when the loop ends or fails.
    """
    sharding = None
    if mesh is not None and batch_fn is not step_number:
        batch_fn = process_batches(batch_fn, mesh, config.batch_size)
        sharding = batch_sharding(mesh)
    writers = metric_writers.from_config(config.get("logging"), workdir,
                                         hparams=config_to_dict(config))
    t_start = time.perf_counter()
    with writers:
        result = train_loop(state, step_fn, batch_fn, num_steps=config.num_steps,
                            workdir=workdir, log_every=config.log_every,
                            checkpoint_every=config.checkpoint_every, desc=desc,
                            metrics_fn=metrics_fn, steps_per_call=config.steps_per_call,
                            batch_sharding=sharding, eval_every=config.get("eval_every"),
                            best_metric=config.get("best_metric") if metrics_fn else None,
                            best_mode=config.get("best_mode", "max"),
                            examples_per_step=examples_per_step or config.get("batch_size"),
                            profile_steps=parse_profile_steps(config.get("profile_steps")),
                            writers=writers)
    return result, loop_timing(result, time.perf_counter() - t_start)


def classifier_summary(metric: str, value: float, target: float, target_metric: str,
                       result: TrainResult, timing: Mapping[str, Any], num_params: int,
                       **details: Any) -> dict[str, Any]:
    """A trained classifier's summary: its target metric first, then ``details``, then the
    final loss, the steps, the parameter count and the loop's timing.

    ``metric`` names the summary key of ``value``, the figure the target is set on
    (met when ``value >= target``); ``target_metric`` says it in words.
    """
    last = result.history[-1]
    return {
        metric: value,
        "target": float(target),
        "target_met": bool(value >= target),
        "target_metric": target_metric,
        **details,
        "final_loss": last["loss"],
        "num_steps": last["step"],
        "num_params": num_params,
        **timing,
    }


def loop_timing(result: TrainResult, train_s: float) -> dict[str, Any]:
    """The summary's timing of a :func:`jaxmath.run.loop.train_loop` run (see :func:`run_loop`).

    ``train_s``: the loop's wall time (as measured by the caller);
    ``train_compile_s``: its first jitted call alone, compilation included;
    ``train_steps_per_s``, ``train_examples_per_s``, ``train_flops_per_s``: updates,
    examples and FLOPs per second after that call, checkpoints and evaluation excluded;
    ``train_flops_per_step``: one update's FLOPs (XLA's cost analysis);
    ``train_mfu``: model FLOPs utilisation (None on a device without a known peak,
    e.g. a CPU); ``steps_per_call``: updates per jitted call. For a resumed run these
    describe the resumed part (None if it had nothing left to do). With a best
    checkpoint: ``best_step`` and ``best_value`` of its metric.
    """
    timing = result.timing

    def get(name):
        return None if timing is None else getattr(timing, name)

    out = {
        "train_s": train_s,
        "train_compile_s": get("compile_s"),
        "train_steps_per_s": get("steps_per_s"),
        "train_examples_per_s": get("examples_per_s"),
        "train_flops_per_step": get("flops_per_step"),
        "train_flops_per_s": get("flops_per_s"),
        "train_mfu": get("mfu"),
        "steps_per_call": get("steps_per_call"),
    }
    if result.best is not None:
        out.update(best_step=result.best["step"], best_value=result.best["value"])
    return out


_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


@contextlib.contextmanager
def compile_seconds():
    """``with compile_seconds() as total:`` JAX's tracing, lowering and XLA compilation
    time inside the block, in ``total[0]`` (from ``jax.monitoring``'s duration events)."""
    total = [0.0]

    def listener(event: str, duration: float, **kwargs: Any) -> None:
        if event in _COMPILE_EVENTS:
            total[0] += duration

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield total
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def compile_timed(fn: Callable, *args: Any) -> tuple[Any, float, float]:
    """Run ``jax.jit(fn)(*args)`` compiled ahead of time: ``(out, compile_s, run_s)``."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, t1 - t0, time.perf_counter() - t1


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over up to ``window`` values (shorter at the start)."""
    c = np.cumsum(np.concatenate([[0.0], np.asarray(values, np.float64)]))
    i = np.arange(1, len(values) + 1)
    return (c[i] - c[np.maximum(i - window, 0)]) / np.minimum(i, window)


def plot_losses(curves: Mapping[str, Sequence[float]], steps: Sequence[int], ylabel: str,
                title: str, window: int = 10) -> Figure:
    """Minibatch losses (faint) and their moving average over ``window`` log rows."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for i, (name, values) in enumerate(curves.items()):
        ax.plot(steps, values, color=f"C{i}", alpha=0.25, lw=0.8)
        ax.plot(steps, smooth(values, window), color=f"C{i}", label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    return fig
