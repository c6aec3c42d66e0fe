"""Sweeps on a GPU: 16,384 MLP configurations as one vmapped sweep, and gradient_descent_sweep.

``"sweep"``: the training function and implementations of ``benchmarks/sweep.py``
(a 2-32-32-1 MLP, 200 full-batch Adam steps on 64 two-moons points) with 4,096
learning rates x 4 seeds: ``jaxmath.sweep.run_sweep`` beside sequential jitted runs
(timed on 64 configurations and compared per configuration), a hand-written
``jax.jit(jax.vmap(train))``, run_sweep in chunks of 128, a Python loop of a jitted
step (8 configurations) and a training script that compiles a step per rate (2).
Interleaved rounds after a device warm-up, per call and pipelined
(see _harness.measure_device).

Precision. The user's training function is neural-network code, so it runs at
JAX's default matmul precision (TF32 on an H100/H200); that is what is timed
(``--precision highest`` times float32 products instead, ``both`` times both).
Over 200 Adam steps TF32 rounding makes the swept and the one-by-one losses drift
apart (4.7 % at 2 of 64 rates on an H200) although the two programs compute the
same thing, so the check of the sweep machinery (swept == hand-written vmap ==
chunked == sequential == step loop == script, to float32 tolerances) runs its
computations again under ``jax.default_matmul_precision("highest")``. The record
keeps the default-precision spread for information.

``"gd_sweep"``: the seed's 3 x 2 regression, ``jm.gradient_descent_sweep`` over 1,
4,096 and 65,536 learning rates x 1,000 steps (classical math: float32 products).

    python -m benchmarks.gpu_sweep            # GPU: results/gpu.json["sweep"], ["gd_sweep"]
    python -m benchmarks.gpu_sweep --smoke    # 32 configurations, any machine (CPU too)

About 70 s on an H200 (20 s of it compiling; the script implementation compiles a
step per configuration).

Goals (as benchmarks/sweep.py): the sweep >= 20x the configurations per second of
sequential runs; run_sweep <= 1.15x the time of the hand-written vmap; both per
call and pipelined.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import sweep
from benchmarks._harness import (
    TIMINGS,
    Impl,
    check_close,
    device_parser,
    measure_device,
    merge_record,
    start_device_run,
    summarise_device,
)
from jaxmath.run.sweep import grid, run_sweep

OUTPUT = Path(__file__).parent / "results" / "gpu.json"
FULL = {"rates": 4096, "sequential": sweep.SEQUENTIAL, "chunk": sweep.CHUNK,
        "step_loop": sweep.STEP_LOOP, "script": 2, "rounds": 3, "block_s": 0.5,
        "max_calls": 3, "checked": "all", "gd_sizes": (1, 4096, 65536), "gd_steps": 1000,
        "warm_up_s": 2.0, "warm_up_size": 8192}
# CPU smoke: 32 configurations; no chunked sweep, step loop or script, and only the
# sequential runs checked against the sweep at 'highest' (compiling dominates)
SMOKE = {"rates": 8, "sequential": 4, "chunk": 0, "step_loop": 0, "script": 0, "rounds": 1,
         "block_s": 0.0, "max_calls": 1, "checked": ("sequential jax.jit(train) runs",),
         "gd_sizes": (1, 64), "gd_steps": 100, "warm_up_s": 0.05, "warm_up_size": 128}
SWEPT = "jaxmath.sweep.run_sweep"
SEQUENTIAL = "sequential jax.jit(train) runs"
HAND = "hand-written jax.jit(jax.vmap(train))"
CHUNKED = "jaxmath.sweep.run_sweep chunked"
STEP_LOOP = "sequential runs of a jitted step (Python loop)"
SCRIPT = "training script per configuration (recompiles per rate)"


@dataclasses.dataclass
class Setup:
    hparams: dict
    lrs: jax.Array
    seeds: jax.Array
    picked: np.ndarray
    looped: np.ndarray
    scripted: np.ndarray
    chunk: int

    @property
    def size(self) -> int:
        return len(self.hparams["seed"])


def setup(cfg: dict) -> Setup:
    """The sweep's configurations and the subsets timed one by one."""
    hparams = grid(learning_rate=np.geomspace(1e-4, 1e-1, cfg["rates"]), seed=sweep.SEEDS)
    size = len(hparams["seed"])
    picked = np.linspace(0, size - 1, cfg["sequential"]).astype(int)

    def subset(n):
        return picked[np.linspace(0, len(picked) - 1, n).astype(int)]
    return Setup(hparams, jnp.asarray(hparams["learning_rate"], jnp.float32),
                 jnp.asarray(hparams["seed"], jnp.int32), picked, subset(cfg["step_loop"]),
                 subset(cfg["script"]), cfg["chunk"])


