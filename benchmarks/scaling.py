r"""How far the training experiments scale, on paper: what their compiled steps communicate
and hold per device, from XLA's own programs, and what that predicts on 8 GPUs.

    python -m benchmarks.scaling --output benchmarks/results/scaling.json   # make bench-scaling
    python -m benchmarks.scaling --experiments mlp cnn --devices 1 4 8      # a subset

For each training experiment's default config (mlp, cnn, transformer, ddpm_2d,
ddpm_digits; not mlp_sweep, see below) and each layout, data parallel (``data=n,
fsdp=1``) and fully sharded (``data=1, fsdp=n``, ``min_shard_size`` =
:data:`jaxmath.run.mesh.MIN_SHARD_SIZE`), at n = 1, 4, 8 and 64 devices, the
experiment's training step (its model, loss, optimiser and the global batch of its
config) is compiled for a mesh of n forced host CPU devices (one process with 64 of
them, meshes over the first n) from abstract inputs: ``jax.ShapeDtypeStruct``\ s placed
by :func:`~jaxmath.run.mesh.state_shardings` and :func:`~jaxmath.run.mesh.batch_sharding`,
nothing materialised, the state donated and constrained to its shardings as
:func:`jaxmath.run.loop.train_loop` does. From the compiled program:

* **collectives** (:func:`collectives`): every all-reduce, all-gather, reduce-scatter,
  all-to-all and collective-permute of the partitioned HLO (an async ``-start`` /
  ``-done`` pair counted once, at its start), its replica-group size :math:`g` and, per
  device, its *operand* and *result* bytes. Its **buffer** is the larger of the two, the
  whole array being reduced or assembled: the all-reduce's operand (= its result), the
  all-gather's gathered result, the reduce-scatter's operand, the all-to-all's operand
  (= its result), the permute's operand. The **ring bytes** each device sends:
  :math:`2 (g-1)/g \cdot B` for an all-reduce, :math:`(g-1)/g \cdot B` for an all-gather,
  reduce-scatter or all-to-all, :math:`B` for a permute;
* **memory per device**, two ways: the bytes of the parameters, the optimiser state and
  (diffusion) the parameters' moving average from their shardings
  (``sharding.shard_shape``), and XLA's ``memory_analysis()`` of the per-device program
  (arguments: state + batch + data; temporaries; outputs, aliased to the donated state);
* **FLOPs per device**: ``cost_analysis()`` of the compiled, partitioned program, which
  counts one device's share (checked against the unpartitioned program's count, which
  is global: ``flops_unpartitioned``);
* **ops**: the instructions of the compiled entry computation that run as kernels or
  library calls (fusions, dots, convolutions, copies, collectives, ...): a proxy for
  the kernel launches of one step.

mlp_sweep is left out: it trains hundreds of configurations as one vmapped program on a
``(sweep, data)`` mesh, configurations over ``sweep`` (no communication between them), so
it has neither an fsdp layout nor the data-parallel gradient all-reduce of the others.

The prediction for 8 NVIDIA H100 SXM GPUs on NVLink 4 (:func:`predict`) uses the
8-device program: compute = FLOPs per device / (:data:`UTILISATION` x 495 TFLOP/s, dense
TF32, what XLA uses on a GPU for float32 matrix products at JAX's default precision),
communication = ring bytes / 450 GB/s (NVLink 4, per direction per GPU) + 10 us per
collective; the step is their sum (no overlap), at least their maximum (full overlap).
Kernel launches are not in it; they are reported apart (ops x :data:`LAUNCH_S`): for
models this small they, not FLOPs or bytes, set the step time.

Results: the JSON records (one per experiment x layout x device count), the markdown
section ``--markdown`` (tables and reading), and the same section in ``--docs`` between
the line ``<!-- scaling table -->`` and ``<!-- /scaling table -->`` (written there only
if the doc has the first line).
"""

from __future__ import annotations

import argparse
import importlib
import math
import re
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

N_DEVICES = (1, 4, 8, 64)
LAYOUTS = ("data", "fsdp")
PREDICT_DEVICES = 8
FALLBACK_MIN_SIZE = 1024   # for a model with no weight of MIN_SHARD_SIZE elements (ddpm_2d)

# 8 x H100 SXM, NVLink 4
H100_TF32 = 495e12         # FLOP/s, dense TF32 tensor cores: float32 matmuls at default precision
H100_FP32 = 67e12          # FLOP/s, float32 without tensor cores (elementwise work)
UTILISATION = 0.3          # of the peak, assumed (optimistic for matrices this small)
NVLINK_BPS = 450e9         # bytes/s per direction per GPU
LATENCY_S = 10e-6          # per collective
LAUNCH_S = 3e-6            # per kernel launch (reported apart, not in the step time)

DEFAULT_OUTPUT = Path(__file__).parent / "results" / "scaling.json"
DEFAULT_MARKDOWN = Path(__file__).parent / "results" / "scaling.md"
DEFAULT_DOCS = Path(__file__).parent.parent / "docs" / "scaling.md"
MARKER = "<!-- scaling table -->"
END_MARKER = "<!-- /scaling table -->"

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute")


# ----------------------------------------------------------------- reading the program

# "%name = <result type> <opcode>(<operands>), <attributes>"; the type may hold /*index=5*/
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*((?:[^=]|/\*index=\d+\*/)*?)\s+("
                 + "|".join(COLLECTIVES) + r")(-start)?\((.*)$")
