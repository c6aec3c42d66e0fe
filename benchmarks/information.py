"""Entropy and KL divergence of 10,000 x 1,000 float32 rows vs SciPy and PyTorch CPU.

Each row is a distribution over 1,000 outcomes (about 10% of p's entries are
exactly 0, to exercise 0 log 0 = 0; q is positive). Peers are what a user of
each library calls: ``scipy.stats.entropy`` (which also renormalises the rows)
and ``torch.special.entr(p).sum(-1)`` / ``F.kl_div(q.log(), p).sum(-1)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import torch

from benchmarks._harness import Impl, check_close, measure, summarise

SHAPE = (10_000, 1_000)
GOAL = 1.5


def _data():
    rng = np.random.default_rng(0)
    p = rng.random(SHAPE, dtype=np.float32)
    p[rng.random(SHAPE) < 0.1] = 0.0
    p /= p.sum(axis=1, keepdims=True)
    q = rng.random(SHAPE, dtype=np.float32) + 0.01
    q /= q.sum(axis=1, keepdims=True)
    return p, q


def _record(name, description, impls, want, repeats, rtol):
    timings, outputs = measure(impls, repeats)
    diffs = {k: check_close(f"{name}/{k}", v, want, rtol=rtol, atol=1e-5)
             for k, v in outputs.items()}
    return summarise(name, description, impls, timings, GOAL,
                     f">= {GOAL:g}x faster than the faster of SciPy and PyTorch CPU",
                     extra={"shape": list(SHAPE), "dtype": "float32",
                            "max_abs_diff_vs_float64": diffs})


def bench_entropy(quick: bool = False) -> dict:
    from jaxmath.probability import entropy

    p, _ = _data()
    p_j, p_t = jnp.asarray(p), torch.from_numpy(p)
    f = jax.jit(entropy)
    want = scipy.stats.entropy(p.astype(np.float64), axis=1)
    impls = [
        Impl("jaxmath.entropy (jit)", functools.partial(f, p_j), role="jaxmath"),
        Impl("scipy.stats.entropy", functools.partial(scipy.stats.entropy, p, axis=1)),
        Impl("torch.special.entr(p).sum(-1)",
             lambda: torch.special.entr(p_t).sum(-1).numpy()),
    ]
    return _record("entropy", "entropy of 10,000 distributions over 1,000 outcomes, float32",
                   impls, want, 3 if quick else 20, rtol=1e-4)


def bench_kl_divergence(quick: bool = False) -> dict:
    from jaxmath.probability import kl_divergence

    p, q = _data()
    p_j, q_j = jnp.asarray(p), jnp.asarray(q)
    p_t, q_t = torch.from_numpy(p), torch.from_numpy(q)
    f = jax.jit(kl_divergence)
    want = scipy.stats.entropy(p.astype(np.float64), q.astype(np.float64), axis=1)
    impls = [
        Impl("jaxmath.kl_divergence (jit)", functools.partial(f, p_j, q_j), role="jaxmath"),
        Impl("scipy.stats.entropy(p, q)",
             functools.partial(scipy.stats.entropy, p, q, axis=1)),
        Impl("torch F.kl_div(q.log(), p).sum(-1)",
             lambda: torch.nn.functional.kl_div(q_t.log(), p_t, reduction="none")
             .sum(-1).numpy()),
    ]
    return _record("kl_divergence", "KL(p || q) of 10,000 pairs over 1,000 outcomes, float32",
                   impls, want, 3 if quick else 20, rtol=1e-3)


BENCHMARKS = {"entropy": bench_entropy, "kl_divergence": bench_kl_divergence}
