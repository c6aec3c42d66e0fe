"""The MLP sweep benchmark on a GPU: 16,384 configurations as one vmapped sweep.

The same training function, implementations and checks as ``benchmarks/sweep.py``
(a 2-32-32-1 MLP, 200 full-batch Adam steps on 64 two-moons points), with 4,096
learning rates x 4 seeds: ``jaxmath.sweep.run_sweep`` beside sequential jitted runs
(timed on 64 configurations and compared per configuration) and a hand-written
``jax.jit(jax.vmap(train))``. The record, with the device's name, goes to
``results/gpu.json`` under ``"sweep"`` (other entries of the file are kept).

    python benchmarks/gpu_sweep.py            # on a GPU: writes results/gpu.json
    python benchmarks/gpu_sweep.py --smoke    # 256 configurations, any machine, writes nothing
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import sweep
from benchmarks.gpu_attention import OUTPUT, device_info, merge_record

FULL_RATES = 4096   # x 4 seeds = 16,384 configurations
SMOKE_RATES = 64


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="256 configurations (any machine)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"JSON file (default {OUTPUT}; --smoke writes none)")
    args = parser.parse_args(argv)
    device = device_info()
    print(f"# {device}", flush=True)
    record = sweep.bench(quick=args.smoke, num_rates=SMOKE_RATES if args.smoke else FULL_RATES)
    record.update(device=device, smoke=args.smoke,
                  date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    for name, v in record["implementations"].items():
        print(f"{name:60s} {v['configs_per_s']:12.4g} configs/s "
              f"{v['speedup_vs_fastest_peer']:8.2f}x")
    print(f"run_sweep vs sequential jitted runs: {record['ratio']:.2f}x "
          f"({record['status'].upper()} of >= {record['goal']:g}x)")
    output = args.output or (None if args.smoke else OUTPUT)
    if output:
        merge_record(output, "sweep", record)
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