_TOKEN = re.compile(r"\(|\)|\b(pred|token|[a-z]+\d+[a-z0-9]*)\[([^\]]*)\]")
_NOT_KERNELS = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast",
                "after-all", "partition-id", "replica-id", "opt-barrier"}


def _type_tree(text: str) -> list:
    """The array types written in ``text`` as a nested list of byte sizes: tuples are
    lists (``(f32[2], (s32[], bf16[4]))``: ``[8, [4, 8]]``); a lone array is ``[bytes]``."""
    root: list = []
    stack = [root]
    for m in _TOKEN.finditer(text):
        if m.group(0) == "(":
            stack[-1].append([])
            stack.append(stack[-1][-1])
        elif m.group(0) == ")":
            if len(stack) > 1:
                stack.pop()
        else:
            dtype, dims = m.groups()
            if dtype == "token":
                size = 0
            else:
                bits = 8 if dtype == "pred" else int(re.search(r"\d+", dtype).group())
                size = bits * math.prod(int(d) for d in re.findall(r"\d+", dims)) // 8
            stack[-1].append(size)
    return root[0] if len(root) == 1 and isinstance(root[0], list) else root


def _total(tree: Any) -> int:
    return tree if isinstance(tree, int) else sum(_total(t) for t in tree)


def _group_size(attrs: str, num_devices: int) -> int:
    """The replica-group size of a collective, from its attributes: explicit groups
    ``{{0,1},{2,3}}`` (``{}``: every device), iota ``[2,4]<=[8]``, or mesh axes
    ``mesh['axis_0'=4,'axis_1'=2] {'axis_0'}``; a permute's pairs count as 2."""
    if re.search(r"source_target_pairs=", attrs):
        return 2
    explicit = re.search(r"replica_groups=\{(\{[\d,\s]*\})?", attrs)
    if explicit:
        first = explicit.group(1)
        return len(re.findall(r"\d+", first)) if first else num_devices
    iota = re.search(r"replica_groups=\[([\d,]+)\]<=", attrs)
    if iota:
        return int(iota.group(1).split(",")[-1])
    mesh = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)
    if mesh:
        sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", mesh.group(1))}
        chosen = re.findall(r"'([^']+)'(?::\((\d+)\)(\d+))?", mesh.group(2))
        return math.prod(int(sub) if sub else sizes.get(name, 1) for name, _, sub in chosen)
    return num_devices


class Collective(NamedTuple):
    """One collective of a partitioned program, per device (see the module docstring)."""

    kind: str            # "all-reduce", "all-gather", "reduce-scatter", ...
    group: int           # replica-group size g (2 for a permute)
    operand_bytes: int   # what one device puts in
    result_bytes: int    # what one device gets out

    @property
    def buffer_bytes(self) -> int:
        """The whole array reduced, gathered, scattered or moved: max(operand, result)."""
        return max(self.operand_bytes, self.result_bytes)


def collectives(hlo: str, num_devices: int) -> list[Collective]:
    """The collectives of a compiled (partitioned) HLO module's text, in program order.

    An async pair counts once, at its ``-start`` (whose result tuple holds the operand
    and the result: the result is its second element; an ``all-reduce-start`` returns
    the result alone). Compiled HLO prints operands without their types, so the operand
    size comes from the result and the group: the all-gather's operand is ``1/g`` of
    its result, the reduce-scatter's ``g`` times it, the others' the same size (where
    the operands' types are written, as in hand-written HLO, they are read instead).
    """
    found = []
    for line in hlo.splitlines():
        m = _OP.search(line)
        if m is None:
            continue
        result_text, kind, start, rest = m.groups()
        tree = _type_tree(result_text)
        if start and kind != "all-reduce" and len(tree) >= 2:
            tree = tree[1]  # (operands, results[, contexts])
        result = _total(tree)
        operand_text = rest.split(")")[0]
        typed = _total(_type_tree(operand_text)) if _TOKEN.search(operand_text) else None
        g = _group_size(rest, num_devices)
        if typed is not None:
            operand = typed
        elif kind == "all-gather":
            operand = result // g
        elif kind == "reduce-scatter":
            operand = result * g
        else:
            operand = result
        found.append(Collective(kind, g, operand, result))
    return found


def ring_bytes(c: Collective) -> float:
    """Bytes one device sends for ``c`` with a ring (or, for a permute, direct) algorithm."""
    g = c.group
    if g <= 1:
        return 0.0
    if c.kind == "all-reduce":
        return 2 * (g - 1) / g * c.buffer_bytes
    if c.kind == "collective-permute":
        return float(c.buffer_bytes)
    return (g - 1) / g * c.buffer_bytes


def entry_ops(hlo: str) -> int:
    """The instructions of the entry computation that run as kernels or library calls
    (everything but parameters, constants, tuples, bitcasts and ``-done`` halves)."""
    count, inside = 0, False
    for line in hlo.splitlines():
        if line.startswith("ENTRY"):
            inside = True
            continue
        if inside:
            if line.startswith("}"):
                break
            m = re.match(r"\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.*?\s([a-z][\w\-]*)\(", line)
            if m and m.group(1) not in _NOT_KERNELS and not m.group(1).endswith("-done"):
                count += 1
    return count


# ----------------------------------------------------------------- the experiments' steps


