r"""Device meshes for training: the batch split over the devices, the weights replicated or sharded.

A run's devices form a ``jax.sharding.Mesh`` with the axes ``("data", "fsdp")``
(:func:`make_mesh`, from a config's ``mesh`` block by :func:`from_config`). XLA's SPMD
partitioner compiles one program for all of them from the shardings alone:

* the **batch** is split over every device, its leading (example) dimension over
  ``data`` x ``fsdp`` (:func:`batch_sharding`): each device computes the loss and the
  gradient of its ``B / (data * fsdp)`` examples, and XLA inserts the all-reduce that
  sums the gradients;
* the **parameters and optimiser state** are replicated when ``fsdp = 1`` (data
  parallelism); with ``fsdp > 1`` each weight of at least ``min_size`` elements is
  split along its largest dimension divisible by ``fsdp`` (:func:`state_shardings`,
  fully sharded data parallelism, ZeRO-3): every device holds ``1 / fsdp`` of it, and
  XLA's partitioner chooses the collectives, typically an all-gather of a weight where
  it is used and a reduce-scatter of its gradient (on some layers it moves activations
  instead; docs/scaling.md shows what each experiment's step gets). Small weights
  (biases, norms) stay replicated.

The losses of a run do not depend on the layout beyond float32 reduction order: the
global batch is the same, and random draws inside a step use JAX's partitionable
threefry, whose values do not depend on the sharding.

Several processes (:mod:`jaxmath.run.startup`): the mesh spans the devices of every
process; each process builds only its rows of the global batch (:func:`process_rows`)
and :func:`global_batch` assembles the global array from them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from ml_collections import config_dict

from jaxmath._checks import check_int
from jaxmath.run.config import ConfigError

PyTree = Any

__all__ = ["DATA_AXIS", "FSDP_AXIS", "MIN_SHARD_SIZE", "SWEEP_AXIS", "batch_sharding",
           "check_batch", "from_config", "global_batch", "make_mesh",
           "make_sweep_mesh", "mesh_config", "on_every_device", "process_rows", "replicated",
           "shard_init", "state_shardings"]

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
SWEEP_AXIS = "sweep"  # the configurations of a sweep (jaxmath.run.sweep)
MIN_SHARD_SIZE = 2**14  # weights with fewer elements stay replicated under fsdp


def mesh_config(data: int | None = None, fsdp: int = 1,
                min_shard_size: int = MIN_SHARD_SIZE) -> ml_collections.ConfigDict:
    """A config's ``mesh`` block: ``data`` (None: every device not on ``fsdp``), ``fsdp``,
    and ``min_shard_size``, the smallest weight (in elements) fsdp shards.

    Example:
      >>> mesh_config().fsdp, mesh_config().data is None
      (1, True)
    """
    block = ml_collections.ConfigDict()
    block.data = config_dict.placeholder(int) if data is None else data
    block.fsdp = fsdp
    block.min_shard_size = min_shard_size
    return block


def _config_int(value: object, name: str) -> int:
    """``value`` as an int >= 1, or a ConfigError naming ``name`` (a config field)."""
    try:
        return check_int(value, name, minimum=1)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def _fit(axes: dict[str, int | None], devices: Sequence[jax.Device] | None) -> Mesh:
    """A mesh of two ``axes`` (name: size; one size may be None: the devices left over)."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    sizes = {name: None if size is None else _config_int(size, f"mesh.{name}")
             for name, size in axes.items()}
    given = math.prod(v for v in sizes.values() if v is not None)
    names = " x ".join(f"mesh.{k}={v}" for k, v in sizes.items() if v is not None)
    a, b = axes
    fits = ", ".join(f"{a}={n // f} {b}={f}" for f in range(1, n + 1) if n % f == 0)
    open_axes = [k for k, v in sizes.items() if v is None]
    if open_axes:
        if n % given:
            raise ConfigError(f"{names} does not divide the {n} devices; layouts that fit: "
                              f"{fits}")
        sizes[open_axes[0]] = n // given
    if math.prod(sizes.values()) != n:
        raise ConfigError(f"{names} = {given} devices, but the run has {n}; layouts that "
                          f"fit: {fits}")
    return jax.make_mesh(tuple(sizes.values()), tuple(sizes),
                         axis_types=(AxisType.Auto,) * len(sizes), devices=devices)


