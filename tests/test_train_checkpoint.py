"""jaxmath.run.checkpoint: exact round trips, retention, damaged and partial steps.

The reference for a restored state is the saved state itself: every leaf must be
bit-identical (np.array_equal) with the same dtype and pytree type, including optax
state, flax TrainState and both kinds of PRNG keys. Damaged latest steps (truncated,
flipped, garbage or missing files, a wrong checksum) must be reported with a warning
naming the step and the step before used; a half-written (temporary) step is ignored.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax.training import train_state

from jaxmath.run.checkpoint import Checkpointer


def _state(scale: float = 1.0) -> dict:
    params = {"w": scale * jnp.arange(6.0).reshape(2, 3), "b": jnp.full(3, scale)}
    opt_state = optax.adam(1e-3).init(params)
    return {"params": params, "opt_state": opt_state, "half": jnp.ones(2, jnp.bfloat16) * scale,
            "key": jax.random.key(int(scale)), "raw_key": jax.random.PRNGKey(int(scale)),
            "np": np.arange(3, dtype=np.int64) * int(scale), "count": 3}


def _raw(x):
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x))
    return np.asarray(x)


def assert_bit_identical(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert type(g) is type(w) or (isinstance(g, jax.Array) and isinstance(w, jax.Array))
        assert getattr(g, "dtype", None) == getattr(w, "dtype", None)
        assert np.array_equal(_raw(g), _raw(w))


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def _saved(tmp_path, *steps) -> dict[int, dict]:
    states = {s: _state(float(s)) for s in steps}
    with Checkpointer(tmp_path) as ckpt:
        for s in steps:
            ckpt.save(s, states[s])
    return states


# --------------------------------------------------------------------------- round trips


def test_round_trip_is_bit_identical(tmp_path):
    state = _state(1.5)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(7, state)
        assert ckpt.all_steps() == [7]
    with Checkpointer(tmp_path) as ckpt:  # a fresh process would do this
        step, restored = ckpt.restore_latest(_state(0.0))
    assert step == 7
    assert_bit_identical(restored, state)
    assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
    assert jax.random.key_impl(restored["key"]) == jax.random.key_impl(state["key"])


def test_flax_train_state_round_trip(tmp_path):
    model, tx = nn.Dense(3), optax.adam(1e-2)
    rng = np.random.default_rng(0)
    params = {"params": {"kernel": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32),
                         "bias": jnp.zeros(3)}}
    ts = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    ts = ts.replace(step=ts.step + 4, params=jax.tree.map(lambda p: p + 0.5, ts.params))
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(int(ts.step), ts)
        template = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
        step, restored = ckpt.restore_latest(template)
    assert step == 4 and isinstance(restored, train_state.TrainState)
    assert_bit_identical(restored, ts)
    assert restored.apply_fn == model.apply and restored.tx is tx


def test_empty_directory_restores_none(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.restore_latest(_state()) is None
        assert ckpt.all_steps() == []
    assert (tmp_path / "checkpoints").is_dir()


def test_keeps_the_newest_max_to_keep(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        for step in (1, 2, 3, 4):
            ckpt.save(step, {"x": jnp.float32(step)})
        assert ckpt.all_steps() == [3, 4]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "4"]


def test_save_replaces_an_existing_step(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(5, {"x": jnp.float32(1.0)})
        ckpt.save(5, {"x": jnp.float32(2.0)})
        assert ckpt.restore_latest({"x": jnp.float32(0.0)})[1]["x"] == 2.0


# --------------------------------------------------------------------------- damage


def _data_files(step_dir: Path) -> list[Path]:
    return [p for p in _files(step_dir / "state") if p.parent.name == "d"]


def _flip_middle(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    p.write_bytes(bytes(b))


def _wrong_checksum(step_dir: Path) -> None:
    """A state that orbax restores without error but that is not what was saved."""
    meta_file = step_dir / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["sha256"] = "0" * 64
    meta_file.write_text(json.dumps(meta))


DAMAGE = {
    "truncated files": lambda d: [os.truncate(p, p.stat().st_size // 2)
                                  for p in _files(d / "state")],
    "truncated data": lambda d: [os.truncate(p, p.stat().st_size // 2) for p in _data_files(d)],
    "flipped byte": lambda d: [_flip_middle(p) for p in _data_files(d)],
    "garbage data": lambda d: [p.write_bytes(b"garbage") for p in _data_files(d)],
    "missing state": lambda d: shutil.rmtree(d / "state"),
    "garbage metadata": lambda d: (d / "meta" / "metadata").write_text("{not json"),
    "empty step": lambda d: [shutil.rmtree(p) if p.is_dir() else p.unlink() for p in d.iterdir()],
    "wrong checksum": _wrong_checksum,
}


# After a failed read, orbax's event loop may be closed under a pending tensorstore
# callback or coroutine: harmless noise from inside orbax.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_latest_step_falls_back_to_the_one_before(tmp_path, damage):
    states = _saved(tmp_path, 10, 20)
    DAMAGE[damage](tmp_path / "checkpoints" / "20")
    with Checkpointer(tmp_path) as ckpt:
        with pytest.warns(RuntimeWarning, match=r"checkpoint at step 20 .* corrupt or partial"):
            step, restored = ckpt.restore_latest(_state())
        assert step == 10
        assert_bit_identical(restored, states[10])
        assert ckpt.all_steps() == [10]
        ckpt.save(20, states[20])  # the resumed run can save step 20 again
        assert ckpt.restore_latest(_state())[0] == 20
    assert (tmp_path / "checkpoints_corrupt" / "20").is_dir()  # kept for inspection


def test_wrong_checksum_is_named_in_the_warning(tmp_path):
    _saved(tmp_path, 1, 2)
    _wrong_checksum(tmp_path / "checkpoints" / "2")
    with Checkpointer(tmp_path) as ckpt, pytest.warns(RuntimeWarning, match="checksum"):
        assert ckpt.restore_latest(_state())[0] == 1


def test_every_step_damaged_restores_none(tmp_path):
    _saved(tmp_path, 1, 2)
    for step in ("1", "2"):
        shutil.rmtree(tmp_path / "checkpoints" / step / "state")
    with Checkpointer(tmp_path) as ckpt, pytest.warns(RuntimeWarning) as record:
        assert ckpt.restore_latest(_state()) is None
    assert [m for m in ("step 2", "step 1") if any(m in str(w.message) for w in record)] == [
        "step 2", "step 1"]
    assert sorted(p.name for p in (tmp_path / "checkpoints_corrupt").iterdir()) == ["1", "2"]


def test_half_written_step_is_ignored_and_cleaned_up(tmp_path):
    states = _saved(tmp_path, 1)
    tmp_step = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp"  # a save killed midway
    (tmp_step / "state").mkdir(parents=True)
    (tmp_step / "state" / "_METADATA").write_text('{"tree_metadata": {')
    with Checkpointer(tmp_path) as ckpt:
        step, restored = ckpt.restore_latest(_state())
    assert step == 1
    assert_bit_identical(restored, states[1])
    assert not tmp_step.exists()


def test_different_state_raises_and_moves_nothing(tmp_path):
    _saved(tmp_path, 1)
    other = _state()
    other["params"]["w"] = jnp.zeros((3, 3))
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(ValueError, match=r"step 1 .* different state .*saved leaf "
                           r"\['params'\]\['w'\] float32\[2, 3\] vs template leaf "
                           r"\['params'\]\['w'\] float32\[3, 3\]"):
            ckpt.restore_latest(other)
        assert ckpt.all_steps() == [1]
    assert not (tmp_path / "checkpoints_corrupt").exists()


# --------------------------------------------------------------------------- bad inputs


def _restore_with(tmp_path, template):
    _saved(tmp_path, 1)
    with Checkpointer(tmp_path) as ckpt:
        return ckpt.restore_latest(template)


def _modified(**changes):
    state = _state()
    state.update(changes)
    return state


BAD = [
    (lambda d: Checkpointer(d, max_to_keep=0), ValueError, r"max_to_keep must be >= 1, got 0"),
    (lambda d: Checkpointer(d, max_to_keep="3"), TypeError, r"max_to_keep must be an int, got str"),
    (lambda d: Checkpointer(d, max_to_keep=True), TypeError, r"max_to_keep must be an int"),
    (lambda d: Checkpointer(d).save(-1, {"x": 1.0}), ValueError, r"step must be >= 0, got -1"),
    (lambda d: Checkpointer(d).save(1.0, {"x": 1.0}), TypeError, r"step must be an int, got float"),
    (lambda d: Checkpointer(d).save("1", {"x": 1.0}), TypeError, r"step must be an int, got str"),
    (lambda d: _restore_with(d, _modified(half=jnp.ones(2, jnp.float32))), ValueError,
     r"saved leaf \['half'\] bfloat16\[2\] vs template leaf \['half'\] float32\[2\]"),
    (lambda d: _restore_with(d, _modified(np=np.arange(4))), ValueError,
     r"saved leaf \['np'\] int64\[3\] vs template leaf \['np'\] int64\[4\]"),
    (lambda d: _restore_with(d, _modified(extra=jnp.zeros(1))), ValueError,
     r"saved leaf \['half'\] .* vs template leaf \['extra'\] float32\[1\]"),
    (lambda d: _restore_with(d, {k: v for k, v in _state().items() if k != "raw_key"}),
     ValueError, r"saved leaf \['raw_key'\] uint32\[2\] vs template no leaf"),
]


@pytest.mark.parametrize(("fn", "exc", "match"), BAD)
def test_bad_inputs(tmp_path, fn, exc, match):
    with pytest.raises(exc, match=match):
        fn(tmp_path)