class Problem(NamedTuple):
    """A training step to compile.

    ``init(key) -> state`` (``{"params", "opt_state"[, "ema"]}``); ``step(state, batch,
    data) -> (state, metrics)``; ``batch``: the global batch as ``ShapeDtypeStruct``s
    (its leading dimension split over the mesh), or None for a step that draws its own
    minibatch from the step number (the diffusion models); ``data``: arrays the step
    reads whole on every device (the diffusion models' training set), as
    ``ShapeDtypeStruct``s, or None; ``batch_size``: the global batch size (per dataset where a
    step trains several models side by side).
    """

    init: Callable
    step: Callable
    batch: Any
    data: Any
    batch_size: int


def _classifier(init_params, loss_fn, config, batch) -> Problem:
    from experiments._train import init_state, make_adamw, make_step
    opt = make_adamw(config.optim, config.num_steps)
    step = make_step(loss_fn, opt)
    return Problem(lambda k: init_state(init_params, k, opt), lambda s, b, d: step(s, b),
                   batch, None, config.batch_size)


def _config(module: str, batch_size: int | None):
    config = importlib.import_module(f"configs.{module}").get_config()
    if batch_size is not None:
        config.batch_size = batch_size
    return config


def _mlp(mesh, batch_size=None) -> Problem:
    from experiments.mlp import MLP
    from jaxmath.losses import softmax_cross_entropy
    c = _config("mlp", batch_size)
    dims, classes = {"digits": 64, "two_moons": 2}, {"digits": 10, "two_moons": 2}
    models = {n: MLP(tuple(c.model.hidden), classes[n]) for n in dims}

    def init(k):  # as experiments/mlp.py: dataset i initialised from fold_in(key, i)
        return {n: m.init(jax.random.fold_in(k, i), jnp.zeros((1, dims[n])))
                for i, (n, m) in enumerate(models.items())}

    def loss_fn(p, batch):
        losses = {n: jnp.mean(softmax_cross_entropy(models[n].apply(p[n], x), y,
                                                    label_smoothing=c.label_smoothing))
                  for n, (x, y) in batch.items()}
        return sum(losses.values()), {f"loss_{n}": v for n, v in losses.items()}

    b = c.batch_size
    batch = {n: (jax.ShapeDtypeStruct((b, d), jnp.float32), jax.ShapeDtypeStruct((b,), jnp.int32))
             for n, d in dims.items()}
    return _classifier(init, loss_fn, c, batch)


def _cnn(mesh, batch_size=None) -> Problem:
    from experiments._train import accuracy
    from experiments.cnn import CNN
    from jaxmath.losses import softmax_cross_entropy
    c = _config("cnn", batch_size)
    model = CNN(tuple(c.model.features), c.model.hidden, 10)

    def loss_fn(p, batch):
        x, y = batch
        logits = model.apply(p, x)
        return (jnp.mean(softmax_cross_entropy(logits, y, label_smoothing=c.label_smoothing)),
                {"batch_accuracy": accuracy(logits, y)})

    b = c.batch_size
    batch = (jax.ShapeDtypeStruct((b, 8, 8, 1), jnp.float32),
             jax.ShapeDtypeStruct((b,), jnp.int32))
    return _classifier(lambda k: model.init(k, jnp.zeros((1, 8, 8, 1))), loss_fn, c, batch)


def _transformer(mesh, batch_size=None) -> Problem:
    from experiments.transformer import Sorter
    from jaxmath.losses import softmax_cross_entropy
    c = _config("transformer", batch_size)
    t, m = c.task, c.model
    model = Sorter(t.vocab_size, t.seq_len, m.num_layers, m.d_model, m.num_heads, m.mlp_ratio)

    def loss_fn(p, batch):
        x, y = batch
        logits = model.apply(p, x)
        token_accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        return jnp.mean(softmax_cross_entropy(logits, y)), {"token_accuracy": token_accuracy}

    tokens = jax.ShapeDtypeStruct((c.batch_size, t.seq_len), jnp.int32)
    return _classifier(lambda k: model.init(k, jnp.zeros((1, t.seq_len), jnp.int32)),
                       loss_fn, c, (tokens, tokens))


def _diffusion(config, model, x_init, data_shape, mesh, stacked: int | None) -> Problem:
    """A diffusion experiment's step as experiments/ddpm_*.py build it: :func:`diffusion_
    training` on ``mesh`` (its minibatch constrained to the batch sharding), the training
    set whole on every device, the batch argument the step number."""
    from experiments._train import diffusion_training
    init_state, step = diffusion_training(model, config, mesh)
    t_init = jnp.zeros(x_init.shape[0], jnp.int32)
    data = jax.ShapeDtypeStruct(data_shape, jnp.float32)
    key = jax.random.key(1)
    if stacked is None:
        def train(s, i, d):
            s, loss = step(s, i, d, key)
            return s, {"loss": loss}
        return Problem(lambda k: init_state(model.init(k, x_init, t_init)), train, None,
                       data, config.batch_size)

    def init(k):  # as experiments/ddpm_2d.py: one parameter set per dataset, stacked
        params = jax.vmap(lambda k: model.init(k, x_init, t_init))(jax.random.split(k, stacked))
        return jax.vmap(init_state)(params)

    def train(s, i, d):
        keys = jax.random.split(key, stacked)
        s, losses = jax.vmap(step, in_axes=(0, None, 0, 0))(s, i, d, keys)
        return s, {"loss": jnp.mean(losses)}

    return Problem(init, train, None, data, config.batch_size)


