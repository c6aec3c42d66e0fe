"""Attention on a GPU: jaxmath's default and Pallas paths vs jax.nn (cuDNN, XLA) and torch SDPA.

Forward and forward+backward TFLOP/s for B=4, H=16, d=128, all implementations
side by side in one process, in interleaved rounds after a device warm-up (see
_harness.measure_device); every figure twice: per call (median of single calls,
each waited for) and pipelined (calls issued back to back, one wait at the end).
The cases:

* bfloat16, L in {1024, 4096, 16384}, causal and not: jaxmath's default path,
  jaxmath pallas (on a GPU only: elsewhere Pallas interprets), jax.nn cudnn,
  jax.nn xla (L <= 4096: at 16384 its scores do not fit), jaxmath blockwise
  (L <= 4096) and torch SDPA;
* float32, L in {1024, 4096}: jaxmath's default path, jax.nn xla, torch SDPA and
  jaxmath pallas (cuDNN takes no float32). JAX runs at its default matmul
  precision (TF32 on an H100/H200), torch SDPA at its own (float32 accumulation);
* bfloat16, L = 4096, with an arbitrary boolean mask ``[B, 1, L, L]`` (about 10 %
  of the keys masked, the diagonal kept) and with a per-head bias ``[1, H, L, L]``:
  the same implementations as the first group, so that Pallas and cuDNN are
  compared on equal shapes;
* L = 65536, causal: jaxmath's default path alone (does it run?).

Layout [B, L, H, d] for JAX (jaxmath.multi_head_attention,
jax.nn.dot_product_attention), [B, H, L, d] for torch. FLOPs counted as
FlashAttention does: forward 4·B·H·L²·d (two matrix products), halved when causal
(a mask is not subtracted); forward+backward 3.5x the forward. An implementation
that fails (out of memory, unsupported, not yet in this jaxmath) is recorded with
its error and left out of the timing.

    python -m benchmarks.gpu_attention                 # GPU: results/gpu.json["attention"]
    python -m benchmarks.gpu_attention --smoke         # tiny sizes, any machine (CPU too)
    python -m benchmarks.gpu_attention --profile DIR   # also trace the L=1024 forward

About 150 s on an H200 (most of it compiling about 90 programs).

Goals: the default path >= 0.95x the best of jax.nn cudnn and torch SDPA in every
case with L >= 4096, per call and pipelined; jaxmath pallas >= 0.5x jax.nn cudnn's
TFLOP/s on the same case. The record also holds JAX's per-call dispatch overhead
and, with --profile, kernel traces (the L = 1024 per-call gap).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave room for torch

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._harness import (
    TIMINGS,
    Impl,
    device_info,
    device_parser,
    error_text,
    measure_device,
    merge_record,
    start_device_run,
    to_torch,
    torch_sync,
)

__all__ = ["OUTPUT", "device_info", "main", "merge_record"]  # the last two: for older callers

OUTPUT = Path(__file__).parent / "results" / "gpu.json"
FULL = {"batch": 4, "heads": 16, "head_dim": 128,
        "bf16_lengths": (1024, 4096, 16384), "f32_lengths": (1024, 4096),
        "masked_length": 4096, "long": 65536, "xla_max_length": 4096,
        "blockwise_max_length": 4096, "rounds": 5, "block_s": 0.05, "min_calls": 3,
        "max_calls": 30, "warm_up_s": 2.0, "warm_up_size": 8192}
SMOKE = {"batch": 1, "heads": 2, "head_dim": 16, "bf16_lengths": (64,), "f32_lengths": (64,),
         "masked_length": 64, "long": 128, "xla_max_length": 64, "blockwise_max_length": 64,
         "rounds": 2, "block_s": 0.0, "min_calls": 1, "max_calls": 2, "warm_up_s": 0.05,
         "warm_up_size": 128}
MODES = ("fwd", "fwd+bwd")
GOAL = 0.95
GOAL_LENGTH = 4096
GOAL_PEERS = ("jax.nn cudnn", "torch SDPA")
PALLAS = "jaxmath pallas"
PALLAS_GOAL = 0.5
MASKED_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class Case:
    dtype: str
    length: int
    is_causal: bool
    mode: str
    extra: str | None = None  # "mask": bool [B, 1, L, L]; "bias": [1, H, L, L]

    @property
    def name(self) -> str:
        short = {"bfloat16": "bf16", "float32": "f32"}[self.dtype]
        extra = f" {self.extra}" if self.extra else ""
        return (f"{short} L={self.length} {'causal' if self.is_causal else 'full'}{extra} "
                f"{self.mode}")


def cases(cfg: dict, modes: tuple[str, ...] = MODES) -> list[Case]:
    out = [Case("bfloat16", n, c, m) for n in cfg["bf16_lengths"] for c in (False, True)
           for m in modes]
    out += [Case("float32", n, False, m) for n in cfg["f32_lengths"] for m in modes]
    out += [Case("bfloat16", cfg["masked_length"], False, m, extra) for extra in ("mask", "bias")
            for m in modes]
    return out


def _flops(cfg: dict, length: int, is_causal: bool, mode: str) -> float:
    fwd = 4.0 * cfg["batch"] * cfg["heads"] * length * length * cfg["head_dim"]
    fwd *= 0.5 if is_causal else 1.0
    return fwd * (3.5 if mode == "fwd+bwd" else 1.0)


def make_arrays(cfg: dict, dtype: str, length: int) -> list[jax.Array]:
    """q, k, v and the output's cotangent w, [B, L, H, d], standard normal, on the device."""
    shape = (cfg["batch"], length, cfg["heads"], cfg["head_dim"])
    keys = jax.random.split(jax.random.key(0), 4)
    return [jax.random.normal(k, shape, jnp.float32).astype(dtype) for k in keys]


