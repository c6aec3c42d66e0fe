"""Gradient-descent learning-rate sweep vs the blog post's NumPy loop (configurations / s).

The blog post's problem: X = [[1, 1], [1, 2], [1, 3]], y = [1, 2, 3], loss
(1/2m)||X theta - y||^2, 1,000 steps from theta = 0. jaxmath runs 4,096 learning
rates in one call of ``gradient_descent_sweep``; the post's NumPy function runs
once per learning rate (timed on 20 of them, reported per configuration).

Other layouts of the same vmapped sweep, all generic in ``loss_fn``, are timed
for the record (a core set always, all of them with ``--variants``; run this
module directly for that): they are the measurements behind the layout
``gradient_descent_sweep`` uses (step loop outside, ``vmap(value_and_grad)``
inside, sweep axis last, ``lax.map`` over chunks of 256 on CPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks._harness import Impl, check_close, measure, summarise
from jaxmath.optim import gradient_descent, gradient_descent_sweep
from jaxmath.run.tour import numpy_gradient_descent

NUM_LRS = 4096
NUM_STEPS = 1000
NUMPY_LRS = 20
GOAL = 1000.0

X_SEED = np.array([[1, 1], [1, 2], [1, 3]])
Y_SEED = np.array([1, 2, 3])


X = jnp.asarray(X_SEED, jnp.float32)
Y = jnp.asarray(Y_SEED, jnp.float32)


def loss(theta):
    """(1/2m) ||X theta - y||^2: its gradient is the post's (1/m) X^T (X theta - y)."""
    return 0.5 * jnp.mean((X @ theta - Y) ** 2)


def learning_rates(n: int = NUM_LRS) -> np.ndarray:
    """A log sweep; rates above 2 / lambda_max(X^T X / m) ~ 0.36 diverge (most to inf/nan)."""
    return np.geomspace(1e-3, 0.5, n).astype(np.float32)


def _numpy_loop(lrs):
    def run():
        with np.errstate(over="ignore", invalid="ignore"):
            return np.stack([numpy_gradient_descent(X_SEED, Y_SEED, lr, NUM_STEPS) for lr in lrs])
    return run


# ------------------------------------------------------------------- layouts measured


def layout(axis: int, vmap_inside_grad: bool, unroll: int = 1, chunk: int | None = None):
    """A jitted sweep ``lrs -> (theta [S, 2], losses)`` with the given layout.

    axis: where the sweep axis sits in the parameters, gradients and updates
      (0 first, -1 last; vmap's rules pick the layout of the loss's intermediates).
    vmap_inside_grad: ``grad(sum(vmap(loss)))`` instead of ``vmap(value_and_grad(loss))``.
    chunk: members per chunk (``lax.map`` over chunks), None for all at once.

    Names in the results read ``scan(<step>) axis=<sweep axis> chunk=<size> unroll=<n>``:
    the step loop (``lax.scan``) outside, and inside it either
    ``vmap(value_and_grad(loss))`` or ``grad(sum(vmap(loss)))`` (vmap inside grad).
    """
    theta0 = jnp.zeros(2)

    def value_and_grad(theta):
        if vmap_inside_grad:
            def total(t):
                losses = jax.vmap(loss, in_axes=axis)(t)
                return jnp.sum(losses), losses
            grads, losses = jax.grad(total, has_aux=True)(theta)
            return losses, grads
        return jax.vmap(jax.value_and_grad(loss), in_axes=axis, out_axes=(0, axis))(theta)

    def run_chunk(lr):
        size = lr.shape[0]
        if axis == 0:
            theta, lr_b = jnp.broadcast_to(theta0, (size, 2)), lr[:, None]
        else:
            theta, lr_b = jnp.broadcast_to(theta0[:, None], (2, size)), lr
        def step(theta, _):
            losses, grads = value_and_grad(theta)
            return theta - lr_b * grads, losses
        theta, losses = lax.scan(step, theta, length=NUM_STEPS, unroll=unroll)
        return (theta if axis == 0 else theta.T), losses.T

    @jax.jit
    def run(lrs):
        if chunk is None:
            return run_chunk(lrs)
        theta, losses = lax.map(run_chunk, lrs.reshape(-1, chunk))
        return theta.reshape(-1, 2), losses.reshape(-1, NUM_STEPS)
    return run