def _ddpm_2d(mesh, batch_size=None) -> Problem:
    from jaxmath.diffusion.denoisers import MLPDenoiser
    from jaxmath.diffusion.model import DiffusionModel
    c = _config("ddpm_2d", batch_size)
    m = c.model
    model = DiffusionModel(MLPDenoiser(features=m.features, num_blocks=m.num_blocks),
                           m.schedule, num_timesteps=m.num_timesteps,
                           prediction_type=m.prediction_type)
    d = len(c.data.datasets)
    return _diffusion(c, model, jnp.zeros((2, 2)), (d, c.data.num_train, 2), mesh, stacked=d)


def _ddpm_digits(mesh, batch_size=None) -> Problem:
    from jaxmath.diffusion.denoisers import UNet
    from jaxmath.diffusion.model import DiffusionModel
    c = _config("ddpm_digits", batch_size)
    m = c.model
    unet = UNet(channels=m.channels, channel_mults=tuple(m.channel_mults),
                num_res_blocks=m.num_res_blocks,
                attention_resolutions=tuple(m.attention_resolutions),
                mid_attention=m.mid_attention, num_heads=m.num_heads, num_groups=m.num_groups)
    model = DiffusionModel(unet, m.schedule, num_timesteps=m.num_timesteps,
                           prediction_type=m.prediction_type)
    # the training split of scikit-learn's 1,797 digits (stratified; the test split rounds up)
    num_train = 1797 - math.ceil(1797 * c.data.test_fraction)
    return _diffusion(c, model, jnp.zeros((2, 8, 8, 1)), (num_train, 8, 8, 1), mesh,
                      stacked=None)


PROBLEMS = {"mlp": _mlp, "cnn": _cnn, "transformer": _transformer, "ddpm_2d": _ddpm_2d,
            "ddpm_digits": _ddpm_digits}


# ----------------------------------------------------------------- one compile


def _leaf_bytes(tree, shardings) -> int:
    """Bytes per device of ``tree``'s leaves laid out as ``shardings``."""
    return int(sum(math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                   for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings),
                                   strict=True)))


def _total_bytes(tree) -> int:
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _placed(tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        tree, shardings)


def make_mesh_for(layout: str, n: int):
    """The ``("data", "fsdp")`` mesh of the first ``n`` devices: ``data=n`` or ``fsdp=n``."""
    from jaxmath.run.mesh import make_mesh
    devices = jax.devices()[:n]
    if len(devices) < n:
        raise ValueError(f"{n} devices asked for, {len(devices)} available "
                         f"(JAX_NUM_CPU_DEVICES={n} or more)")
    return make_mesh(n, 1, devices=devices) if layout == "data" else \
        make_mesh(1, n, devices=devices)


def measure(name: str, layout: str, n: int, min_size: int | None = None) -> dict[str, Any]:
    """Compile ``name``'s training step for ``n`` devices laid out as ``layout``
    (``"data"`` or ``"fsdp"``); what the program communicates and holds per device.

    A global batch the ``n`` devices do not divide (the experiment would refuse it with a
    ConfigError) is rounded up to the next multiple of ``n``; an fsdp layout with no
    weight of ``min_size`` elements (a ValueError in the experiment) shards the weights of
    at least :data:`FALLBACK_MIN_SIZE`. Either is recorded under ``"notes"``.
    """
    from jaxmath.run.config import ConfigError
    from jaxmath.run.mesh import (
        MIN_SHARD_SIZE,
        batch_sharding,
        check_batch,
        replicated,
        state_shardings,
    )
    min_size = MIN_SHARD_SIZE if min_size is None else min_size
    mesh = make_mesh_for(layout, n)
    notes = []
    problem = PROBLEMS[name](mesh)
    try:
        check_batch(problem.batch_size, mesh)
    except ConfigError:
        rounded = -(-problem.batch_size // n) * n
        notes.append(f"{name}'s batch of {problem.batch_size} does not divide over {n} devices "
                     f"(the experiment refuses it: ConfigError); compiled with {rounded}")
        problem = PROBLEMS[name](mesh, rounded)
    abstract = jax.eval_shape(problem.init, jax.random.key(0))
    try:
        shardings = state_shardings(abstract, mesh, min_size)
    except ValueError:
        notes.append(f"{name} has no weight of {min_size:,} elements or more, so fsdp has "
                     f"nothing to shard (the experiment refuses it: ValueError); compiled with "
                     f"min_shard_size={FALLBACK_MIN_SIZE:,}")
        min_size = FALLBACK_MIN_SIZE
        shardings = state_shardings(abstract, mesh, min_size)
    state = _placed(abstract, shardings)
    if problem.batch is None:
        batch = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated(mesh))
    else:
        batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                            sharding=batch_sharding(mesh)),
                             problem.batch)
    data = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                       sharding=replicated(mesh)), problem.data)

    def step(state, batch, data):  # as train_loop's jitted step: the state keeps its layout
        state, metrics = problem.step(state, batch, data)
        return jax.lax.with_sharding_constraint(state, shardings), metrics

    t0 = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=0).lower(state, batch, data)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    hlo = compiled.as_text()
    found = collectives(hlo, n)
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    global_cost = lowered.cost_analysis()
    global_cost = global_cost[0] if isinstance(global_cost, list) else global_cost
    counts: dict[str, int] = {}
    for c in found:
        counts[c.kind] = counts.get(c.kind, 0) + 1
    sharded = [x for x, s in zip(jax.tree.leaves(abstract["params"]),
                                 jax.tree.leaves(shardings["params"]), strict=True)
               if s.spec != jax.sharding.PartitionSpec()]
    weight_bytes = {_total_bytes(x) for x in sharded}
    weight_gathers = sum(c.kind == "all-gather" and c.result_bytes in weight_bytes for c in found)
    per_device = {part: _leaf_bytes(abstract[part], shardings[part]) if part in abstract else 0
                  for part in ("params", "opt_state", "ema")}
    xla = {"argument": int(memory.argument_size_in_bytes),
           "output": int(memory.output_size_in_bytes),
           "alias": int(memory.alias_size_in_bytes),
           "temp": int(memory.temp_size_in_bytes),
           "generated_code": int(memory.generated_code_size_in_bytes)}
    return {
        "experiment": name, "layout": layout, "devices": n, "mesh": dict(mesh.shape),
        "batch_size": problem.batch_size,
        "min_shard_size": min_size if layout == "fsdp" else None,
        "notes": notes,
        "num_params": int(sum(math.prod(x.shape) for x in jax.tree.leaves(abstract["params"]))),
        "param_leaves": len(jax.tree.leaves(abstract["params"])),
        "sharded_param_leaves": len(sharded),
        "params_bytes": _total_bytes(abstract["params"]),
        "sharded_params_bytes": sum(_total_bytes(x) for x in sharded),
        "params_bytes_per_device": per_device["params"],
        "opt_state_bytes_per_device": per_device["opt_state"],
        "ema_bytes_per_device": per_device["ema"],
        "state_bytes_per_device": sum(per_device.values()),
        "data_bytes_per_device": _total_bytes(problem.data),
        "xla_bytes_per_device": xla,
        "collective_counts": counts,
        "all_gathers_of_weights": weight_gathers,  # result the size of a sharded weight
        "collectives": [{"kind": c.kind, "group": c.group, "operand_bytes": c.operand_bytes,
                         "result_bytes": c.result_bytes, "buffer_bytes": c.buffer_bytes,
                         "ring_bytes": ring_bytes(c)} for c in found],
        "collective_buffer_bytes": sum(c.buffer_bytes for c in found),
        "ring_bytes_per_device": sum(ring_bytes(c) for c in found),
        "flops_per_device": float(cost.get("flops", 0.0)),
        "flops_unpartitioned": float(global_cost.get("flops", 0.0)),
        "entry_ops": entry_ops(hlo),
        "compile_s": round(compile_s, 2),
    }


