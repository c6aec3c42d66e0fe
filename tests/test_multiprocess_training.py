"""A training run split over 2 processes equals the same run in 1 process.

``jaxmath run configs/transformer.py:quick`` runs three times at once in fresh
subprocesses on the CPU: two processes of 2 devices each, joined through
``JAX_COORDINATOR_ADDRESS`` (one data-parallel mesh of 4 devices, each process loading
its half of every batch), and one process of 1 device. The losses agree to float32
reduction order; only process 0 writes the run's files and prints its summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._jobs import finish, free_port

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 240  # per job; a hung collective fails the test instead of hanging it
RTOL = 2e-5
DIST_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
             "JAXMATH_DISTRIBUTED", "JAX_NUM_CPU_DEVICES", "XLA_FLAGS")


def _start(workdir: Path, devices: int, **env_vars: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([str(ROOT),
                                                                env.get("PYTHONPATH", "")]))
    env.update(env_vars)
    command = [sys.executable, "-m", "jaxmath", "run", "configs/transformer.py:quick",
               "--workdir", str(workdir), "--cpu-devices", str(devices)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    shared, single = tmp_path_factory.mktemp("two_processes"), tmp_path_factory.mktemp("one")
    address = f"127.0.0.1:{free_port()}"
    procs = {"one_process": _start(single, 1)}
    for i in range(2):
        procs[f"process_{i}"] = _start(shared, 2, JAX_COORDINATOR_ADDRESS=address,
                                       JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
    try:
        outputs = {name: finish(proc, name, TIMEOUT_S) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return shared, single, outputs


def _rows(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_give_the_losses_of_one(runs):
    shared, single, _ = runs
    got, want = _rows(shared), _rows(single)
    assert [r["step"] for r in got] == [r["step"] for r in want]  # each row written once
    for a, b in zip(got, want, strict=True):
        for key in ("loss", "test_token_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=RTOL), (a["step"], key)


def test_process_zero_alone_writes_and_reports(runs):
    shared, _, outputs = runs
    summary = json.loads((shared / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["devices"] == "4 x cpu"
    assert (shared / "plots" / "curves.png").exists() and (shared / "report.md").exists()
    assert "summary" in outputs["process_0"] and "summary" not in outputs["process_1"]
    assert "transformer step" not in outputs["process_1"]  # no progress lines off process 0
    assert sorted(p.name for p in (shared / "checkpoints").iterdir()) == ["10"]
