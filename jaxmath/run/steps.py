r"""The compiled step of :func:`jaxmath.run.loop.train_loop`, on its two paths.

One update is :func:`_guarded_step`: the user's ``step_fn`` plus a non-finite watch that
stays on the device (an ``int32[3]`` carry: updates done, the first update whose loss was
not finite, that loss's bits) and the shardings the batch and the new state are pinned to
(:class:`_Layout`). :class:`_Stepper` runs updates ``a .. b - 1`` either as one jitted call
per update (``batch_fn`` on the host) or as calls of one compiled ``lax.scan`` of ``K``
updates (:func:`_scan_steps`, ``batch_fn`` traced), ``K`` dividing every log, checkpoint
and evaluation period and calls starting at multiples of ``K`` (:func:`_calls`), so that a
resumed run makes the same calls as an uninterrupted one. Everything here is private to
the loop; the module docstring of :mod:`jaxmath.run.loop` says why the two paths exist.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import math
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmath.run.mesh import global_batch
from jaxmath.run.throughput import step_flops

PyTree = Any


class _Layout(NamedTuple):
    """Where the batch and the state live on a mesh (hashable: part of a jit cache key).

    ``batch``: the batch's sharding (one for every leaf, or a pytree of them), or None.
    ``state``: ``(treedef, shardings)`` of a state whose leaves all have a
    ``NamedSharding``, or None. Inside the step, the batch (drawn by a traced
    ``batch_fn`` on the scan path) and the new state are constrained to them, so that
    the state keeps its layout from step to step and one executable serves every call.
    """

    batch: Any = None
    state: tuple | None = None

    @classmethod
    def of(cls, state: PyTree, batch_sharding: Any) -> _Layout:
        leaves, treedef = jax.tree.flatten(state)
        shardings = [getattr(x, "sharding", None) for x in leaves]
        on_mesh = leaves and all(isinstance(s, jax.sharding.NamedSharding) for s in shardings)
        if batch_sharding is not None and not isinstance(batch_sharding, jax.sharding.Sharding):
            leaves_b, def_b = jax.tree.flatten(batch_sharding)
            batch_sharding = _HashableTree(def_b, tuple(leaves_b))
        return cls(batch_sharding, (treedef, tuple(shardings)) if on_mesh else None)

    def batch_tree(self) -> Any:
        b = self.batch
        return jax.tree.unflatten(b.treedef, b.leaves) if isinstance(b, _HashableTree) else b

    def constrain_batch(self, batch: Any) -> Any:
        if self.batch is None:
            return batch
        return lax.with_sharding_constraint(batch, self.batch_tree())

    def constrain_state(self, state: PyTree) -> PyTree:
        if self.state is None:
            return state
        return lax.with_sharding_constraint(state, jax.tree.unflatten(*self.state))


class _HashableTree(NamedTuple):
    treedef: Any
    leaves: tuple


def _guarded_step(step_fn: Callable, layout: _Layout, state: PyTree, batch: Any,
                  carry: jax.Array) -> tuple[PyTree, Mapping, jax.Array]:
    """``step_fn`` plus a non-finite watch that stays on the device.

    ``layout`` pins the batch and the new state to their shardings (see :class:`_Layout`).

    ``carry`` is one ``int32[3]`` array (one buffer in, one out: cheaper to pass
    than three): the updates done, the first update whose loss was non-finite (0
    if none), and that loss's float32 bits. The loop reads it only at log and
    checkpoint steps, so nothing is transferred per step. Checks run at trace time.
    """
    new_state, metrics = step_fn(state, layout.constrain_batch(batch))
    if not isinstance(metrics, Mapping) or "loss" not in metrics:
        got = list(metrics) if isinstance(metrics, Mapping) else type(metrics).__name__
        raise ValueError(
            f"step_fn must return (state, metrics) with a 'loss' in metrics, got {got}")
    loss = jnp.asarray(metrics["loss"])
    if loss.ndim != 0:
        raise ValueError(f"metrics['loss'] must be a scalar, got shape {loss.shape}")
    old_def, new_def = jax.tree.structure(state), jax.tree.structure(new_state)
    if old_def != new_def:
        raise TypeError(f"step_fn must return a state of the same structure: got "
                        f"{new_def} for a state {old_def}")

    def check(path, new, old):
        new, old = jnp.asarray(new), jnp.asarray(old)
        if new.shape != old.shape or new.dtype != old.dtype:
            raise TypeError(
                f"step_fn changed state leaf {jax.tree_util.keystr(path)} from "
                f"{old.dtype}{list(old.shape)} to {new.dtype}{list(new.shape)}")

    jax.tree.map_with_path(check, new_state, state)
    new_state = layout.constrain_state(new_state)
    count, first_bad = carry[0] + 1, carry[1]
    hit = (first_bad == 0) & ~jnp.isfinite(loss)
    bits = lax.bitcast_convert_type(loss.astype(jnp.float32), jnp.int32)
    carry = jnp.stack([count, jnp.where(hit, count, first_bad), jnp.where(hit, bits, carry[2])])
    return new_state, metrics, carry


def _carry(count: int) -> np.ndarray:
    return np.array([count, 0, 0], np.int32)


def _first_bad(carry: jax.Array) -> tuple[int, float]:
    """(first update with a non-finite loss or 0, that loss) from a carry."""
    host = np.asarray(jax.device_get(carry))
    return int(host[1]), float(host[2:3].view(np.float32)[0])


def _scan_steps(step_fn: Callable, batch_fn: Callable, length: int, layout: _Layout,
                state: PyTree, carry: jax.Array,
                count: jax.Array) -> tuple[PyTree, Mapping, jax.Array]:
    """``count`` updates (1 <= count <= ``length``) as one ``lax.scan`` of ``length`` steps.

    Update ``s`` (from ``carry[0]``, the updates done, on) is
    ``_guarded_step(step_fn, state, batch_fn(s), carry)`` with ``s`` a traced int32.
    Iterations past ``count`` run on the last step's batch and are discarded (their
    state, carry and metrics are not kept), so that one program, compiled once, serves
    calls of any count, and each update runs the same compiled body whichever call it
    is in. Returns the state and carry after the ``count`` updates and the metrics of
    the last one.
    """
    first = carry[0]

    def body(c, i):
        state, carry = c
        new_state, metrics, new_carry = _guarded_step(
            step_fn, layout, state, batch_fn(first + jnp.minimum(i, count - 1)), carry)
        if length > 1:
            active = i < count
            new_state = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_state, state)
            new_carry = jnp.where(active, new_carry, carry)
        return (new_state, new_carry), metrics

    (state, carry), metrics = lax.scan(body, (state, carry),
                                       jnp.arange(length, dtype=jnp.int32))
    return state, jax.tree.map(lambda m: m[count - 1], metrics), carry


# The jitted programs of the last few step_fns (and batch_fns): calling train_loop again
# with the same functions (a resumed or extended run in one process) reuses their
# compilation. Bounded, so that the functions (and the data they close over) are not
# kept alive for ever.
_RECENT_STEPS: collections.OrderedDict = collections.OrderedDict()
_RECENT_MAX = 8


def _cached_jit(key: tuple, make: Callable[[], Callable]) -> Callable:
    try:
        jitted = _RECENT_STEPS.pop(key, None) or make()
    except TypeError:  # an unhashable callable: not cached
        return make()
    _RECENT_STEPS[key] = jitted
    while len(_RECENT_STEPS) > _RECENT_MAX:
        _RECENT_STEPS.popitem(last=False)
    return jitted


def _jitted_step(step_fn: Callable, layout: _Layout, donate: bool) -> Callable:
    return _cached_jit((step_fn, layout, bool(donate)), lambda: jax.jit(
        functools.partial(_guarded_step, step_fn, layout), donate_argnums=(0,) if donate else ()))


def _jitted_scan(step_fn: Callable, batch_fn: Callable, length: int, layout: _Layout,
                 donate: bool) -> Callable:
    return _cached_jit((step_fn, batch_fn, length, layout, bool(donate)), lambda: jax.jit(
        functools.partial(_scan_steps, step_fn, batch_fn, length, layout),
        donate_argnums=(0,) if donate else ()))


def _chunk_length(log_every: int, checkpoint_every: int, steps_per_call: int,
                  eval_every: int | None = None) -> int:
    """Updates per call on the scan path: the largest divisor of gcd(log_every,
    checkpoint_every, eval_every) not above ``steps_per_call`` (0: no bound).

    Every log, checkpoint and evaluation step is then a multiple of it, so no call
    crosses one.
    """
    g = math.gcd(log_every, checkpoint_every, eval_every or log_every)
    if steps_per_call == 0 or steps_per_call >= g:
        return g
    return max(d for d in range(1, steps_per_call + 1) if g % d == 0)


def _calls(start: int, stop: int, length: int):
    """``(first, count)`` of the calls that run updates ``start .. stop - 1``: each call
    ends at the next multiple of ``length`` (or at ``stop``)."""
    s = start
    while s < stop:
        e = min(stop, (s // length + 1) * length)
        yield s, e - s
        s = e


def _resolve_steps_per_call(steps_per_call: int | None, platform: str) -> int:
    """``steps_per_call``, with None (auto) as 0 (the scan) on accelerators, 1 on a CPU."""
    if steps_per_call is None:
        return 1 if platform == "cpu" else 0
    return steps_per_call


def _check_traceable(batch_fn: Callable, steps_per_call: int) -> None:
    """Trace ``batch_fn`` with an abstract int32 step: the scan path needs it traceable.

    JAX's tracer errors are TypeErrors, and so is what NumPy or Python raise when
    handed a tracer for an int (``np.random.default_rng(step)``, ``range(step)``).
    """
    try:
        jax.eval_shape(batch_fn, jax.ShapeDtypeStruct((), jnp.int32))
    except (TypeError, jax.errors.NonConcreteBooleanIndexError) as e:
        raise TypeError(
            f"with steps_per_call={steps_per_call}, batch_fn is traced with a traced int32 "
            f"step and must build the batch from it with JAX operations; it failed "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Pass "
            f"steps_per_call=1 to call it on the host with a Python int instead.") from e


class _Stepper:
    """Runs updates ``a .. b - 1`` on one of the two paths, and times the first call.

    Per-step path (``steps_per_call=1``): one call of the jitted step per update, the
    batch from ``batch_fn(step)`` on the host. Scan path: the calls of :func:`_calls`,
    each one call of :func:`_scan_steps` (one compiled program for all of them).
    """

    def __init__(self, step_fn, batch_fn, donate, steps_per_call, log_every,
                 checkpoint_every, carry_sharding, layout, eval_every=None):
        self.batch_fn = batch_fn
        self.layout = layout
        self.jstep = _jitted_step(step_fn, layout, donate)
        if steps_per_call == 1:
            self.length = 1
            self.jscan = None
        else:
            self.length = _chunk_length(log_every, checkpoint_every, steps_per_call, eval_every)
            self.jscan = _jitted_scan(step_fn, batch_fn, self.length, layout, donate)
        self.first_batch = None  # the per-step path's first batch, for flops()
        self.profiling = False
        self.carry_sharding = carry_sharding
        self._counts: dict[int, jax.Array] = {}
        self.first_call: tuple[float, int] | None = None  # (seconds, updates)
        self.first_done_at: float | None = None

    def _count(self, count: int) -> jax.Array:
        if count not in self._counts:
            self._counts[count] = jax.device_put(np.int32(count), self.carry_sharding)
        return self._counts[count]

    def _batch(self, step: int) -> Any:
        """``batch_fn(step)``, placed on the batch sharding (assembled from every
        process's rows in a multi-process run)."""
        batch = self.batch_fn(step)
        if self.layout.batch is None:
            return batch
        return global_batch(batch, self.layout.batch_tree())

    def advance(self, state, carry, a: int, b: int, timed: bool = True):
        metrics = None
        if self.jscan is None:
            calls = ((s, 1) for s in range(a, b))
        else:
            calls = _calls(a, b, self.length)
        for first, count in calls:
            t0 = time.perf_counter() if timed and self.first_call is None else None
            with (jax.profiler.StepTraceAnnotation("train", step_num=first) if self.profiling
                  else contextlib.nullcontext()):
                if self.jscan is None:
                    batch = self._batch(first)
                    if t0 is not None:
                        self.first_batch = batch
                    state, metrics, carry = self.jstep(state, batch, carry)
                else:
                    state, metrics, carry = self.jscan(state, carry, self._count(count))
            if t0 is not None:  # the first call alone: wait for it
                carry.block_until_ready()
                self.first_done_at = time.perf_counter()
                self.first_call = (self.first_done_at - t0, count)
        return state, metrics, carry

    def flops(self, state: PyTree, carry: jax.Array) -> float | None:
        """One update's FLOPs, from the cost analysis of the lowered one-update step
        (:func:`jaxmath.run.throughput.step_flops`; on the per-step path, the lowering the
        first call made); None where the backend has no cost analysis."""
        if self.jscan is None:
            batch, self.first_batch = self.first_batch, None
            if batch is None:
                return None
        else:
            try:
                batch = jax.eval_shape(self.batch_fn, jax.ShapeDtypeStruct((), jnp.int32))
            except Exception:  # the flops are optional
                return None
        return step_flops(self.jstep, state, batch, carry)