def predict(record: dict[str, Any], one_device: dict[str, Any] | None = None) -> dict[str, Any]:
    """Step time on ``record["devices"]`` H100s on NVLink from its program (module
    docstring); with ``one_device`` (the same experiment on 1 device), one H100's too."""
    rate = UTILISATION * H100_TF32

    def compute(r):
        return r["flops_per_device"] / rate

    count = sum(record["collective_counts"].values())
    bandwidth = record["ring_bytes_per_device"] / NVLINK_BPS
    latency = LATENCY_S * count
    comm = bandwidth + latency
    out = {"compute_us": compute(record) * 1e6,
           "compute_fp32_us": record["flops_per_device"] / (UTILISATION * H100_FP32) * 1e6,
           "comm_bandwidth_us": bandwidth * 1e6, "comm_latency_us": latency * 1e6,
           "comm_us": comm * 1e6, "step_us": (compute(record) + comm) * 1e6,
           "step_overlapped_us": max(compute(record), comm) * 1e6,
           "launch_us": record["entry_ops"] * LAUNCH_S * 1e6}
    if one_device is not None:
        single = compute(one_device) * 1e6
        out.update(one_gpu_compute_us=single, one_gpu_ops=one_device["entry_ops"],
                   one_gpu_launch_us=one_device["entry_ops"] * LAUNCH_S * 1e6,
                   speedup=single / out["step_us"])
    return out


# ----------------------------------------------------------------- the tables


def _mib(b: float) -> str:
    return f"{b / 2**20:.3f}" if b < 2**20 else f"{b / 2**20:.2f}"


def _bytes(b: float) -> str:
    if b == 0:
        return "0"
    return f"{b / 1e3:.1f} kB" if b < 1e6 else f"{b / 1e6:.2f} MB"


def _us(s: float) -> str:
    return f"{s:.1f}" if s < 10 else f"{s:.0f}"


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"


def _rows(records, name):
    return [r for r in records if r["experiment"] == name]


def experiment_table(records: list[dict[str, Any]], name: str) -> str:
    """The markdown table of one experiment: a row per layout and device count."""
    lines = ["| layout | n | params + opt state, MiB/device | XLA args + temp, MiB/device "
             "| collectives | buffers; sent (ring), per device and step | GFLOP/device "
             "| 8-GPU step, us |",
             "|---|---|---|---|---|---|---|---|"]
    for r in _rows(records, name):
        xla = r["xla_bytes_per_device"]
        pred = ""
        if "prediction" in r:
            p = r["prediction"]
            pred = f"{_us(p['step_us'])} ({_us(p['step_overlapped_us'])} overlapped)"
        n = f"{r['devices']}*" if r["notes"] else str(r["devices"])
        lines.append(f"| {r['layout']} | {n} | {_mib(r['state_bytes_per_device'])} "
                     f"| {_mib(xla['argument'] + xla['temp'])} | {_kinds(r['collective_counts'])} "
                     f"| {_bytes(r['collective_buffer_bytes'])}; "
                     f"{_bytes(r['ring_bytes_per_device'])} "
                     f"| {r['flops_per_device'] / 1e9:.3f} | {pred} |")
    return "\n".join(lines) + "\n"


