r"""Vectorised hyperparameter sweeps: one compiled, vmapped, sharded program.

A sweep is a table of :math:`N` configurations :math:`h_1, \dots, h_N` (one
column per hyperparameter) and a function :math:`f` run on each:

.. math:: r_s = f(h_s), \qquad s = 1, \dots, N

:func:`grid` and :func:`zip_axes` build the table (:func:`from_config` from a
config's ``sweep`` block); :func:`run_sweep` computes every :math:`r_s` as
``jax.jit(jax.vmap(f))`` over the sweep axis, sharded over all devices;
:func:`write_table` writes one row per configuration;
:func:`~jaxmath.run.startup.init_distributed` (re-exported here) joins the processes
of a multi-machine job first. Numeric hyperparameters are
traced values, so a sweep compiles once whatever their values; hyperparameters
that change shapes (widths, step counts) are ``static`` and run one compiled
program per distinct value (:func:`group_by`).

Resuming: with ``workdir=``, ``run_sweep`` saves each finished chunk's results
atomically (:mod:`jaxmath.run.sweep_progress`) and, run again after a kill, loads
them instead of computing them, returning the same results; a different table or
chunk plan is refused with a ``ValueError``. A sweep whose configurations train for
many steps uses :func:`jaxmath.run.sweep_train.train_sweep` (``init``, ``step`` and
``finish`` functions): it also saves the running chunk's state every
``checkpoint_every`` steps, resumes mid-chunk bit-identically, and marks the members
whose loss becomes non-finite (diverged) without stopping or changing the others.

For plain gradient descent over learning rates,
:func:`jaxmath.optim.gradient_descent_sweep` is a specialised layout of the same
idea (sweep axis inside the step loop) and is faster on CPU; ``run_sweep`` takes
any ``fn``.

Multi-process runs: see :mod:`jaxmath.run.startup` for the environment variables
``init_distributed`` reads; ``jaxmath run`` calls it before the experiment starts.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmath.run.files import atomic_write_text
from jaxmath.run.mesh import SWEEP_AXIS  # the mesh axis the configurations are sharded over
from jaxmath.run.startup import init_distributed as init_distributed  # part of the sweep API

ArrayLike = jax.typing.ArrayLike
PyTree = Any

TABLE_NAME = "sweep"  # write_table(directory) writes <directory>/sweep.jsonl (or .csv)

_SPACINGS = {"logspace": np.logspace, "linspace": np.linspace}
_KINDS = ("grid", "zip")
_FORMATS = ("jsonl", "csv")
# dtype kinds an axis may hold: bool, ints, floats, and strings (static axes only)
_AXIS_KINDS = "biufU"


# ---------------------------------------------------------------------- sweep tables


def _axis(values: object, name: str) -> np.ndarray:
    """One axis of a sweep table: a non-empty 1-D array of bools, numbers or strings."""
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as e:
        raise TypeError(f"axis {name!r} must be a sequence of values, "
                        f"got {type(values).__name__}") from e
    if arr.dtype.kind not in _AXIS_KINDS:
        raise TypeError(f"axis {name!r} must hold bools, ints, floats or strings, "
                        f"got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"axis {name!r} must be a 1-D sequence of values, got shape "
                         f"{arr.shape}; a single value is a 1-element sequence, e.g. (0.1,)")
    if arr.size == 0:
        raise ValueError(f"axis {name!r} must not be empty, got shape {arr.shape}")
    return arr


def _axes(axes: Mapping[str, object], what: str) -> dict[str, np.ndarray]:
    if not axes:
        raise ValueError(f"{what} needs at least one axis, e.g. {what}(learning_rate=[0.1, 1.0])")
    return {name: _axis(values, name) for name, values in axes.items()}


def grid(**axes: ArrayLike | Sequence) -> dict[str, np.ndarray]:
    r"""The cartesian product of the axes, flattened row-major (the last axis varies fastest).

    .. math:: \{h_s\} = A_1 \times A_2 \times \dots \times A_k, \qquad N = \prod_i |A_i|

    Args:
      **axes: ``name=[values]``, each a non-empty 1-D sequence of bools, numbers
        or strings (strings only for ``static`` axes of :func:`run_sweep`).

    Returns:
      ``{name: [N]}``, one column per axis, in the order given; row ``s`` is one
      configuration. Repeated values are kept (they are separate configurations).

    Example:
      >>> hp = grid(learning_rate=[0.1, 1.0], seed=[0, 1, 2])
      >>> hp["learning_rate"], hp["seed"]
      (array([0.1, 0.1, 0.1, 1. , 1. , 1. ]), array([0, 1, 2, 0, 1, 2]))
    """
    columns = _axes(axes, "grid")
    index = np.indices([len(v) for v in columns.values()]).reshape(len(columns), -1)
    return {name: v[i] for (name, v), i in zip(columns.items(), index, strict=True)}


def zip_axes(**axes: ArrayLike | Sequence) -> dict[str, np.ndarray]:
    r"""Axes taken together, element by element: configuration ``s`` is ``(a_s, b_s, ...)``.

    .. math:: h_s = (A_{1,s}, \dots, A_{k,s}), \qquad N = |A_1| = \dots = |A_k|

    Args:
      **axes: ``name=[values]``, non-empty 1-D sequences of the same length.

    Returns:
      ``{name: [N]}``, the axes as arrays. ValueError if the lengths differ.

    Example:
      >>> zip_axes(learning_rate=[0.1, 0.3], width=[32, 64])
      {'learning_rate': array([0.1, 0.3]), 'width': array([32, 64])}
    """
    columns = _axes(axes, "zip_axes")
    lengths = {name: len(v) for name, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"zip_axes needs axes of equal length, got lengths {lengths}; "
                         "use grid for a cartesian product")
    return columns


def _config_axis(spec: object, name: str) -> object:
    """Values of one config axis: a sequence, or {"logspace"|"linspace": (lo, hi, n)}."""
    if hasattr(spec, "to_dict"):
        spec = spec.to_dict()
    if not isinstance(spec, Mapping):
        return spec
    if len(spec) != 1 or next(iter(spec)) not in _SPACINGS:
        raise ValueError(f"axis {name!r}: a mapping must be {{'logspace': (lo, hi, n)}} or "
                         f"{{'linspace': (lo, hi, n)}}, got keys {sorted(spec)}")
    (spacing, args), = spec.items()
    if not isinstance(args, Sequence) or len(args) != 3:
        raise ValueError(f"axis {name!r}: {spacing} needs (lo, hi, n), got {args!r}")
    lo, hi, n = args
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
        raise ValueError(f"axis {name!r}: {spacing}'s n must be a positive int, got {n!r}")
    if not all(isinstance(x, int | float | np.number) and math.isfinite(x) for x in (lo, hi)):
        raise ValueError(f"axis {name!r}: {spacing}'s lo and hi must be finite numbers, "
                         f"got {lo!r} and {hi!r}")
    return _SPACINGS[spacing](lo, hi, int(n))


def from_config(sweep: Any) -> dict[str, np.ndarray]:
    r"""The sweep table declared in a config's ``sweep`` block.

    ::

        config.sweep = ml_collections.ConfigDict({
            "kind": "grid",                    # or "zip"
            "axes": {"learning_rate": {"logspace": (-3.0, 0.5, 256)}, "seed": (0, 1, 2, 3)},
            "chunk_size": 0,                   # read by the caller: run_sweep(chunk_size=...)
        })

    An axis is a tuple or list of values, ``{"logspace": (lo, hi, n)}`` (``n``
    values from :math:`10^{lo}` to :math:`10^{hi}`) or ``{"linspace": (lo, hi, n)}``.

    Args:
      sweep: an ``ml_collections.ConfigDict`` or a mapping with ``axes`` and an
        optional ``kind`` (default ``"grid"``); other keys (``chunk_size``,
        ``static``) are left to the caller.

    Returns:
      ``{name: [N]}`` as from :func:`grid` or :func:`zip_axes`. A ``ConfigDict``
      keeps its keys sorted, so the grid is row-major over the axis names in
      alphabetical order; a plain ``dict`` keeps its own order.

    Example:
      >>> hp = from_config({"kind": "grid",
      ...                   "axes": {"learning_rate": {"logspace": (-2, 0, 3)}, "seed": (0, 1)}})
      >>> hp["learning_rate"]
      array([0.01, 0.01, 0.1 , 0.1 , 1.  , 1.  ])
    """
    if hasattr(sweep, "to_dict"):
        sweep = sweep.to_dict()
    if not isinstance(sweep, Mapping):
        raise TypeError(f"sweep must be a ConfigDict or a mapping, got {type(sweep).__name__}")
    kind = sweep.get("kind", "grid")
    if kind not in _KINDS:
        raise ValueError(f"sweep.kind must be one of {_KINDS}, got {kind!r}")
    axes = sweep.get("axes")
    if not isinstance(axes, Mapping) or not axes:
        raise ValueError("sweep.axes must be a non-empty mapping {name: values}, "
                         f"got {axes!r}")
    columns = {name: _config_axis(spec, name) for name, spec in axes.items()}
    return grid(**columns) if kind == "grid" else zip_axes(**columns)


def _check_hparams(hparams: object) -> tuple[dict[str, np.ndarray], int]:
    if not isinstance(hparams, Mapping):
        raise TypeError("hparams must be a dict {name: [N] values} (see grid, zip_axes), "
                        f"got {type(hparams).__name__}")
    columns = _axes(hparams, "hparams")
    lengths = {name: len(v) for name, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"hparams columns must have equal length N, got lengths {lengths}")
    return columns, next(iter(lengths.values()))


def _check_static(static: object, columns: Mapping[str, np.ndarray]) -> tuple[str, ...]:
    names = (static,) if isinstance(static, str) else tuple(static)
    for name in names:
        if name not in columns:
            raise ValueError(f"static name {name!r} is not a hyperparameter; "
                             f"got hparams {list(columns)}")
    return names


def _check_table(hparams: Any, static: object) -> tuple[dict[str, np.ndarray], int,
                                                    tuple[str, ...]]:
    """``(columns, size, static names)`` of a sweep table whose string columns are static."""
    columns, size = _check_hparams(hparams)
    names = _check_static(static, columns)
    for name, v in columns.items():
        if name not in names and v.dtype.kind == "U":
            raise TypeError(f"hyperparameter {name!r} holds strings, which cannot be traced; "
                            "name it in static=(...) to loop over its values in Python")
    return columns, size, names


def group_by(hparams: Mapping[str, ArrayLike],
             static: str | Sequence[str]) -> list[tuple[dict[str, Any], np.ndarray]]:
    r"""Split a sweep table into groups with equal values of the ``static`` hyperparameters.

    .. math:: G_v = \{s : h_s[\text{static}] = v\}

    This is how :func:`run_sweep` handles hyperparameters that change shapes
    (a layer width, a number of steps): one compiled program per group.

    Args:
      hparams: ``{name: [N]}``, a sweep table.
      static: the name, or names, of the hyperparameters to group by.

    Returns:
      ``[(values, indices), ...]`` in order of first appearance: ``values`` maps
      each static name to a Python scalar, ``indices`` are the rows of the group
      (ascending). The indices of all groups partition ``range(N)``.

    Example:
      >>> hp = grid(width=[8, 16], learning_rate=[0.1, 1.0])
      >>> [(v, i.tolist()) for v, i in group_by(hp, "width")]
      [({'width': 8}, [0, 1]), ({'width': 16}, [2, 3])]
    """
    columns, size = _check_hparams(hparams)
    names = _check_static(static, columns)
    if not names:
        return [({}, np.arange(size))]
    keys = [tuple(columns[n][s].item() for n in names) for s in range(size)]
    groups: dict[tuple, list[int]] = {}
    for s, key in enumerate(keys):
        groups.setdefault(key, []).append(s)
    return [(dict(zip(names, key, strict=True)), np.asarray(rows))
            for key, rows in groups.items()]


# ------------------------------------------------------------------------ run_sweep


def _default_mesh() -> Mesh:
    """All devices of all processes along one axis named ``"sweep"``."""
    return Mesh(np.asarray(jax.devices()), (SWEEP_AXIS,))


def _check_mesh(mesh: object) -> Mesh:
    if mesh is None:
        return _default_mesh()
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if SWEEP_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named {SWEEP_AXIS!r} to shard the "
                         f"configurations over, got axes {mesh.axis_names}")
    return mesh


def _check_chunk_size(chunk_size: object) -> int | None:
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
        raise TypeError(f"chunk_size must be an int or None, got {type(chunk_size).__name__}")
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0 (0 or None: the whole sweep at once), "
                         f"got {chunk_size}")
    return int(chunk_size) or None


def _plan(size: int, chunk_size: int | None, num_shards: int) -> tuple[int, int]:
    """(number of calls, configurations per call): calls as even as possible, and
    a multiple of the number of shards; the last call is padded to the same size."""
    chunk = min(chunk_size or size, size)
    num_chunks = -(-size // chunk)
    chunk = -(-size // num_chunks)
    chunk = -(-chunk // num_shards) * num_shards
    return num_chunks, chunk


def _leaf_name(path: tuple) -> str:
    """'a/b/0' for the key path of a result leaf; 'result' for a bare array."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts) or "result"


