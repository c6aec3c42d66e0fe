"""run_sweep and train_sweep on 4 devices and across 2 processes equal a one-device run.

JAX reads XLA_FLAGS and starts its devices once per process, so each case runs
tests/_sweep_job.py in fresh subprocesses (started together, with timeouts):
  * one process with --xla_force_host_platform_device_count=4;
  * two processes on localhost joined by init_distributed() (JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES, JAX_PROCESS_ID), with 2 devices each: 4 global devices.
The reference is the same sweep in this process on a one-device mesh. The two
processes keep the training sweep's progress in one workdir, written by process 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxmath.run.sweep import run_sweep
from jaxmath.run.sweep_progress import PROGRESS_DIR
from tests._jobs import free_port, result
from tests._sweep_job import CHUNK_SIZE, HPARAMS, train, train_run
from tests.tolerances import F32_ATOL, F32_RTOL

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 180  # per job; a hung collective fails the test instead of hanging it
DIST_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
             "JAXMATH_DISTRIBUTED")


def _start(devices: int, **env_vars: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(env_vars)
    return subprocess.Popen([sys.executable, "-m", "tests._sweep_job"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Start the three subprocesses together, compute the reference meanwhile, collect."""
    address = f"127.0.0.1:{free_port()}"
    workdir = tmp_path_factory.mktemp("shared_sweep")
    procs = {"four_devices": _start(4)}
    for i in range(2):
        procs[f"process_{i}"] = _start(2, JAX_COORDINATOR_ADDRESS=address,
                                       JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
                                       JAXMATH_SWEEP_WORKDIR=str(workdir))
    try:
        # the jobs run on the CPU (JAX_PLATFORMS=cpu): so does the reference
        one_device = jax.sharding.Mesh(np.asarray(jax.devices("cpu")[:1]), ("sweep",))
        reference = run_sweep(train, HPARAMS, mesh=one_device)
        with jax.default_device(jax.devices("cpu")[0]):
            trained = train_run(mesh=one_device)._asdict()
        results = {name: result(proc, name, TIMEOUT_S) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return (reference, trained, workdir), results


def _assert_equal_to(reference, got):
    for name, want in reference.items():
        np.testing.assert_allclose(np.asarray(got[name]), want, rtol=F32_RTOL, atol=F32_ATOL,
                                   err_msg=name)


def _assert_trained_equal_to(trained, got):
    """The training sweep's results and curves (its diverging members aside: chaotic)."""
    keep = ~(trained["diverged_step"] > 0)
    np.testing.assert_array_equal(np.asarray(got["diverged_step"]) > 0, ~keep)
    for part in ("results", "curves"):
        for name, want in trained[part].items():
            values = np.asarray(got[part][name], want.dtype)
            np.testing.assert_allclose(values[keep], want[keep], rtol=F32_RTOL, atol=F32_ATOL,
                                       err_msg=f"{part}/{name}")


def test_four_devices_equal_one_device(jobs):
    reference, results = jobs
    r = results["four_devices"]
    assert r["num_devices"] == 4 and r["process_count"] == 1 and not r["distributed"]
    # every chunk's results were spread over the 4 devices, one configuration each
    assert r["devices_per_result"] == [4] and CHUNK_SIZE == 4
    _assert_equal_to(reference[0], r["results"])
    _assert_trained_equal_to(reference[1], r["trained"])


def test_two_processes_equal_one_process(jobs):
    reference, results = jobs
    for i in range(2):
        r = results[f"process_{i}"]
        assert r["distributed"] and r["process_index"] == i and r["process_count"] == 2
        assert r["num_devices"] == 4 and r["devices_per_result"] == [4]
        _assert_equal_to(reference[0], r["results"])  # gathered to every process
        _assert_trained_equal_to(reference[1], r["trained"])
    # process 0 saved the progress in the shared workdir: 3 chunks, none running
    names = sorted(p.name for p in (reference[2] / PROGRESS_DIR).iterdir())
    assert names == ["group0_chunk0.npz", "group0_chunk1.npz", "group0_chunk2.npz",
                     "manifest.json"]
