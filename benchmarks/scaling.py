r"""How far the training experiments scale, on paper: what their compiled steps communicate
and hold per device, from XLA's own programs, and what that predicts on 8 GPUs.

    python -m benchmarks.scaling --output benchmarks/results/scaling.json

For each training experiment's default config (mlp, cnn, transformer, ddpm_2d,
ddpm_digits) and each layout, data parallel (``data=n``) and fully sharded (``fsdp=n``),
at n = 1, 4, 8 and 64 devices, the experiment's training step (its model, loss, optimiser
and global batch) is compiled for a mesh of n forced host CPU devices from abstract inputs
(nothing is materialised) and read back:

* **collectives**: every all-reduce, all-gather, reduce-scatter, all-to-all and
  collective-permute of the partitioned program (``-start`` forms counted once), its
  buffer (the all-reduce's operand, the all-gather's gathered result, the reduce-scatter's
  operand) and group size :math:`g`, and the bytes each device sends with ring algorithms:
  :math:`2 (g - 1) / g \cdot B` for an all-reduce, :math:`(g - 1) / g \cdot B` for the others;
* **memory per device**: the parameters and the optimiser state from their shardings,
  and XLA's ``memory_analysis()`` of the per-device program (arguments + temporaries);
* **FLOPs per device**: XLA's ``cost_analysis()`` of the partitioned program.

The prediction for 8 NVIDIA H100 SXM GPUs on NVLink 4 (450 GB/s per direction per GPU):
compute = FLOPs / (30% of 495 TFLOP/s, TF32, JAX's default precision for float32 layers
on a GPU), communication = ring bytes / 450 GB/s + 10 us per collective; the step is
their sum (no overlap) and at least their maximum (full overlap). Kernel launches, about
5-10 us each, are not counted: for models this small they, not FLOPs or bytes, set the
step time (see docs/scaling.md).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

N_DEVICES = (1, 4, 8, 64)
H100_TF32 = 495e12      # FLOP/s, dense TF32 tensor cores (H100 SXM)
UTILISATION = 0.3       # of that peak, assumed for these small matmuls
NVLINK_BPS = 450e9      # bytes/s per direction per GPU (NVLink 4)
LATENCY_S = 10e-6       # per collective
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all",
               "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(pred|[subfc]\d+|bf16)\[([\d,]*)\]")
_OP = re.compile(r"=\s*(.*?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")


# ----------------------------------------------------------------- reading the program


def _shape_bytes(text: str) -> list[int]:
    """The byte sizes of the array shapes written in ``text`` (``f32[256,64]``: 65,536)."""
    return [_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d)
            for t, dims in _SHAPE.findall(text)]


def _group_size(line: str, num_devices: int) -> int:
    """The replica group size of a collective: ``{{0,1},{2,3}}`` or iota ``[2,2]<=[4]``."""
    explicit = re.search(r"replica_groups=\{\{([\d,]*)\}", line)
    if explicit:
        return len(explicit.group(1).split(","))
    iota = re.search(r"replica_groups=\[([\d,]+)\]<=", line)
    if iota:
        return int(iota.group(1).split(",")[-1])
    pairs = re.search(r"source_target_pairs=\{(.*?)\}\s*[,}]", line)
    if pairs:
        return 2
    return num_devices


class Collective(NamedTuple):
    kind: str
    buffer_bytes: int   # all-reduce: the reduced buffer; all-gather: the gathered result;
    group: int          # reduce-scatter / all-to-all / permute: the operand


def collectives(hlo: str, num_devices: int) -> list[Collective]:
    """The collectives of a compiled (partitioned) HLO module's text."""
    found = []
    for line in hlo.splitlines():
        match = _OP.search(line)
        if match is None or "-done" in line.split("=")[0]:
            continue
        result_text, kind = match.group(1), match.group(2)
        operands = line[match.end():]
        sizes = _shape_bytes(result_text)
        if kind == "all-gather":
            size = sizes[-1]  # -start returns (operand, result): the gathered result
        elif kind == "all-reduce":
            size = sum(sizes)  # a combined all-reduce returns a tuple: all of it
        else:  # reduce-scatter, all-to-all, permute: what each device contributes
            size = sum(_shape_bytes(operands.split(")")[0])) or sum(sizes)
        found.append(Collective(kind, size, _group_size(line, num_devices)))
    return found


