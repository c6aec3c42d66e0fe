r"""Training sweeps that save their progress, resume after a kill and mark diverged members.

A training sweep runs, for every configuration :math:`h_s` of a sweep table,

.. math:: x_s^{(0)} = \mathrm{init}(h_s), \qquad
          x_s^{(t+1)}, m_s^{(t+1)} = \mathrm{step}(x_s^{(t)}, h_s, t), \qquad
          r_s = \mathrm{finish}(x_s^{(T)}, h_s)

for :math:`t = 0, \dots, T - 1`, as :func:`jaxmath.run.sweep.run_sweep` does: one
compiled ``jax.vmap`` over the sweep axis, chunk by chunk, sharded over the devices.
:func:`train_sweep` runs each chunk's :math:`T` updates as segments of
``checkpoint_every`` updates, each one call of the same compiled ``lax.scan``, and
saves the chunk's vmapped state between segments. With a ``workdir``, a sweep killed at
any moment (``kill -9`` included) and run again loads its finished chunks, restores the
running chunk's state and continues: it returns the same bits as an uninterrupted sweep
on CPU. The segment program scans a fixed ``checkpoint_every`` iterations whatever the
segment: a shorter one (the last, or one resumed from a step that is not a multiple)
runs its extra iterations masked (computed and discarded), so every update is the same
compiled body in every call, and the bits do not depend on how the updates were split.

Diverged members: the update :math:`t + 1` whose loss (``metrics[loss]``, computed on
:math:`x_s^{(t)}`) is nan or :math:`\pm\infty` marks the member as diverged at step
:math:`t + 1`. That update and all later ones are not applied: its state stays frozen at
:math:`x_s^{(t)}` (as :func:`jaxmath.run.loop.train_loop` keeps the state before the
bad update), and its logged float metrics after that step are nan. Only the loss is
watched: an update that makes the parameters non-finite on a finite loss is applied,
and shows at the next update's loss (or in ``finish``'s results, e.g. a final loss).
The other members compute exactly what they would without it (vmap's lanes are
independent), and the sweep goes on. :func:`diverged_members` lists the marked ones for a summary.

Loss curves: each segment's scan returns every update's metrics; the host keeps those of
updates ``log_every, 2 log_every, ...`` per member (saved with the running state between
segments) and returns them as ``curves``.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmath._checks import check_int
from jaxmath.run.files import to_json
from jaxmath.run.mesh import SWEEP_AXIS
from jaxmath.run.sweep import (
    _check_chunk_size,
    _check_hparams,
    _check_mesh,
    _check_result,
    _check_table,
    _chunk_arrays,
    _leaf_names,
    _merge_groups,
    _padded_columns,
    _plan,
    _progress,
    _to_host,
    group_by,
)

ArrayLike = jax.typing.ArrayLike
PyTree = Any

__all__ = ["TrainSweepResult", "diverged_members", "train_sweep"]


class TrainSweepResult(NamedTuple):
    """What :func:`train_sweep` returns; every leaf has a leading axis ``N`` (NumPy).

    Attributes:
      results: ``finish_fn``'s pytree.
      curves: ``{metric: [N, num_steps // log_every]}``, the metrics of updates
        ``log_every, 2 log_every, ...``; nan after a member diverged.
      diverged_step: ``[N]`` int32, the update whose loss was first non-finite
        (``1 .. num_steps``), 0 for a member that never diverged.
    """
    results: PyTree
    curves: dict[str, np.ndarray]
    diverged_step: np.ndarray

    @property
    def diverged(self) -> np.ndarray:
        """``[N]`` bool: the members whose loss became non-finite."""
        return self.diverged_step > 0


class _Carry(NamedTuple):
    """One member's state through the segments: the training state and the update it
    diverged at (0: not)."""
    state: PyTree
    diverged_step: jax.Array


def _hp(names, static_values, hp):
    return {n: static_values[n] if n in static_values else hp[n] for n in names}


def _check_metrics(metrics: Any, loss: str) -> None:
    if not isinstance(metrics, Mapping) or loss not in metrics:
        raise ValueError(f"step_fn must return (state, metrics) with metrics a dict holding "
                         f"{loss!r} (the loss that marks divergence), got "
                         f"{type(metrics).__name__}"
                         + (f" with keys {sorted(metrics)}" if isinstance(metrics, Mapping)
                            else ""))
    for name, m in metrics.items():
        if jnp.ndim(m) != 0:
            raise ValueError(f"step_fn's metric {name!r} must be a scalar per configuration, "
                             f"got shape {jnp.shape(m)}")


def _check_same_state(old: PyTree, new: PyTree) -> None:
    if jax.tree.structure(old) != jax.tree.structure(new):
        raise TypeError(f"step_fn must return a state of the structure it was given: got "
                        f"{jax.tree.structure(new)} for {jax.tree.structure(old)}")
    for path, a, b in zip(_leaf_names(old), jax.tree.leaves(old), jax.tree.leaves(new),
                          strict=True):
        a, b = jax.typeof(a), jax.typeof(b)
        if (a.shape, a.dtype) != (b.shape, b.dtype):
            raise TypeError(f"step_fn changed state leaf {path!r} from {a.dtype}{list(a.shape)} "
                            f"to {b.dtype}{list(b.shape)}")


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _init_chunk(init_fn, names, static_items, sharding, size, traced):
    """The chunk's first carry: ``vmap(init_fn)``, nothing diverged."""
    static_values = dict(static_items)

    def one(hp):
        return _Carry(init_fn(_hp(names, static_values, hp)), jnp.int32(0))

    carry = jax.vmap(one, axis_size=size, spmd_axis_name=SWEEP_AXIS)(traced)
    return jax.lax.with_sharding_constraint(carry, sharding)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6))