def _check_result(out: PyTree) -> None:
    for path, leaf in jax.tree_util.tree_flatten_with_path(out)[0]:
        if not isinstance(leaf, jax.Array | np.ndarray | np.generic | int | float | bool):
            raise TypeError(f"fn must return a pytree of arrays, got {type(leaf).__name__} "
                            f"at {_leaf_name(path)!r}")


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _sweep_chunk(fn: Callable, names: tuple[str, ...], static_items: tuple,
                 sharding: NamedSharding, size: int, traced: dict[str, jax.Array]) -> PyTree:
    """``jax.vmap(fn)`` over one chunk of configurations, the results sharded like the inputs."""
    static_values = dict(static_items)

    def one(hp):
        out = fn({n: static_values[n] if n in static_values else hp[n] for n in names})
        _check_result(out)
        return out

    # traced is {} if every name is static; a sharding constraint inside fn (a batch over
    # a "data" axis) gets the sweep axis on its vmapped dimension
    out = jax.vmap(one, axis_size=size, spmd_axis_name=SWEEP_AXIS)(traced)
    return jax.lax.with_sharding_constraint(out, sharding)


def _to_host(tree: PyTree) -> PyTree:
    """Every leaf as a NumPy array on this process, gathered from all processes if needed."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree.map(get, tree)


def _chunk_arrays(padded: Mapping[str, np.ndarray], c: int, chunk: int,
                  sharding: NamedSharding) -> dict[str, jax.Array]:
    """Rows ``c * chunk .. (c + 1) * chunk - 1`` of the padded columns, sharded over the sweep."""
    part = {n: v[c * chunk:(c + 1) * chunk] for n, v in padded.items()}
    return {n: jax.make_array_from_callback(v.shape, sharding, v.__getitem__)
            for n, v in part.items()}


def _padded_columns(columns, static_values, rows, num_chunks, chunk) -> dict[str, np.ndarray]:
    """The traced columns of one static group, padded with copies of the last
    configuration (a valid one) to ``num_chunks * chunk`` rows, so every call has one shape."""
    traced = {n: v[rows].astype(jax.dtypes.canonicalize_dtype(v.dtype))
              for n, v in columns.items() if n not in static_values}
    return {n: np.concatenate([v, np.repeat(v[-1:], num_chunks * chunk - len(rows))])
            for n, v in traced.items()}


def _leaf_names(tree: PyTree) -> list[str]:
    return [_leaf_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _run_group(fn, columns, names, static_values, rows, chunk_size, mesh,
               progress=None, group: int = 0) -> PyTree:
    """Results of one static group ``rows``: one compiled program, called chunk by chunk;
    with ``progress``, finished chunks are loaded instead of computed, and each computed
    one is saved."""
    sharding = NamedSharding(mesh, PartitionSpec(SWEEP_AXIS))
    size = len(rows)
    num_chunks, chunk = _plan(size, chunk_size, mesh.shape[SWEEP_AXIS])
    padded = _padded_columns(columns, static_values, rows, num_chunks, chunk)
    static_items = tuple(static_values.items())

    def call(c):
        return _sweep_chunk(fn, names, static_items, sharding, chunk,
                            _chunk_arrays(padded, c, chunk, sharding))

    host: list[PyTree] = [None] * num_chunks
    if progress is not None:  # the results' structure, to name and rebuild the saved leaves
        shape = jax.eval_shape(
            functools.partial(_sweep_chunk, fn, names, static_items, sharding, chunk),
            _chunk_arrays(padded, 0, chunk, sharding))
        leaf_names = _leaf_names(shape)
        for c in range(num_chunks):
            leaves = progress.finished(group, c, leaf_names)
            if leaves is not None:
                host[c] = jax.tree.unflatten(jax.tree.structure(shape), leaves)
    todo = [c for c in range(num_chunks) if host[c] is None]

    def fetch(c, pending):
        host[c] = _to_host(pending)
        if progress is not None:
            progress.save_finished(group, c, jax.tree.leaves(host[c]), leaf_names)

    pending = None
    for i, c in enumerate(todo):  # dispatch the next chunk before fetching this one
        following = call(c)
        if pending is not None:
            fetch(todo[i - 1], pending)
        pending = following
    if pending is not None:
        fetch(todo[-1], pending)
    return jax.tree.map(lambda *xs: np.concatenate(xs)[:size], *host)


def _progress(workdir, kind: str, columns, names, groups, plans, **settings):
    """The :class:`~jaxmath.run.sweep_progress.SweepProgress` of a sweep in ``workdir``
    (None without one): its manifest holds the table, static names, chunk plan and
    ``settings``."""
    if workdir is None:
        return None
    if not isinstance(workdir, str | os.PathLike):
        raise TypeError(f"workdir must be a path or None, got {type(workdir).__name__}")
    from jaxmath.run.sweep_progress import SweepProgress
    manifest = {
        "kind": kind,
        "hparams": {n: v.tolist() for n, v in columns.items()},
        "static": list(names),
        "plan": [{"static_values": values, "num_rows": len(rows), "num_chunks": num_chunks,
                  "chunk_size": chunk}
                 for (values, rows), (num_chunks, chunk) in zip(groups, plans, strict=True)],
        **settings,
    }
    return SweepProgress(workdir, manifest)


def _merge_groups(results: list[tuple[dict, np.ndarray, PyTree]], size: int) -> PyTree:
    """One pytree with leading axis ``size`` from the results of every group."""
    def layout(out):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(out)
        return treedef, {_leaf_name(p): (x.shape[1:], x.dtype) for p, x in leaves}

    values0, _, first = results[0]
    treedef, shapes0 = layout(first)
    merged = [np.empty((size, *x.shape[1:]), x.dtype) for x in jax.tree.leaves(first)]
    for values, rows, out in results:
        if layout(out) != (treedef, shapes0):
            raise ValueError(
                f"fn returned results of different structures, shapes or dtypes for the "
                f"static groups {values0} ({shapes0}) and {values} ({layout(out)[1]}); "
                "return per-configuration values of one shape (losses, metrics), or call "
                "run_sweep once per group (see group_by)")
        for m, x in zip(merged, jax.tree.leaves(out), strict=True):
            m[rows] = x
    return jax.tree.unflatten(treedef, merged)


def run_sweep(fn: Callable[[dict[str, Any]], PyTree], hparams: Mapping[str, ArrayLike], *,
              chunk_size: int | None = None, mesh: Mesh | None = None,
              static: str | Sequence[str] = (),
              workdir: str | os.PathLike | None = None) -> PyTree:
    r"""Run ``fn`` on every configuration of a sweep as one compiled, vmapped, sharded program.

    .. math:: r_s = f(h_s), \quad s = 1, \dots, N
       \qquad\text{computed as}\qquad
       r = \mathrm{jit}(\mathrm{vmap}(f))(h)

    * **Compiles once.** Numeric hyperparameters reach ``fn`` as traced scalars,
      so their values never recompile; build optimisers from them inside ``fn``
      (``optax.adam(hp["learning_rate"])``) or set them in an
      ``optax.inject_hyperparams`` state, as in the example. Seeds are traced
      ints: ``jax.random.key(hp["seed"])``. The compiled program is cached on
      ``fn`` itself: pass the same function object to reuse it.
    * **Chunks.** At most ``chunk_size`` configurations run per call; the last
      chunk is padded with copies of the last configuration (their results are
      dropped), so every call has one shape and one compilation. Each chunk's
      results are copied to the host before the one after next is dispatched,
      so a sweep larger than device memory fits. Chunks can also be faster on
      a CPU, where a chunk's per-step arrays stay in cache: 1,024 small-MLP
      configurations ran 1.5x faster as 8 chunks of 128 than in one call
      (``benchmarks/sweep.py``), and 2.2x with the two cores exposed as two
      devices (``XLA_FLAGS=--xla_force_host_platform_device_count=2``, set
      before JAX starts); on an accelerator, fill the memory instead.
    * **Devices.** The sweep axis is sharded over ``mesh``'s ``"sweep"`` axis
      (``NamedSharding``); the default mesh holds every device of every process
      (``jax.devices()``: after :func:`init_distributed`, all machines), and the
      results are gathered to every process. In a multi-process job every
      process calls ``run_sweep`` with the same ``fn`` and ``hparams``.
    * **Static hyperparameters** (names in ``static``) change shapes: ``fn``
      gets them as Python scalars, and each group of equal static values
      (:func:`group_by`) is one compiled program, run as above.

    Args:
      fn: ``fn(hp) -> results``, ``hp`` a dict ``{name: scalar}`` for one
        configuration (traced arrays, and Python scalars for ``static`` names);
        ``results`` a pytree of arrays, the same structure and shapes for every
        configuration. Must be pure and jit-able.
      hparams: ``{name: [N]}``, the sweep table (:func:`grid`, :func:`zip_axes`,
        :func:`from_config`): bools, ints and floats (traced with JAX's default
        dtypes: float32, or float64 under ``jax_enable_x64``); strings only in
        ``static`` columns.
      chunk_size: configurations per call across all devices, rounded up to a
        multiple of the number of devices; ``None`` or ``0`` run the whole sweep
        (each static group) in one call. The results do not depend on it.
      mesh: a ``jax.sharding.Mesh`` with an axis named ``"sweep"`` (other axes
        are left to ``fn``: e.g. :func:`jaxmath.run.mesh.make_sweep_mesh`'s
        ``("sweep", "data")``, with ``fn`` constraining its batch to
        :func:`jaxmath.run.mesh.batch_sharding`, which splits each configuration's
        batch over ``"data"``); default: all devices along ``"sweep"``.
      static: the name(s) of hyperparameters that change shapes.
      workdir: a run directory to keep the sweep's progress in (``None``: nothing is
        saved). Each finished chunk's results are saved atomically to
        ``workdir/checkpoints_sweep/`` (:mod:`jaxmath.run.sweep_progress`); a sweep
        run again with the same ``workdir`` (after a kill, say) loads them instead of
        computing them again, and returns the same results. The directory's manifest
        records the table, ``static`` and the chunk plan (``chunk_size`` and the
        number of devices): a different one is a ``ValueError``. ``fn`` itself cannot
        be compared: change it, change the workdir. A sweep whose configurations
        train for many steps saves its running chunk too with
        :func:`jaxmath.run.sweep_train.train_sweep`.

    Returns:
      ``results`` as NumPy arrays, each leaf with a leading axis of size ``N`` in
      the order of ``hparams``' rows, on every process. A configuration that
      diverges (``inf``/``nan`` losses) affects its own row only; padding rows
      never appear. The results are host arrays and not differentiable: to
      differentiate through a sweep, ``jax.vmap`` the function directly.

    Example:
      >>> import optax
      >>> opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
      >>> def train(hp):
      ...     loss = lambda w: jnp.sum((w - 3.0) ** 2)
      ...     w = jax.random.normal(jax.random.key(hp["seed"]), (2,))
      ...     state = opt.init(w)
      ...     state.hyperparams["learning_rate"] = hp["learning_rate"]  # traced
      ...     def step(carry, _):
      ...         w, state = carry
      ...         updates, state = opt.update(jax.grad(loss)(w), state)
      ...         return (optax.apply_updates(w, updates), state), None
      ...     (w, _), _ = jax.lax.scan(step, (w, state), length=100)
      ...     return {"loss": loss(w)}
      >>> hp = grid(learning_rate=[0.01, 0.1, 1.5], seed=[0, 1])
      >>> out = run_sweep(train, hp)
      >>> out["loss"].shape
      (6,)
      >>> out["loss"][2:4] < 1e-6, np.isfinite(out["loss"][4:])  # 1.5 diverges
      (array([ True,  True]), array([False, False]))
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    columns, size, names = _check_table(hparams, static)
    chunk_size = _check_chunk_size(chunk_size)
    mesh = _check_mesh(mesh)
    groups = group_by(columns, names)
    progress = _progress(workdir, "run_sweep", columns, names, groups,
                         [_plan(len(rows), chunk_size, mesh.shape[SWEEP_AXIS])
                          for _, rows in groups])
    results = [(values, rows, _run_group(fn, columns, tuple(columns), values, rows,
                                         chunk_size, mesh, progress, g))
               for g, (values, rows) in enumerate(groups)]
    if len(results) == 1:
        return results[0][2]
    return _merge_groups(results, size)