def prediction_table(records: list[dict[str, Any]]) -> str:
    """One row per experiment and layout: the 8-GPU prediction beside one GPU's."""
    lines = ["| experiment | layout | 1 GPU: compute | 8 GPUs: compute | + comm (bytes + latency) "
             "| = step (overlapped) | 8 GPUs vs 1 | ops/step, 1 / 8 GPUs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "prediction" not in r:
            continue
        p = r["prediction"]
        lines.append(
            f"| {r['experiment']} | {r['layout']} | {_us(p['one_gpu_compute_us'])} "
            f"| {_us(p['compute_us'])} | {_us(p['comm_us'])} ({_us(p['comm_bandwidth_us'])} + "
            f"{_us(p['comm_latency_us'])}) | {_us(p['step_us'])} "
            f"({_us(p['step_overlapped_us'])}) | {p['speedup']:.2f}x "
            f"| {p['one_gpu_ops']} / {r['entry_ops']} |")
    return "\n".join(lines) + "\n"


def _find(records, name, layout, n):
    return next((r for r in records if (r["experiment"], r["layout"], r["devices"]) ==
                 (name, layout, n)), None)


def _reading(records: list[dict[str, Any]]) -> str:
    """What the tables say, with their numbers (every claim computed from ``records``)."""
    names = list(dict.fromkeys(r["experiment"] for r in records))
    out = []
    dp = [r for r in records if r["layout"] == "data" and r["devices"] > 1]
    if dp:
        one = all(r["collective_counts"] == {"all-reduce": 1} for r in dp)
        extra = [r["collective_buffer_bytes"] - r["params_bytes"] for r in dp]

        def xla(r):
            return r["xla_bytes_per_device"]["argument"] + r["xla_bytes_per_device"]["temp"]
        falling = [name for name in names
                   if (one := _find(records, name, "data", 1))
                   and (top := max((r for r in dp if r["experiment"] == name),
                                   key=lambda r: r["devices"], default=None))
                   and xla(top) < 0.8 * xla(one)]
        out.append(
            "* **Data parallelism.** "
            + ("XLA combines the gradients of every weight into one all-reduce per step, "
               if one else "The gradients are all-reduced, ")
            + f"{min(extra)}-{max(extra)} bytes more than the parameters (the loss and "
            "metrics ride along): each device sends 2(n-1)/n of the model's bytes, about "
            "twice the model whatever the device count. Parameters and optimiser state are "
            "replicated, so their memory per device does not fall"
            + (f"; XLA's arguments + temporaries fall with the per-device batch in "
               f"{', '.join(falling)}, whose activations outweigh the state" if falling else "")
            + ".")
    fs = [r for r in records if r["layout"] == "fsdp" and r["devices"] > 1]
    if fs:
        parts = []
        for name in names:
            top = max((r for r in fs if r["experiment"] == name), key=lambda r: r["devices"],
                      default=None)
            one = _find(records, name, "data", 1)
            if top and one:
                parts.append(f"{name} {_mib(one['state_bytes_per_device'])} -> "
                             f"{_mib(top['state_bytes_per_device'])} MiB at "
                             f"{top['devices']} devices ({top['sharded_param_leaves']} of "
                             f"{top['param_leaves']} weights sharded)")
        more = [r for r in fs if (d := _find(records, r["experiment"], "data", r["devices"]))
                and r["ring_bytes_per_device"] > d["ring_bytes_per_device"]]
        text = ("* **fsdp.** Parameters and optimiser state per device fall towards 1/n for "
                "the sharded weights, while the small ones stay whole: " + "; ".join(parts)
                + ". ")
        if len(more) == len(fs):
            text += ("The price is more collectives and more bytes than data parallelism, at "
                     "every n. ")
        odd = sorted({r["experiment"] for r in fs
                      if r["collective_counts"].get("all-gather", 0) > r["all_gathers_of_weights"]
                      or "all-to-all" in r["collective_counts"]})
        if odd:
            text += (
                "XLA's SPMD partitioner chooses per matrix product what to move, and "
                f"in {', '.join(odd)} it moves activations as well as weights: all-gathers "
                "that are not the size of any sharded weight"
                + (", an all-to-all" if any("all-to-all" in r["collective_counts"] for r in fs)
                   else "")
                + " and all-reduces of partial products, the partitioner's tensor-parallel "
                "answer where a weight is larger than the per-device activations it meets. ")
        if not any("reduce-scatter" in r["collective_counts"] for r in fs):
            text += (
                "No program has a reduce-scatter: the CPU compiler sums a sharded weight's "
                "gradient with a full all-reduce and keeps its own slice, where XLA's GPU "
                "compiler has a pass that turns that pattern into a reduce-scatter, which "
                "sends half the bytes. For a GPU the fsdp byte counts here are an upper "
                "bound.")
        out.append(text.rstrip())
    preds = [r for r in records if "prediction" in r]
    if preds:
        params = [r["num_params"] for r in records]
        slower = [r for r in preds if r["prediction"]["speedup"] < 1]
        listing = "; ".join(f"{r['experiment']} {r['layout']} {_us(r['prediction']['step_us'])} "
                            f"us against {_us(r['prediction']['one_gpu_compute_us'])} us"
                            for r in preds)
        verdict = ("slower on 8 GPUs than on one for every experiment and layout"
                   if len(slower) == len(preds) else
                   f"slower on 8 GPUs than on one for {len(slower)} of {len(preds)} "
                   "experiment x layout pairs")
        fsdp_worse = all(
            r["prediction"]["step_us"] > d["prediction"]["step_us"] for r in preds
            if r["layout"] == "fsdp" and (d := _find(records, r["experiment"], "data",
                                                     r["devices"])) and "prediction" in d)
        ops = [r["entry_ops"] for r in records]
        launch = [r["entry_ops"] * LAUNCH_S * 1e6 for r in records]
        out.append(
            f"* **8 GPUs.** These models are tiny ({min(params) / 1e6:.2f} M to "
            f"{max(params) / 1e6:.2f} M parameters) and a step is well under a GFLOP, which "
            f"one H100 computes in microseconds even at {UTILISATION:.0%} of its TF32 peak. "
            f"The prediction is that a step is {verdict} (8-GPU step against one GPU's "
            f"compute: {listing})"
            + (": a single collective's latency costs more than the whole step's "
               "arithmetic on one GPU" if max(r["prediction"]["one_gpu_compute_us"]
                                              for r in preds) < LATENCY_S * 1e6 else "")
            + (", so data parallelism does not pay for any of them at their configs' "
               "batches" if len(slower) == len(preds) else "")
            + (", and fsdp, with more collectives, pays least" if fsdp_worse else "")
            + ". Neither FLOPs nor bytes set these steps' time anyway: a compiled step is "
            f"{min(ops)}-{max(ops)} kernels and library calls (the CPU program's count; a "
            "GPU compile fuses differently, so take it as an order of magnitude), "
            f"{min(launch) / 1e3:.1f}-{max(launch) / 1e3:.1f} ms at ~{LAUNCH_S * 1e6:.0f} us "
            "each to launch and run, on one GPU or on eight: far more than the compute and "
            "communication above, and not divided by the device count. What "
            "the mesh buys is room, not speed: with a global batch or a model too large for "
            "one device the same configs split the batch over `data` and the weights over "
            "`fsdp`, and communicate per step what is shown here.")
    return "\n".join(out) + "\n"


def section(records: list[dict[str, Any]], command: str) -> str:
    """The markdown section: method, assumptions, the tables and their reading."""
    from jaxmath.run.mesh import MIN_SHARD_SIZE
    names = list(dict.fromkeys(r["experiment"] for r in records))
    devices = sorted({r["devices"] for r in records})
    notes = sorted({note for r in records for note in r["notes"]})
    fp32_max = max((r["prediction"]["compute_fp32_us"] for r in records if "prediction" in r),
                   default=0.0)
    check = [r["flops_per_device"] * r["devices"] / r["flops_unpartitioned"]
             for r in records if r["flops_unpartitioned"]]
    parts = [
        "## How far it scales, on paper",
        "",
        "This machine's CPU cannot show speed-ups, but it can compile each experiment's "
        "training step for a mesh of forced host CPU devices and read what XLA's "
        "partitioned program communicates and holds per device. "
        f"`{command}` does so for the default configs of {', '.join(names)} (not "
        "`mlp_sweep`: its configurations are independent, over a `sweep` axis) at "
        f"{', '.join(map(str, devices))} devices, data parallel (`data=n`) and fully "
        f"sharded (`fsdp=n`, `min_shard_size` {MIN_SHARD_SIZE:,}), from abstract inputs "
        "(nothing is materialised), with the state donated and kept on its shardings as the "
        "training loop does. Per device and step it reports:",
        "",
        "* **params + opt state**: the parameters, Adam's state and (diffusion) the "
        "parameters' moving average, from their shardings;",
        "* **XLA args + temp**: XLA's `memory_analysis()` of the per-device program, "
        "arguments (state, batch and, for the diffusion models, their training set, held "
        "whole on every device) plus temporaries; the outputs alias the donated state;",
        "* **collectives**: those of the partitioned program (an async start/done pair "
        "counted once), and the bytes each device sends with ring algorithms: 2(g-1)/g of "
        "the buffer for an all-reduce, (g-1)/g for an all-gather (the gathered result), "
        "reduce-scatter (its operand) or all-to-all, g the replica group's size; the JSON "
        "also has each op's operand and result bytes;",
        "* **GFLOP/device**: `cost_analysis()` of the compiled program, which counts one "
        "device's share (times n it is "
        + (f"{min(check):.2f}-{max(check):.2f}" if check else "n/a")
        + " x the unpartitioned program's count: the extra is replicated optimiser work).",
        "",
        "The last column predicts one step on 8 H100 SXM GPUs from the 8-device program: "
        f"compute = FLOPs / ({UTILISATION:.0%} of {H100_TF32 / 1e12:.0f} TFLOP/s, dense "
        "TF32, what XLA uses for float32 matrix products at JAX's default precision), "
        f"communication = ring bytes / {NVLINK_BPS / 1e9:.0f} GB/s (NVLink 4, per direction "
        f"per GPU) + {LATENCY_S * 1e6:.0f} us per collective, summed (no overlap; in "
        "parentheses the bound with full overlap, their maximum). At the float32 rate "
        f"without tensor cores ({H100_FP32 / 1e12:.0f} TFLOP/s) the compute terms would be "
        f"{H100_TF32 / H100_FP32:.1f}x longer, at most {fp32_max:.0f} us. Kernel launches are "
        "left out of the prediction and discussed below. "
        "Regenerate with `make bench-scaling`: results in "
        "`benchmarks/results/scaling.json`, this section in `benchmarks/results/scaling.md` "
        "(and here).",
    ]
    if notes:
        parts += ["", "Rows marked * were compiled with a change: " +
                  " ".join(f"{n}." for n in notes)]
    for name in names:
        r1 = _find(records, name, "data", 1) or _rows(records, name)[0]
        parts += ["", f"### {name}: {r1['num_params']:,} parameters, batch "
                  f"{r1['batch_size']}{' per dataset' if name in ('mlp', 'ddpm_2d') else ''}",
                  "", experiment_table(records, name).rstrip()]
    parts += ["", "### The 8-GPU prediction against one GPU", "",
              "Times in us. `8 GPUs vs 1`: one GPU's compute time / the 8-GPU step (above "
              "1: 8 GPUs would be faster). `ops/step`: the compiled step's instructions that "
              "run as kernels or library calls, on 1 and on 8 devices (CPU programs).", "",
              prediction_table(records).rstrip(),
              "", "What the tables say:", "", _reading(records).rstrip()]
    return "\n".join(parts) + "\n"


def insert_section(doc: Path, text: str) -> bool:
    """Put ``text`` in ``doc`` after the line :data:`MARKER`, replacing what is between it
    and :data:`END_MARKER` (added if absent); False (nothing written) without the marker."""
    from jaxmath.run.files import atomic_write_text
    if not doc.exists():
        return False
    lines = doc.read_text().splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.strip() == MARKER]
    if not starts:
        return False
    start = starts[0]
    ends = [i for i, line in enumerate(lines) if line.strip() == END_MARKER and i > start]
    tail = lines[ends[0] + 1:] if ends else lines[start + 1:]
    body = [*lines[:start + 1], text if text.endswith("\n") else text + "\n", END_MARKER + "\n"]
    atomic_write_text(doc, "".join(body + tail))
    return True


