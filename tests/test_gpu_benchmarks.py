"""The GPU benchmark scripts run on a CPU with --smoke and write well-formed records.

CI has no GPU: these run the same code paths at tiny sizes (cuDNN and the Pallas
path are then recorded as errors, not crashes); the GPU figures themselves go into
benchmarks/results/gpu.json. About 40 s on an idle 2-core CPU, most of it compiling.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import _harness, gpu, gpu_attention
from benchmarks._harness import TIMINGS, Impl, measure_device, merge_record

ROLES = {"jaxmath", "peer", "info"}
STATUSES = {"pass", "miss"}


def _check_timing(v: dict) -> None:
    for kind in TIMINGS:
        assert v[f"{kind}_s"] > 0
        assert len(v[f"{kind}_times_s"]) >= 1
    assert v["first_call_s"] > 0 and v["calls_per_block"] >= 1


def _check_device(d: dict) -> None:
    assert d["name"] and d["jax"] == jax.__version__ and d["jax_devices"]
    assert d["date"] and "commit" in d and "nvidia_smi" in d and "torch" in d


def test_measure_device_times_both_ways_and_records_first_call_errors():
    synced = []
    f = jax.jit(lambda x: x * 2)
    x = jnp.ones(4)

    def broken():
        raise RuntimeError("no such kernel\nsecond line")

    impls = [Impl("a", lambda: f(x), role="jaxmath"),
             Impl("b", lambda: f(x) + 1, sync=lambda out: synced.append(out)),
             Impl("broken", broken)]
    errors: dict[str, str] = {}
    timings, outputs = measure_device(impls, rounds=2, warm_calls=1, block_s=0.0, min_calls=2,
                                      max_calls=2, errors=errors, convert=lambda o: o[0])
    assert errors == {"broken": "RuntimeError: no such kernel"}
    assert set(timings) == set(outputs) == {"a", "b"}
    assert outputs["b"] == 3.0
    for t in timings.values():
        assert t.calls == 2 and t.rounds == 2
        assert len(t.per_call_times_s) == 4 and len(t.pipelined_times_s) == 2
        assert t.per_call_s > 0 and t.pipelined_s > 0
    # first call + 1 warm + 2 rounds x (1 block warm + 2 single + 1 wait after the pipeline)
    assert len(synced) == 1 + 1 + 2 * (1 + 2 + 1)
    with pytest.raises(RuntimeError, match="no such kernel"):
        measure_device(impls[2:], rounds=1)


def test_merge_record_keeps_other_keys(tmp_path):
    path = tmp_path / "gpu.json"
    merge_record(path, "a", {"x": 1})
    merge_record(path, "b", {"y": (2, 3)})
    merge_record(path, "a", {"x": 4})
    assert json.loads(path.read_text()) == {"a": {"x": 4}, "b": {"y": [2, 3]}}
    assert [p.name for p in tmp_path.iterdir()] == ["gpu.json"]  # no temporary left


def test_warm_up_device_reports_rates():
    warm = _harness.warm_up_device(min_s=0.0, max_s=0.2, size=64)
    assert warm["bursts"] >= 1 and warm["tflops_best"] >= warm["tflops_first"] > 0


def test_attention_smoke(tmp_path):
    path = tmp_path / "gpu.json"
    assert gpu_attention.main(["--smoke", "--modes", "fwd", "--output", str(path)]) == 0
    r = json.loads(path.read_text())["attention"]
    _check_device(r["device"])
    assert r["smoke"] and r["warm_up"]["bursts"] >= 1 and r["jax_dispatch_overhead_s"] > 0
    kinds = {(c["dtype"], None if c["extra"] is None else next(iter(c["extra"])))
             for c in r["cases"]}
    assert kinds == {("bfloat16", None), ("float32", None), ("bfloat16", "mask"),
                     ("bfloat16", "bias")}
    for c in r["cases"]:
        assert c["mode"] == "fwd" and "error" not in c, c.get("error")
        ran = c["implementations"]
        default = [n for n in ran if n.startswith("jaxmath default")]
        assert len(default) == 1 and "torch SDPA" in ran and "jax.nn xla" in ran
        for v in ran.values():
            assert v["role"] in ROLES
            _check_timing(v)
            assert v["tflops_per_call"] > 0 and v["tflops_pipelined"] > 0
        # cuDNN and Pallas ran, failed or were skipped: Pallas off the GPU (interpret
        # mode), cuDNN for float32 (it takes none)
        for name in ("jaxmath pallas", "jax.nn cudnn"):
            assert sum(name in where for where in (ran, c["errors"], c["skipped"])) == 1
        assert ("jaxmath pallas" in c["skipped"]) == (jax.default_backend() != "gpu")
        assert ("jax.nn cudnn" in c["skipped"]) == (c["dtype"] == "float32")
        assert set(c["ratio_vs_best_peer"]) == set(TIMINGS)
        assert c["reference"] == "torch SDPA"
        assert max(c["max_abs_diff_vs_reference"].values()) < 0.05
    assert [x["mode"] for x in r["long"]] == ["fwd"] and r["long"][0]["ran"]
    assert set(r["summary"]) == {"status", "pallas_status"}


def test_gpu_entry_point_smoke_merges_kernels_and_sweeps(tmp_path):
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({"kept": {"from": "an earlier run"}}))
    assert gpu.main(["--smoke", "--only", "kernels,sweep", "--output", str(path)]) == 0
    data = json.loads(path.read_text())
    assert set(data) == {"kept", "kernels", "sweep", "gd_sweep", "gpu_run"}
    assert data["kept"] == {"from": "an earlier run"}

    run = data["gpu_run"]
    assert run["smoke"] and list(run["parts"]) == ["kernels", "sweep"]
    assert all(p["status"] == "ok" and p["returncode"] == 0 for p in run["parts"].values())

    kernels = data["kernels"]
    _check_device(kernels["device"])
    assert set(kernels["benchmarks"]) == {"entropy", "kl_divergence", "softmax", "conv2d"}
    for name, b in kernels["benchmarks"].items():
        assert b["status"] in STATUSES, (name, b.get("error"))
        assert set(b["ratio"]) == set(TIMINGS) and b["wrong_results"] == []
        assert b["same_program"] in (True, False, None)
        unit = b["unit"]
        assert [v["role"] for v in b["implementations"].values()] == ["jaxmath", "peer", "info"]
        for v in b["implementations"].values():
            _check_timing(v)
            assert v[f"{unit}_per_call"] > 0 and v[f"{unit}_pipelined"] > 0

    sweep = data["sweep"]
    _check_device(sweep["device"])
    assert sweep["timed_precision"] == "default"
    assert sweep["check"]["precision"] == "highest" and sweep["check"]["passed"]
    assert sweep["status"] in STATUSES and sweep["overhead_status"] in STATUSES
    assert set(sweep["ratio"]) == set(sweep["overhead_time_ratio"]) == set(TIMINGS)
    for v in sweep["implementations"].values():
        _check_timing(v)
    gd = data["gd_sweep"]
    assert all(v["configs_per_s_pipelined"] > 0 for v in gd["implementations"].values())
