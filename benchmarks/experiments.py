"""The experiments' speed: wall time, compile time and training steps/s of each default config.

Each experiment runs through :func:`jaxmath.run.cli.run_experiment`, the code of
``jaxmath run configs/<name>.py``, in a fresh temporary workdir, one after another in
this process. Its record comes from the run's ``summary.json``:

* ``wall_time_s``: the experiment's ``run`` (data, training, sampling, evaluation,
  plots), as ``jaxmath run`` reports it;
* ``train_s``: the training loop (:func:`jaxmath.run.loop.train_loop`) alone;
* ``train_compile_s``: the loop's first jitted call alone, compilation included (for
  ``mlp_sweep``, whose whole sweep is one call: JAX's tracing, lowering and compile
  time, from ``jax.monitoring``);
* ``train_steps_per_s``: training updates per second after that first call,
  checkpoints and evaluation excluded (``mlp_sweep``: updates of all its runs);
* ``steps_per_call``, ``num_steps``, ``target_met``.

The record (with the device's name, the date and the load average) is merged into
``benchmarks/results/<backend>.json`` (``cpu.json``, ``gpu.json``) under
``"experiments"`` (``"experiments_quick"`` with ``--quick``); the file's other entries
are kept. The configs' ``steps_per_call=None`` takes the scan of the steps between log
steps on a GPU or TPU and one jitted call per update on a CPU; with ``--both-paths``
every experiment trained by ``train_loop`` also runs on the other path
(``--config.steps_per_call=1`` or ``=0``), and the record holds that run too, under
``"other_path"``, and the ratio of the scan's steps/s to the per-step path's. On a GPU or
TPU, when ``results/cpu.json`` holds a CPU record of the same kind, each experiment's
steps/s and wall time are compared with the CPU's: the goal is steps/s >= 10x the CPU's
for ``cnn``, ``transformer``, ``ddpm_2d`` and ``ddpm_digits``, and no experiment slower
than on the CPU.

    python benchmarks/experiments.py                       # default configs (minutes)
    python benchmarks/experiments.py --quick               # the :quick variants (seconds)
    python benchmarks/experiments.py --only cnn,mlp --both-paths
    python3 benchmarks/experiments.py --output $OUT/gpu.json   # on the GPU machine
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import cpu_model, merge_record, selected

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
EXPERIMENTS = ("mlp", "mlp_sweep", "cnn", "transformer", "ddpm_2d", "ddpm_digits")
SCANNED = ("mlp", "cnn", "transformer", "ddpm_2d", "ddpm_digits")  # trained by train_loop
GOAL_STEPS = ("cnn", "transformer", "ddpm_2d", "ddpm_digits")     # steps/s >= 10x the CPU
GOAL_RATIO = 10.0
FIELDS = ("wall_time_s", "train_s", "train_compile_s", "train_steps_per_s", "steps_per_call",
          "num_steps", "target_met", "backend", "devices")


def device_record() -> dict:
    """The machine: backend, device kind and count, CPU model and load, versions."""
    import jax

    devices = jax.devices()
    return {"backend": jax.default_backend(), "device_kind": devices[0].device_kind,
            "device_count": len(devices), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "jax": jax.__version__, "python": platform.python_version()}


def run_one(name: str, quick: bool, overrides: list[str]) -> dict:
    """Run ``configs/<name>.py`` (``:quick``) as ``jaxmath run`` does; its timing record."""
    from jaxmath.run.cli import run_experiment

    spec = str(ROOT / "configs" / f"{name}.py") + (":quick" if quick else "")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix=f"jaxmath-bench-{name}-") as workdir:
        start = time.perf_counter()
        summary = run_experiment(spec, workdir, overrides, verbose=False)
        process_s = time.perf_counter() - start
    record = {k: summary.get(k) for k in FIELDS}
    if name == "mlp_sweep":  # one call: the steps of all its runs
        record["num_steps"] = summary["num_steps"] * summary["num_configs"]
        record["train_s"] = summary["sweep_s"]
    record.update(overrides=overrides, load_average_at_start=round(load, 2),
                  run_experiment_s=round(process_s, 3))
    return record


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def compare_with_cpu(records: dict, cpu_records: dict) -> dict:
    """Steps/s and wall-time ratios to a CPU record, and the goals' pass/miss."""
    out = {}
    for name, r in records.items():
        cpu = cpu_records.get(name)
        if not cpu:
            continue
        steps = _ratio(r.get("train_steps_per_s"), cpu.get("train_steps_per_s"))
        wall = _ratio(cpu.get("wall_time_s"), r.get("wall_time_s"))
        entry = {"steps_per_s_vs_cpu": steps, "wall_speedup_vs_cpu": wall,
                 "wall_not_slower": None if wall is None else wall >= 1.0}
        if name in GOAL_STEPS:
            entry["steps_goal"] = f">= {GOAL_RATIO:g}x the CPU's steps/s"
            entry["steps_status"] = None if steps is None else (
                "pass" if steps >= GOAL_RATIO else "miss")
        out[name] = entry
    return out


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def print_table(records: dict, other: dict, versus: dict) -> None:
    print(f"{'experiment':12s} {'wall s':>8s} {'train s':>8s} {'compile s':>9s} "
          f"{'steps/s':>10s} {'K':>5s} {'target':>6s} {'other path':>18s} "
          f"{'steps/s vs CPU':>14s}")
    for name, r in records.items():
        o = other.get(name)
        other_text = "-" if o is None else (
            f"{_fmt(o['train_steps_per_s'], '.1f')} (K={o['steps_per_call']})")
        v = versus.get(name, {}).get("steps_per_s_vs_cpu")
        print(f"{name:12s} {_fmt(r['wall_time_s'], '8.1f')} {_fmt(r['train_s'], '8.1f')} "
              f"{_fmt(r['train_compile_s'], '9.2f')} {_fmt(r['train_steps_per_s'], '10.1f')} "
              f"{_fmt(r['steps_per_call'], '5d')} {r['target_met']!s:>6s} {other_text:>18s} "
              f"{'-' if v is None else f'{v:.1f}x':>14s}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the :quick variants")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {EXPERIMENTS}")
    parser.add_argument("--both-paths", action="store_true",
                        help="also run the train_loop experiments on the path their "
                             "steps_per_call=None did not take (1: per step, 0: the scan)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON file to merge into (default results/<backend>.json)")
    parser.add_argument("--cpu-reference", type=Path, default=RESULTS / "cpu.json",
                        help="CPU results to compare a GPU/TPU run with")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    names = selected(parser, args.only, EXPERIMENTS, "experiment")

    device = device_record()
    key = "experiments_quick" if args.quick else "experiments"
    print(f"# {device['device_count']} x {device['device_kind']} ({device['backend']}), "
          f"{device['cpu_count']} CPU cores, load {os.getloadavg()[0]:.2f}, "
          f"jax {device['jax']}", flush=True)
    records, other = {}, {}
    for name in names:
        print(f"# {name}{' (quick)' if args.quick else ''} ...", flush=True)
        records[name] = run_one(name, args.quick, [])
        if args.both_paths and name in SCANNED:
            taken = records[name]["steps_per_call"]
            other[name] = run_one(name, args.quick,
                                  [f"--config.steps_per_call={0 if taken == 1 else 1}"])
            scan, per_step = ((other[name], records[name]) if taken == 1
                              else (records[name], other[name]))
            other[name]["scan_vs_per_step_steps_per_s"] = _ratio(
                scan["train_steps_per_s"], per_step["train_steps_per_s"])
    versus = {}
    if device["backend"] != "cpu" and args.cpu_reference.exists():
        try:
            cpu_records = json.loads(args.cpu_reference.read_text()).get(key, {})
        except (OSError, ValueError):
            cpu_records = {}
        versus = compare_with_cpu(records, cpu_records.get("experiments", {}))
    print()
    print_table(records, other, versus)
    record = {"experiments": records, "device": device,
              "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "quick": args.quick}
    if other:
        record["other_path"] = other
    if versus:
        record["versus_cpu"] = versus
    output = args.output or RESULTS / f"{device['backend']}.json"
    if not args.no_write:
        merge_record(output, key, record)
        print(f"\nwrote {output} [{key!r}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
