"""Run jaxmath's CPU benchmarks; write benchmarks/results/cpu.json and print a table.

    python -m benchmarks.run                       # all benchmarks (make bench)
    python -m benchmarks.run --only entropy,gd_sweep
    python -m benchmarks.run --quick               # 3 repeats each, for development
    python -m benchmarks.run --only gd_sweep --variants   # also time other sweep layouts

Results are merged into the JSON file by benchmark name (each entry records its
own date and whether it was a quick run), and the file is replaced atomically.
The exit status is 1 if a benchmark could not run (not if it missed its goal).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import os
import platform
import sys
import traceback
from pathlib import Path

from benchmarks._harness import cpu_model, selected, update_json

# benchmark name -> module that defines it in its BENCHMARKS dict
REGISTRY = {
    "entropy": "benchmarks.information",
    "kl_divergence": "benchmarks.information",
    "softmax": "benchmarks.softmax",
    "gaussian_nb": "benchmarks.naive_bayes",
    "gd_sweep": "benchmarks.gd_sweep",
    "pca": "benchmarks.pca",
    "attention": "benchmarks.attention",
    "sweep": "benchmarks.sweep",
    "ddpm_train": "benchmarks.ddpm_train",
    "train_loop": "benchmarks.train_loop",
}
DEFAULT_OUTPUT = Path(__file__).parent / "results" / "cpu.json"
FIELDS = {
    "median_s / iqr_s": "median and interquartile range of the timed calls (first call excluded)",
    "compile_s": "the first call alone: compilation for JAX, warm-up for the others",
    "times_s": "every timed call, in order; implementations were called in interleaved rounds",
    "configs_per_s": "configurations (e.g. learning rates) handled per second",
    "speedup_vs_fastest_peer": "seconds per configuration of the fastest peer / this one's",
    "ratio / goal / status": "the jaxmath implementation's speedup, the issue's goal, pass/miss",
    "machine": "the latest run's machine; each benchmark keeps its own date and load",
}


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:  # an absent library is recorded as null
        return None


def machine_info() -> dict:
    import jax
    import torch

    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in
                     ("jax", "jaxlib", "numpy", "scipy", "sklearn", "torch", "optax", "flax")},
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "torch_threads": torch.get_num_threads(),
        "threads_note": "PyTorch keeps its default intra-op thread count (torch_threads); "
                        "JAX/XLA on CPU uses its own thread pool over all cores; NumPy, "
                        "SciPy and scikit-learn use their BLAS defaults.",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def run_one(name: str, quick: bool, variants: bool) -> dict:
    module = importlib.import_module(REGISTRY[name])
    fn = module.BENCHMARKS[name]
    kwargs = {"quick": quick}
    if variants and "variants" in inspect.signature(fn).parameters:
        kwargs["variants"] = True
    return fn(**kwargs)


def _fmt_s(s: float) -> str:
    return f"{s * 1e3:10.2f}"


def print_table(results: dict[str, dict]) -> None:
    header = (f"{'benchmark':14s} {'implementation':60s} {'median ms':>10s} {'IQR ms':>10s} "
              f"{'1st call':>10s} {'configs/s':>11s} {'vs fastest peer':>15s}  goal")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        if "implementations" not in r:
            print(f"{name:14s} ERROR: {r.get('error', '?')}")
            continue
        throughput = any(v["configs_per_call"] > 1 for v in r["implementations"].values())
        for impl, v in r["implementations"].items():
            rate = f"{v['configs_per_s']:11.4g}" if throughput else f"{'-':>11s}"
            goal = ""
            if impl == r["subject"]:
                goal = f">= {r['goal']:g}x: {r['status'].upper()}"
            label = impl if v["role"] != "info" else f"({impl})"
            print(f"{name:14s} {label[:60]:60s} {_fmt_s(v['median_s'])} {_fmt_s(v['iqr_s'])} "
                  f"{_fmt_s(v['compile_s'])} {rate} "
                  f"{v['speedup_vs_fastest_peer']:14.2f}x  {goal}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="",
                        help=f"comma-separated subset of: {','.join(REGISTRY)}")
    parser.add_argument("--quick", action="store_true", help="3 repeats each (development)")
    parser.add_argument("--variants", action="store_true",
                        help="also time the alternative sweep layouts (gd_sweep)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    names = selected(parser, args.only, list(REGISTRY), "benchmark")

    machine = machine_info()
    print(f"# {machine['cpu_model']}, {machine['cpu_count']} cores, load "
          f"{machine['load_average_at_start'][0]:.2f}; jax {machine['versions']['jax']}, "
          f"torch {machine['versions']['torch']} ({machine['torch_threads']} threads)",
          flush=True)
    results, failed = {}, False
    for name in names:
        print(f"# running {name}{' (quick)' if args.quick else ''} ...", flush=True)
        try:
            r = run_one(name, args.quick, args.variants)
        except Exception as e:  # record and go on: one broken benchmark must not hide others
            failed = True
            traceback.print_exc()
            r = {"status": "error", "error": f"{type(e).__name__}: {e}"}
        r["date"] = machine["date"]
        r["load_average_at_start"] = machine["load_average_at_start"]
        r["quick"] = args.quick
        results[name] = r

    print()
    print_table(results)
    if not args.no_write:
        def merge(data: dict) -> None:  # other records (e.g. "experiments") are kept as they are
            benchmarks = {**data.get("benchmarks", {}), **results}
            data.update(machine=machine, fields=FIELDS,
                        benchmarks={k: benchmarks[k] for k in REGISTRY if k in benchmarks})

        update_json(args.output, merge)
        print(f"\nwrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