def ring_bytes(c: Collective) -> float:
    """Bytes one device sends for ``c`` with a ring algorithm."""
    g = c.group
    if g <= 1:
        return 0.0
    if c.kind == "all-reduce":
        return 2 * (g - 1) / g * c.buffer_bytes
    if c.kind == "collective-permute":
        return float(c.buffer_bytes)
    return (g - 1) / g * c.buffer_bytes


# ----------------------------------------------------------------- the experiments' steps


class Problem(NamedTuple):
    """A training step to compile: ``init(key) -> state``, ``step(state, batch)``, the
    global batch as ``ShapeDtypeStruct``s (split over the mesh's data axes) or None (the
    step draws its own minibatch from the step number), and the global batch size."""

    init: Callable
    step: Callable
    batch: Any
    batch_size: int


def _classifier(init_params, loss_fn, config, batch) -> Problem:
    from experiments._train import init_state, make_adamw, make_step
    opt = make_adamw(config.optim, config.num_steps)
    return Problem(lambda k: init_state(init_params, k, opt), make_step(loss_fn, opt), batch,
                   config.batch_size)


def _mlp(mesh) -> Problem:
    from configs.mlp import get_config
    from experiments.mlp import MLP
    from jaxmath.losses import softmax_cross_entropy
    c = get_config()
    dims, classes = {"digits": 64, "two_moons": 2}, {"digits": 10, "two_moons": 2}
    models = {n: MLP(tuple(c.model.hidden), classes[n]) for n in dims}

    def init(k):
        return {n: m.init(jax.random.fold_in(k, i), jnp.zeros((1, dims[n])))
                for i, (n, m) in enumerate(models.items())}

    def loss_fn(p, batch):
        return sum(jnp.mean(softmax_cross_entropy(models[n].apply(p[n], x), y,
                                                  label_smoothing=c.label_smoothing))
                   for n, (x, y) in batch.items()), {}

    b = c.batch_size
    batch = {n: (jax.ShapeDtypeStruct((b, d), jnp.float32), jax.ShapeDtypeStruct((b,), jnp.int32))
             for n, d in dims.items()}
    return _classifier(init, loss_fn, c, batch)


def _cnn(mesh) -> Problem:
    from configs.cnn import get_config
    from experiments.cnn import CNN
    from jaxmath.losses import softmax_cross_entropy
    c = get_config()
    model = CNN(tuple(c.model.features), c.model.hidden, 10)

    def loss_fn(p, batch):
        x, y = batch
        return jnp.mean(softmax_cross_entropy(model.apply(p, x), y,
                                              label_smoothing=c.label_smoothing)), {}

    b = c.batch_size
    batch = (jax.ShapeDtypeStruct((b, 8, 8, 1), jnp.float32),
             jax.ShapeDtypeStruct((b,), jnp.int32))
    return _classifier(lambda k: model.init(k, jnp.zeros((1, 8, 8, 1))), loss_fn, c, batch)


def _transformer(mesh) -> Problem:
    from configs.transformer import get_config
    from experiments.transformer import Sorter
    from jaxmath.losses import softmax_cross_entropy
    c = get_config()
    t, m = c.task, c.model
    model = Sorter(t.vocab_size, t.seq_len, m.num_layers, m.d_model, m.num_heads, m.mlp_ratio)

    def loss_fn(p, batch):
        x, y = batch
        return jnp.mean(softmax_cross_entropy(model.apply(p, x), y)), {}

    tokens = jax.ShapeDtypeStruct((c.batch_size, t.seq_len), jnp.int32)
    return _classifier(lambda k: model.init(k, jnp.zeros((1, t.seq_len), jnp.int32)),
                       loss_fn, c, (tokens, tokens))


def _diffusion(config, model, x_shape, data_shape, mesh, stacked: int | None) -> Problem:
    from experiments._train import diffusion_training
    from jaxmath.run.mesh import on_every_device
    init_state, step = diffusion_training(model, config, mesh)
    data = on_every_device(jnp.zeros(data_shape), mesh)
    x = jnp.zeros(x_shape)
    t = jnp.zeros(x_shape[0], jnp.int32)
    key = jax.random.key(1)
    if stacked is None:
        return Problem(lambda k: init_state(model.init(k, x, t)),
                       lambda s, i: step(s, i, data, key), None, config.batch_size)

    def init(k):
        params = jax.vmap(lambda k: model.init(k, x, t))(jax.random.split(k, stacked))
        return jax.vmap(init_state)(params)

    keys = jax.random.split(key, stacked)
    return Problem(init, lambda s, i: jax.vmap(step, in_axes=(0, None, 0, 0))(s, i, data, keys),
                   None, config.batch_size)


