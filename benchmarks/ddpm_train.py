"""DDPM training steps per second: jaxmath's MLP denoiser vs the same model in PyTorch (CPU).

One training step, the same on both sides: for a fixed batch ``x0`` of 4,096 points
of a 2-D Gaussian mixture, draw ``t ~ U{0..T-1}`` and ``noise ~ N(0, I)``, form
``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise`` (linear schedule,
T = 1000), predict the noise with the MLP denoiser (sinusoidal time embedding of
width 128 -> Dense -> SiLU -> Dense; Dense(2 -> 128); 2 residual blocks of three
128x128 Dense layers; SiLU; Dense(128 -> 2)), take the mean squared error, and make
one Adam step (lr 1e-3, optax's and torch's defaults b1 = 0.9, b2 = 0.999,
eps = 1e-8).

Implementations, timed side by side in one process (interleaved rounds, see _harness),
each call running ``STEPS_PER_CALL`` steps:

* ``jaxmath`` (the subject): ``DiffusionModel(MLPDenoiser(...)).loss`` with
  ``jax.value_and_grad`` and ``optax.adam``, the whole step one ``jax.jit`` with the
  training state donated (``donate_argnums``), called once per step from Python, as a
  training loop does; the key of step ``i`` is ``fold_in(key, i)`` inside the step;
* ``jaxmath, lax.scan`` (for the record): the same step, ``STEPS_PER_CALL`` of them in
  one ``lax.scan`` per call (no Python between steps);
* PyTorch eager (the peers), with ``torch.optim.Adam``'s default implementation and
  with ``foreach=True`` and ``fused=True``, at PyTorch's default thread count, and once
  with one thread (``torch.set_num_threads(1)`` during its calls: on a loaded machine
  its two threads' barriers can cost more than they gain); the fastest one sets the bar.

Memory: XLA:CPU allocates each call's temporaries afresh, and glibc's malloc serves
blocks that large with ``mmap`` and unmaps them on ``free``, so every step of the jitted
loop faults in tens of MB of new zero pages (the ``lax.scan`` variant allocates once per
call). The benchmark therefore sets ``mallopt(M_MMAP_MAX, 0)`` and a 1 GiB
``M_TRIM_THRESHOLD`` for the whole process -- PyTorch included -- while it runs, as
``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824`` (or a
caching allocator such as tcmalloc) does for a training script. Measured in separate
processes on the 2-core machine: the jitted loop's step went from about 96 to 70 ms,
the ``lax.scan`` variant's and PyTorch's did not change.

Both sides start from the same weights (PyTorch's default initialisation, copied into
the Flax parameters); before timing, the two losses and the two gradients of
the loss for the same ``t`` and noise are checked to agree, so the two programs compute
the same thing. Goal (issue 3): jaxmath >= 1.5x PyTorch's steps per second.

    python -m benchmarks.run --only ddpm_train [--quick]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F

from benchmarks._harness import Impl, check_close, measure, summarise
from jaxmath.diffusion.denoisers import MLPDenoiser
from jaxmath.diffusion.losses import diffusion_loss
from jaxmath.diffusion.model import DiffusionModel
from jaxmath.diffusion.process import q_sample
from jaxmath.run.datasets import gaussian_mixture

BATCH = 4096
FEATURES = 128
NUM_BLOCKS = 2
NUM_TIMESTEPS = 1000
LR = 1e-3
STEPS_PER_CALL = 10
GOAL = 1.5
RTOL, ATOL = 1e-4, 1e-5   # float32 forward passes and gradients of the two libraries
MEANS = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]], np.float32)


# --------------------------------------------------------------------------- allocator

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4          # mallopt parameters (glibc's malloc.h)
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 * 1024, M_MMAP_MAX: 65536}
KEEP_FREED = {M_TRIM_THRESHOLD: 1 << 30, M_MMAP_MAX: 0}


def _mallopt(settings: dict[int, int]) -> bool:
    """Set glibc malloc parameters; False where there is no glibc ``mallopt``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return all(libc.mallopt(k, v) == 1 for k, v in settings.items())
    except (OSError, AttributeError):
        return False


