"""Attention on a GPU: jaxmath's default path vs jax.nn (xla, cudnn) and torch SDPA.

Forward and forward+backward TFLOP/s for B=4, H=16, d=128, bfloat16, L in {1024,
4096, 16384}, causal and not, all implementations side by side in one process
(interleaved rounds, see _harness), plus L = 65536 for jaxmath's default path
alone (does it run?). Layout [B, L, H, d] for JAX (jaxmath.multi_head_attention,
jax.nn.dot_product_attention), [B, H, L, d] for torch.

FLOPs counted as FlashAttention does: forward 4·B·H·L²·d (two matrix products),
halved when causal; forward+backward 3.5x the forward (five more products in the
backward pass, one of them recomputing the scores). An implementation that fails
(out of memory, unsupported) is recorded with its error and left out of the timing.

    python benchmarks/gpu_attention.py               # on a GPU: results/gpu.json["attention"]
    python benchmarks/gpu_attention.py --smoke       # tiny sizes, any machine (CPU too)
    python benchmarks/gpu_attention.py --profile DIR # also trace the L=1024 forward

Goals (issue 3): the default path >= 0.95x the best of jax.nn cudnn, jax.nn xla and
torch SDPA at L >= 4096; L = 16384 and 65536 run; explain the L = 1024 gap (the
record holds JAX's per-call dispatch overhead and, with --profile, kernel traces).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave room for torch

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._harness import Impl, measure

OUTPUT = Path(__file__).parent / "results" / "gpu.json"
FULL = {"batch": 4, "heads": 16, "head_dim": 128, "dtype": "bfloat16",
        "lengths": (1024, 4096, 16384), "long": 65536, "repeats": 10}
SMOKE = {"batch": 1, "heads": 2, "head_dim": 16, "dtype": "float32",
         "lengths": (64, 128), "long": 256, "repeats": 2}
GOAL = 0.95
CUDA = "cuda"


def _flops(cfg: dict, length: int, is_causal: bool, mode: str) -> float:
    fwd = 4.0 * cfg["batch"] * cfg["heads"] * length * length * cfg["head_dim"]
    fwd *= 0.5 if is_causal else 1.0
    return fwd * (3.5 if mode == "fwd+bwd" else 1.0)


def merge_record(path: Path, key: str, record: dict) -> None:
    """Write ``record`` as ``path[key]`` atomically, keeping the file's other entries."""
    from benchmarks.run import write_json_atomic

    data = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
    data[key] = json.loads(json.dumps(record, default=str))
    write_json_atomic(path, data)


def device_info() -> dict:
    info = {"jax_backend": jax.default_backend(),
            "jax_devices": [d.device_kind for d in jax.devices()],
            "jax": jax.__version__, "python": platform.python_version()}
    try:
        import torch
        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["torch_device"] = torch.cuda.get_device_name(0)
    except ImportError:
        info["torch"] = None
    return info


def _jax_impls(cfg, length, is_causal, mode, arrays):
    """Zero-argument callables for the JAX implementations, by name."""
    from jaxmath.nn.attention import attention_implementation, multi_head_attention

    q, k, v, w = arrays

    def jm(**kw):
        return lambda q, k, v: multi_head_attention(q, k, v, is_causal=is_causal, **kw)

    def jnn(impl):
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=is_causal,
                                                            implementation=impl)

    path = attention_implementation(q, k, v, is_causal=is_causal, multi_head=True)
    forwards = {f"jaxmath default ({path})": jm(),
                "jax.nn cudnn": jnn("cudnn"), "jax.nn xla": jnn("xla")}
    if length <= 4096:
        forwards["jaxmath blockwise"] = jm(implementation="blockwise")
    out = {}
    for name, f in forwards.items():
        if mode == "fwd":
            g = jax.jit(f)
            out[name] = functools.partial(g, q, k, v)
        else:
            g = jax.jit(jax.grad(lambda q, k, v, w, f=f: jnp.sum(
                (w * f(q, k, v)).astype(jnp.float32)), argnums=(0, 1, 2)))
            out[name] = functools.partial(g, q, k, v, w)
    return out, path


