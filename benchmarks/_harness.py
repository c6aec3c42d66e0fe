"""Timing harness: compile time apart, interleaved repeats, median and IQR.

Every implementation of a benchmark is a zero-argument callable returning its
result. The first call of each is timed on its own (compilation and warm-up) and
its result is returned for a correctness check;
then the callables are called in interleaved rounds (A B C, B C A, ...) so that
slow drifts of a shared machine hit all of them alike. JAX results are waited
for with ``jax.block_until_ready``; NumPy, SciPy, scikit-learn and PyTorch CPU
calls return finished results.

On an accelerator (the ``benchmarks/gpu*.py`` scripts) two more things matter,
both learnt on an H200 whose first cases ran at idle clocks:

* :func:`warm_up_device` runs a large matrix product until its rate stops rising
  (the clocks are up) before the first case, and :func:`measure_device` calls each
  implementation a few times before its timed rounds and once before each of its
  timed blocks;
* :func:`measure_device` records two figures per implementation: the *per-call*
  latency (median of single calls, each waited for) and the *pipelined* time per
  call (``n`` calls issued back to back, one wait at the end), which hides the
  host's dispatch cost behind the device's work as a training loop does. An
  implementation's ``sync`` waits for its result: ``jax.block_until_ready`` by
  default, ``torch.cuda.synchronize`` for PyTorch on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
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
    sync: Callable[[Any], Any] | None = None  # waits for fn's result (measure_device)


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
    return _record(description, results, subject, fastest, ratio, goal, goal_text,
                   ratio >= goal, extra)


def _record(description: str, results: dict, subject: str, fastest: Any, ratio: Any,
            goal: float, goal_text: str, passed: bool, extra: dict | None) -> dict:
    """A benchmark's JSON record (see :func:`summarise` and :func:`summarise_device`)."""
    return {
        "description": description,
        "implementations": results,
        "subject": subject,
        "fastest_peer": fastest,
        "ratio": ratio,
        "goal": goal,
        "goal_text": goal_text,
        "status": "pass" if passed else "miss",
        **(extra or {}),
    }


