"""Information measures, softmax and conv2d on a GPU: jaxmath vs the plain JAX program vs torch.

Each benchmark times jaxmath's function beside the plain JAX expression a user
would write and beside PyTorch, in one process, in interleaved rounds after a
device warm-up (see _harness.measure_device), per call (single calls, each waited
for) and pipelined (calls issued back to back, one wait at the end):

* ``entropy``: ``jm.entropy(p)`` vs ``-jnp.sum(jax.scipy.special.xlogy(p, p), -1)``
  vs ``torch.special.entr(p).sum(-1)``;
* ``kl_divergence``: ``jm.kl_divergence(p, q)`` vs
  ``jnp.sum(jax.scipy.special.rel_entr(p, q), -1)`` vs
  ``F.kl_div(q.log(), p, reduction="none").sum(-1)``;
* ``softmax``: ``jm.softmax(z)`` vs ``jax.nn.softmax(z)`` vs ``torch.softmax(z, -1)``;

  all over float32 rows ``[32768, 8192]`` (1 GiB per input), in TB/s of the bytes
  each call must move (inputs read plus output written);
* ``conv2d``: a 3x3 convolution, bfloat16, NHWC ``[256, 56, 56, 64]`` -> 64
  channels, padding SAME: ``jm.conv2d`` vs ``lax.conv_general_dilated`` with the
  arguments jm.conv2d passes it vs torch (``cudnn.benchmark = True``,
  channels_last), in TFLOP/s (2·N·H·W·C_in·C_out·9 FLOPs).

Results are checked against each other before they count, and the record says
whether jaxmath's compiled program is the reference's (``same_program``: the
optimised HLO without names and source locations). Where it is, a ratio below 1 is
timing noise, not a slower kernel.

    python -m benchmarks.gpu_kernels             # GPU: results/gpu.json["kernels"]
    python -m benchmarks.gpu_kernels --smoke     # tiny sizes, any machine (CPU too)

About 30 s on an H200.

Goals: entropy, kl_divergence and softmax >= 1.0x the plain JAX program; conv2d
>= 1.0x lax.conv_general_dilated; per call and pipelined. torch is for the record.
"""

from __future__ import annotations

import functools
import os
import re
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
    device_parser,
    error_text,
    measure_device,
    merge_record,
    start_device_run,
    summarise_device,
    to_torch,
    torch_sync,
)

OUTPUT = Path(__file__).parent / "results" / "gpu.json"
FULL = {"rows": 32768, "cols": 8192, "conv": (256, 56, 56, 64, 64), "rounds": 5,
        "block_s": 0.05, "min_calls": 3, "max_calls": 50, "checked_rows": 512,
        "warm_up_s": 2.0, "warm_up_size": 8192}
SMOKE = {"rows": 64, "cols": 256, "conv": (2, 8, 8, 8, 8), "rounds": 2, "block_s": 0.0,
         "min_calls": 1, "max_calls": 2, "checked_rows": 64, "warm_up_s": 0.05,
         "warm_up_size": 128}
GOAL = 1.0
# float32 sums over 8,192 terms in different orders; bfloat16 outputs of 576-term sums
RTOL, ATOL = 1e-4, 1e-6
CONV_TOL = 2e-2  # of the output's largest magnitude


def _normalised_hlo(f, *args) -> str:
    """The optimised HLO of ``jax.jit(f)`` without names' numbers and source locations."""
    text = jax.jit(f).lower(*args).compile().as_text()
    first = re.search(r"^(%|ENTRY)", text, flags=re.M)
    text = text[first.start():] if first else text
    text = re.sub(r",? (metadata|stack_frame_id)=(\{[^}]*\}|\d+)", "", text)
    return re.sub(r"\.\d+\b", "", text)


def same_program(f, g, *args) -> bool | None:
    try:
        return _normalised_hlo(f, *args) == _normalised_hlo(g, *args)
    except Exception:  # no compiled text on this backend: unknown
        return None


def _host(x, rows: int | None = None) -> np.ndarray:
    """A result as float32 NumPy (its first ``rows`` rows), from JAX or torch."""
    x = x[:rows] if rows is not None else x
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy()
    return np.asarray(jnp.asarray(x, jnp.float32))


