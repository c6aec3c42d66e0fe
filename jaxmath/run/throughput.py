r"""Throughput of a training run: steps/s, examples/s, FLOP/s and model FLOPs utilisation.

.. math:: \mathrm{MFU} = \frac{F_\text{step} \cdot (\text{steps per second})}
                              {n_\text{devices} \cdot P_\text{peak}}

:math:`F_\text{step}` is the FLOP count of one update as written by the model, taken from
XLA's cost analysis of the *lowered* step (:func:`step_flops`: the program before XLA's
optimisations and before it is split over devices, so it counts the whole global batch
once, as "model FLOPs" do, and is the same on every backend). :math:`P_\text{peak}` is the
device's dense matrix-multiply peak from :data:`PEAK_FLOPS`, for the precision the state's
floating-point parameters compute in (:func:`peak_flops`): a bfloat16/float16 model against
the bf16 peak, a float32 model against the peak of JAX's default float32 matmul on that
device (TF32 on NVIDIA A100/H100/H200, one bf16 pass on TPUs). A device that is not in the
table (a CPU, an older GPU) has no peak: its throughput is shown as FLOP/s alone.

:class:`Meter` turns the times at which log steps complete into these rates for the
metrics rows (keys in :data:`PERF_KEYS`, prefixed ``perf/`` so that TensorBoard and W&B
group them apart from the model's metrics) and the progress line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp

__all__ = ["PEAK_FLOPS", "PERF_KEYS", "Meter", "Peak", "format_rate", "peak_flops",
           "step_flops", "without_perf"]

PERF_PREFIX = "perf/"
PERF_KEYS = ("perf/steps_per_s", "perf/examples_per_s", "perf/flops_per_s", "perf/mfu",
             "perf/compile_s")
"""The throughput keys a metrics row may hold (timings: they differ from run to run)."""


class Peak(NamedTuple):
    """Dense matrix-multiply peak of one device, FLOP/s.

    Attributes:
      bf16: bfloat16 (and float16) inputs, float32 accumulation.
      f32: float32 inputs at JAX's default precision on that device.
    """

    bf16: float
    f32: float


# Dense (no sparsity) peaks per chip from the vendors' data sheets. Matched against
# jax.Device.device_kind in order: the first entry whose every word is in it wins.
PEAK_FLOPS: dict[str, Peak] = {
    "H200": Peak(989.4e12, 494.7e12),           # H200 SXM: as H100 SXM; f32 runs as TF32
    "H100 PCIe": Peak(756.5e12, 378.0e12),
    "H100": Peak(989.4e12, 494.7e12),           # H100 SXM5
    "A100": Peak(312.0e12, 156.0e12),           # SXM and PCIe
    "TPU v5 lite": Peak(197.0e12, 197.0e12),    # v5e; f32 matmuls run as one bf16 pass
    "TPU v5e": Peak(197.0e12, 197.0e12),
    "TPU v5p": Peak(459.0e12, 459.0e12),
    "TPU v5": Peak(459.0e12, 459.0e12),         # JAX names the v5p "TPU v5"
    "TPU v4": Peak(275.0e12, 275.0e12),
}
"""Peak FLOP/s per device kind (bf16, float32 at JAX's default precision)."""


def peak_flops(device_kind: str, dtypes: Sequence[Any] = ()) -> float | None:
    """The peak FLOP/s of a ``device_kind`` for a state holding ``dtypes``, or None.

    The bf16 peak applies when the floating-point dtypes are all 16-bit, the float32 one
    otherwise (an empty ``dtypes`` counts as float32).

    Example:
      >>> peak_flops("NVIDIA H100 80GB HBM3", ["bfloat16"])
      989400000000000.0
      >>> peak_flops("NVIDIA H200", ["float32"]), peak_flops("cpu")
      (494700000000000.0, None)
    """
    if not isinstance(device_kind, str):
        raise TypeError(f"device_kind must be a str, got {type(device_kind).__name__}")
    kind = device_kind.lower()
    for name, peak in PEAK_FLOPS.items():
        if all(word in kind for word in name.lower().split()):
            floats = [jnp.dtype(d) for d in dtypes if jnp.issubdtype(d, jnp.floating)]
            half = floats and all(d.itemsize == 2 for d in floats)
            return peak.bf16 if half else peak.f32
    return None


def step_flops(jitted: Any, *args: Any) -> float | None:
    """FLOPs of one call of ``jitted(*args)`` from XLA's cost analysis of its lowering.

    ``args`` may be arrays or ``jax.ShapeDtypeStruct``; nothing is compiled (a lowering
    ``jax.jit`` already did for these arguments is reused). Returns None where the backend
    gives no cost analysis.

    Example:
      >>> f = jax.jit(lambda a, b: a @ b)
      >>> step_flops(f, jax.ShapeDtypeStruct((8, 16), "float32"),
      ...            jax.ShapeDtypeStruct((16, 4), "float32"))  # 2 * 8 * 16 * 4
      1024.0
    """
    try:
        cost = jitted.lower(*args).cost_analysis()
    except Exception:  # a backend without cost analysis: no FLOPs
        return None
    if isinstance(cost, Sequence) and not isinstance(cost, dict):  # older JAX: one per module
        cost = cost[0] if cost else None
    flops = None if cost is None else cost.get("flops")
    return float(flops) if flops is not None and flops > 0 else None


def format_rate(value: float, unit: str = "") -> str:
    """A rate to 3 significant digits, with an SI prefix from 10,000 on.

    Example:
      >>> format_rate(2.5e12, "FLOP/s"), format_rate(812.3, "steps/s"), format_rate(25_900)
      ('2.5 TFLOP/s', '812 steps/s', '25.9 k')
    """
    def digits(v: float) -> str:
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"

    for threshold, factor, prefix in ((1e15, 1e15, "P"), (1e12, 1e12, "T"), (1e9, 1e9, "G"),
                                      (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(value) >= threshold:
            return f"{digits(value / factor)} {prefix}{unit}"
    return f"{digits(value)} {unit}".rstrip()


def without_perf(row: dict) -> dict:
    """``row`` without its throughput keys (``perf/...``): what two runs of the same
    computation have in common.

    Example:
      >>> without_perf({"step": 10, "loss": 0.5, "perf/steps_per_s": 812.0})
      {'step': 10, 'loss': 0.5}
    """
    return {k: v for k, v in row.items() if not str(k).startswith(PERF_PREFIX)}


class Meter:
    """Rates between the completions of successive log steps.

    ``mark(step, time, paused_s)`` is called when the updates up to ``step`` are known to
    be done (at ``time``, from :func:`time.perf_counter`); ``paused_s`` is the loop's
    running total of time spent outside the updates (evaluation, checkpoints, profiling)
    and is left out of the rates. The first mark only sets the reference: the interval
    before it holds the compilation.

    Args:
      examples_per_step: the global batch size, or None (no examples/s).
      flops_per_step: :func:`step_flops` of one update, or None (no FLOP/s, no MFU).
      peak: the summed peak FLOP/s of the devices the step runs on, or None (no MFU).

    Example:
      >>> m = Meter(examples_per_step=32, flops_per_step=1e9, peak=1e12)
      >>> m.mark(10, 1.0, 0.0)
      {}
      >>> m.mark(20, 3.0, 1.0)  # 10 steps in 2 s, 1 s of them paused
      {'perf/steps_per_s': 10.0, 'perf/examples_per_s': 320.0, 'perf/flops_per_s': 10000000000.0,
       'perf/mfu': 0.01}
    """

    def __init__(self, examples_per_step: int | None = None,
                 flops_per_step: float | None = None, peak: float | None = None):
        self.examples_per_step = examples_per_step
        self.flops_per_step = flops_per_step
        self.peak = peak
        self._last: tuple[int, float, float] | None = None

    def mark(self, step: int, time: float, paused_s: float) -> dict[str, float]:
        """The rates since the previous mark (empty at the first)."""
        last, self._last = self._last, (step, time, paused_s)
        if last is None or step <= last[0]:
            return {}
        seconds = (time - last[1]) - (paused_s - last[2])
        if not seconds > 0:
            return {}
        rate = (step - last[0]) / seconds
        out = {"perf/steps_per_s": rate}
        if self.examples_per_step:
            out["perf/examples_per_s"] = rate * self.examples_per_step
        if self.flops_per_step:
            out["perf/flops_per_s"] = rate * self.flops_per_step
            if self.peak:
                out["perf/mfu"] = out["perf/flops_per_s"] / self.peak
        return out

    def describe(self, perf: dict[str, float]) -> str:
        """The progress-line text of :meth:`mark`'s rates (empty if there are none).

        Example:
          >>> Meter().describe({"perf/steps_per_s": 812.3, "perf/flops_per_s": 2.5e12})
          '812 steps/s, 2.5 TFLOP/s'
        """
        parts = []
        for key, unit in (("perf/steps_per_s", "steps/s"), ("perf/examples_per_s", "ex/s"),
                          ("perf/flops_per_s", "FLOP/s")):
            if key in perf and math.isfinite(perf[key]):
                parts.append(format_rate(perf[key], unit))
        if "perf/mfu" in perf:
            parts.append(f"MFU {100 * perf['perf/mfu']:.1f}%")
        return ", ".join(parts)
