"""Softmax of 10,000 x 1,000 float32 logits along the last axis vs NumPy and PyTorch CPU."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks._harness import Impl, check_close, measure, summarise

SHAPE = (10_000, 1_000)
GOAL = 1.0


def numpy_softmax(z: np.ndarray) -> np.ndarray:
    """The seed's NumPy softmax, made stable by subtracting the row maximum."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def bench(quick: bool = False) -> dict:
    from jaxmath.nn.softmax import softmax

    z = (3.0 * np.random.default_rng(0).standard_normal(SHAPE)).astype(np.float32)
    z_j, z_t = jnp.asarray(z), torch.from_numpy(z)
    f = jax.jit(softmax)
    want = numpy_softmax(z.astype(np.float64))
    impls = [
        Impl("jaxmath.softmax (jit)", functools.partial(f, z_j), role="jaxmath"),
        Impl("numpy (stable exp / sum)", functools.partial(numpy_softmax, z)),
        Impl("torch.softmax", lambda: torch.softmax(z_t, dim=-1).numpy()),
    ]
    timings, outputs = measure(impls, 3 if quick else 20)
    diffs = {k: check_close(f"softmax/{k}", v, want, rtol=1e-4, atol=1e-7)
             for k, v in outputs.items()}
    return summarise("softmax", "softmax of 10,000 x 1,000 float32 logits, last axis",
                     impls, timings, GOAL, f">= {GOAL:g}x the speed of the faster of NumPy "
                     "and torch.softmax",
                     extra={"shape": list(SHAPE), "dtype": "float32",
                            "max_abs_diff_vs_float64": diffs})


BENCHMARKS = {"softmax": bench}