def make_extra(cfg: dict, case: Case) -> jax.Array | None:
    b, h, n = cfg["batch"], cfg["heads"], case.length
    key = jax.random.key(1)
    if case.extra == "mask":  # True = attend; the diagonal kept so that no row is empty
        keep = jax.random.uniform(key, (b, 1, n, n)) >= MASKED_FRACTION
        return keep | jnp.eye(n, dtype=bool)
    if case.extra == "bias":
        return jax.random.normal(key, (1, h, n, n), jnp.float32).astype(case.dtype)
    return None


def _jax_impls(cfg: dict, case: Case, arrays, extra):
    """Zero-argument callables of the JAX implementations by name, the skipped ones, the path."""
    from jaxmath.nn.attention import attention_implementation, multi_head_attention

    q, k, v, w = arrays
    causal = case.is_causal
    kw = {} if case.extra is None else {case.extra: extra}

    def jm(**options):
        return lambda q, k, v, x: multi_head_attention(
            q, k, v, is_causal=causal, **({} if x is None else {case.extra: x}), **options)

    def jnn(implementation):
        return lambda q, k, v, x: jax.nn.dot_product_attention(
            q, k, v, is_causal=causal, implementation=implementation,
            **({} if x is None else {case.extra: x}))

    path = attention_implementation(q, k, v, is_causal=causal, multi_head=True, **kw)
    forwards = {f"jaxmath default ({path})": jm()}
    skipped = {}
    if jax.default_backend() == "gpu":
        forwards[PALLAS] = jm(implementation="pallas")
    else:  # Pallas's interpret mode: correct but slow, and no measure of a GPU kernel
        skipped[PALLAS] = f"runs in interpret mode on {jax.default_backend()!r}"
    if case.dtype == "float32":
        skipped["jax.nn cudnn"] = "cuDNN takes float16 or bfloat16 inputs"
    else:
        forwards["jax.nn cudnn"] = jnn("cudnn")
    if case.length <= cfg["xla_max_length"]:
        forwards["jax.nn xla"] = jnn("xla")
    else:
        skipped["jax.nn xla"] = (f"L > {cfg['xla_max_length']}: its scores do not fit (on the "
                                 "H200, L = 16384 failed in autotuning, out of memory)")
    if case.dtype == "bfloat16" and case.extra is None:
        if case.length <= cfg["blockwise_max_length"]:
            forwards["jaxmath blockwise"] = jm(implementation="blockwise")
    out = {}
    for name, f in forwards.items():
        if case.mode == "fwd":
            out[name] = functools.partial(jax.jit(f), q, k, v, extra)
        else:
            g = jax.jit(jax.grad(lambda q, k, v, x, w, f=f: jnp.sum(
                (w * f(q, k, v, x)).astype(jnp.float32)), argnums=(0, 1, 2)))
            out[name] = functools.partial(g, q, k, v, extra, w)
    return out, skipped, path