def make_mesh(data: int | None = None, fsdp: int = 1, *,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The ``("data", "fsdp")`` mesh of ``devices`` (default: every device of every process).

    ``data=None`` puts every device not on the fsdp axis on the data axis. The device
    order is :func:`jax.make_mesh`'s (each process's devices together, TPU rings kept).

    Raises:
      ConfigError: the axes do not multiply to the number of devices; the message
        lists the layouts that would.

    Example:
      >>> mesh = make_mesh(devices=jax.devices()[:1])
      >>> dict(mesh.shape)
      {'data': 1, 'fsdp': 1}
    """
    return _fit({DATA_AXIS: data, FSDP_AXIS: fsdp}, devices)


def make_sweep_mesh(sweep: int | None = None, data: int = 1, *,
                    devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The ``("sweep", "data")`` mesh of a vectorised sweep: configurations over ``sweep``
    (:func:`jaxmath.run.sweep.run_sweep`), each configuration's batch over ``data``.

    ``sweep=None``: every device not on the data axis. ConfigError as :func:`make_mesh`.

    Example:
      >>> dict(make_sweep_mesh(devices=jax.devices()[:1]).shape)
      {'sweep': 1, 'data': 1}
    """
    return _fit({SWEEP_AXIS: sweep, DATA_AXIS: data}, devices)