def _segment_chunk(step_fn, names, static_items, sharding, size, loss, length,
                   carry, traced, first, count):
    """Updates ``first .. first + count - 1`` of every member of a chunk, as one
    ``lax.scan`` of ``length`` iterations (those past ``count`` masked): the carry after
    them and every iteration's metrics, ``{name: [size, length]}``."""
    static_values = dict(static_items)

    def one(carry: _Carry, hp):
        hp = _hp(names, static_values, hp)

        def body(c: _Carry, i):
            t = first + jnp.minimum(i, count - 1)  # the update's index; its number is t + 1
            state, metrics = step_fn(c.state, hp, t)
            _check_same_state(c.state, state)
            _check_metrics(metrics, loss)
            alive = (i < count) & (c.diverged_step == 0)
            finite = jnp.isfinite(metrics[loss])
            state = jax.tree.map(lambda n, o: jnp.where(alive & finite, n, o), state, c.state)
            diverged_step = jnp.where(alive & ~finite, t + 1, c.diverged_step)
            return _Carry(state, diverged_step), dict(metrics)

        return jax.lax.scan(body, carry, jnp.arange(length, dtype=jnp.int32))

    out = jax.vmap(one, axis_size=size, spmd_axis_name=SWEEP_AXIS)(carry, traced)
    return jax.lax.with_sharding_constraint(out, sharding)


class _Curves:
    """A chunk's logged metrics on the host, ``{name: [chunk, num_logs]}``: filled from each
    segment's metrics (copied from the device when needed, not after every segment)."""

    def __init__(self, shapes: Mapping[str, jax.ShapeDtypeStruct], size: int,
                 num_logs: int, log_every: int):
        self.log_every = log_every
        self.values = {k: np.full((size, num_logs), np.nan if np.issubdtype(m.dtype, np.inexact)
                                  else 0, m.dtype) for k, m in shapes.items()}
        self.pending: list[tuple[int, int, dict]] = []

    def add(self, first: int, count: int, metrics: dict) -> None:
        self.pending.append((first, count, metrics))

    def flush(self) -> dict[str, np.ndarray]:
        for first, count, metrics in self.pending:
            steps = np.arange(first + 1, first + count + 1)
            logged = np.flatnonzero(steps % self.log_every == 0)
            if logged.size:
                host = _to_host(metrics)
                for k, v in self.values.items():
                    v[:, steps[logged] // self.log_every - 1] = host[k][:, logged]
        self.pending = []
        return self.values

    def final(self, diverged_step: np.ndarray) -> dict[str, np.ndarray]:
        """The curves, nan at the logged steps after a member's divergence."""
        values = self.flush()
        num_logs = next(iter(values.values())).shape[1]
        steps = self.log_every * np.arange(1, num_logs + 1)
        after = (diverged_step[:, None] > 0) & (steps[None, :] > diverged_step[:, None])
        return {k: np.where(after, np.nan, v) if np.issubdtype(v.dtype, np.inexact) else v
                for k, v in values.items()}


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _finish_chunk(finish_fn, names, static_items, sharding, size, state, traced):
    static_values = dict(static_items)

    def one(state, hp):
        out = finish_fn(state, _hp(names, static_values, hp))
        _check_result(out)
        return out

    out = jax.vmap(one, axis_size=size, spmd_axis_name=SWEEP_AXIS)(state, traced)
    return jax.lax.with_sharding_constraint(out, sharding)


def _is_key(x: Any) -> bool:
    return jnp.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key)