def _torch_impl(case: Case, arrays, extra):
    import torch
    import torch.nn.functional as F

    tq, tk, tv, tw = (to_torch(a).transpose(1, 2).contiguous() for a in arrays)
    mask = None if extra is None else to_torch(extra)  # bool: True = attend; else added

    def sdpa():
        return F.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask,
                                              is_causal=case.is_causal)

    if case.mode == "fwd":
        def run():
            with torch.no_grad():
                return sdpa()
        return run
    tq, tk, tv = (t.detach().requires_grad_() for t in (tq, tk, tv))

    def run_grad():
        for t in (tq, tk, tv):
            t.grad = None
        (sdpa() * tw).float().sum().backward()
        return tq.grad
    return run_grad


def _first_output(x) -> np.ndarray:
    """The output (fwd) or dq (fwd+bwd) as float32 [B, L, H, d] on the host."""
    x = x[0] if isinstance(x, tuple) else x
    if hasattr(x, "detach"):  # torch [B, H, L, d]
        return x.detach().float().cpu().numpy().transpose(0, 2, 1, 3)
    return np.asarray(jnp.asarray(x, jnp.float32))


def _role(name: str) -> str:
    if name.startswith("jaxmath default"):
        return "jaxmath"
    return "peer" if name in GOAL_PEERS else "info"


def _ratios(impls: dict, subject: str, others: list[str]) -> tuple[dict, dict]:
    """Per timing: subject's TFLOP/s over the best of ``others``, and which one that was."""
    ratio, best = {}, {}
    for kind in TIMINGS:
        name = max(others, key=lambda n: impls[n][f"tflops_{kind}"])
        ratio[kind] = impls[subject][f"tflops_{kind}"] / impls[name][f"tflops_{kind}"]
        best[kind] = name
    return ratio, best