def from_config(block: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """:func:`make_mesh` from a config's ``mesh`` block (:func:`mesh_config`), or
    :func:`make_sweep_mesh` from a block with a ``sweep`` field."""
    if "sweep" in block:
        return make_sweep_mesh(block.sweep, block.data, devices=devices)
    return make_mesh(block.data, block.fsdp, devices=devices)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes a batch's leading dimension is split over (data, then fsdp)."""
    return tuple(a for a in (DATA_AXIS, FSDP_AXIS) if a in mesh.axis_names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The batch's sharding: the leading dimension over ``data`` x ``fsdp``, the rest whole."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    """A copy of the whole array on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def on_every_device(tree: PyTree, mesh: Mesh) -> PyTree:
    """The arrays of ``tree`` copied whole to every device of ``mesh`` (other leaves, such
    as Python ints, as they are): data that a jitted step indexes on every device.

    In a multi-process job every process must pass the same values.
    """
    sharding = replicated(mesh)
    return jax.tree.map(
        lambda x: jax.device_put(x, sharding) if isinstance(x, jax.Array | np.ndarray) else x,
        tree)


def check_batch(batch_size: int, mesh: Mesh, name: str = "batch_size") -> int:
    """``batch_size`` if the batch devices (``data`` x ``fsdp``) divide it; ConfigError if not.

    Returns the per-device batch.
    """
    batch_size = _config_int(batch_size, name)
    devices = math.prod(mesh.shape[a] for a in batch_axes(mesh))
    if batch_size % devices:
        fits = [b for b in (batch_size - batch_size % devices, batch_size + devices - batch_size
                            % devices) if b > 0]
        raise ConfigError(
            f"{name}={batch_size} is not divisible by the {devices} devices it is split over "
            f"(mesh {dict(mesh.shape)}); {' or '.join(map(str, fits))} would be")
    return batch_size // devices


def _spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> PartitionSpec:
    """Split the largest dimension that ``fsdp`` divides, if the weight is large enough."""
    if fsdp == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    for dim in sorted(range(len(shape)), key=lambda i: (-shape[i], i)):
        if shape[dim] % fsdp == 0:
            return PartitionSpec(*[FSDP_AXIS if i == dim else None for i in range(len(shape))])
    return PartitionSpec()


def state_shardings(state: PyTree, mesh: Mesh, min_size: int = MIN_SHARD_SIZE) -> PyTree:
    """A ``NamedSharding`` per leaf of ``state`` (arrays or ``jax.ShapeDtypeStruct``).

    With ``fsdp = 1`` every leaf is replicated. With ``fsdp > 1``, a leaf of at least
    ``min_size`` elements is split over ``fsdp`` along its largest dimension that
    ``fsdp`` divides (the first such, on ties); smaller leaves, and leaves no dimension
    of which ``fsdp`` divides, are replicated. Adam's moments have their parameter's
    shape and so get its sharding.

    Raises:
      ValueError: ``fsdp > 1`` and no leaf can be sharded: the message names the
        largest leaves.

    Example:
      >>> mesh = make_mesh(devices=jax.devices()[:1])
      >>> state_shardings({"w": jnp.zeros((4, 3))}, mesh)["w"].spec
      P()
    """
    fsdp = mesh.shape.get(FSDP_AXIS, 1)
    min_size = check_int(min_size, "min_size", minimum=1)
    specs = jax.tree.map(lambda x: _spec(tuple(np.shape(x)), fsdp, min_size), state)
    if fsdp > 1 and all(s == PartitionSpec() for s in jax.tree.leaves(
            specs, is_leaf=lambda s: isinstance(s, PartitionSpec))):
        leaves = jax.tree_util.tree_flatten_with_path(state)[0]
        largest = sorted(leaves, key=lambda kv: -math.prod(np.shape(kv[1])))[:3]
        named = ", ".join(f"{jax.tree_util.keystr(p)} {tuple(np.shape(x))}" for p, x in largest)
        raise ValueError(
            f"mesh.fsdp={fsdp} but no weight can be sharded: none has min_size={min_size} "
            f"or more elements and a dimension divisible by {fsdp} (largest: {named}); use "
            f"fsdp=1, an fsdp that divides a dimension, or a smaller mesh.min_shard_size")
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda s: isinstance(s, PartitionSpec))


def shard_init(init_fn, *args: Any, mesh: Mesh, min_size: int = MIN_SHARD_SIZE) -> PyTree:
    """``init_fn(*args)`` computed straight into :func:`state_shardings`' layout.

    The state is never whole on one device: each device computes its own shards (a
    jitted ``init_fn`` with ``out_shardings``), so a model larger than one device's
    memory can be initialised. The values are those of ``jax.jit(init_fn)(*args)``.
    """
    shardings = state_shardings(jax.eval_shape(init_fn, *args), mesh, min_size)
    return jax.jit(init_fn, out_shardings=shardings)(*args)


def process_rows(batch_size: int, sharding: NamedSharding) -> slice:
    """The rows of a ``[batch_size, ...]`` batch that this process's devices hold.

    All of them in a single process. With several, a process loads only these rows
    of each global batch and :func:`global_batch` assembles the global array.

    Example:
      >>> process_rows(8, batch_sharding(make_mesh(devices=jax.devices()[:1])))
      slice(0, 8, None)
    """
    indices = sharding.addressable_devices_indices_map((batch_size,))
    starts = sorted({(ix[0].start or 0, ix[0].stop or batch_size) for ix in indices.values()})
    lo, hi = starts[0][0], starts[-1][1]
    if sum(b - a for a, b in starts) != hi - lo:
        raise ValueError(f"this process's rows of the batch are not contiguous: {starts}")
    return slice(lo, hi)


def _placed_as(tree: PyTree, sharding: Any) -> bool:
    """Whether every leaf of ``tree`` is a jax.Array already laid out as ``sharding``
    (a sharding, or a pytree of them that is a prefix of ``tree``'s)."""
    def placed(s, subtree):
        return all(isinstance(x, jax.Array) and x.sharding.is_equivalent_to(s, x.ndim)
                   for x in jax.tree.leaves(subtree))
    return all(jax.tree.leaves(jax.tree.map(placed, sharding, tree)))


def global_batch(local: PyTree, sharding: Any) -> PyTree:
    """The global batch from every process's rows (:func:`process_rows`), on ``sharding``
    (one sharding, or a pytree of them that is a prefix of the batch's).

    In a single process, ``local`` is the whole batch and this is ``jax.device_put``.
    """
    if jax.process_count() == 1:
        if _placed_as(local, sharding):  # e.g. a jitted batch_fn on a one-device mesh
            return local
        return jax.device_put(local, sharding)

    def assemble(s, subtree):
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(s, np.asarray(x)), subtree)

    return jax.tree.map(assemble, sharding, local)