def _ddpm_2d(mesh) -> Problem:
    from configs.ddpm_2d import get_config
    from jaxmath.diffusion.denoisers import MLPDenoiser
    from jaxmath.diffusion.model import DiffusionModel
    c = get_config()
    m = c.model
    model = DiffusionModel(MLPDenoiser(features=m.features, num_blocks=m.num_blocks),
                           m.schedule, num_timesteps=m.num_timesteps,
                           prediction_type=m.prediction_type)
    d = len(c.data.datasets)
    return _diffusion(c, model, (2, 2), (d, c.data.num_train, 2), mesh, stacked=d)


def _ddpm_digits(mesh) -> Problem:
    from configs.ddpm_digits import get_config
    from jaxmath.diffusion.denoisers import UNet
    from jaxmath.diffusion.model import DiffusionModel
    c = get_config()
    m = c.model
    unet = UNet(channels=m.channels, channel_mults=tuple(m.channel_mults),
                num_res_blocks=m.num_res_blocks,
                attention_resolutions=tuple(m.attention_resolutions),
                mid_attention=m.mid_attention, num_heads=m.num_heads, num_groups=m.num_groups)
    model = DiffusionModel(unet, m.schedule, num_timesteps=m.num_timesteps,
                           prediction_type=m.prediction_type)
    return _diffusion(c, model, (2, 8, 8, 1), (1347, 8, 8, 1), mesh, stacked=None)


PROBLEMS = {"mlp": _mlp, "cnn": _cnn, "transformer": _transformer, "ddpm_2d": _ddpm_2d,
            "ddpm_digits": _ddpm_digits}


# ----------------------------------------------------------------- one compile


def _leaf_bytes(tree, shardings) -> int:
    return int(sum(math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                   for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings),
                                   strict=True)))


def measure(name: str, layout: str, n: int, min_size: int) -> dict[str, Any]:
    """Compile ``name``'s step for ``n`` devices laid out as ``layout``; what it shows."""
    from jaxmath.run.mesh import batch_sharding, make_mesh, replicated, state_shardings
    mesh = make_mesh(n, 1, devices=jax.devices()[:n]) if layout == "data" else \
        make_mesh(1, n, devices=jax.devices()[:n])
    problem = PROBLEMS[name](mesh)
    abstract = jax.eval_shape(problem.init, jax.random.key(0))
    record: dict[str, Any] = {"experiment": name, "layout": layout, "devices": n,
                              "min_shard_size": min_size, "batch_size": problem.batch_size}
    try:
        shardings = state_shardings(abstract, mesh, min_size)
    except ValueError as e:
        return {**record, "error": str(e).split(" (largest")[0]}
    placed = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    if problem.batch is None:
        batch = jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated(mesh))
    else:
        batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                            sharding=batch_sharding(mesh)),
                             problem.batch)

    def step(state, b):
        state, metrics = problem.step(state, b)
        return jax.lax.with_sharding_constraint(state, shardings), metrics

    t0 = time.perf_counter()
    compiled = jax.jit(step).lower(placed, batch).compile()
    compile_s = time.perf_counter() - t0
    found = collectives(compiled.as_text(), n)
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    params_bytes = _leaf_bytes(abstract["params"], shardings["params"])
    opt_bytes = _leaf_bytes(abstract["opt_state"], shardings["opt_state"])
    kinds: dict[str, int] = {}
    for c in found:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    comm_bytes = sum(c.buffer_bytes for c in found)
    ring = sum(ring_bytes(c) for c in found)
    flops = float(cost.get("flops", 0.0))
    return {**record,
            "num_params": int(sum(math.prod(x.shape) for x in jax.tree.leaves(
                abstract["params"]))),
            "params_bytes_per_device": params_bytes, "opt_state_bytes_per_device": opt_bytes,
            "ema_bytes_per_device": _leaf_bytes(abstract["ema"], shardings["ema"])
            if "ema" in abstract else 0,
            "xla_argument_bytes": int(memory.argument_size_in_bytes),
            "xla_temp_bytes": int(memory.temp_size_in_bytes),
            "xla_output_bytes": int(memory.output_size_in_bytes),
            "collectives": kinds, "collective_buffer_bytes": comm_bytes,
            "ring_bytes_per_device": ring, "flops_per_device": flops,
            "compile_s": round(compile_s, 2)}