def run_case(cfg: dict, case: Case, arrays) -> dict:
    extra = make_extra(cfg, case)
    errors: dict[str, str] = {}
    fns, skipped, path = _jax_impls(cfg, case, arrays, extra)
    impls = [Impl(name, fn, role=_role(name)) for name, fn in fns.items()]
    try:
        impls.append(Impl("torch SDPA", _torch_impl(case, arrays, extra), role="peer",
                          sync=torch_sync()))
    except Exception as e:  # no torch, or no memory for its inputs
        errors["torch SDPA"] = error_text(e)
    flops = _flops(cfg, case.length, case.is_causal, case.mode)
    record = {"name": case.name, "dtype": case.dtype, "length": case.length,
              "is_causal": case.is_causal, "mode": case.mode,
              "extra": None if extra is None else {case.extra: list(extra.shape),
                                                   "dtype": str(extra.dtype)},
              "default_path": path, "flops": flops, "errors": errors, "skipped": skipped,
              "implementations": {}}
    timings, outputs = measure_device(
        impls, cfg["rounds"], block_s=cfg["block_s"], min_calls=cfg["min_calls"],
        max_calls=cfg["max_calls"], errors=errors, convert=_first_output)
    for impl in impls:
        if impl.name in timings:
            t = timings[impl.name]
            record["implementations"][impl.name] = {
                "role": impl.role, **t.record(),
                "tflops_per_call": flops / t.per_call_s / 1e12,
                "tflops_pipelined": flops / t.pipelined_s / 1e12}
    ref_name = next((n for n in ("torch SDPA", "jax.nn xla") if n in outputs), None)
    if ref_name is not None:
        ref = outputs[ref_name]
        scale = float(np.abs(ref).max()) or 1.0
        record["reference"] = ref_name
        record["max_abs_diff_vs_reference"] = {
            n: float(np.abs(o - ref).max() / scale) for n, o in outputs.items()}
    ran = record["implementations"]
    subject = next((n for n in ran if n.startswith("jaxmath default")), None)
    peers = [n for n in GOAL_PEERS if n in ran]
    if subject:
        for v in ran.values():
            v["vs_default"] = {kind: v[f"tflops_{kind}"] / ran[subject][f"tflops_{kind}"]
                               for kind in TIMINGS}
    if subject and peers:
        record["ratio_vs_best_peer"], record["best_peer"] = _ratios(ran, subject, peers)
        if case.length >= GOAL_LENGTH:
            worst = min(record["ratio_vs_best_peer"].values())
            record["status"] = "pass" if worst >= GOAL else "miss"
    if PALLAS in ran and "jax.nn cudnn" in ran:
        record["pallas_vs_cudnn"] = _ratios(ran, PALLAS, ["jax.nn cudnn"])[0]
        worst = min(record["pallas_vs_cudnn"].values())
        record["pallas_status"] = "pass" if worst >= PALLAS_GOAL else "miss"
    elif PALLAS in errors:
        record["pallas_status"] = "error"
    return record


def run_long(cfg: dict, mode: str) -> dict:
    """Does the default path run at L = cfg['long'] (causal)? Two rounds of two calls."""
    length = cfg["long"]
    case = Case("bfloat16", length, True, mode)
    errors: dict[str, str] = {}
    record = {"name": case.name, "length": length, "is_causal": True, "mode": mode}
    try:
        arrays = make_arrays(cfg, case.dtype, length)
        fns, _, path = _jax_impls(cfg, case, arrays, None)
        name = f"jaxmath default ({path})"
        timings, _ = measure_device([Impl(name, fns[name], role="jaxmath")], 2, warm_calls=1,
                                    block_warm=0, min_calls=1, max_calls=2, block_s=0.0,
                                    errors=errors, convert=lambda out: None)
    except Exception as e:  # out of memory making the inputs
        errors["inputs"] = error_text(e)
        timings, path = {}, None
    flops = _flops(cfg, length, True, mode)
    record.update(default_path=path, ran=bool(timings), errors=errors)
    for t in timings.values():
        record.update(**t.record(), tflops_per_call=flops / t.per_call_s / 1e12,
                      tflops_pipelined=flops / t.pipelined_s / 1e12)
    return record


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
    case = Case("bfloat16", cfg["bf16_lengths"][0], True, "fwd")
    arrays = make_arrays(cfg, case.dtype, case.length)
    fns, _, _ = _jax_impls(cfg, case, arrays, None)
    out = {}
    for name, fn in fns.items():
        try:
            jax.block_until_ready(fn())
            with jax.profiler.trace(str(directory / name.replace(" ", "_"))):
                for _ in range(5):
                    jax.block_until_ready(fn())
            out[name] = str(directory / name.replace(" ", "_"))
        except Exception as e:
            out[name] = error_text(e)
    try:
        import torch

        run, sync = _torch_impl(case, arrays, None), torch_sync()
        sync(run())
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(5):
                sync(run())
        table = prof.key_averages().table(sort_by="self_cuda_time_total" if len(activities) > 1
                                          else "self_cpu_time_total", row_limit=15)
        (directory / "torch_sdpa.txt").write_text(table)
        out["torch SDPA"] = str(directory / "torch_sdpa.txt")
    except Exception as e:
        out["torch SDPA"] = error_text(e)
    return out