def implementations(s: Setup) -> list[Impl]:
    """benchmarks/sweep.py's implementations, fresh jits (compiled at the current precision)."""
    one = jax.jit(sweep.train_arrays)
    hand = jax.jit(jax.vmap(sweep.train_arrays))
    impls = [
        Impl(SWEPT, functools.partial(run_sweep, sweep.train, s.hparams), role="jaxmath",
             configs=s.size),
        Impl(SEQUENTIAL, sweep._sequential(one, s.lrs[s.picked], s.seeds[s.picked]),
             configs=len(s.picked),
             note=f"timed on {len(s.picked)} of the {s.size} configurations; compiled once"),
        Impl(HAND, functools.partial(hand, s.lrs, s.seeds), role="info", configs=s.size),
        Impl(CHUNKED, functools.partial(run_sweep, sweep.train, s.hparams,
                                        chunk_size=s.chunk), role="info", configs=s.size,
             note=f"chunk_size={s.chunk}"),
        Impl(STEP_LOOP, sweep._sequential(sweep._step_loop, s.lrs[s.looped], s.seeds[s.looped]),
             role="info", configs=len(s.looped),
             note=f"timed on {len(s.looped)} configurations"),
        Impl(SCRIPT, sweep._sequential(sweep._script, np.asarray(s.lrs[s.scripted]),
                                       np.asarray(s.seeds[s.scripted])),
             role="info", configs=len(s.scripted),
             note=f"timed on {len(s.scripted)} configurations; each compiles its own step"),
    ]
    # the smoke run has no chunked sweep, step loop or script
    return [i for i in impls if i.configs and (i.name != CHUNKED or s.chunk)]


def _rows(s: Setup) -> dict[str, np.ndarray | slice]:
    """Which configurations of the sweep each implementation computed."""
    rows = {HAND: slice(None), SEQUENTIAL: s.picked, STEP_LOOP: s.looped, SCRIPT: s.scripted}
    if s.chunk:
        rows[CHUNKED] = slice(None)
    return {name: r for name, r in rows.items() if not isinstance(r, np.ndarray) or len(r)}


def spread(s: Setup, outputs: dict) -> dict:
    """Largest |difference| from the swept results, per implementation and output."""
    swept = outputs[SWEPT]
    return {name: {k: float(np.max(np.abs(np.asarray(outputs[name][k], np.float64)
                                          - np.asarray(swept[k], np.float64)[rows])))
                   for k in ("loss", "accuracy")}
            for name, rows in _rows(s).items() if name in outputs}