def _savable(tree: PyTree) -> list[np.ndarray]:
    """The leaves on this host, typed PRNG keys as their raw key data."""
    return jax.tree.leaves(_to_host(jax.tree.map(
        lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)))


def _restore(leaves: Sequence[np.ndarray], template: PyTree, sharding: NamedSharding,
             where: str) -> PyTree:
    """``leaves`` (from :func:`_savable`) placed like ``template``, keys re-wrapped."""
    out = []
    for name, saved, t in zip(_leaf_names(template), leaves, jax.tree.leaves(template),
                              strict=True):
        raw = jax.random.key_data(t) if _is_key(t) else t
        if saved.shape != raw.shape or saved.dtype != raw.dtype:
            raise ValueError(f"{where}: leaf {name!r} is {saved.dtype}{list(saved.shape)}, "
                             f"the sweep's state has {raw.dtype}{list(raw.shape)}; the "
                             "functions changed since it was saved: use another workdir")
        x = jax.make_array_from_callback(saved.shape, sharding, saved.__getitem__)
        out.append(jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t)
                   else x)
    return jax.tree.unflatten(jax.tree.structure(template), out)


def _check_identity(identity: Any) -> dict | None:
    if identity is None:
        return None
    if not isinstance(identity, Mapping):
        raise TypeError(f"identity must be a mapping or None, got {type(identity).__name__}")
    try:
        json.dumps(identity, default=to_json)
    except (TypeError, ValueError) as e:
        raise TypeError(f"identity must be JSON-able (numbers, strings, lists, dicts): {e}") \
            from None
    return dict(identity)


def _run_group(fns, columns, names, static_values, rows, settings, mesh, progress, group):
    """Results of one static group ``rows``, chunk by chunk, as :func:`train_sweep` says."""
    init_fn, step_fn, finish_fn = fns
    num_steps, log_every, checkpoint_every, chunk_size, loss, on_segment = settings
    num_logs = num_steps // log_every
    sharding = NamedSharding(mesh, PartitionSpec(SWEEP_AXIS))
    replicated = NamedSharding(mesh, PartitionSpec())
    size = len(rows)
    num_chunks, chunk = _plan(size, chunk_size, mesh.shape[SWEEP_AXIS])
    padded = _padded_columns(columns, static_values, rows, num_chunks, chunk)
    static_items = tuple(static_values.items())
    init = functools.partial(_init_chunk, init_fn, names, static_items, sharding, chunk)
    segment = functools.partial(_segment_chunk, step_fn, names, static_items, sharding, chunk,
                                loss, checkpoint_every)
    finish = functools.partial(_finish_chunk, finish_fn, names, static_items, sharding, chunk)

    def scalar(v):
        return jax.device_put(np.int32(v), replicated)

    out_shape = None  # the results' structure, from the first chunk's traces
    host = []
    for c in range(num_chunks):
        hp = _chunk_arrays(padded, c, chunk, sharding)
        carry, done = None, 0
        if out_shape is None:  # the calls below reuse jax.eval_shape's traces
            carry = init(hp)
            carry_shape, metrics_shape = jax.eval_shape(segment, carry, hp, scalar(0),
                                                        scalar(1))
            out_shape = (jax.eval_shape(finish, carry.state, hp),
                         {k: jax.ShapeDtypeStruct((chunk, num_logs), m.dtype)
                          for k, m in metrics_shape.items()}, carry_shape.diverged_step)
            running_names = [*_leaf_names(carry_shape), *(f"curves/{k}" for k in metrics_shape)]
        if progress is not None:
            leaves = progress.finished(group, c, _leaf_names(out_shape))
            if leaves is not None:
                host.append(jax.tree.unflatten(jax.tree.structure(out_shape), leaves))
                continue
        if carry is None:
            carry = init(hp)
        curves = _Curves(metrics_shape, chunk, num_logs, log_every)
        saved = None if progress is None else progress.running(group, c, running_names)
        if saved is not None:
            done, leaves = saved
            num_carry = len(jax.tree.leaves(carry))
            carry = _restore(leaves[:num_carry], carry, sharding,
                             f"the running chunk {c} in {progress.directory}")
            for k, v in zip(curves.values, leaves[num_carry:], strict=True):
                curves.values[k][...] = v
        while done < num_steps:
            count = min(checkpoint_every, num_steps - done)
            carry, metrics = segment(carry, hp, scalar(done), scalar(count))
            curves.add(done, count, metrics)
            done += count
            if progress is not None and done < num_steps:
                progress.save_running(group, c, done,
                                      [*_savable(carry), *curves.flush().values()],
                                      running_names)
            if on_segment is not None:
                on_segment(group, c, done)
        results, diverged_step = _to_host((finish(carry.state, hp), carry.diverged_step))
        out = (results, curves.final(diverged_step), diverged_step)
        if progress is not None:
            progress.save_finished(group, c, jax.tree.leaves(out), _leaf_names(out_shape))
        host.append(out)
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:size], *host)


