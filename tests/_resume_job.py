"""A tiny training job that tests/test_train_resume.py kills with SIGKILL and restarts.

    python tests/_resume_job.py WORKDIR [SECONDS_PER_STEP [STEPS_PER_CALL]]

Trains a 2-16-1 MLP with optax's Adam and a dropout mask drawn from a typed PRNG
key held in the state, through :func:`jaxmath.run.loop.train_loop`, one jitted call
per update (``STEPS_PER_CALL`` 1, the default: minibatches drawn by NumPy on the
host) or several updates per call (any other value: ``batch_fn`` traced, the data
on the device). Each update sleeps ``SECONDS_PER_STEP`` (in ``batch_fn`` on the
host, or in a host callback inside the scan) so that the test can kill the run at
chosen moments; the sleep does not change any value. On success the final state's
leaves are written to ``WORKDIR/final.npz`` (typed keys as their key data).

With ``JAXMATH_RESUME_MESH=DATA,FSDP`` (and as many devices, e.g.
``JAX_NUM_CPU_DEVICES``) the state is placed on that mesh (fsdp shards the 2x16 and
16x1 weights and their Adam moments) and each batch is split over its devices.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmath.run.loop import train_loop
from jaxmath.run.mesh import batch_sharding, make_mesh, state_shardings

NUM_STEPS = 160
LOG_EVERY = 10
CHECKPOINT_EVERY = 40
MAX_TO_KEEP = 2
_OPT = optax.adam(1e-2)
_RNG = np.random.default_rng(0)
_X = _RNG.normal(size=(64, 2)).astype(np.float32)
_Y = (np.sin(2.0 * _X[:, :1]) + 0.5 * _X[:, 1:]).astype(np.float32)
_W1 = (0.5 * _RNG.normal(size=(2, 16))).astype(np.float32)
_W2 = (0.5 * _RNG.normal(size=(16, 1))).astype(np.float32)


def init_state() -> dict:
    """Parameters, Adam state and a typed PRNG key (NumPy-built: nothing to compile)."""
    params = {"w1": jnp.asarray(_W1), "b1": jnp.asarray(np.zeros(16, np.float32)),
              "w2": jnp.asarray(_W2), "b2": jnp.asarray(np.zeros(1, np.float32))}
    key = jax.random.wrap_key_data(np.array([0, 2], np.uint32))
    return {"params": params, "opt_state": _OPT.init(params), "key": key}


def _loss(params, x, y, mask):
    h = jnp.tanh(x @ params["w1"] + params["b1"]) * mask
    return jnp.mean((h @ params["w2"] + params["b2"] - y) ** 2)


@jax.jit
def step_fn(state, batch):
    x, y = batch
    key, sub = jax.random.split(state["key"])
    mask = jax.random.bernoulli(sub, 0.9, (x.shape[0], 16)) / 0.9
    loss, grads = jax.value_and_grad(_loss)(state["params"], x, y, mask)
    updates, opt_state = _OPT.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "opt_state": opt_state, "key": key}, {"loss": loss}


def make_batch_fn(seconds_per_step: float = 0.0, steps_per_call: int = 1):
    if steps_per_call == 1:
        def batch_fn(step: int):
            if seconds_per_step:
                time.sleep(seconds_per_step)
            idx = np.random.default_rng(step).integers(0, 64, size=16)
            return _X[idx], _Y[idx]
        return batch_fn

    x, y, key = jnp.asarray(_X), jnp.asarray(_Y), jax.random.key(7)

    def pause():
        if seconds_per_step:
            time.sleep(seconds_per_step)

    def traced_batch_fn(step):
        jax.debug.callback(pause)  # in every run, sleeping or not: the same program
        idx = jax.random.randint(jax.random.fold_in(key, step), (16,), 0, 64)
        return x[idx], y[idx]
    return traced_batch_fn


def run(workdir, seconds_per_step: float = 0.0, progress: str = "none",
        steps_per_call: int = 1, mesh: tuple[int, int] | None = None):
    state, sharding = init_state(), None
    if mesh is not None:
        m = make_mesh(*mesh)
        state = jax.device_put(state, state_shardings(state, m, min_size=16))
        sharding = batch_sharding(m)
    return train_loop(state, step_fn, make_batch_fn(seconds_per_step, steps_per_call),
                      num_steps=NUM_STEPS, workdir=workdir, log_every=LOG_EVERY,
                      checkpoint_every=CHECKPOINT_EVERY, max_to_keep=MAX_TO_KEEP,
                      desc="resume-job", progress=progress, steps_per_call=steps_per_call,
                      batch_sharding=sharding)


def leaves(state) -> list[np.ndarray]:
    """The state's leaves as NumPy arrays (typed keys as their key data)."""
    def raw(x):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x)
    return [raw(x) for x in jax.tree.leaves(state)]


def main(argv: list[str]) -> None:
    workdir = argv[1]
    seconds = float(argv[2]) if len(argv) > 2 else 0.0
    steps_per_call = int(argv[3]) if len(argv) > 3 else 1
    mesh = os.environ.get("JAXMATH_RESUME_MESH")
    mesh = None if mesh is None else tuple(int(v) for v in mesh.split(","))
    result = run(workdir, seconds, progress="lines", steps_per_call=steps_per_call, mesh=mesh)
    tmp = os.path.join(workdir, "final.tmp.npz")
    np.savez(tmp, *leaves(result.state))
    os.replace(tmp, os.path.join(workdir, "final.npz"))


if __name__ == "__main__":
    main(sys.argv)