def _bench(name: str, description: str, impls: list[Impl], cfg: dict, work: float, unit: str,
           same: bool | None, tol: tuple[float, float], rows: int | None = None) -> dict:
    """Time, check and summarise one benchmark; ``work`` bytes (TB/s) or FLOPs (TFLOP/s)."""
    errors: dict[str, str] = {}
    timings, outputs = measure_device(
        impls, cfg["rounds"], block_s=cfg["block_s"], min_calls=cfg["min_calls"],
        max_calls=cfg["max_calls"], errors=errors,
        convert=functools.partial(_host, rows=rows))
    ran = [i for i in impls if i.name in timings]
    subject = next(i.name for i in impls if i.role == "jaxmath")
    reference = next(i.name for i in impls if i.role == "peer")
    record = {"description": description, "errors": errors, "unit": unit, "work": work,
              "same_program": same}
    if subject not in timings or reference not in timings:
        return {**record, "status": "error",
                "error": f"{subject if subject not in timings else reference} did not run"}
    want = outputs[reference]
    rtol, atol = tol
    scale = float(np.abs(want).max()) or 1.0
    record["max_abs_diff_vs_reference"] = {
        n: float(np.abs(o - want).max() / scale) if o.shape == want.shape else None
        for n, o in outputs.items()}
    wrong = [n for n, o in outputs.items() if o.shape != want.shape
             or not np.allclose(o, want, rtol=rtol, atol=atol * scale)]
    extra = {**record, "wrong_results": wrong}
    summary = summarise_device(description, ran, timings, GOAL,
                               f">= {GOAL:g}x the {reference} program, per call and pipelined",
                               extra)
    for i in ran:
        v = summary["implementations"][i.name]
        for kind in TIMINGS:
            v[f"{unit}_{kind}"] = work / getattr(timings[i.name], f"{kind}_s") / 1e12
    if subject in wrong:  # never count a wrong answer
        summary["status"] = "error"
        summary["error"] = f"{subject} differs from {reference} beyond rtol={rtol}, atol={atol}"
    return summary


def info_benchmarks(cfg: dict) -> dict:
    import torch
    import torch.nn.functional as F

    import jaxmath as jm

    rows, cols = cfg["rows"], cfg["cols"]
    k1, k2 = jax.random.split(jax.random.key(0))
    z = jax.random.normal(k1, (rows, cols), jnp.float32)
    p = jax.nn.softmax(z, axis=-1)
    q = jax.nn.softmax(jax.random.normal(k2, (rows, cols), jnp.float32), axis=-1)
    tz, tp, tq = (to_torch(a) for a in (z, p, q))
    sync = torch_sync()
    nbytes = p.size * p.dtype.itemsize
    row_bytes = rows * 4

    def entropy_ref(p):
        return -jnp.sum(jax.scipy.special.xlogy(p, p), axis=-1)

    def kl_ref(p, q):
        return jnp.sum(jax.scipy.special.rel_entr(p, q), axis=-1)

    def torch_call(f):
        def run():
            with torch.no_grad():
                return f()
        return run

    specs = {
        "entropy": (
            f"jm.entropy over [{rows}, {cols}] float32 rows vs the plain xlogy sum vs torch",
            (p,), jm.entropy, entropy_ref, "jax -sum(xlogy(p, p), -1)",
            ("torch special.entr(p).sum(-1)", lambda: torch.special.entr(tp).sum(-1)),
            nbytes + row_bytes, None),
        "kl_divergence": (
            f"jm.kl_divergence over [{rows}, {cols}] float32 rows vs the plain rel_entr sum "
            "vs torch",
            (p, q), jm.kl_divergence, kl_ref, "jax sum(rel_entr(p, q), -1)",
            ("torch kl_div(q.log(), p).sum(-1)",
             lambda: F.kl_div(tq.log(), tp, reduction="none").sum(-1)),
            2 * nbytes + row_bytes, None),
        "softmax": (
            f"jm.softmax over [{rows}, {cols}] float32 rows vs jax.nn.softmax vs torch",
            (z,), jm.softmax, jax.nn.softmax, "jax.nn.softmax",
            ("torch.softmax", lambda: torch.softmax(tz, -1)), 2 * nbytes, cfg["checked_rows"]),
    }
    out = {}
    for name, (description, args, fjm, fref, ref_name, (torch_name, ft), work, checked) in \
            specs.items():
        try:
            impls = [Impl(f"jaxmath {name}", functools.partial(jax.jit(fjm), *args),
                          role="jaxmath"),
                     Impl(ref_name, functools.partial(jax.jit(fref), *args), role="peer"),
                     Impl(torch_name, torch_call(ft), role="info", sync=sync)]
            out[name] = _bench(name, description, impls, cfg, work, "TBps",
                               same_program(fjm, fref, *args), (RTOL, ATOL), checked)
        except Exception as e:  # record and go on
            out[name] = {"description": description, "status": "error", "error": error_text(e)}
        print(_line(name, out[name]), flush=True)
    return out


