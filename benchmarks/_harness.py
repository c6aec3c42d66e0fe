"""Timing harness: compile time apart, interleaved repeats, median and IQR.

Every implementation of a benchmark is a zero-argument callable returning its
result. The first call of each is timed on its own (compilation and warm-up) and
its result is returned for a correctness check;
then the callables are called in interleaved rounds (A B C, B C A, ...) so that
slow drifts of a shared machine hit all of them alike. JAX results are waited
for with ``jax.block_until_ready``; NumPy, SciPy, scikit-learn and PyTorch CPU
calls return finished results.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass
class Impl:
    """One implementation in a benchmark.

    ``role`` is ``"jaxmath"`` (the subject: its ratio is checked against the
    goal), ``"peer"`` (a reference library: the fastest one sets the bar) or
    ``"info"`` (measured for the record only). ``configs`` is how many
    configurations one call handles (for throughput benchmarks); the ratio
    compares configurations per second, i.e. seconds per configuration.
    """

    name: str
    fn: Callable[[], Any]
    role: str = "peer"
    configs: int = 1
    note: str = ""


@dataclasses.dataclass
class Timing:
    median_s: float
    iqr_s: float
    compile_s: float
    repeats: int
    times_s: list[float]


def _call(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def measure(impls: list[Impl], repeats: int) -> tuple[dict[str, Timing], dict[str, Any]]:
    """Time every implementation side by side in this process.

    Returns the timings and each implementation's first result (to be checked
    against a reference by the caller).
    """
    compile_s, outputs = {}, {}
    for impl in impls:
        compile_s[impl.name], outputs[impl.name] = _call(impl.fn)
    times: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for r in range(repeats):
        order = impls[r % len(impls):] + impls[:r % len(impls)]
        for impl in order:
            times[impl.name].append(_call(impl.fn)[0])
    out = {}
    for impl in impls:
        ts = times[impl.name]
        q1, q3 = np.percentile(ts, [25, 75])
        out[impl.name] = Timing(median_s=statistics.median(ts), iqr_s=float(q3 - q1),
                                compile_s=compile_s[impl.name], repeats=repeats, times_s=ts)
    return out, outputs


def summarise(name: str, description: str, impls: list[Impl], timings: dict[str, Timing],
              goal: float, goal_text: str, extra: dict | None = None) -> dict:
    """The JSON record of one benchmark: per-implementation figures, ratio, pass/miss.

    ``speedup_vs_fastest_peer`` is (seconds per configuration of the fastest
    peer) / (seconds per configuration of this implementation): above 1 means
    faster than every peer.
    """
    per_config = {i.name: timings[i.name].median_s / i.configs for i in impls}
    peers = [i.name for i in impls if i.role == "peer"]
    fastest = min(peers, key=per_config.__getitem__)
    results = {}
    for i in impls:
        t = timings[i.name]
        results[i.name] = {
            "role": i.role,
            "median_s": t.median_s,
            "iqr_s": t.iqr_s,
            "compile_s": t.compile_s,
            "repeats": t.repeats,
            "times_s": [round(x, 6) for x in t.times_s],
            "configs_per_call": i.configs,
            "configs_per_s": i.configs / t.median_s,
            "speedup_vs_fastest_peer": per_config[fastest] / per_config[i.name],
            **({"note": i.note} if i.note else {}),
        }
    subject = next(i.name for i in impls if i.role == "jaxmath")
    ratio = results[subject]["speedup_vs_fastest_peer"]
    return {
        "description": description,
        "implementations": results,
        "subject": subject,
        "fastest_peer": fastest,
        "ratio": ratio,
        "goal": goal,
        "goal_text": goal_text,
        "status": "pass" if ratio >= goal else "miss",
        **(extra or {}),
    }


def check_close(name: str, got: Any, want: Any, rtol: float, atol: float) -> float:
    """Raise if ``got`` and ``want`` differ: never time a wrong answer. Returns max |diff|."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: shape {got.shape} != reference {want.shape}")
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)
    return float(np.max(np.abs(got - want))) if got.size else 0.0