def check_at_highest(s: Setup, checked: str | tuple[str, ...] = "all") -> dict:
    """The implementations once more at float32 products; equal to the sweep, or raise."""
    start = time.perf_counter()
    impls = [i for i in implementations(s) if checked == "all" or i.name in (SWEPT, *checked)]
    with jax.default_matmul_precision("highest"):
        outputs = {i.name: jax.block_until_ready(i.fn()) for i in impls}
    swept = outputs[SWEPT]
    for name, rows in _rows(s).items():
        if name not in outputs:
            continue
        for k in ("loss", "accuracy"):
            check_close(f"sweep/{name}/{k} at precision highest", swept[k][rows],
                        outputs[name][k], sweep.RTOL, sweep.ATOL)
    return {"precision": "highest", "passed": True, "rtol": sweep.RTOL, "atol": sweep.ATOL,
            "checked": [n for n in outputs if n != SWEPT],
            "max_abs_diff_vs_sweep": spread(s, outputs),
            "seconds": round(time.perf_counter() - start, 1),
            "note": "the sweep machinery checked under jax.default_matmul_precision('highest'): "
                    "the swept results equal those of every implementation in 'checked' to "
                    "float32 tolerances"}


def timed(s: Setup, cfg: dict, precision: str) -> dict:
    """The timed record at one matmul precision (``"default"``: JAX's own)."""
    context = (contextlib.nullcontext() if precision == "default"
               else jax.default_matmul_precision(precision))
    with context:
        impls = implementations(s)
        timings, outputs = measure_device(impls, cfg["rounds"], warm_calls=1, block_warm=0,
                                          block_s=cfg["block_s"], min_calls=1,
                                          max_calls=cfg["max_calls"])
    description = (f"{s.size} configurations ({len(s.hparams['seed']) // len(sweep.SEEDS)} "
                   f"Adam learning rates x {len(sweep.SEEDS)} seeds) of a 2-{sweep.WIDTH}-"
                   f"{sweep.WIDTH}-1 MLP, {sweep.NUM_STEPS} full-batch steps on "
                   f"{sweep.NUM_POINTS} two-moons points: one vmapped sweep vs sequential "
                   "jitted runs (configs/s)")
    record = summarise_device(description, impls, timings, sweep.GOAL,
                              f">= {sweep.GOAL:g}x the configurations per second of "
                              "sequential jitted runs, per call and pipelined")
    roles = {SWEPT: "jaxmath", HAND: "peer"}
    overhead = summarise_device("run_sweep vs a hand-written jax.jit(jax.vmap)",
                                [dataclasses.replace(i, role=roles.get(i.name, "info"))
                                 for i in impls], timings, 1 / sweep.OVERHEAD_GOAL, "")
    time_ratio = {k: 1 / overhead["ratio"][k] for k in TIMINGS}
    swept = outputs[SWEPT]
    record.update({
        "timed_precision": precision,
        "overhead_time_ratio": time_ratio,
        "overhead_goal": sweep.OVERHEAD_GOAL,
        "overhead_goal_text": f"run_sweep <= {sweep.OVERHEAD_GOAL:g}x the time of the "
                              "hand-written vmap, per call and pipelined",
        "overhead_status": ("pass" if max(time_ratio.values()) <= sweep.OVERHEAD_GOAL
                            else "miss"),
        "shape": {"configurations": s.size, "points": sweep.NUM_POINTS, "width": sweep.WIDTH,
                  "hidden_layers": 2, "steps": sweep.NUM_STEPS},
        "final_accuracy": {"median": float(np.median(swept["accuracy"])),
                           "max": float(np.max(swept["accuracy"]))},
        f"max_abs_diff_vs_sweep_at_{precision}_precision": spread(s, outputs),
        "matmul_flop_per_configuration": sweep.MATMUL_FLOP,
        "sequential_gflop_per_s": (sweep.MATMUL_FLOP * len(s.picked)
                                   / timings[SEQUENTIAL].per_call_s / 1e9),
    })
    return record


