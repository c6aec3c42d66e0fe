"""Small sweeps run in subprocesses by tests/test_sweep_devices.py and tests/test_sweep_train.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m tests._sweep_job
    JAX_COORDINATOR_ADDRESS=localhost:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i \
        python -m tests._sweep_job     # i = 0 and 1, one process each
    python -m tests._sweep_job train WORKDIR [SECONDS_PER_SEGMENT]

The first form calls init_distributed() (a no-op without the JAX_* variables), runs the
sweep on all devices and prints one line ``RESULT <json>`` on stdout. XLA_FLAGS must be
set before the process starts: JAX reads it once, when it starts.

``train`` runs the training sweep of :func:`train_run` (:func:`train_sweep`, progress
saved in WORKDIR), sleeping SECONDS_PER_SEGMENT on the host after each segment so that
tests/test_sweep_train.py can kill it with SIGKILL mid-sweep, and writes its leaves to
``WORKDIR/final.npz``. The sleep changes no value.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmath.run import sweep
from jaxmath.run.sweep import grid, init_distributed, run_sweep
from jaxmath.run.sweep_train import train_sweep

HPARAMS = grid(learning_rate=np.geomspace(1e-2, 0.3, 5), seed=[0, 1, 2])  # N = 15
CHUNK_SIZE = 4  # 4 calls of 4 (padded), rounded up to a multiple of the device count


def train(hp):
    """Gradient descent on a least-squares problem from a seeded start; lr and seed traced."""
    x = jnp.linspace(-1.0, 1.0, 48).reshape(16, 3)
    y = x @ jnp.array([1.0, -2.0, 0.5]) + 0.1
    w = jax.random.normal(jax.random.key(hp["seed"]), (3,))

    def loss(w):
        return jnp.mean((x @ w - y) ** 2)

    w = jax.lax.fori_loop(0, 50, lambda _, w: w - hp["learning_rate"] * jax.grad(loss)(w), w)
    return {"loss": loss(w), "w": w}


def _lists(tree):
    return jax.tree.map(lambda x: np.asarray(x).tolist(), tree)


def main() -> None:
    distributed = init_distributed()
    shardings = []
    to_host = sweep._to_host

    def record(tree):  # the sharding of each chunk's results, before they are gathered
        shardings.extend(len(x.sharding.device_set) for x in jax.tree.leaves(tree))
        return to_host(tree)

    sweep._to_host = record
    out = run_sweep(train, HPARAMS, chunk_size=CHUNK_SIZE)
    sweep._to_host = to_host
    # the training sweep, its progress saved to JAXMATH_SWEEP_WORKDIR if set (shared by
    # the processes of a job: process 0 writes)
    trained = train_run(os.environ.get("JAXMATH_SWEEP_WORKDIR"))
    result = {"distributed": distributed, "process_index": jax.process_index(),
              "process_count": jax.process_count(), "num_devices": jax.device_count(),
              "devices_per_result": sorted(set(shardings)),
              "results": jax.tree.map(lambda x: np.asarray(x).tolist(), out),
              "trained": _lists(trained._asdict())}
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------- a training sweep

# N = 10: rates 0.02..0.2 train, 40.0 diverges; 3 chunks of 4 (the last one padded)
TRAIN_HPARAMS = grid(learning_rate=[0.02, 0.05, 0.2, 0.1, 40.0], seed=[0, 1])
TRAIN = {"num_steps": 60, "log_every": 5, "checkpoint_every": 8, "chunk_size": 4}
_X = np.linspace(-1.0, 1.0, 96, dtype=np.float32).reshape(32, 3)
_Y = np.sin(_X @ np.array([1.0, -2.0, 0.5], np.float32))
_MOMENTUM = optax.trace(0.9)


def train_init(hp):
    """A 3-8-1 tanh network from the seed, momentum state, and a typed key for its noise."""
    k1, k2, key = jax.random.split(jax.random.key(hp["seed"]), 3)
    params = {"w1": jax.random.normal(k1, (3, 8)) / 2, "w2": jax.random.normal(k2, (8,)) / 3}
    return {"params": params, "momentum": _MOMENTUM.init(params), "key": key}


def _loss(params, x, y):
    return jnp.mean((jnp.tanh(x @ params["w1"]) @ params["w2"] - y) ** 2)


def train_step(state, hp, t):
    """SGD with momentum on the minibatch of step t, plus noise from the state's key."""
    x, y = jnp.asarray(_X), jnp.asarray(_Y)
    idx = (5 * t + 3 * jnp.arange(8)) % 32
    key, sub = jax.random.split(state["key"])
    loss, grads = jax.value_and_grad(_loss)(state["params"], x[idx], y[idx])
    grads = jax.tree.map(lambda g: g + 1e-3 * jax.random.normal(sub, g.shape), grads)
    updates, momentum = _MOMENTUM.update(grads, state["momentum"])
    params = jax.tree.map(lambda p, u: p - hp["learning_rate"] * u, state["params"], updates)
    return ({"params": params, "momentum": momentum, "key": key},
            {"loss": loss, "grad_norm": optax.tree.norm(grads)})


def train_finish(state, hp):
    return {"loss": _loss(state["params"], jnp.asarray(_X), jnp.asarray(_Y)),
            "w2": state["params"]["w2"]}


def fast_random():
    """The non-partitionable threefry, as ``experiments._train.fast_init`` uses: XLA:CPU
    compiles the default one's random bits much more slowly (seconds, for these tests)."""
    switch = getattr(jax, "threefry_partitionable", None)
    return switch(False) if switch is not None else contextlib.nullcontext()


def train_run(workdir=None, seconds_per_segment: float = 0.0, hparams=TRAIN_HPARAMS,
              **overrides):
    """The training sweep of ``hparams`` with the TRAIN settings, or ``overrides``."""
    def pause(group, chunk, done):
        if seconds_per_segment:
            time.sleep(seconds_per_segment)
    settings = {**TRAIN, "on_segment": pause, **overrides}
    with fast_random():
        return train_sweep(train_init, train_step, train_finish, hparams, workdir=workdir,
                           **settings)


def train_main(workdir: str, seconds_per_segment: float) -> None:
    out = train_run(workdir, seconds_per_segment)
    tmp = os.path.join(workdir, "final.tmp.npz")
    np.savez(tmp, *jax.tree.leaves(out))
    os.replace(tmp, os.path.join(workdir, "final.npz"))
    print("RESULT " + json.dumps({"diverged_step": out.diverged_step.tolist()}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "train":
        train_main(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
    else:
        main()