def train_sweep(init_fn: Callable[[dict[str, Any]], PyTree],
                step_fn: Callable[[PyTree, dict[str, Any], jax.Array], tuple[PyTree, dict]],
                finish_fn: Callable[[PyTree, dict[str, Any]], PyTree],
                hparams: Mapping[str, ArrayLike], *, num_steps: int, log_every: int = 1,
                checkpoint_every: int | None = None, workdir: str | os.PathLike | None = None,
                chunk_size: int | None = None, mesh: Mesh | None = None,
                static: str | Sequence[str] = (), loss: str = "loss",
                identity: Mapping[str, Any] | None = None,
                on_segment: Callable[[int, int, int], None] | None = None) -> TrainSweepResult:
    r"""Train every configuration of a sweep, resumably, as one compiled vmapped program.

    .. math:: x_s^{(0)} = \mathrm{init}(h_s), \quad
              x_s^{(t+1)} = \mathrm{step}(x_s^{(t)}, h_s, t), \quad
              r_s = \mathrm{finish}(x_s^{(T)}, h_s)

    Hyperparameters are traced as in :func:`jaxmath.run.sweep.run_sweep` (one compile
    whatever their values; ``static`` ones loop over groups), the configurations run
    ``chunk_size`` at a time, sharded over ``mesh``'s ``"sweep"`` axis. Three programs
    are compiled per static group: ``vmap(init_fn)``, the segment (a ``lax.scan`` of
    ``checkpoint_every`` updates of ``vmap(step_fn)``) and ``vmap(finish_fn)``.

    Args:
      init_fn: ``init_fn(hp) -> state``, a pytree of arrays (PRNG keys allowed).
      step_fn: ``step_fn(state, hp, t) -> (state, metrics)``: update ``t + 1`` (``t`` a
        traced int32, ``0 .. num_steps - 1``); ``metrics`` a dict of scalars holding
        ``loss``. The state keeps its structure, shapes and dtypes.
      finish_fn: ``finish_fn(state, hp) -> results``, a pytree of arrays (final losses,
        accuracies) computed on the last state (for a diverged member: the frozen state,
        the one its non-finite loss was computed on).
      hparams: ``{name: [N]}``, the sweep table (:func:`jaxmath.run.sweep.grid`, ...).
      num_steps: updates per configuration, ``T >= 1``.
      log_every: keep the metrics of every ``log_every``-th update in ``curves``.
      checkpoint_every: updates per segment; with a ``workdir`` the running chunk's
        state is saved after each one. ``None``: the whole run as one segment. The
        results do not depend on it, and it may change when a sweep is resumed.
      workdir: the run directory to keep the progress in
        (``workdir/checkpoints_sweep/``, :mod:`jaxmath.run.sweep_progress`); ``None``:
        nothing is saved. Run again with the same ``workdir`` to resume; a different
        table, ``static``, chunk plan (``chunk_size``, number of devices),
        ``num_steps``, ``log_every`` or ``loss`` is a ``ValueError``. The functions
        cannot be compared: change them, change the workdir.
      chunk_size: configurations per call, as in ``run_sweep``.
      mesh: a mesh with a ``"sweep"`` axis, as in ``run_sweep``.
      static: the names of hyperparameters that change shapes.
      loss: the metric whose non-finite value marks a member as diverged.
      identity: JSON-able settings the functions close over (a model's widths, a batch
        size, a data split), recorded in the workdir's manifest: a sweep resumed with
        other values is refused like one with another table.
      on_segment: ``on_segment(group, chunk, steps_done)``, called on the host after each
        segment is dispatched (and its state saved): progress reports, tests.

    Returns:
      A :class:`TrainSweepResult` ``(results, curves, diverged_step)`` of NumPy arrays
      with leading axis ``N``, in the order of ``hparams``' rows.

    Example:
      >>> from jaxmath.run.sweep import grid
      >>> def init(hp):
      ...     return {"w": jnp.cos(hp["seed"] + jnp.arange(2.0))}
      >>> def step(state, hp, t):
      ...     loss = lambda w: jnp.sum((w - 3.0) ** 2)
      ...     value, g = jax.value_and_grad(loss)(state["w"])
      ...     return {"w": state["w"] - hp["learning_rate"] * g}, {"loss": value}
      >>> def finish(state, hp):
      ...     return {"w": state["w"]}
      >>> hp = grid(learning_rate=[0.1, 5.0], seed=[0, 1])
      >>> out = train_sweep(init, step, finish, hp, num_steps=200, log_every=50)
      >>> out.curves["loss"].shape, out.diverged.tolist()
      ((4, 4), [False, False, True, True])
      >>> out.diverged_step.tolist()  # at 5.0 the loss overflows float32 at update 21
      [0, 0, 21, 21]
    """
    for fn, what in ((init_fn, "init_fn"), (step_fn, "step_fn"), (finish_fn, "finish_fn")):
        if not callable(fn):
            raise TypeError(f"{what} must be callable, got {type(fn).__name__}")
    columns, size, names = _check_table(hparams, static)
    num_steps = check_int(num_steps, "num_steps", 1)
    log_every = check_int(log_every, "log_every", 1)
    if log_every > num_steps:
        raise ValueError(f"log_every must be <= num_steps = {num_steps}, got {log_every}")
    if checkpoint_every is not None:
        checkpoint_every = check_int(checkpoint_every, "checkpoint_every", 1)
    checkpoint_every = min(checkpoint_every or num_steps, num_steps)
    if not isinstance(loss, str):
        raise TypeError(f"loss must be a metric name (str), got {type(loss).__name__}")
    if on_segment is not None and not callable(on_segment):
        raise TypeError(f"on_segment must be callable or None, got {type(on_segment).__name__}")
    chunk_size = _check_chunk_size(chunk_size)
    mesh = _check_mesh(mesh)
    groups = group_by(columns, names)
    progress = _progress(workdir, "train_sweep", columns, names, groups,
                         [_plan(len(rows), chunk_size, mesh.shape[SWEEP_AXIS])
                          for _, rows in groups],
                         num_steps=num_steps, log_every=log_every, loss=loss,
                         identity=_check_identity(identity))
    settings = (num_steps, log_every, checkpoint_every, chunk_size, loss, on_segment)
    results = [(values, rows, _run_group((init_fn, step_fn, finish_fn), columns, tuple(columns),
                                         values, rows, settings, mesh, progress, g))
               for g, (values, rows) in enumerate(groups)]
    merged = results[0][2] if len(results) == 1 else _merge_groups(results, size)
    return TrainSweepResult(*merged)


def diverged_members(hparams: Mapping[str, ArrayLike],
                     diverged_step: ArrayLike) -> list[dict[str, Any]]:
    """The diverged members as ``[{"index": s, <hyperparameters>..., "step": t}]``.

    Args:
      hparams: ``{name: [N]}``, the sweep table.
      diverged_step: ``[N]``, :attr:`TrainSweepResult.diverged_step` (0: not diverged).

    Returns:
      One dict per diverged member, in row order, with Python scalars: a summary's
      list of them (``report.md`` shows it as a list).

    Example:
      >>> diverged_members({"lr": np.array([0.1, 9.0]), "seed": np.array([0, 0])}, [0, 12])
      [{'index': 1, 'lr': 9.0, 'seed': 0, 'step': 12}]
    """
    columns, size = _check_hparams(hparams)
    steps = np.asarray(diverged_step)
    if steps.shape != (size,):
        raise ValueError(f"diverged_step must have shape (N,) = ({size},), got {steps.shape}")
    return [{"index": int(s), **{n: v[s].item() for n, v in columns.items()},
             "step": int(steps[s])} for s in np.flatnonzero(steps > 0)]
