"""Run jaxmath's GPU benchmarks into one JSON file (benchmarks/results/gpu.json).

    python3 -m benchmarks.gpu                         # every part (make bench-gpu)
    python3 -m benchmarks.gpu --only kernels,sweep    # some parts
    python3 -m benchmarks.gpu --skip experiments      # all but some
    python3 -m benchmarks.gpu --smoke --output /tmp/gpu.json   # tiny sizes, any machine
    python3 -m benchmarks.gpu --output $OUT/gpu.json --log-dir $OUT/logs --budget-s 540

The parts, in the order they run, with their expected time on one NVIDIA H200
(start-up and device warm-up included) and the keys they write:

==============  =======  ========================  ==========================================
part            time     keys                      what
==============  =======  ========================  ==========================================
kernels         ~40 s    kernels                   benchmarks/gpu_kernels.py: entropy, KL,
                                                   softmax (TB/s), conv2d bf16 (TFLOP/s)
sweep           ~80 s    sweep, gd_sweep           benchmarks/gpu_sweep.py: 16,384-config
                                                   MLP sweep; gradient_descent_sweep
attention       ~180 s   attention                 benchmarks/gpu_attention.py: 20 cases,
                                                   bf16/f32, mask, bias, pallas, L = 65536
experiments     ~200 s   experiments               benchmarks/experiments.py, if present:
                                                   each experiment's default config
==============  =======  ========================  ==========================================

The times are estimates (from the H200 run of 2026-12-04: compile counts, kernel
times and the slow tests' durations), not yet measured for these scripts: about
5 minutes without the experiments, 8 with them. Each part runs in its own process
(its GPU memory is freed for the next, and a crash costs that part only), under a
time limit of ``--timeout-scale`` (default 2) times its expected time, and merges
its records into the output file as it finishes: atomically, keeping every other
key, so a run cut short keeps the parts that finished. With ``--budget-s`` the
whole run stays within that many seconds: a part starts only if at least half its
expected time is left, and is stopped when the budget runs out. ``--smoke`` runs
every part at tiny sizes on any machine, the experiments' ``--quick`` variants
(key ``experiments_quick``) included. This script adds a ``gpu_run`` record: the
parts run, their seconds and exit status, nvidia-smi's device name and the
commit ($JAXMATH_COMMIT where the checkout has no git). Every part's own record
holds the device's names (nvidia-smi, JAX device_kind, torch), versions and date.
The exit status is 1 if a part failed or ran out of time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import git_commit, merge_record, nvidia_smi_names

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "benchmarks" / "results" / "gpu.json"
EXPERIMENTS = ROOT / "benchmarks" / "experiments.py"
# part -> (command after the interpreter, expected seconds on one H200, keys it writes)
PARTS = {
    "kernels": (["-m", "benchmarks.gpu_kernels"], 40, ["kernels"]),
    "sweep": (["-m", "benchmarks.gpu_sweep"], 80, ["sweep", "gd_sweep"]),
    "attention": (["-m", "benchmarks.gpu_attention"], 180, ["attention"]),
    "experiments": ([str(EXPERIMENTS.relative_to(ROOT))], 200, ["experiments"]),
}


def _pump(stream, sinks) -> None:
    for line in iter(stream.readline, ""):
        for sink in sinks:
            sink.write(line)
            sink.flush()


def run_part(name: str, argv: list[str], timeout_s: float, log: Path | None) -> dict:
    """Run one part's process, echoing (and logging) its output; kill it at the time limit."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    command = [sys.executable, *argv]
    print(f"## {name}: {' '.join(command)} (limit {timeout_s:.0f} s)", flush=True)
    sink = log.open("w") if log else None
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    pump = threading.Thread(target=_pump, args=(proc.stdout, [sys.stdout] + ([sink] if sink
                                                                            else [])))
    pump.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGTERM)  # the part's own process group
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    pump.join()
    if sink:
        sink.close()
    seconds = round(time.perf_counter() - start, 1)
    status = "timed out" if timed_out else "ok" if proc.returncode == 0 else "failed"
    print(f"## {name}: {status} in {seconds} s (exit {proc.returncode})", flush=True)
    return {"command": " ".join(["python3", *argv]), "seconds": seconds,
            "returncode": proc.returncode, "status": status, "limit_s": timeout_s,
            **({"log": str(log)} if log else {})}


