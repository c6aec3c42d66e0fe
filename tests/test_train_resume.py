"""A real run killed with SIGKILL and restarted ends bit-identical to an uninterrupted one.

tests/_resume_job.py (a 2-16-1 MLP, Adam, dropout from a typed key in the state) runs
in a subprocess that is killed while orbax is writing a checkpoint (a temporary step
directory exists), after metrics rows past the previous checkpoint were written, and
is then started again: the restart must remove the half-written step, resume from the
one before, drop the metrics rows after it, and finish.

The final state's leaves must equal (np.array_equal) those of an uninterrupted run,
computed in this process meanwhile, and metrics.jsonl must hold the same rows: no
step duplicated or missing. Both paths of the loop are killed: one call per update
(batch_fn on the host) and the updates between log steps scanned in one call, and the
first also with the state sharded over 2 devices (fsdp; the reference then runs in a
subprocess with the same devices). (Kills
at other moments, done in-process by removing what a kill would not have left, are in
tests/test_train_loop.py.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxmath.run.files import MetricsLog
from jaxmath.run.throughput import without_perf
from tests import _resume_job as job

ROOT = Path(__file__).resolve().parents[1]
SECONDS_PER_STEP = 0.005  # so the run lasts ~1 s and each kill lands where intended
WAIT_S = 120.0            # generous: the machine is shared
POLL_S = 0.002


MESH = {"JAX_NUM_CPU_DEVICES": "2", "JAXMATH_RESUME_MESH": "1,2"}  # fsdp over 2 devices


def _start(workdir: Path, cache: Path, steps_per_call: int, seconds: float = SECONDS_PER_STEP,
           **env_vars: str) -> subprocess.Popen:
    # The runs share a persistent compilation cache: only the first one compiles.
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **env_vars)
    return subprocess.Popen(
        [sys.executable, "-m", "tests._resume_job", str(workdir), str(seconds),
         str(steps_per_call)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _logged_steps(workdir: Path) -> list[int]:
    return [row["step"] for row in MetricsLog(workdir).read()]


def _tmp_checkpoints(workdir: Path) -> list[str]:
    ckpt = workdir / "checkpoints"
    return [p.name for p in ckpt.iterdir() if "tmp" in p.name] if ckpt.is_dir() else []


def _kill_when(proc: subprocess.Popen, condition, what: str) -> None:
    """SIGKILL ``proc`` as soon as ``condition()`` holds (polled every few milliseconds)."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if proc.poll() is not None:
            out = proc.stdout.read()
            pytest.fail(f"the job ended (rc {proc.returncode}) before {what}:\n{out}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(POLL_S)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=WAIT_S)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL


def _uninterrupted(workdir: Path, steps_per_call: int):
    """The reference run, in this process, on the CPU like the subprocesses."""
    with jax.default_device(jax.devices("cpu")[0]):
        result = job.run(workdir, steps_per_call=steps_per_call)
    return job.leaves(result.state), [without_perf(r) for r in result.history]


def _uninterrupted_on_a_mesh(workdir: Path, cache: Path, steps_per_call: int):
    """The reference run on the job's mesh: in a subprocess with the job's devices."""
    proc = _start(workdir, cache, steps_per_call, seconds=0.0, **MESH)
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, out
    with np.load(workdir / "final.npz") as final:
        return ([final[f"arr_{i}"] for i in range(len(final.files))],
                [without_perf(r) for r in MetricsLog(workdir).read()])


@pytest.mark.parametrize(("steps_per_call", "mesh"), [(1, False), (0, False), (1, True)],
                         ids=["per-step", "scan", "per-step-fsdp-2-devices"])
def test_killed_run_resumes_bit_identical(tmp_path, steps_per_call, mesh):
    workdir, cache = tmp_path / "run", tmp_path / "jax_cache"
    env = MESH if mesh else {}
    proc = _start(workdir, cache, steps_per_call, **env)
    with ThreadPoolExecutor(1) as pool:  # the reference runs while the job starts up
        if mesh:
            reference = pool.submit(_uninterrupted_on_a_mesh, tmp_path / "uninterrupted",
                                    tmp_path / "ref_cache", steps_per_call)
        else:
            reference = pool.submit(_uninterrupted, tmp_path / "uninterrupted", steps_per_call)
        # killed while a checkpoint is being written, after a first complete one
        _kill_when(proc, lambda: (workdir / "checkpoints" / str(job.CHECKPOINT_EVERY)).is_dir()
                   and bool(_tmp_checkpoints(workdir)), "a second checkpoint being written")
        assert any(s > job.CHECKPOINT_EVERY for s in _logged_steps(workdir))
        ref_leaves, ref_history = reference.result(timeout=WAIT_S)

    # restarted to the end
    proc = _start(workdir, cache, steps_per_call, **env)
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, out
    assert re.search(r"resumed from the checkpoint at step (\d+)", out), out

    with np.load(workdir / "final.npz") as final:
        leaves = [final[f"arr_{i}"] for i in range(len(final.files))]
    assert len(leaves) == len(ref_leaves)
    for got, want in zip(leaves, ref_leaves, strict=True):
        assert got.dtype == want.dtype
        assert np.array_equal(got, want)

    history = [without_perf(r) for r in MetricsLog(workdir).read()]  # timings aside
    assert history == ref_history
    steps = [row["step"] for row in history]
    assert steps == list(range(job.LOG_EVERY, job.NUM_STEPS + 1, job.LOG_EVERY))
    assert _tmp_checkpoints(workdir) == []  # the half-written step was cleaned up
    assert not (workdir / "checkpoints_corrupt").exists()  # and not taken for a damaged one
    kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir())
    assert kept == [job.NUM_STEPS - job.CHECKPOINT_EVERY, job.NUM_STEPS]