def check_close(name: str, got: Any, want: Any, rtol: float, atol: float) -> float:
    """Raise if ``got`` and ``want`` differ: never time a wrong answer. Returns max |diff|."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: shape {got.shape} != reference {want.shape}")
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)
    return float(np.max(np.abs(got - want))) if got.size else 0.0


# --------------------------------------------------------------------------- accelerators


def warm_up_device(min_s: float = 2.0, max_s: float = 10.0, size: int = 8192,
                   dtype: str = "bfloat16", rise: float = 0.01) -> dict:
    """Run ``size x size`` matrix products until the device's rate stops rising.

    Bursts of products (each burst about 0.1 s, waited for) run for at least
    ``min_s`` seconds and then until a burst's rate is no more than ``rise``
    (relative) above the best of the three bursts before it, or ``max_s`` has
    passed. An idle GPU starts at low clocks; without this the first case of a
    benchmark ran at under half its later rate. Returns the rates seen (TFLOP/s).
    """
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32).astype(dtype)
    product = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(product(a, b))
    flop = 2.0 * size ** 3
    start = time.perf_counter()
    single = _call(lambda: product(a, b))[0]
    per_burst = max(1, int(0.1 / max(single, 1e-9)))
    rates: list[float] = []
    while True:
        t0 = time.perf_counter()
        out = None
        for _ in range(per_burst):
            out = product(a, b)
        jax.block_until_ready(out)
        rates.append(flop * per_burst / (time.perf_counter() - t0) / 1e12)
        elapsed = time.perf_counter() - start
        if elapsed >= max_s:
            break
        if elapsed >= min_s and len(rates) > 3 and rates[-1] <= max(rates[-4:-1]) * (1 + rise):
            break
    return {"seconds": round(time.perf_counter() - start, 3), "matmul": f"{size}x{size} {dtype}",
            "bursts": len(rates), "calls_per_burst": per_burst,
            "tflops_first": rates[0], "tflops_last": rates[-1], "tflops_best": max(rates)}


@dataclasses.dataclass
class DeviceTiming:
    """Per-call and pipelined seconds per call of one implementation (see measure_device)."""

    first_call_s: float
    per_call_s: float
    per_call_iqr_s: float
    pipelined_s: float
    pipelined_iqr_s: float
    calls: int
    rounds: int
    per_call_times_s: list[float]
    pipelined_times_s: list[float]

    def record(self) -> dict:
        return {"first_call_s": self.first_call_s, "per_call_s": self.per_call_s,
                "per_call_iqr_s": self.per_call_iqr_s, "pipelined_s": self.pipelined_s,
                "pipelined_iqr_s": self.pipelined_iqr_s, "calls_per_block": self.calls,
                "rounds": self.rounds,
                "per_call_times_s": [round(x, 7) for x in self.per_call_times_s],
                "pipelined_times_s": [round(x, 7) for x in self.pipelined_times_s]}


def _sync_of(impl: Impl) -> Callable[[Any], Any]:
    return impl.sync or jax.block_until_ready


def _synced(impl: Impl) -> tuple[float, Any]:
    sync = _sync_of(impl)
    start = time.perf_counter()
    out = impl.fn()
    sync(out)
    return time.perf_counter() - start, out


def _pipelined(impl: Impl, n: int) -> float:
    """Seconds per call of ``n`` calls issued back to back with one wait at the end.

    One device executes its programs in the order they were issued, so waiting for
    the last result waits for all of them.
    """
    sync = _sync_of(impl)
    start = time.perf_counter()
    out = None
    for _ in range(n):
        out = impl.fn()
    sync(out)
    return (time.perf_counter() - start) / n


def _iqr(xs: list[float]) -> float:
    q1, q3 = np.percentile(xs, [25, 75])
    return float(q3 - q1)


def measure_device(impls: list[Impl], rounds: int, *, warm_calls: int = 3, block_warm: int = 1,
                   block_s: float = 0.05, min_calls: int = 3, max_calls: int = 30,
                   errors: dict[str, str] | None = None,
                   convert: Callable[[Any], Any] | None = None,
                   ) -> tuple[dict[str, DeviceTiming], dict[str, Any]]:
    """Per-call latency and pipelined throughput of every implementation, interleaved.

    1. The first call of each implementation is timed alone (compilation, autotuning)
       and its result kept for the caller's correctness check.
    2. Each implementation is then called ``warm_calls`` times (waited for); their
       median sets its calls per timed block, ``n = block_s / t`` clamped to
       ``[min_calls, max_calls]``, so that a pipelined block outlasts the host's
       dispatch of it.
    3. ``rounds`` rounds follow, the implementations in rotated order (A B C,
       B C A, ...). In each, an implementation gets ``block_warm`` untimed calls,
       then ``n`` single calls each waited for (per call), then ``n`` calls back to
       back waited for once (pipelined).

    ``per_call_s`` is the median of all single calls; ``pipelined_s`` the median over
    rounds of a block's seconds per call. With ``errors`` (a dict), an implementation
    whose first call raises (out of memory, unsupported) is recorded there as
    ``"Type: first line"`` and left out; without it the exception propagates.
    ``convert`` maps each first result before it is kept (e.g. to a host array, to
    free device memory).
    """
    first, outputs, calls, ran = {}, {}, {}, []
    for impl in impls:
        try:
            first[impl.name], out = _synced(impl)
        except Exception as e:
            if errors is None:
                raise
            errors[impl.name] = error_text(e)
            continue
        outputs[impl.name] = convert(out) if convert else out
        ran.append(impl)
    impls = ran
    for impl in impls:
        warm = [_synced(impl)[0] for _ in range(warm_calls)] or [first[impl.name]]
        calls[impl.name] = int(min(max_calls, max(min_calls, round(
            block_s / max(statistics.median(warm), 1e-9)))))
    single: dict[str, list[float]] = {impl.name: [] for impl in impls}
    piped: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for r in range(rounds):
        order = impls[r % len(impls):] + impls[:r % len(impls)]
        for impl in order:
            for _ in range(block_warm):
                _synced(impl)
            n = calls[impl.name]
            single[impl.name].extend(_synced(impl)[0] for _ in range(n))
            piped[impl.name].append(_pipelined(impl, n))
    timings = {}
    for impl in impls:
        s, p = single[impl.name], piped[impl.name]
        timings[impl.name] = DeviceTiming(
            first_call_s=first[impl.name], per_call_s=statistics.median(s),
            per_call_iqr_s=_iqr(s), pipelined_s=statistics.median(p), pipelined_iqr_s=_iqr(p),
            calls=calls[impl.name], rounds=rounds, per_call_times_s=s, pipelined_times_s=p)
    return timings, outputs


TIMINGS = ("per_call", "pipelined")


def error_text(e: BaseException, limit: int = 300) -> str:
    """``"Type: first line of the message"``, at most ``limit`` characters of it."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {(lines[0] if lines else '')[:limit]}"


def torch_sync() -> Callable[[Any], Any]:
    """The ``sync`` of a PyTorch implementation: ``torch.cuda.synchronize`` on a GPU."""
    import torch

    if torch.cuda.is_available():
        return lambda out: torch.cuda.synchronize()
    return lambda out: out