def _line(r: dict) -> str:
    rates = "  ".join(f"{n}: {v['tflops_per_call']:.3g}/{v['tflops_pipelined']:.3g}"
                      for n, v in r["implementations"].items())
    status = f"  [{r['status'].upper()}]" if "status" in r else ""
    errors = f"  errors: {sorted(r['errors'])}" if r["errors"] else ""
    return f"{r['name']:28s} TF/s per call/pipelined  {rates}{status}{errors}"


def summary(results: dict) -> dict:
    """Which cases met the goals (default path; pallas), for the record and the console."""
    out = {}
    for key in ("status", "pallas_status"):
        got = [(c["name"], c[key]) for c in results["cases"] if key in c]
        out[key] = {s: [n for n, v in got if v == s] for s in ("pass", "miss", "error")}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = device_parser(__doc__.splitlines()[0], OUTPUT)
    parser.add_argument("--modes", default=",".join(MODES),
                        help="comma-separated subset of fwd,fwd+bwd")
    parser.add_argument("--no-long", action="store_true", help="skip the L = 65536 runs")
    parser.add_argument("--profile", type=Path, default=None, help="trace directory")
    args = parser.parse_args(argv)
    modes = tuple(m for m in args.modes.split(",") if m)
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes: choose from {MODES}")
    cfg = SMOKE if args.smoke else FULL
    output = args.output or (None if args.smoke else OUTPUT)
    device, warm, start = start_device_run(cfg)
    results = {"description": __doc__.split("\n\n")[0], "config": dict(cfg),
               "device": device, "date": device["date"], "smoke": args.smoke,
               "goal": f"default path >= {GOAL}x the best of {' and '.join(GOAL_PEERS)} in "
                       f"every case with L >= {GOAL_LENGTH}, per call and pipelined",
               "pallas_goal": f"{PALLAS} >= {PALLAS_GOAL}x jax.nn cudnn's TFLOP/s, per call "
                              "and pipelined, on the same case",
               "timing": "per call: median of single calls, each waited for; pipelined: "
                         "calls issued back to back, one wait at the end (seconds per call, "
                         "median over rounds); implementations interleaved in rounds after "
                         "a device warm-up and warm calls of each (benchmarks/_harness.py)",
               "warm_up": warm, "jax_dispatch_overhead_s": dispatch_overhead(),
               "cases": [], "long": []}
    arrays_key, arrays = None, None
    for case in cases(cfg, modes):
        if arrays_key != (case.dtype, case.length):
            arrays = None  # free the previous inputs first
            arrays_key, arrays = (case.dtype, case.length), make_arrays(cfg, case.dtype,
                                                                        case.length)
        try:
            r = run_case(cfg, case, arrays)
        except Exception as e:  # a failure inside the timed rounds: record it, go on
            r = {"name": case.name, "error": error_text(e), "errors": {}, "implementations": {}}
        results["cases"].append(r)
        print(_line(r), flush=True)
    arrays = None
    if not args.no_long:
        for mode in modes:
            r = run_long(cfg, mode)
            results["long"].append(r)
            rates = (f"{r['tflops_per_call']:.3g}/{r['tflops_pipelined']:.3g} TF/s"
                     if r["ran"] else f"did not run: {r['errors']}")
            print(f"{r['name']:28s} default ({r['default_path']}): {rates}", flush=True)
    if args.profile:
        results["profile"] = profile(cfg, args.profile)
    results["summary"] = summary(results)
    results["seconds"] = round(time.perf_counter() - start, 1)
    for key, groups in results["summary"].items():
        print(f"# {key}: " + "; ".join(f"{s} {len(n)}" for s, n in groups.items())
              + (f" (missed: {groups['miss']})" if groups["miss"] else ""))
    print(f"# {results['seconds']} s", flush=True)
    if output:
        merge_record(output, "attention", results)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