def _variants(lrs, full: bool):
    """Other layouts of the same sweep: a core set always, every one with ``full``."""
    def vg_name(axis, inside, unroll=1, chunk=None):
        where = "grad(sum(vmap))" if inside else "vmap(value_and_grad)"
        return (f"scan({where}) axis={'first' if axis == 0 else 'last'} "
                f"chunk={chunk or 'none'} unroll={unroll}")

    configs = [(0, False, 1, None), (-1, False, 1, None), (-1, True, 1, None)]
    out = []
    if full:
        out.append(("jax.vmap(gradient_descent) unroll=4",
                    jax.jit(jax.vmap(functools.partial(_gd, unroll=4)))))
        configs += [(0, True, 1, None), (0, False, 4, None), (-1, False, 4, None),
                    (-1, True, 4, None), (-1, False, 4, 256)]
        configs += [(-1, inside, 1, chunk) for inside in (False, True)
                    for chunk in (128, 512, 1024)] + [(-1, True, 1, 256)]
    out += [(vg_name(*c), layout(*c)) for c in configs]
    return [Impl(name, functools.partial(fn, lrs), role="info", configs=NUM_LRS)
            for name, fn in out]


def _gd(lr, unroll=1):
    return gradient_descent(loss, jnp.zeros(2), lr, NUM_STEPS, unroll=unroll)


# ------------------------------------------------------------------------- benchmark


def bench(quick: bool = False, variants: bool = False) -> dict:
    lrs_np = learning_rates()
    lrs = jnp.asarray(lrs_np)
    numpy_lrs = lrs_np[np.linspace(0, NUM_LRS - 1, NUMPY_LRS).astype(int)]

    sweep = functools.partial(gradient_descent_sweep, loss, jnp.zeros(2), lrs, NUM_STEPS)
    vmapped = jax.jit(jax.vmap(_gd))

    impls = [
        Impl("jaxmath.gradient_descent_sweep", sweep, role="jaxmath", configs=NUM_LRS),
        Impl("seed numpy loop (per learning rate)", _numpy_loop(numpy_lrs), role="peer",
             configs=NUMPY_LRS, note=f"timed on {NUMPY_LRS} learning rates, float64"),
        Impl("jax.vmap(jaxmath.gradient_descent)", functools.partial(vmapped, lrs),
             role="info", configs=NUM_LRS, note="plain vmap around the whole loop"),
    ]
    impls += _variants(lrs, full=variants)
    timings, outputs = measure(impls, repeats=3 if quick else 15)

    # On the rates that converge, every sweep equals the seed's loop.
    idx = np.linspace(0, NUM_LRS - 1, NUMPY_LRS).astype(int)
    want = outputs[impls[1].name]
    stable = numpy_lrs < 0.35
    for impl in impls:
        if impl.configs == NUM_LRS:
            theta = np.asarray(outputs[impl.name][0])[idx]
            check_close(f"gd_sweep/{impl.name}", theta[stable], want[stable],
                        rtol=1e-3, atol=1e-4)
    return summarise(
        "gd_sweep",
        f"gradient descent on the seed's 3x2 regression, {NUM_STEPS} steps, {NUM_LRS} learning "
        "rates in one call vs the seed's NumPy loop once per learning rate (configs/s)",
        impls, timings, GOAL, f">= {GOAL:g}x more configurations per second than the seed's loop",
        extra={"shape": {"X": list(X_SEED.shape), "num_lrs": NUM_LRS, "num_steps": NUM_STEPS},
               "learning_rates": "geomspace(1e-3, 0.5); those above ~0.36 diverge"})


BENCHMARKS = {"gd_sweep": bench}

if __name__ == "__main__":
    import sys

    from benchmarks.run import main
    sys.exit(main(["--only", "gd_sweep", "--variants", "--no-write", *sys.argv[1:]]))