def to_torch(x: Any) -> Any:
    """A JAX array as a torch tensor on torch's device (zero-copy through DLPack if it can)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        t = torch.from_dlpack(x)
    except Exception:  # no DLPack for this dtype or device: copy through the host
        dtype = str(x.dtype)
        host = np.asarray(x) if dtype == "bool" else np.asarray(x, np.float32)
        t = torch.from_numpy(host).to(getattr(torch, dtype))
    return t.to(device)


def summarise_device(description: str, impls: list[Impl], timings: dict[str, DeviceTiming],
                     goal: float, goal_text: str, extra: dict | None = None) -> dict:
    """The JSON record of a device benchmark: both timings, ratios and pass/miss.

    Like :func:`summarise`, per timing (``per_call`` and ``pipelined``): the ratio
    is (seconds per configuration of the fastest peer) / (the subject's); the
    benchmark passes only if both ratios reach ``goal``.
    """
    peers = [i.name for i in impls if i.role == "peer"]
    subject = next(i.name for i in impls if i.role == "jaxmath")
    results = {i.name: {"role": i.role, **timings[i.name].record(),
                        "configs_per_call": i.configs,
                        **({"note": i.note} if i.note else {})} for i in impls}
    ratio, fastest = {}, {}
    for kind in TIMINGS:
        per_config = {i.name: getattr(timings[i.name], f"{kind}_s") / i.configs for i in impls}
        fastest[kind] = min(peers, key=per_config.__getitem__)
        for i in impls:
            results[i.name][f"configs_per_s_{kind}"] = 1 / per_config[i.name]
            results[i.name].setdefault("speedup_vs_fastest_peer", {})[kind] = (
                per_config[fastest[kind]] / per_config[i.name])
        ratio[kind] = results[subject]["speedup_vs_fastest_peer"][kind]
    return _record(description, results, subject, fastest, ratio, goal, goal_text,
                   min(ratio.values()) >= goal, extra)


def nvidia_smi_names() -> list[str] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line.strip() for line in out.splitlines() if line.strip()]


def git_commit() -> str | None:
    """The checkout's commit (with ``-dirty`` if files differ), or $JAXMATH_COMMIT."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("JAXMATH_COMMIT")
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info() -> dict:
    """The device's names (nvidia-smi, JAX, PyTorch), versions, commit and date of a record."""
    info = {"nvidia_smi": nvidia_smi_names(),
            "jax_backend": jax.default_backend(),
            "jax_devices": [d.device_kind for d in jax.devices()],
            "jax": jax.__version__, "python": platform.python_version()}
    try:
        import jaxlib
        info["jaxlib"] = jaxlib.__version__
    except (ImportError, AttributeError):
        info["jaxlib"] = None
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                                else "cpu")
    except ImportError:
        info["torch"] = None
    if info["nvidia_smi"]:
        info["name"] = info["nvidia_smi"][0].split(",")[0]
    elif info["jax_backend"] == "cpu":
        info["name"] = f"{cpu_model()} ({os.cpu_count()} cores)"
    else:
        info["name"] = info["jax_devices"][0]
    info["commit"] = git_commit()
    info["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return info


def update_json(path: Path, update: Callable[[dict], None]) -> None:
    """Read the JSON object in ``path`` (none yet: ``{}``), let ``update`` change it in place,
    and write it back atomically (:func:`jaxmath.run.files.atomic_write_json`).

    The read-modify-write holds a lock on the file's folder, so scripts that update the
    same file never lose each other's entries. An unreadable file is an error (it is not
    replaced by a new one).
    """
    import fcntl

    from jaxmath.run.files import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        update(data)
        atomic_write_json(path, data, indent=1)
    finally:
        os.close(folder)  # releases the lock


def merge_record(path: Path, key: str, record: dict) -> None:
    """Write ``record`` as ``path[key]`` (see :func:`update_json`), keeping the other entries.

    Values JSON cannot hold are written as their ``str``.
    """
    update_json(path, lambda data: data.update({key: json.loads(json.dumps(record, default=str))}))


def selected(parser: argparse.ArgumentParser, only: str, choices: Sequence[str],
             what: str) -> list[str]:
    """The names of a comma-separated ``--only`` (all ``choices`` if empty); an unknown name
    is a usage error (``parser.error``)."""
    names = [n.strip() for n in only.split(",") if n.strip()] or list(choices)
    unknown = [n for n in names if n not in choices]
    if unknown:
        parser.error(f"unknown {what}(s) {unknown}; choose from {list(choices)}")
    return names


# --------------------------------------------------------------------------- device scripts


def device_parser(description: str, output: Path,
                  smoke: str = "tiny sizes (any machine)") -> argparse.ArgumentParser:
    """The options every ``benchmarks/gpu_*.py`` script takes: ``--smoke`` and ``--output``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--smoke", action="store_true", help=smoke)
    parser.add_argument("--output", type=Path, default=None,
                        help=f"JSON file (default {output}; --smoke writes none)")
    return parser


def start_device_run(cfg: dict) -> tuple[dict, dict, float]:
    """Name the device, then warm it up: ``(device_info(), warm-up record, start time)``.

    ``cfg`` gives ``warm_up_s`` (the least warm-up; at most 5x that) and ``warm_up_size``.
    """
    device = device_info()
    torch = f", torch {device['torch']}" if device.get("torch") else ""
    print(f"# {device['name']}: jax {device['jax']} ({device['jax_backend']}){torch}",
          flush=True)
    start = time.perf_counter()
    warm = warm_up_device(min_s=cfg["warm_up_s"], max_s=5 * cfg["warm_up_s"],
                          size=cfg["warm_up_size"])
    print(f"# warm-up: {warm}", flush=True)
    return device, warm, start
