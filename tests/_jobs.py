"""Subprocess jobs of the tests: ports, waiting, results, and git in throwaway repositories."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest


def free_port() -> int:
    """A TCP port free on this machine now (for a job's coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finish(proc: subprocess.Popen, name: str, timeout_s: float) -> str:
    """``proc``'s stdout once it exits with 0; the test fails (with its stderr) if it
    exits otherwise or runs past ``timeout_s`` (a hung collective, killed)."""
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{name} timed out after {timeout_s} s; stderr:\n{err[-3000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{name} exited with {proc.returncode}; stderr:\n{err[-3000:]}")
    return out


def result(proc: subprocess.Popen, name: str, timeout_s: float) -> dict:
    """The JSON of the last ``RESULT <json>`` line ``proc`` prints (see :func:`finish`)."""
    lines = [line for line in finish(proc, name, timeout_s).splitlines()
             if line.startswith("RESULT ")]
    if not lines:
        pytest.fail(f"{name} printed no RESULT line")
    return json.loads(lines[-1].removeprefix("RESULT "))


_GIT = ("git", "-c", "user.name=jaxmath", "-c", "user.email=jaxmath@example.com",
        "-c", "commit.gpgsign=false")


def git(repo, *args: str) -> str:
    """``git -C repo args...`` with a fixed identity; its stdout, stripped."""
    return subprocess.run([*_GIT, "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout.strip()