def _experiments_argv(output: Path, smoke: bool) -> list[str] | str:
    """experiments.py's command line, or why it is not run."""
    if not EXPERIMENTS.exists():
        return "benchmarks/experiments.py does not exist in this checkout"
    argv = [*PARTS["experiments"][0], "--output", str(output)]
    if smoke:
        text = EXPERIMENTS.read_text()
        small = next((flag for flag in ("--smoke", "--quick") if f'"{flag}"' in text), None)
        if small is None:
            return "benchmarks/experiments.py has no --smoke or --quick"
        argv.append(small)
    return argv


def _statuses(output: Path, keys: list[str]) -> list[str]:
    """One line per key written: its goal statuses, for the console."""
    try:
        data = json.loads(output.read_text())
    except (OSError, ValueError):
        return []
    lines = []
    for key in keys:
        r = data.get(key)
        if not isinstance(r, dict):
            continue
        if key == "attention" and "summary" in r:
            parts = [f"{k}: " + ", ".join(f"{s} {len(v)}" for s, v in g.items())
                     for k, g in r["summary"].items()]
        elif key == "kernels":
            parts = [f"{n} {b.get('status')}" for n, b in r.get("benchmarks", {}).items()]
        else:
            parts = [f"{k} {r[k]}" for k in ("status", "overhead_status") if k in r]
        lines.append(f"{key}: {'; '.join(parts) or 'written'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=OUTPUT,
                        help="JSON file the parts merge into (default %(default)s)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {list(PARTS)}")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (any machine)")
    parser.add_argument("--timeout-scale", type=float, default=2.0,
                        help="each part's time limit: this times its expected time")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="keep the whole run within this many seconds")
    parser.add_argument("--log-dir", type=Path, default=None,
                        help="also write each part's output to DIR/<part>.log")
    args = parser.parse_args(argv)

    def names(text):
        chosen = [n.strip() for n in text.split(",") if n.strip()]
        unknown = sorted(set(chosen) - set(PARTS))
        if unknown:
            parser.error(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
        return chosen

    only, skip = names(args.only), names(args.skip)
    parts = [p for p in PARTS if (not only or p in only) and p not in skip]
    output = args.output.resolve()
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
           "command": " ".join(["python3 -m benchmarks.gpu", *(argv if argv is not None
                                                                else sys.argv[1:])]),
           "smoke": args.smoke, "nvidia_smi": nvidia_smi_names(), "commit": git_commit(),
           "parts": {}}
    written = []
    for part in parts:
        command, expected_s, keys = PARTS[part]
        limit = expected_s * args.timeout_scale
        if args.budget_s is not None:
            left = args.budget_s - (time.perf_counter() - start)
            if left < 0.5 * expected_s:
                print(f"## {part}: skipped: {left:.0f} s of the budget left, expected "
                      f"{expected_s} s", flush=True)
                run["parts"][part] = {"status": "skipped", "reason": "time budget"}
                continue
            limit = min(limit, left)
        if part == "experiments":
            command = _experiments_argv(output, args.smoke)
            if isinstance(command, str):
                print(f"## experiments: skipped: {command}", flush=True)
                run["parts"][part] = {"status": "skipped", "reason": command}
                continue
        else:
            command = [*command, "--output", str(output)] + (["--smoke"] if args.smoke else [])
        log = args.log_dir / f"{part}.log" if args.log_dir else None
        run["parts"][part] = {**run_part(part, command, limit, log), "expected_s": expected_s}
        written += keys + (["experiments_quick"] if part == "experiments" else [])
    run["seconds"] = round(time.perf_counter() - start, 1)
    merge_record(output, "gpu_run", run)
    print(f"\n# {run['seconds']} s; wrote {output}")
    for part, r in run["parts"].items():
        print(f"#   {part:12s} {r['status']:10s} {r.get('seconds', '')}")
    for line in _statuses(output, written):
        print(f"#   {line}")
    failed = [p for p, r in run["parts"].items() if r["status"] in ("failed", "timed out")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