# ----------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--markdown", type=Path, default=DEFAULT_MARKDOWN,
                        help="where the markdown section goes")
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS,
                        help=f"a doc whose '{MARKER}' line the section follows (if it has one)")
    parser.add_argument("--experiments", nargs="+", default=list(PROBLEMS),
                        choices=list(PROBLEMS))
    parser.add_argument("--devices", nargs="+", type=int, default=list(N_DEVICES))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if min(args.devices) < 1:
        parser.error("--devices must be positive")
    # one process, max(devices) host devices, each mesh over the first n of them
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", max(args.devices))
    from benchmarks._harness import git_commit
    from jaxmath.run.files import atomic_write_json, atomic_write_text

    t_start = time.perf_counter()
    records = []
    for name in args.experiments:
        for layout in LAYOUTS:
            for n in sorted(args.devices):
                if layout == "fsdp" and n == 1:
                    continue  # the same program as data parallelism on one device
                r = measure(name, layout, n)
                records.append(r)
                print(f"{name:12s} {layout:4s} n={n:2d} {_kinds(r['collective_counts']):46s} "
                      f"{_bytes(r['ring_bytes_per_device']):>10s} "
                      f"compile {r['compile_s']:5.1f} s{'  *' if r['notes'] else ''}", flush=True)
    for r in records:
        if r["devices"] == PREDICT_DEVICES:
            r["prediction"] = predict(r, _find(records, r["experiment"], "data", 1))
    runtime = time.perf_counter() - t_start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    command = "python -m benchmarks.scaling --output benchmarks/results/scaling.json"
    text = section(records, command)
    print()
    print(text)
    print(f"{len(records)} compiles in {runtime:.0f} s, peak RSS {rss / 2**30:.2f} GiB")
    if args.no_write:
        return 0
    atomic_write_json(args.output, {
        "commit": git_commit(), "jax": jax.__version__,
        "host_devices": f"{max(args.devices)} forced host CPU devices, meshes over the first n",
        "runtime_s": round(runtime, 1), "peak_rss_bytes": rss,
        "assumptions": {"gpu": "8 x H100 SXM, NVLink 4", "tf32_flops": H100_TF32,
                        "fp32_flops": H100_FP32, "utilisation": UTILISATION,
                        "nvlink_bytes_per_s": NVLINK_BPS, "latency_s_per_collective": LATENCY_S,
                        "launch_s_per_op": LAUNCH_S},
        "fields": {
            "collectives": "per op, per device: operand and result bytes, buffer = the larger, "
                           "ring_bytes = bytes the device sends with a ring algorithm",
            "*_bytes_per_device": "from the leaves' shardings (sharding.shard_shape)",
            "xla_bytes_per_device": "compiled.memory_analysis() of the per-device program",
            "flops_per_device": "compiled.cost_analysis()['flops'] (partitioned: one device)",
            "flops_unpartitioned": "lowered.cost_analysis()['flops'] (the global program)",
            "entry_ops": "instructions of the compiled entry computation that run as kernels",
            "prediction": "8-device records: step time on 8 H100s (see assumptions)"},
        "records": records})
    atomic_write_text(args.markdown, text)
    print(f"wrote {args.output} and {args.markdown}")
    if insert_section(args.docs, text):
        print(f"wrote the section into {args.docs} at '{MARKER}'")
    else:
        print(f"{args.docs} has no line '{MARKER}': left as it is")
    return 0


if __name__ == "__main__":
    sys.exit(main())