# --------------------------------------------------------------------------- PyTorch


def torch_timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """jaxmath's ``timestep_embedding`` defaults (DDPM's: sines, then cosines, shift 1)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32)
                      / (half - 1))
    angles = t[:, None].float() * freqs[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class TorchBlock(torch.nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.dense_0 = torch.nn.Linear(features, features)
        self.time_proj = torch.nn.Linear(features, features)
        self.dense_1 = torch.nn.Linear(features, features)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return h + self.dense_1(F.silu(self.dense_0(h) + self.time_proj(e)))


class TorchMLPDenoiser(torch.nn.Module):
    """jaxmath's MLPDenoiser, layer for layer (same names)."""

    def __init__(self, dim: int = 2, features: int = FEATURES, num_blocks: int = NUM_BLOCKS):
        super().__init__()
        self.features = features
        self.time_dense_0 = torch.nn.Linear(features, features)
        self.time_dense_1 = torch.nn.Linear(features, features)
        self.dense_in = torch.nn.Linear(dim, features)
        self.blocks = torch.nn.ModuleList(TorchBlock(features) for _ in range(num_blocks))
        self.dense_out = torch.nn.Linear(features, dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        e = torch_timestep_embedding(t, self.features)
        e = F.silu(self.time_dense_1(F.silu(self.time_dense_0(e))))
        h = self.dense_in(x)
        for block in self.blocks:
            h = block(h, e)
        return self.dense_out(F.silu(h))


def flax_params(model: TorchMLPDenoiser) -> dict:
    """The torch weights as DiffusionModel(MLPDenoiser) parameters (kernels transposed)."""
    def dense(layer: torch.nn.Linear) -> dict:
        return {"kernel": jnp.asarray(layer.weight.detach().numpy().T),
                "bias": jnp.asarray(layer.bias.detach().numpy())}

    params = {"time_embed": {"dense_0": dense(model.time_dense_0),
                             "dense_1": dense(model.time_dense_1)},
              "dense_in": dense(model.dense_in), "dense_out": dense(model.dense_out)}
    for k, block in enumerate(model.blocks):
        params[f"block_{k}"] = {name: dense(getattr(block, name))
                                for name in ("dense_0", "time_proj", "dense_1")}
    return {"params": {"denoiser": params}}


def torch_schedule() -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(alpha_bar) and sqrt(1 - alpha_bar) of the linear schedule (float64, then float32)."""
    betas = torch.linspace(1e-4, 0.02, NUM_TIMESTEPS, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    return alpha_bar.sqrt().float(), (1 - alpha_bar).sqrt().float()


def torch_loss(model: TorchMLPDenoiser, x0: torch.Tensor, t: torch.Tensor,
               noise: torch.Tensor, coefs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    sqrt_ab, sqrt_1m_ab = coefs
    x_t = sqrt_ab[t, None] * x0 + sqrt_1m_ab[t, None] * noise
    return F.mse_loss(model(x_t, t), noise)


def torch_trainer(model: TorchMLPDenoiser, x0: np.ndarray, **adam_kwargs):
    """A callable running STEPS_PER_CALL training steps; returns the last loss."""
    coefs = torch_schedule()
    x0 = torch.from_numpy(x0.copy())
    opt = torch.optim.Adam(model.parameters(), lr=LR, **adam_kwargs)
    generator = torch.Generator().manual_seed(0)

    def run() -> float:
        for _ in range(STEPS_PER_CALL):
            t = torch.randint(0, NUM_TIMESTEPS, (x0.shape[0],), generator=generator)
            noise = torch.randn(x0.shape, generator=generator)
            loss = torch_loss(model, x0, t, noise, coefs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss.item()
    return run


def single_threaded(run):
    """``run`` with PyTorch limited to one intra-op thread (restored afterwards)."""
    def wrapped():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return run()
        finally:
            torch.set_num_threads(threads)
    return wrapped


# --------------------------------------------------------------------------- JAX


def diffusion_model() -> DiffusionModel:
    return DiffusionModel(MLPDenoiser(features=FEATURES, num_blocks=NUM_BLOCKS), "linear",
                          num_timesteps=NUM_TIMESTEPS)


def jax_train_step(model: DiffusionModel, opt: optax.GradientTransformation, x0: jax.Array,
                   key: jax.Array):
    """``(params, opt_state, step) -> (new state, loss)``: one DDPM step with Adam."""
    def step(state, _=None):
        params, opt_state, i = state
        loss, grads = jax.value_and_grad(
            lambda p: model.apply(p, x0, jax.random.fold_in(key, i), method="loss"))(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, i + 1), loss
    return step


class JaxTrainer:
    """Holds the (donated) training state; each call runs STEPS_PER_CALL steps."""

    def __init__(self, params: dict, x0: np.ndarray, scan: bool):
        model, opt = diffusion_model(), optax.adam(LR)
        step = jax_train_step(model, opt, jnp.asarray(x0), jax.random.key(0))
        self.state = (params, opt.init(params), jnp.zeros((), jnp.int32))
        self.scan = scan
        if scan:
            self.fn = jax.jit(lambda s: jax.lax.scan(step, s, length=STEPS_PER_CALL),
                              donate_argnums=0)
        else:
            self.fn = jax.jit(step, donate_argnums=0)

    def __call__(self) -> jax.Array:
        if self.scan:
            self.state, losses = self.fn(self.state)
            return losses[-1]
        for _ in range(STEPS_PER_CALL):
            self.state, loss = self.fn(self.state)
        return loss


# --------------------------------------------------------------------------- checks


def check_equivalence(torch_model: TorchMLPDenoiser, params: dict, x0: np.ndarray) -> dict:
    """Same output and same gradients for the same t and noise: the two are one model."""
    rng = np.random.default_rng(1)
    t = rng.integers(0, NUM_TIMESTEPS, x0.shape[0])
    noise = rng.standard_normal(x0.shape, dtype=np.float32)
    model = diffusion_model()
    schedule = model.noise_schedule

    def jax_loss(p):
        x_t = q_sample(schedule, x0, t, noise)
        return diffusion_loss(schedule, model.apply(p, x_t, t), x0, noise, t)

    loss, grads = jax.jit(jax.value_and_grad(jax_loss))(params)
    torch_model.zero_grad(set_to_none=True)
    ref = torch_loss(torch_model, torch.from_numpy(x0.copy()), torch.from_numpy(t),
                     torch.from_numpy(noise), torch_schedule())
    ref.backward()
    ref_grads = flax_params_grad(torch_model)
    torch_model.zero_grad(set_to_none=True)
    diffs = {"loss": check_close("ddpm_train/loss", loss, ref.item(), RTOL, ATOL)}
    flat, ref_flat = jax.tree.leaves_with_path(grads), jax.tree.leaves(ref_grads)
    worst = 0.0
    for (path, g), r in zip(flat, ref_flat, strict=True):
        scale = float(np.max(np.abs(r))) or 1.0
        worst = max(worst, check_close(f"ddpm_train/grad{jax.tree_util.keystr(path)}",
                                       np.asarray(g) / scale, r / scale, RTOL, ATOL))
    diffs["grads_max_scaled_diff"] = worst
    return diffs


def flax_params_grad(model: TorchMLPDenoiser) -> dict:
    """The torch gradients laid out like flax_params."""
    saved = [(p, p.data.clone()) for p in model.parameters()]
    for p, _ in saved:
        p.data.copy_(p.grad)
    out = jax.tree.map(np.asarray, flax_params(model))
    for p, data in saved:
        p.data.copy_(data)
    return out


# --------------------------------------------------------------------------- benchmark


def bench(quick: bool = False) -> dict:
    torch.manual_seed(0)
    x0 = np.asarray(gaussian_mixture(jax.random.key(0), BATCH, MEANS, 0.5)[0])
    init = TorchMLPDenoiser()
    params = flax_params(init)
    num_params = sum(p.numel() for p in init.parameters())
    diffs = check_equivalence(init, params, x0)

    def torch_copy() -> TorchMLPDenoiser:
        model = TorchMLPDenoiser()
        model.load_state_dict(init.state_dict())
        return model

    copy = functools.partial(jax.tree.map, jnp.array)  # fresh buffers: each trainer donates
    impls = [
        Impl("jaxmath (jit step, donated state)", JaxTrainer(copy(params), x0, scan=False),
             role="jaxmath", configs=STEPS_PER_CALL),
        Impl(f"jaxmath (lax.scan, {STEPS_PER_CALL} steps per call)",
             JaxTrainer(copy(params), x0, scan=True), role="info", configs=STEPS_PER_CALL),
        Impl("torch eager, Adam (default)", torch_trainer(torch_copy(), x0),
             configs=STEPS_PER_CALL),
        Impl("torch eager, Adam foreach=True", torch_trainer(torch_copy(), x0, foreach=True),
             configs=STEPS_PER_CALL),
        Impl("torch eager, Adam fused=True", torch_trainer(torch_copy(), x0, fused=True),
             configs=STEPS_PER_CALL),
        Impl("torch eager, Adam foreach=True, 1 thread",
             single_threaded(torch_trainer(torch_copy(), x0, foreach=True)),
             configs=STEPS_PER_CALL),
    ]
    tuned = _mallopt(KEEP_FREED)
    try:
        load_before = os.getloadavg()
        timings, outputs = measure(impls, repeats=3 if quick else 9)
        load_after = os.getloadavg()
    finally:
        if tuned:
            _mallopt(GLIBC_DEFAULTS)
    losses = {name: float(v) for name, v in outputs.items()}
    if not all(np.isfinite(v) for v in losses.values()):
        raise AssertionError(f"ddpm_train: a first-call loss is not finite: {losses}")
    per_step = {i.name: timings[i.name].median_s / STEPS_PER_CALL for i in impls}
    default_threads = min(per_step[i.name] for i in impls
                          if i.role == "peer" and "1 thread" not in i.name)
    record = summarise(
        "ddpm_train",
        f"DDPM training steps/s, MLP denoiser ({FEATURES} wide, {NUM_BLOCKS} residual blocks, "
        f"{num_params} parameters), batch {BATCH} of 2-D points, T={NUM_TIMESTEPS}, Adam; "
        f"{STEPS_PER_CALL} steps per timed call",
        impls, timings, GOAL, f"jaxmath >= {GOAL:g}x the fastest PyTorch eager step rate",
        extra={"steps_per_s": {i.name: STEPS_PER_CALL / timings[i.name].median_s
                               for i in impls},
               "ratio_vs_torch_default_threads": default_threads / per_step[impls[0].name],
               "ratio_scan_vs_fastest_peer":
                   min(per_step[i.name] for i in impls if i.role == "peer")
                   / per_step[impls[1].name],
               "malloc": ("glibc malloc without mmap and with a 1 GiB trim threshold "
                          "(mallopt), for every implementation" if tuned
                          else "default (no glibc mallopt)"),
               "first_call_loss": losses,
               "equivalence_check": diffs,
               "load_average_before_after": [load_before[0], load_after[0]]})
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(f"# load {os.getloadavg()[0]:.2f}, torch threads {torch.get_num_threads()}")
    r = bench(args.quick)
    print(json.dumps({k: r[k] for k in ("steps_per_s", "ratio", "status",
                                        "ratio_vs_torch_default_threads",
                                        "ratio_scan_vs_fastest_peer",
                                        "load_average_before_after")}, indent=1))
    return 0


BENCHMARKS = {"ddpm_train": bench}

if __name__ == "__main__":
    sys.exit(main())