def conv_benchmark(cfg: dict) -> dict:
    import torch
    import torch.nn.functional as F

    import jaxmath as jm

    n, h, w_, c_in, c_out = cfg["conv"]
    description = (f"conv2d 3x3, bfloat16, NHWC [{n}, {h}, {w_}, {c_in}] -> {c_out} channels, "
                   "padding SAME: jm.conv2d vs the lax.conv_general_dilated call it makes vs "
                   "torch (cudnn.benchmark, channels_last)")
    try:
        k1, k2 = jax.random.split(jax.random.key(2))
        x = jax.random.normal(k1, (n, h, w_, c_in), jnp.float32).astype(jnp.bfloat16)
        kernel = (jax.random.normal(k2, (3, 3, c_in, c_out), jnp.float32)
                  / np.sqrt(9 * c_in)).astype(jnp.bfloat16)
        flops = 2.0 * n * h * w_ * c_in * c_out * 9

        def fjm(x, kernel):
            return jm.conv2d(x, kernel, padding="SAME")

        def lax_conv(x, kernel):  # the call jm.conv2d makes (jaxmath/nn/conv.py: _conv2d)
            return jax.lax.conv_general_dilated(
                x, kernel, window_strides=(1, 1), padding="SAME", rhs_dilation=(1, 1),
                dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=1,
                precision=None)

        torch.backends.cudnn.benchmark = True
        tx = to_torch(x).permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels_last
        tx = tx.contiguous(memory_format=torch.channels_last)
        tw = to_torch(kernel).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)

        def ft():
            with torch.no_grad():
                return F.conv2d(tx, tw, padding=1).permute(0, 2, 3, 1)  # NHWC, as jaxmath's

        impls = [Impl("jaxmath conv2d", functools.partial(jax.jit(fjm), x, kernel),
                      role="jaxmath"),
                 Impl("lax.conv_general_dilated", functools.partial(jax.jit(lax_conv), x, kernel),
                      role="peer"),
                 Impl("torch conv2d (channels_last, cudnn.benchmark)", ft, role="info",
                      sync=torch_sync())]
        out = _bench("conv2d", description, impls, cfg, flops, "TFLOPs",
                     same_program(fjm, lax_conv, x, kernel), (CONV_TOL, CONV_TOL), None)
    except Exception as e:
        out = {"description": description, "status": "error", "error": error_text(e)}
    print(_line("conv2d", out), flush=True)
    return out


def _line(name: str, r: dict) -> str:
    if "implementations" not in r:
        return f"{name:14s} ERROR {r.get('error')}"
    unit = r["unit"]
    rates = "  ".join(f"{n}: {v[unit + '_per_call']:.3g}/{v[unit + '_pipelined']:.3g}"
                      for n, v in r["implementations"].items())
    ratio = "/".join(f"{r['ratio'][k]:.3f}" for k in TIMINGS)
    return (f"{name:14s} {unit} per call/pipelined  {rates}  ratio {ratio} "
            f"[{r['status'].upper()}] same program: {r['same_program']}")


def main(argv: list[str] | None = None) -> int:
    parser = device_parser(__doc__.splitlines()[0], OUTPUT)
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else FULL
    output = args.output or (None if args.smoke else OUTPUT)
    device, warm, start = start_device_run(cfg)
    benchmarks = info_benchmarks(cfg)
    benchmarks["conv2d"] = conv_benchmark(cfg)
    record = {"description": __doc__.splitlines()[0], "config": dict(cfg), "device": device,
              "date": device["date"], "smoke": args.smoke,
              "goal": f"jaxmath >= {GOAL:g}x the plain JAX program (entropy, kl_divergence, "
                      "softmax) and lax.conv_general_dilated (conv2d), per call and pipelined",
              "timing": "per call: median of single calls, each waited for; pipelined: calls "
                        "issued back to back, one wait at the end (seconds per call, median "
                        "over rounds); interleaved rounds after a device warm-up",
              "warm_up": warm, "benchmarks": benchmarks,
              "seconds": round(time.perf_counter() - start, 1)}
    print(f"# {record['seconds']} s", flush=True)
    if output:
        merge_record(output, "kernels", record)
        print(f"wrote {output}")
    return 0 if all(b.get("status") != "error" for b in benchmarks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