def _torch_impl(is_causal, mode, arrays):
    import torch
    import torch.nn.functional as F

    device = CUDA if torch.cuda.is_available() else "cpu"
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[str(arrays[0].dtype)]
    tq, tk, tv, tw = (torch.from_numpy(np.array(a, np.float32)).to(device, dtype)
                      .transpose(1, 2).contiguous() for a in arrays)

    def sync(x):
        if device == CUDA:
            torch.cuda.synchronize()
        return x

    if mode == "fwd":
        def run():
            with torch.no_grad():
                return sync(F.scaled_dot_product_attention(tq, tk, tv, is_causal=is_causal))
        return run
    tq, tk, tv = (t.detach().requires_grad_() for t in (tq, tk, tv))

    def run():
        for t in (tq, tk, tv):
            t.grad = None
        out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=is_causal)
        (out * tw).float().sum().backward()
        return sync(tq.grad)
    return run


def _first_output(x) -> np.ndarray:
    """The output (fwd) or dq (fwd+bwd) as float32 [B, L, H, d]."""
    x = x[0] if isinstance(x, tuple) else x
    if hasattr(x, "detach"):  # torch [B, H, L, d]
        return x.detach().float().cpu().numpy().transpose(0, 2, 1, 3)
    return np.asarray(jnp.asarray(x, jnp.float32))


def run_case(cfg: dict, length: int, is_causal: bool, mode: str) -> dict:
    rng = np.random.default_rng(0)
    shape = (cfg["batch"], length, cfg["heads"], cfg["head_dim"])
    arrays = [jnp.asarray(rng.standard_normal(shape, dtype=np.float32), cfg["dtype"])
              for _ in range(4)]
    fns, path = _jax_impls(cfg, length, is_causal, mode, arrays)
    try:
        fns["torch SDPA"] = _torch_impl(is_causal, mode, arrays)
    except Exception as e:  # no torch, or no memory for its inputs
        fns["torch SDPA"] = e
    errors, ready, outputs = {}, [], {}
    for name, fn in fns.items():  # one call each: drop what cannot run
        try:
            if isinstance(fn, Exception):
                raise fn
            outputs[name] = _first_output(jax.block_until_ready(fn()))
            ready.append(Impl(name, fn, role="jaxmath" if name.startswith("jaxmath default")
                              else "info" if name == "jaxmath blockwise" else "peer"))
        except Exception as e:  # OOM, unsupported: recorded, not timed
            errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    del arrays
    flops = _flops(cfg, length, is_causal, mode)
    record = {"length": length, "is_causal": is_causal, "mode": mode, "default_path": path,
              "flops": flops, "errors": errors, "implementations": {}}
    if ready:
        timings, _ = measure(ready, cfg["repeats"])
        for impl in ready:
            t = timings[impl.name]
            record["implementations"][impl.name] = {
                "role": impl.role, "median_s": t.median_s, "iqr_s": t.iqr_s,
                "compile_s": t.compile_s, "tflops": flops / t.median_s / 1e12}
        ref = outputs.get("torch SDPA", outputs.get("jax.nn xla"))
        if ref is not None:
            scale = float(np.abs(ref).max()) or 1.0
            record["max_abs_diff_vs_reference"] = {
                n: float(np.abs(o - ref).max() / scale) for n, o in outputs.items()}
    peers = [v["tflops"] for v in record["implementations"].values() if v["role"] == "peer"]
    subject = [v["tflops"] for n, v in record["implementations"].items()
               if n.startswith("jaxmath default")]
    if peers and subject:
        record["ratio_vs_best_peer"] = subject[0] / max(peers)
        if length >= 4096:
            record["status"] = "pass" if record["ratio_vs_best_peer"] >= GOAL else "miss"
    return record


