"""A small sweep run in a subprocess by tests/test_sweep_devices.py.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m tests._sweep_job
    JAX_COORDINATOR_ADDRESS=localhost:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i \
        python -m tests._sweep_job     # i = 0 and 1, one process each

It calls init_distributed() (a no-op without the JAX_* variables), runs the sweep
on all devices and prints one line ``RESULT <json>`` on stdout. XLA_FLAGS must be
set before the process starts: JAX reads it once, when it starts.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from jaxmath.run import sweep
from jaxmath.run.sweep import grid, init_distributed, run_sweep

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
    result = {"distributed": distributed, "process_index": jax.process_index(),
              "process_count": jax.process_count(), "num_devices": jax.device_count(),
              "devices_per_result": sorted(set(shardings)),
              "results": jax.tree.map(lambda x: np.asarray(x).tolist(), out)}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
