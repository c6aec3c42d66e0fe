"""benchmarks/scaling.py: collectives read out of compiled HLO text, and real compiles."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.scaling import (
    END_MARKER,
    MARKER,
    Collective,
    collectives,
    entry_ops,
    insert_section,
    measure,
    predict,
    ring_bytes,
)
from tests._jobs import result

ROOT = Path(__file__).resolve().parent.parent

# Hand-written, in the forms compiled HLO prints: operands mostly without their types,
# replica groups explicit, iota or by mesh axes, async pairs as -start / -done.
HLO = """\
HloModule step

ENTRY %main (p: f32[256,64], w: f32[64,64], g: bf16[64]) -> f32[] {
  %p = f32[256,64]{1,0} parameter(0)
  %w = f32[64,64]{1,0} parameter(1)
  %g = bf16[64]{0} parameter(2)
  %all-reduce.1 = f32[256,64]{1,0} all-reduce(%p), channel_id=1, replica_groups={{0,1,2,3}}, to_apply=%add
  %ags = (f32[64,64]{1,0}, f32[256,64]{1,0}) all-gather-start(f32[64,64]{1,0} %w), channel_id=2, replica_groups=[1,4]<=[4], dimensions={0}
  %agd = f32[256,64]{1,0} all-gather-done((f32[64,64]{1,0}, f32[256,64]{1,0}) %ags)
  %rs = bf16[32]{0} reduce-scatter(%g), channel_id=3, replica_groups=[2,2]<=[4], dimensions={0}, to_apply=%add
  %t = (f32[10]{0}, /*index=1*/s32[2]{0}) all-reduce(%a, %b), replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_0','axis_1'}, to_apply=%add
  %ag2 = f32[8,16]{1,0} all-gather(%y), replica_groups=mesh['axis_0'=2,'axis_1'=2] {'axis_1'}, dimensions={0}, metadata={op_name="jit(step)/all-gather(x)"}
  %a2a = f32[8,4]{1,0} all-to-all(%z), replica_groups={}, dimensions={0}
  %cps = (f32[16]{0}, f32[16]{0}, u32[], u32[]) collective-permute-start(%v), source_target_pairs={{0,1},{1,0}}
  %cpd = f32[16]{0} collective-permute-done(%cps)
  %fusion = f32[4]{0} fusion(f32[4]{0} %x), kind=kLoop, calls=%all-reduce-like
  %sum = f32[4]{0} add(%x, %x), metadata={op_name="not an all-reduce(x)"}
  ROOT %out = f32[] constant(0)
}
"""  # noqa: E501


def test_collectives_are_read_with_their_sizes_and_groups():
    got = collectives(HLO, num_devices=4)
    assert got == [
        Collective("all-reduce", 4, 256 * 64 * 4, 256 * 64 * 4),
        Collective("all-gather", 4, 64 * 64 * 4, 256 * 64 * 4),  # -start once, -done not
        Collective("reduce-scatter", 2, 64 * 2, 32 * 2),          # operand = g x result
        Collective("all-reduce", 4, 10 * 4 + 2 * 4, 10 * 4 + 2 * 4),  # combined: the tuple
        Collective("all-gather", 2, 4 * 16 * 4, 8 * 16 * 4),      # one mesh axis of two
        Collective("all-to-all", 4, 8 * 4 * 4, 8 * 4 * 4),        # {}: every device
        Collective("collective-permute", 2, 16 * 4, 16 * 4),
    ]
    buffers = [c.buffer_bytes for c in got]
    assert buffers == [65536, 65536, 128, 48, 512, 128, 64]  # reduced / gathered / scattered


def test_the_committed_fixture_reads_the_same():
    text = (Path(__file__).parent / "fixtures" / "collectives.hlo").read_text()
    assert [(c.kind, c.group, c.buffer_bytes) for c in collectives(text, 4)] == [
        ("all-reduce", 4, 65536), ("all-gather", 4, 65536), ("reduce-scatter", 2, 128),
        ("all-reduce", 4, 48)]


def test_ring_bytes_per_device():
    assert ring_bytes(Collective("all-reduce", 4, 1000, 1000)) == 1500.0     # 2 (g-1)/g B
    assert ring_bytes(Collective("all-gather", 4, 250, 1000)) == 750.0       # (g-1)/g B
    assert ring_bytes(Collective("reduce-scatter", 4, 1000, 250)) == 750.0
    assert ring_bytes(Collective("collective-permute", 2, 64, 64)) == 64.0
    assert ring_bytes(Collective("all-reduce", 1, 1000, 1000)) == 0.0


def test_entry_ops_count_kernels_not_bookkeeping():
    # 7 collectives (the -done halves not counted), the fusion and the add; no parameters,
    # no root constant
    assert entry_ops(HLO) == 9


def test_prediction_arithmetic():
    record = {"flops_per_device": 1.485e9, "collective_counts": {"all-reduce": 2},
              "ring_bytes_per_device": 4.5e6, "entry_ops": 10}
    one = {"flops_per_device": 1.485e9 * 8, "entry_ops": 10}
    p = predict(record, one)
    assert p["compute_us"] == pytest.approx(10.0)       # at 30% of 495 TFLOP/s
    assert p["comm_us"] == pytest.approx(10.0 + 20.0)   # 450 GB/s, 10 us per collective
    assert p["step_us"] == pytest.approx(40.0)
    assert p["step_overlapped_us"] == pytest.approx(30.0)
    assert p["speedup"] == pytest.approx(80.0 / 40.0)


def test_the_section_goes_between_the_markers_only(tmp_path):
    doc = tmp_path / "scaling.md"
    doc.write_text("# Title\n\nintro\n")
    assert not insert_section(doc, "## Section\n")
    assert doc.read_text() == "# Title\n\nintro\n"
    doc.write_text(f"# Title\n\n{MARKER}\n\n## Other\n")
    assert insert_section(doc, "## Section\none\n")
    assert doc.read_text() == f"# Title\n\n{MARKER}\n## Section\none\n{END_MARKER}\n\n## Other\n"
    assert insert_section(doc, "## Section\ntwo\n")  # replaced, not added again
    assert doc.read_text() == f"# Title\n\n{MARKER}\n## Section\ntwo\n{END_MARKER}\n\n## Other\n"


def test_one_device_communicates_nothing():
    record = measure("mlp", "data", 1)
    assert record["collective_counts"] == {} and record["ring_bytes_per_device"] == 0
    assert record["params_bytes_per_device"] == record["params_bytes"] == record["num_params"] * 4
    assert record["opt_state_bytes_per_device"] >= 2 * record["params_bytes"]  # Adam's moments
    assert record["flops_per_device"] == pytest.approx(record["flops_unpartitioned"], rel=0.05)


_TWO_DEVICES = """
import json
from benchmarks.scaling import measure
print("RESULT", json.dumps({"data": measure("mlp", "data", 2), "fsdp": measure("mlp", "fsdp", 2)}))
"""


def test_two_devices_all_reduce_the_gradients_or_shard_the_weights():
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _TWO_DEVICES], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = result(proc, "the 2-device compiles", timeout_s=120)
    data, fsdp = out["data"], out["fsdp"]

    # data parallel: one all-reduce of every gradient (and a few metric scalars)
    assert data["collective_counts"] == {"all-reduce": 1}
    (op,) = data["collectives"]
    assert op["group"] == 2
    assert 0 <= op["buffer_bytes"] - data["params_bytes"] <= 64
    assert data["ring_bytes_per_device"] == op["buffer_bytes"]  # 2 (2-1)/2 of it
    assert data["params_bytes_per_device"] == data["params_bytes"]  # replicated
    assert data["flops_per_device"] == pytest.approx(data["flops_unpartitioned"] / 2, rel=0.1)

    # fsdp: each device holds half of every sharded weight and all of the rest
    sharded = fsdp["sharded_params_bytes"]
    assert sharded > 0 and fsdp["sharded_param_leaves"] >= 1
    assert fsdp["params_bytes_per_device"] == fsdp["params_bytes"] - sharded // 2
    assert fsdp["opt_state_bytes_per_device"] < data["opt_state_bytes_per_device"]
    assert "all-gather" in fsdp["collective_counts"]