def run_long(cfg: dict, mode: str) -> dict:
    """Does the default path run at L = cfg['long'] (causal)? Time one call after compiling."""
    rng = np.random.default_rng(0)
    length = cfg["long"]
    shape = (cfg["batch"], length, cfg["heads"], cfg["head_dim"])
    try:
        arrays = [jnp.asarray(rng.standard_normal(shape, dtype=np.float32), cfg["dtype"])
                  for _ in range(4)]
        fns, path = _jax_impls(cfg, length, True, mode, arrays)
        fn = next(f for n, f in fns.items() if n.startswith("jaxmath default"))
        jax.block_until_ready(fn())
        start = time.perf_counter()
        jax.block_until_ready(fn())
        seconds = time.perf_counter() - start
        return {"length": length, "is_causal": True, "mode": mode, "default_path": path,
                "ran": True, "seconds": seconds,
                "tflops": _flops(cfg, length, True, mode) / seconds / 1e12}
    except Exception as e:
        return {"length": length, "mode": mode, "ran": False,
                "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}


def dispatch_overhead(repeats: int = 200) -> float:
    """Median seconds of a jitted no-op call on a small array: JAX's per-call host cost."""
    f = jax.jit(lambda x: x + 1)
    x = jnp.ones(8)
    f(x).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f(x).block_until_ready()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def profile(cfg: dict, directory: Path) -> dict:
    """Traces of the L=1024 causal forward: jax.profiler for JAX, torch.profiler for torch."""
    directory.mkdir(parents=True, exist_ok=True)
    length = cfg["lengths"][0]
    rng = np.random.default_rng(0)
    shape = (cfg["batch"], length, cfg["heads"], cfg["head_dim"])
    arrays = [jnp.asarray(rng.standard_normal(shape, dtype=np.float32), cfg["dtype"])
              for _ in range(4)]
    fns, _ = _jax_impls(cfg, length, True, "fwd", arrays)
    out = {}
    for name, fn in fns.items():
        try:
            jax.block_until_ready(fn())
            with jax.profiler.trace(str(directory / name.replace(" ", "_"))):
                for _ in range(5):
                    jax.block_until_ready(fn())
            out[name] = str(directory / name.replace(" ", "_"))
        except Exception as e:
            out[name] = f"{type(e).__name__}: {e}"[:300]
    try:
        import torch

        run = _torch_impl(True, "fwd", arrays)
        run()
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(5):
                run()
        table = prof.key_averages().table(sort_by="self_cuda_time_total" if len(activities) > 1
                                          else "self_cpu_time_total", row_limit=15)
        (directory / "torch_sdpa.txt").write_text(table)
        out["torch SDPA"] = str(directory / "torch_sdpa.txt")
    except Exception as e:
        out["torch SDPA"] = f"{type(e).__name__}: {e}"[:300]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (any machine)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"JSON file (default {OUTPUT}; --smoke writes none)")
    parser.add_argument("--profile", type=Path, default=None, help="trace directory")
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else FULL
    output = args.output or (None if args.smoke else OUTPUT)
    device = device_info()
    print(f"# {device}", flush=True)
    results = {"config": dict(cfg), "device": device,
               "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
               "smoke": args.smoke, "goal": f"default path >= {GOAL}x the best peer at "
                                             f"L >= 4096",
               "jax_dispatch_overhead_s": dispatch_overhead(), "cases": [], "long": []}
    for length in cfg["lengths"]:
        for is_causal in (False, True):
            for mode in ("fwd", "fwd+bwd"):
                r = run_case(cfg, length, is_causal, mode)
                results["cases"].append(r)
                rates = "  ".join(f"{n}: {v['tflops']:.3g} TF/s"
                                  for n, v in r["implementations"].items())
                errors = f"  errors: {list(r['errors'])}" if r["errors"] else ""
                print(f"L={length:6d} {'causal' if is_causal else 'full  '} {mode:8s} "
                      f"{rates}{errors}", flush=True)
    for mode in ("fwd", "fwd+bwd"):
        results["long"].append(run_long(cfg, mode))
        print(f"L={cfg['long']} {mode}: {results['long'][-1]}", flush=True)
    if args.profile:
        results["profile"] = profile(cfg, args.profile)
    if output:
        merge_record(output, "attention", results)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
