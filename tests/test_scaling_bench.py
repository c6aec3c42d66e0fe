"""benchmarks/scaling.py: reading collectives out of a compiled program's HLO text."""

from pathlib import Path

import jax
import pytest

from benchmarks.scaling import Collective, collectives, measure, ring_bytes

HLO = (Path(__file__).parent / "fixtures" / "collectives.hlo").read_text()  # hand-written


def test_collectives_are_read_with_their_buffers_and_groups():
    got = collectives(HLO, num_devices=4)
    assert got == [Collective("all-reduce", 256 * 64 * 4, 4),
                   Collective("all-gather", 256 * 64 * 4, 4),  # the -done is not counted
                   Collective("reduce-scatter", 64 * 2, 2),    # its operand
                   Collective("all-reduce", 10 * 4 + 2 * 4, 4)]  # a combined one: both


def test_ring_bytes_per_device():
    assert ring_bytes(Collective("all-reduce", 1000, 4)) == 1500.0  # 2 (g - 1) / g
    assert ring_bytes(Collective("all-gather", 1000, 4)) == 750.0   # (g - 1) / g
    assert ring_bytes(Collective("all-reduce", 1000, 1)) == 0.0


def test_one_device_communicates_nothing():
    record = measure("mlp", "data", 1, 16384)
    assert record["collectives"] == {} and record["ring_bytes_per_device"] == 0
    params = record["num_params"] * 4
    assert record["params_bytes_per_device"] == params
    assert record["opt_state_bytes_per_device"] >= 2 * params  # Adam's two moments


@pytest.mark.multidevice
@pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 devices (JAX_NUM_CPU_DEVICES=4)")
def test_data_parallelism_all_reduces_the_gradients_once():
    record = measure("mlp", "data", 4, 16384)
    assert record["collectives"] == {"all-reduce": 1}
    # the gradients and the loss, in one buffer: 2 (g - 1) / g of it per device
    assert record["ring_bytes_per_device"] == pytest.approx(1.5 * record["num_params"] * 4,
                                                            rel=1e-4)
    fsdp = measure("mlp", "fsdp", 4, 16384)
    assert fsdp["params_bytes_per_device"] < record["params_bytes_per_device"] / 2
    assert "all-gather" in fsdp["collectives"]