def gd_sweep(cfg: dict) -> dict:
    """jm.gradient_descent_sweep on the seed's regression at several sweep sizes."""
    from benchmarks.gd_sweep import loss
    from jaxmath.optim import gradient_descent_sweep

    impls = []
    for n in cfg["gd_sizes"]:
        lrs = jnp.logspace(-3, 0, n)
        impls.append(Impl(f"{n} learning rates",
                          functools.partial(gradient_descent_sweep, loss, jnp.zeros(2), lrs,
                                            cfg["gd_steps"]), role="info", configs=n))
    timings, _ = measure_device(impls, cfg["rounds"], warm_calls=1, block_s=0.1, min_calls=1,
                                max_calls=10)
    return {"description": f"jm.gradient_descent_sweep on the seed's 3 x 2 regression, "
                           f"{cfg['gd_steps']} steps, learning rates logspace(-3, 0, n)",
            "steps": cfg["gd_steps"],
            "implementations": {
                i.name: {"configs": i.configs, **timings[i.name].record(),
                         **{f"configs_per_s_{k}": i.configs / getattr(timings[i.name], f"{k}_s")
                            for k in TIMINGS}} for i in impls}}


def _print(record: dict) -> None:
    for name, v in record["implementations"].items():
        rates = "/".join(f"{v[f'configs_per_s_{k}']:.4g}" for k in TIMINGS)
        speed = "/".join(f"{v['speedup_vs_fastest_peer'][k]:.2f}" for k in TIMINGS)
        print(f"  {name:60s} {rates:>22s} configs/s  {speed}x")
    ratio = "/".join(f"{record['ratio'][k]:.1f}" for k in TIMINGS)
    overhead = "/".join(f"{record['overhead_time_ratio'][k]:.3f}" for k in TIMINGS)
    print(f"  run_sweep vs sequential runs {ratio}x ({record['status'].upper()} of >= "
          f"{record['goal']:g}x); time vs hand-written vmap {overhead} "
          f"({record['overhead_status'].upper()} of <= {record['overhead_goal']:g})", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = device_parser(__doc__.splitlines()[0], OUTPUT,
                           smoke="32 configurations (any machine)")
    parser.add_argument("--precision", choices=("default", "highest", "both"), default="default",
                        help="matmul precision of the timed runs (the check is always at "
                             "'highest')")
    parser.add_argument("--no-gd", action="store_true", help="skip the gd_sweep record")
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else FULL
    output = args.output or (None if args.smoke else OUTPUT)
    device, warm, start = start_device_run(cfg)
    s = setup(cfg)
    precisions = ("default", "highest") if args.precision == "both" else (args.precision,)
    records = {p: timed(s, cfg, p) for p in precisions}
    for p, r in records.items():
        print(f"# timed at {p} precision", flush=True)
        _print(r)
    check = check_at_highest(s, cfg["checked"])
    print(f"# check at precision highest: passed ({check['seconds']} s)", flush=True)
    record = records[precisions[0]]
    if len(records) > 1:
        record["also_timed"] = {p: {k: r[k] for k in ("ratio", "status", "overhead_time_ratio",
                                                       "overhead_status")}
                                | {"run_sweep_configs_per_s": {
                                    k: r["implementations"][SWEPT][f"configs_per_s_{k}"]
                                    for k in TIMINGS}}
                                for p, r in records.items() if p != precisions[0]}
    record.update(check=check, device=device, date=device["date"], smoke=args.smoke,
                  warm_up=warm, config=dict(cfg),
                  timing="per call: median of single calls, each waited for; pipelined: "
                         "calls back to back, one wait at the end; interleaved rounds "
                         "after a device warm-up",
                  seconds=round(time.perf_counter() - start, 1))
    gd = None
    if not args.no_gd:
        gd = gd_sweep(cfg)
        gd.update(device=device, date=device["date"], smoke=args.smoke)
        for name, v in gd["implementations"].items():
            print(f"  gd_sweep {name:20s} {v['configs_per_s_per_call']:.4g}/"
                  f"{v['configs_per_s_pipelined']:.4g} configs/s", flush=True)
    print(f"# {round(time.perf_counter() - start, 1)} s", flush=True)
    if output:
        merge_record(output, "sweep", record)
        if gd is not None:
            merge_record(output, "gd_sweep", gd)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