def predict(record: dict[str, Any]) -> dict[str, float]:
    """Step time on 8 H100 GPUs on NVLink, from the 8-device record (see the docstring)."""
    compute = record["flops_per_device"] / (UTILISATION * H100_TF32)
    count = sum(record["collectives"].values())
    comm = record["ring_bytes_per_device"] / NVLINK_BPS + LATENCY_S * count
    return {"compute_us": compute * 1e6, "comm_us": comm * 1e6,
            "step_us": (compute + comm) * 1e6, "step_overlapped_us": max(compute, comm) * 1e6}


# ----------------------------------------------------------------- the table


def _mib(b: float) -> str:
    return f"{b / 2**20:.3f}" if b < 2**20 else f"{b / 2**20:.2f}"


def markdown(records: list[dict[str, Any]]) -> str:
    lines = [
        "| experiment | layout | n | params + opt state MiB/device | XLA args + temp MiB/device "
        "| collectives | bytes sent/device/step (ring) | GFLOP/device | 8-GPU step (us) |",
        "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        head = f"| {r['experiment']} | {r['layout']} | {r['devices']} "
        if "error" in r:
            lines.append(head + f"| {r['error']} | | | | | |")
            continue
        state = r["params_bytes_per_device"] + r["opt_state_bytes_per_device"] + \
            r["ema_bytes_per_device"]
        kinds = ", ".join(f"{v} {k}" for k, v in sorted(r["collectives"].items())) or "none"
        pred = ""
        if "prediction" in r:
            p = r["prediction"]
            pred = f"{p['step_us']:.0f} ({p['compute_us']:.0f} compute + {p['comm_us']:.0f} comm)"
        xla = r["xla_argument_bytes"] + r["xla_temp_bytes"]
        lines.append(head + f"| {_mib(state)} | {_mib(xla)} | {kinds} "
                     f"| {r['ring_bytes_per_device'] / 1e3:.1f} kB "
                     f"| {r['flops_per_device'] / 1e9:.3f} | {pred} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from benchmarks._harness import git_commit
    from jaxmath.run.files import atomic_write_json, atomic_write_text
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="benchmarks/results/scaling.json")
    parser.add_argument("--markdown", default="benchmarks/results/scaling.md")
    parser.add_argument("--experiments", nargs="*", default=list(PROBLEMS))
    parser.add_argument("--devices", nargs="*", type=int, default=list(N_DEVICES))
    args = parser.parse_args(argv)
    jax.config.update("jax_num_cpu_devices", max(args.devices))
    jax.config.update("jax_platforms", "cpu")
    from jaxmath.run.mesh import MIN_SHARD_SIZE
    records = []
    for name in args.experiments:
        for layout in ("data", "fsdp"):
            for n in args.devices:
                if layout == "fsdp" and n == 1:
                    continue
                r = measure(name, layout, n, MIN_SHARD_SIZE)
                if "error" in r:  # no weight that large: shard the ones >= 1024 elements
                    r = {**measure(name, layout, n, 1024), "note": r["error"]}
                if n == 8 and "error" not in r:
                    r["prediction"] = predict(r)
                records.append(r)
                print(f"{name:12s} {layout:4s} n={n:2d} "
                      f"{r.get('collectives', r.get('error'))} "
                      f"{r.get('ring_bytes_per_device', 0) / 1e3:.1f} kB", flush=True)
    atomic_write_json(args.output, {"commit": git_commit(), "jax": jax.__version__,
                                    "host_devices": "forced CPU devices", "assumptions": {
        "gpu": "8 x H100 SXM, NVLink 4", "tf32_flops": H100_TF32, "utilisation": UTILISATION,
        "nvlink_bytes_per_s": NVLINK_BPS, "latency_s_per_collective": LATENCY_S},
        "records": records})
    table = markdown(records)
    atomic_write_text(args.markdown, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
