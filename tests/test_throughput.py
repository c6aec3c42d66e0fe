"""jaxmath.run.throughput and the throughput train_loop reports.

References: FLOPs of a matmul and of a dense layer's forward and backward pass in closed
form (2mnk per product); peaks from the vendors' data sheets (dense, no sparsity); the
meter's rates from the step numbers and times given to it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmath.run import loop as loop_module
from jaxmath.run.loop import train_loop
from jaxmath.run.throughput import (
    PERF_KEYS,
    Meter,
    format_rate,
    peak_flops,
    step_flops,
    without_perf,
)


@pytest.mark.parametrize("kind, dtypes, want", [
    ("NVIDIA H100 80GB HBM3", ["bfloat16"], 989.4e12),
    ("NVIDIA H100 80GB HBM3", ["float32"], 494.7e12),   # TF32
    ("NVIDIA H100 PCIe", ["bfloat16", "int32"], 756.5e12),
    ("NVIDIA H200", ["bfloat16"], 989.4e12),
    ("NVIDIA A100-SXM4-80GB", ["float16"], 312e12),
    ("NVIDIA A100-SXM4-40GB", ["float32", "bfloat16"], 156e12),  # any f32: the f32 peak
    ("TPU v4", ["float32"], 275e12),
    ("TPU v5 lite", ["bfloat16"], 197e12),
    ("TPU v5", ["bfloat16"], 459e12),
    ("TPU v5p", ["bfloat16"], 459e12),
    ("cpu", ["float32"], None),
    ("Tesla V100-SXM2-16GB", ["float32"], None),
])
def test_peak_flops(kind, dtypes, want):
    assert peak_flops(kind, dtypes) == want


def test_peak_flops_rejects_a_non_string():
    with pytest.raises(TypeError, match="device_kind must be a str, got int"):
        peak_flops(3)


def test_step_flops_of_a_matmul_and_a_dense_layer():
    m, n, k = 8, 16, 4
    a, b = jnp.ones((m, n)), jnp.ones((n, k))
    assert step_flops(jax.jit(jnp.matmul), a, b) == 2 * m * n * k

    def loss(w, x):  # forward y = x @ w, backward dL/dw = x^T (2 y): two products
        return jnp.sum((x @ w) ** 2)

    flops = step_flops(jax.jit(jax.grad(loss)), b, a)
    assert 2 * (2 * m * n * k) <= flops <= 2 * (2 * m * n * k) + 4 * m * k  # + elementwise


def test_step_flops_is_none_without_a_cost_analysis():
    class NoCost:
        def lower(self, *args):
            raise NotImplementedError("no cost analysis here")

    assert step_flops(NoCost()) is None


def test_meter_rates_leave_out_paused_time():
    m = Meter(examples_per_step=32, flops_per_step=2e9, peak=4e12)
    assert m.mark(5, 10.0, 0.0) == {}               # the reference: after compilation
    rates = m.mark(25, 14.0, 2.0)                    # 20 steps in 4 s, 2 s of them paused
    assert rates == {"perf/steps_per_s": 10.0, "perf/examples_per_s": 320.0,
                     "perf/flops_per_s": 2e10, "perf/mfu": 0.005}
    assert m.mark(25, 15.0, 2.0) == {}               # no new steps: no rate
    assert set(rates) <= set(PERF_KEYS)
    assert Meter().mark(1, 0.0, 0.0) == {} and Meter().mark(1, 0.0, 0.0) == {}


def test_meter_without_counts_reports_steps_only():
    m = Meter()
    m.mark(0, 0.0, 0.0)
    assert m.mark(10, 2.0, 0.0) == {"perf/steps_per_s": 5.0}
    assert m.describe({"perf/steps_per_s": 5.0}) == "5 steps/s"


@pytest.mark.parametrize("value, unit, text", [
    (812.3, "steps/s", "812 steps/s"), (3720.0, "steps/s", "3720 steps/s"),
    (25_900.0, "ex/s", "25.9 kex/s"), (1.79e6, "FLOP/s", "1.79 MFLOP/s"),
    (2.5e12, "FLOP/s", "2.5 TFLOP/s"), (0.25, "steps/s", "0.25 steps/s"),
])
def test_format_rate(value, unit, text):
    assert format_rate(value, unit) == text


# --------------------------------------------------------------------------- in the loop


def step_fn(w, x):
    loss, g = jax.value_and_grad(lambda w: jnp.mean((x @ w - 1.0) ** 2))(w)
    return w - 0.1 * g, {"loss": loss}


def batch_fn(step):
    return jax.random.normal(jax.random.fold_in(jax.random.key(0), step), (16, 8))


@pytest.mark.parametrize("steps_per_call", [1, 0])
def test_rows_carry_the_throughput(tmp_path, steps_per_call, monkeypatch):
    monkeypatch.setattr(loop_module, "peak_flops", lambda kind, dtypes: 1e12)
    result = train_loop(jnp.zeros(8), step_fn, batch_fn, num_steps=30, workdir=tmp_path,
                        log_every=10, checkpoint_every=30, progress="none",
                        examples_per_step=16, steps_per_call=steps_per_call)
    rows = result.history
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert rows[0]["perf/compile_s"] == pytest.approx(result.timing.compile_s)
    assert not any("perf/compile_s" in r for r in rows[1:])
    later = rows[-1]  # a full interval after the first call
    assert later["perf/steps_per_s"] > 0
    assert later["perf/examples_per_s"] == pytest.approx(16 * later["perf/steps_per_s"])
    # one update's FLOPs: the bare step's, plus the loop's few for the non-finite watch
    bare = step_flops(jax.jit(step_fn), jnp.zeros(8), batch_fn(0))
    flops = result.timing.flops_per_step
    assert bare <= flops <= bare + 64
    assert later["perf/flops_per_s"] == pytest.approx(flops * later["perf/steps_per_s"])
    assert later["perf/mfu"] == pytest.approx(later["perf/flops_per_s"] / 1e12)
    assert result.timing.mfu == pytest.approx(result.timing.flops_per_s / 1e12)
    assert [without_perf(r) for r in rows] == [{k: r[k] for k in ("step", "loss")}
                                              for r in rows]


def test_no_mfu_without_a_peak(tmp_path):
    result = train_loop(jnp.zeros(8), step_fn, batch_fn, num_steps=20, workdir=tmp_path,
                        log_every=10, progress="none")
    if jax.devices()[0].platform == "cpu":
        assert result.timing.peak_flops is None and result.timing.mfu is None
        assert "perf/mfu" not in result.history[-1]
    assert "perf/examples_per_s" not in result.history[-1]  # no examples_per_step given
    assert result.timing.flops_per_s > 0


def test_progress_line_shows_the_throughput(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop_module, "peak_flops", lambda kind, dtypes: 1e9)
    train_loop(jnp.zeros(8), step_fn, batch_fn, num_steps=20, workdir=tmp_path, log_every=10,
               progress="lines", examples_per_step=16)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "steps/s, " in last and "ex/s, " in last and "FLOP/s, MFU " in last, last


def test_examples_per_step_is_checked(tmp_path):
    with pytest.raises(ValueError, match="examples_per_step must be >= 1, got 0"):
        train_loop(jnp.zeros(8), step_fn, batch_fn, num_steps=2, workdir=tmp_path,
                   examples_per_step=0)
    with pytest.raises(TypeError, match="examples_per_step must be an int, got float"):
        train_loop(jnp.zeros(8), step_fn, batch_fn, num_steps=2, workdir=tmp_path,
                   examples_per_step=16.0)


def test_meter_matches_a_loop_timed_by_hand():
    """The meter's rate over marks equals steps over unpaused wall time, whatever the split."""
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(0.1, 1.0, 6))
    pauses = np.cumsum(rng.uniform(0.0, 0.05, 6))
    steps = [10, 20, 30, 40, 50, 60]
    m = Meter()
    rates = [m.mark(s, t, p) for s, t, p in zip(steps, times, pauses, strict=True)][1:]
    for i, r in enumerate(rates, start=1):
        want = 10 / ((times[i] - times[i - 1]) - (pauses[i] - pauses[i - 1]))
        assert r["perf/steps_per_s"] == pytest.approx(want)


def test_first_progress_line_eta_uses_the_rate_after_compilation(capsys):
    from jaxmath.run.progress import Progress

    bar = Progress("lines", "fit", 0, 100)
    bar.log(10, 1.0, "5 steps/s", steps_per_s=5.0)  # 90 steps left at 5 steps/s
    assert capsys.readouterr().out.strip().endswith("eta 18.0s")