# ---------------------------------------------------------------------- write_table


def _column(name: str, values: np.ndarray, size: int, fmt: str) -> list:
    """Per-configuration Python values of one column (JSON lines: non-finite floats -> None)."""
    if values.ndim == 0 or values.shape[0] != size:
        raise ValueError(f"result {name!r} must have a leading axis of size N = {size} "
                         f"(one entry per configuration), got shape {values.shape}")
    if fmt == "csv" and values.ndim > 1:
        raise ValueError(f"CSV needs one scalar per configuration, but result {name!r} "
                         f"has shape {values.shape}; reduce it or write JSON lines")
    if fmt == "jsonl" and values.dtype.kind == "f":
        out = values.astype(object)
        out[~np.isfinite(values)] = None
        return out.tolist()
    return values.tolist()


def write_table(path: str | os.PathLike, hparams: Mapping[str, ArrayLike], results: PyTree,
                *, format: str | None = None, all_processes: bool = False) -> Path:
    r"""Write a sweep's results as a table: one row per configuration.

    Row :math:`s` holds ``index`` (= s), the hyperparameters :math:`h_s` and the
    results :math:`r_s`, each result leaf named by its path (``"loss"``,
    ``"metrics/accuracy"``; ``"result"`` for a bare array).

    Args:
      path: a directory (the table is ``<path>/sweep.jsonl``, or ``sweep.csv``)
        or a file name; ``.csv`` selects CSV, anything else JSON lines.
      hparams: ``{name: [N]}``, the sweep table.
      results: what :func:`run_sweep` returned: leaves with leading axis ``N``.
      format: ``"jsonl"`` or ``"csv"``, overriding the file name's suffix.
      all_processes: write on every process; by default only process 0 writes
        (the results are the same on all of them) and the others return the path.

    Returns:
      The path written, replaced atomically. In JSON lines a leaf with more than
      one value per configuration (a loss curve) is a list; CSV needs one scalar
      per configuration and leaf (ValueError otherwise). ``nan`` and ``inf``
      (diverged runs) are written as ``null`` in JSON lines and ``nan``/``inf`` in CSV.

    Example:
      >>> import tempfile
      >>> hp = grid(learning_rate=[0.1, 1.0])
      >>> p = write_table(tempfile.mkdtemp(), hp, {"loss": np.array([0.5, np.inf])})
      >>> print(p.read_text(), end="")
      {"index": 0, "learning_rate": 0.1, "loss": 0.5}
      {"index": 1, "learning_rate": 1.0, "loss": null}
    """
    columns, size = _check_hparams(hparams)
    path = Path(path)
    if format is not None and format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS} or None, got {format!r}")
    if path.is_dir():
        path = path / f"{TABLE_NAME}.{format or 'jsonl'}"
    fmt = format or ("csv" if path.suffix == ".csv" else "jsonl")
    table = {"index": list(range(size))}
    table.update({n: v.tolist() for n, v in columns.items()})
    for leaf_path, leaf in jax.tree_util.tree_flatten_with_path(results)[0]:
        name = _leaf_name(leaf_path)
        if name in table:
            raise ValueError(f"result {name!r} has the name of a hyperparameter or of the "
                             f"index column; rename it (columns so far: {list(table)})")
        table[name] = _column(name, np.asarray(leaf), size, fmt)
    rows = [{n: col[s] for n, col in table.items()} for s in range(size)]
    if fmt == "jsonl":
        text = "".join(json.dumps(row) + "\n" for row in rows)
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(table), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    if all_processes or jax.process_index() == 0:
        atomic_write_text(path, text)
    return path
