"""Tests for jaxmath.run.sweep: tables, one-compile vmapped sweeps, chunks, static groups, files.

Multi-device and multi-process runs are in tests/test_sweep_devices.py.
"""

from __future__ import annotations

import csv
import itertools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxmath._checks import is_tracer
from jaxmath.run import sweep
from jaxmath.run.sweep import (
    from_config,
    grid,
    group_by,
    init_distributed,
    run_sweep,
    write_table,
    zip_axes,
)
from jaxmath.run.sweep_progress import PROGRESS_DIR
from tests.tolerances import F32_ATOL, F32_LOOSE, F32_RTOL, F64_ATOL, F64_RTOL

X = np.linspace(-1.0, 1.0, 24, dtype=np.float32).reshape(8, 3)
Y = X @ np.array([1.0, -2.0, 0.5], np.float32)
HP = grid(learning_rate=[0.05, 0.2, 0.5, 100.0], seed=[0, 1, 2])  # N = 12; 100 diverges


def quad(hp):
    """Gradient descent on least squares from a seed-dependent start.

    Its products are float32 on every backend, so that comparing a swept run with a
    direct one tests the sweep, not how TF32 or bfloat16 rounding (a GPU's or TPU's
    default) differs between a batched and an unbatched product.
    """
    with jax.default_matmul_precision("highest"):
        w = jnp.cos(hp["seed"] + jnp.arange(3.0))
        grad = jax.grad(lambda w: jnp.mean((X @ w - Y) ** 2))
        w = jax.lax.fori_loop(0, 20, lambda _, w: w - hp["learning_rate"] * grad(w), w)
        return {"loss": jnp.mean((X @ w - Y) ** 2), "w": w}


@pytest.fixture(scope="module")
def whole():
    return run_sweep(quad, HP)


# ------------------------------------------------------------------------- tables


@given(st.lists(st.lists(st.integers(-5, 5), min_size=1, max_size=3), min_size=1, max_size=3))
def test_grid_is_itertools_product(axes):
    names = [f"a{i}" for i in range(len(axes))]
    got = grid(**dict(zip(names, axes, strict=True)))
    want = np.array(list(itertools.product(*axes)))
    assert len(got) == len(names)
    for i, name in enumerate(names):
        np.testing.assert_array_equal(got[name], want[:, i])


def test_zip_axes_keeps_columns():
    got = zip_axes(learning_rate=[0.1, 0.3], width=(32, 64), act=["relu", "tanh"])
    np.testing.assert_array_equal(got["learning_rate"], [0.1, 0.3])
    np.testing.assert_array_equal(got["width"], [32, 64])
    assert got["act"].tolist() == ["relu", "tanh"]


def test_from_config_grid_and_zip():
    config = ml_collections.ConfigDict({
        "kind": "grid", "chunk_size": 0,
        "axes": {"seed": (0, 1), "learning_rate": {"logspace": (-3.0, 0.5, 8)}}})
    got = from_config(config)
    # a ConfigDict sorts its keys: learning_rate is the slow axis
    want_lr = 10.0 ** (-3.0 + 3.5 * np.arange(8) / 7)
    np.testing.assert_allclose(got["learning_rate"], np.repeat(want_lr, 2), rtol=F64_RTOL)
    np.testing.assert_array_equal(got["seed"], np.tile([0, 1], 8))
    zipped = from_config({"kind": "zip", "axes": {"b": {"linspace": (0, 1, 3)}, "a": [5, 6, 7]}})
    assert list(zipped) == ["b", "a"]
    np.testing.assert_allclose(zipped["b"], [0.0, 0.5, 1.0], rtol=F64_RTOL)
    assert from_config({"axes": {"a": [1, 2]}})["a"].tolist() == [1, 2]  # kind defaults to grid


@given(st.lists(st.integers(0, 3), min_size=1, max_size=12))
def test_group_by_partitions_rows(widths):
    hp = {"width": np.array(widths), "lr": np.arange(len(widths), dtype=float)}
    groups = group_by(hp, "width")
    rows = np.sort(np.concatenate([i for _, i in groups]))
    np.testing.assert_array_equal(rows, np.arange(len(widths)))
    assert [v["width"] for v, _ in groups] == list(dict.fromkeys(widths))
    for values, i in groups:
        assert type(values["width"]) is int and np.all(hp["width"][i] == values["width"])


# -------------------------------------------------------------------- run_sweep


def test_run_sweep_equals_loop_of_jit(whole):
    one = jax.jit(quad)
    for s in range(len(HP["seed"])):
        want = one({k: jnp.asarray(v[s]) for k, v in HP.items()})
        for name in ("loss", "w"):
            np.testing.assert_allclose(whole[name][s], want[name], rtol=F32_RTOL, atol=F32_ATOL)
    assert whole["loss"].shape == (12,) and whole["w"].shape == (12, 3)
    assert isinstance(whole["loss"], np.ndarray) and whole["loss"].dtype == np.float32
    # the diverging learning rate spoils its own rows only
    diverged = HP["learning_rate"] == 100.0
    assert not np.isfinite(whole["loss"][diverged]).any()
    assert np.isfinite(whole["loss"][~diverged]).all()


@pytest.mark.parametrize("chunk_size", [1, 5, 12, 100, 0])
def test_chunked_equals_whole(whole, chunk_size):
    got = run_sweep(quad, HP, chunk_size=chunk_size)
    for name in whole:
        np.testing.assert_allclose(got[name], whole[name], rtol=F32_RTOL, atol=F32_ATOL)


def test_compiles_once_for_all_chunks_and_values():
    traces = []

    def fn(hp):  # a new function: a cache entry of its own
        traces.append(1)
        return quad(hp)

    before = sweep._sweep_chunk._cache_size()
    first = run_sweep(fn, HP, chunk_size=5)  # 3 calls of 4, the last one padded
    new_values = {"learning_rate": HP["learning_rate"] / 2, "seed": HP["seed"] + 7}
    second = run_sweep(fn, new_values, chunk_size=5)
    assert len(traces) == 1 and sweep._sweep_chunk._cache_size() - before == 1
    assert not np.allclose(first["w"], second["w"])


def test_results_are_sharded_over_the_sweep_axis(monkeypatch, whole):
    shardings = []
    to_host = sweep._to_host

    def record(tree):
        shardings.extend((x.ndim, x.sharding) for x in jax.tree.leaves(tree))
        return to_host(tree)

    monkeypatch.setattr(sweep, "_to_host", record)
    mesh = Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("model", "sweep"))
    got = run_sweep(quad, HP, mesh=mesh)
    want = NamedSharding(mesh, PartitionSpec("sweep"))
    assert len(shardings) == 2  # loss and w, one call
    assert all(sh.mesh == mesh and sh.is_equivalent_to(want, ndim) for ndim, sh in shardings)
    np.testing.assert_allclose(got["loss"], whole["loss"], rtol=F32_RTOL, atol=F32_ATOL)


def test_static_hyperparameters_loop_over_groups():
    calls = []

    def mlp(hp):
        calls.append(hp["width"])
        assert isinstance(hp["width"], int)  # static: a Python int that sets shapes
        w1 = jnp.cos(jnp.arange(3.0 * hp["width"]).reshape(3, hp["width"]) + hp["seed"])
        return {"out": jnp.tanh(X @ w1).sum(axis=1) * hp["scale"]}

    hp = grid(width=[4, 2], seed=[0, 1], scale=[1.0, -1.0])
    got = run_sweep(mlp, hp, static="width")
    assert calls == [4, 2]  # one trace per static group
    for s in range(8):  # reference: NumPy, one configuration at a time
        width, seed, scale = int(hp["width"][s]), hp["seed"][s], hp["scale"][s]
        w1 = np.cos(np.arange(3.0 * width).reshape(3, width) + seed)
        want = np.tanh(X.astype(np.float64) @ w1).sum(axis=1) * scale
        np.testing.assert_allclose(got["out"][s], want, rtol=F32_LOOSE, atol=F32_LOOSE)


def test_string_static_axis_and_all_static():
    def act(hp):
        f = {"relu": jax.nn.relu, "tanh": jnp.tanh}[hp["act"]]
        return f(hp["x"])

    hp = grid(act=["relu", "tanh"], x=[-1.0, 0.5])
    got = run_sweep(act, hp, static=("act",))
    np.testing.assert_allclose(got, [0.0, 0.5, np.tanh(-1.0), np.tanh(0.5)], rtol=F32_RTOL)
    steps = run_sweep(lambda hp: jnp.arange(hp["n"]).sum(), grid(n=[3, 4]), static="n")
    np.testing.assert_array_equal(steps, [3, 6])


def test_inject_hyperparams_matches_optax_per_configuration():
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)

    def train(hp):
        loss = lambda w: jnp.mean((X @ w - Y) ** 2)  # noqa: E731
        w = jnp.zeros(3)
        state = opt.init(w)
        state.hyperparams["learning_rate"] = hp["learning_rate"]

        def step(carry, _):
            w, state = carry
            updates, state = opt.update(jax.grad(loss)(w), state)
            return (optax.apply_updates(w, updates), state), None

        (w, _), _ = jax.lax.scan(step, (w, state), length=5)
        return w

    lrs = [0.01, 0.1]
    got = run_sweep(train, {"learning_rate": np.array(lrs)})

    @jax.jit
    def reference(lr):  # optax.adam(lr), one configuration, the steps written out
        ref, w = optax.adam(lr), jnp.zeros(3)
        state = ref.init(w)
        for _ in range(5):
            updates, state = ref.update(jax.grad(lambda w: jnp.mean((X @ w - Y) ** 2))(w), state)
            w = optax.apply_updates(w, updates)
        return w

    for lr, w_got in zip(lrs, got, strict=True):
        np.testing.assert_allclose(w_got, reference(lr), rtol=F32_RTOL, atol=F32_ATOL)


def test_float64_in_float64_out(x64):
    got = run_sweep(lambda hp: hp["a"] ** 2 / 3, {"a": np.array([1.0, 2.0, 3.0])})
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, np.array([1.0, 4.0, 9.0]) / 3, rtol=F64_RTOL, atol=F64_ATOL)


# ------------------------------------------------------------------ resuming


def test_finished_chunks_are_saved_and_skipped_on_resume(tmp_path, monkeypatch, whole):
    calls = []
    chunk = sweep._sweep_chunk

    def counted(fn, names, static_items, sharding, size, traced):
        if not is_tracer(traced["seed"]):  # a call, not jax.eval_shape
            calls.append(size)
        return chunk(fn, names, static_items, sharding, size, traced)

    first = run_sweep(quad, HP, chunk_size=5, workdir=tmp_path)  # 3 calls of 4
    progress = tmp_path / PROGRESS_DIR
    assert sorted(p.name for p in progress.iterdir()) == [
        "group0_chunk0.npz", "group0_chunk1.npz", "group0_chunk2.npz", "manifest.json"]
    (progress / "group0_chunk1.npz").unlink()  # as if killed while chunk 1 was running
    monkeypatch.setattr(sweep, "_sweep_chunk", counted)
    resumed = run_sweep(quad, HP, chunk_size=5, workdir=tmp_path)
    assert len(calls) == 1  # chunk 1 alone computed again
    uninterrupted = run_sweep(quad, HP, chunk_size=5)
    for name in whole:
        assert np.array_equal(first[name], uninterrupted[name], equal_nan=True)
        assert np.array_equal(resumed[name], uninterrupted[name], equal_nan=True)
        assert resumed[name].dtype == uninterrupted[name].dtype


def test_static_groups_resume(tmp_path):
    def scaled(hp):
        return {"y": jnp.arange(3.0) * hp["scale"] + hp["width"]}

    hp = grid(width=[4, 2], scale=[1.0, -1.0, 0.5])
    first = run_sweep(scaled, hp, static="width", chunk_size=2, workdir=tmp_path)
    names = sorted(p.name for p in (tmp_path / PROGRESS_DIR).iterdir())
    assert names == ["group0_chunk0.npz", "group0_chunk1.npz", "group1_chunk0.npz",
                     "group1_chunk1.npz", "manifest.json"]
    again = run_sweep(scaled, hp, static="width", chunk_size=2, workdir=tmp_path)
    np.testing.assert_array_equal(again["y"], first["y"])
    with pytest.raises(ValueError, match=r"different sweep \(static: 1 entries -> 0\)"):
        run_sweep(scaled, {**hp, "width": hp["width"].astype(float)}, workdir=tmp_path)


@pytest.mark.parametrize(("change", "match"), [
    ({"hparams": {**HP, "learning_rate": HP["learning_rate"] * 2}},
     r"different sweep \(hparams\.learning_rate\.0: 0\.05 -> 0\.1\)"),
    ({"hparams": {"learning_rate": HP["learning_rate"]}}, r"hparams\.seed: present -> \(absent\)"),
    ({"chunk_size": 3}, r"plan\.0\.num_chunks: 3 -> 4"),
])
def test_a_changed_sweep_is_refused(tmp_path, change, match):
    run_sweep(quad, HP, chunk_size=5, workdir=tmp_path)
    args = {"hparams": HP, "chunk_size": 5, **change}
    with pytest.raises(ValueError, match=match + ".*use another workdir, or delete"):
        run_sweep(quad, args.pop("hparams"), workdir=tmp_path, **args)


def test_results_of_another_function_are_refused(tmp_path):
    run_sweep(quad, HP, chunk_size=5, workdir=tmp_path)
    with pytest.raises(ValueError, match=r"holds the leaves \['loss', 'w'\].*\['loss'\]"):
        run_sweep(lambda hp: {"loss": quad(hp)["loss"]}, HP, chunk_size=5, workdir=tmp_path)


# ----------------------------------------------------------------------- files


def test_write_table_jsonl_and_csv(tmp_path, whole):
    path = write_table(tmp_path, HP, whole)
    assert path == tmp_path / "sweep.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 12 and list(rows[0]) == ["index", "learning_rate", "seed", "loss", "w"]
    for s, row in enumerate(rows):
        assert row["index"] == s and row["seed"] == HP["seed"][s]
        assert row["learning_rate"] == HP["learning_rate"][s]
        if np.isfinite(whole["loss"][s]):
            assert row["loss"] == float(whole["loss"][s])  # float32 -> JSON exactly
        else:
            assert row["loss"] is None
    small = {"loss": whole["loss"], "acc": {"train": np.arange(12.0)}}
    path = write_table(tmp_path / "table.csv", HP, small)
    with path.open() as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["index", "learning_rate", "seed", "acc/train", "loss"]
    np.testing.assert_array_equal([float(r["loss"]) for r in table], whole["loss"])
    assert write_table(tmp_path, HP, small, format="csv") == tmp_path / "sweep.csv"


# ------------------------------------------------------------------ distributed


def test_init_distributed_without_a_job():
    assert init_distributed(environ={}) is False
    single = {"JAX_COORDINATOR_ADDRESS": "localhost:1234", "JAX_NUM_PROCESSES": "1",
              "JAX_PROCESS_ID": "0"}
    assert init_distributed(environ=single) is False


# ------------------------------------------------------------------- bad inputs

JOB = {"JAX_COORDINATOR_ADDRESS": "localhost:1234", "JAX_NUM_PROCESSES": "2",
       "JAX_PROCESS_ID": "0"}


def _returns_text(hp):
    return {"note": "done"}


BAD = [
    (lambda: grid(), ValueError, "at least one axis"),
    (lambda: grid(lr=[]), ValueError, "'lr' must not be empty"),
    (lambda: grid(lr=0.1), ValueError, r"'lr' must be a 1-D sequence.*shape \(\)"),
    (lambda: grid(lr=[[0.1, 0.2]]), ValueError, r"1-D.*shape \(1, 2\)"),
    (lambda: grid(lr=[1 + 2j]), TypeError, "'lr' must hold bools, ints, floats or strings"),
    (lambda: zip_axes(a=[1, 2], b=[1]), ValueError, r"equal length.*'a': 2, 'b': 1"),
    (lambda: from_config({"kind": "random", "axes": {"a": [1]}}), ValueError, "sweep.kind"),
    (lambda: from_config({"axes": {}}), ValueError, "sweep.axes must be a non-empty"),
    (lambda: from_config({"axes": {"a": {"logspace": (0, 1)}}}), ValueError,
     r"'a': logspace needs \(lo, hi, n\)"),
    (lambda: from_config({"axes": {"a": {"geomspace": (1, 2, 3)}}}), ValueError,
     "'a': a mapping must be"),
    (lambda: from_config({"axes": {"a": {"linspace": (0, 1, 2.5)}}}), ValueError,
     "n must be a positive int"),
    (lambda: from_config([1, 2]), TypeError, "ConfigDict or a mapping"),
    (lambda: run_sweep(3, HP), TypeError, "fn must be callable"),
    (lambda: run_sweep(quad, [0.1, 0.2]), TypeError, "hparams must be a dict"),
    (lambda: run_sweep(quad, {"a": [1, 2], "b": [1]}), ValueError, "equal length N"),
    (lambda: run_sweep(quad, HP, chunk_size=-1), ValueError, "chunk_size must be >= 0"),
    (lambda: run_sweep(quad, HP, chunk_size=2.5), TypeError, "chunk_size must be an int"),
    (lambda: run_sweep(quad, HP, static="width"), ValueError, "static name 'width'"),
    (lambda: run_sweep(quad, {"act": ["relu"]}), TypeError, "'act' holds strings"),
    (lambda: run_sweep(quad, HP, mesh="cpu"), TypeError, "mesh must be a jax.sharding.Mesh"),
    (lambda: run_sweep(quad, HP, workdir=1), TypeError, "workdir must be a path or None"),
    (lambda: run_sweep(quad, HP, mesh=Mesh(np.asarray(jax.devices()[:1]), ("batch",))),
     ValueError, "axis named 'sweep'"),
    # raised while run_sweep's jitted program traces fn
    (lambda: run_sweep(_returns_text, HP), TypeError, "pytree of arrays, got str at 'note'"),
    (lambda: run_sweep(lambda hp: jnp.ones(hp["n"]), grid(n=[1, 2]), static="n"), ValueError,
     "different structures, shapes or dtypes"),
    (lambda: write_table("t.jsonl", HP, {"loss": np.zeros(3)}), ValueError,
     r"leading axis of size N = 12.*shape \(3,\)"),
    (lambda: write_table("t.csv", HP, {"w": np.zeros((12, 3))}), ValueError, "CSV needs one"),
    (lambda: write_table("t.jsonl", HP, {"seed": np.zeros(12)}), ValueError,
     "'seed' has the name of a hyperparameter"),
    (lambda: write_table("t.txt", HP, {"x": np.zeros(12)}, format="xlsx"), ValueError,
     "format must be one of"),
    (lambda: init_distributed(environ={"JAX_COORDINATOR_ADDRESS": "localhost:1"}), ValueError,
     "JAX_NUM_PROCESSES must be set"),
    (lambda: init_distributed(environ={**JOB, "JAX_PROCESS_ID": "two"}), ValueError,
     "JAX_PROCESS_ID must be an integer, got 'two'"),
    (lambda: init_distributed(environ={**JOB, "JAX_PROCESS_ID": "2"}), ValueError,
     "0 <= JAX_PROCESS_ID < JAX_NUM_PROCESSES"),
    (lambda: init_distributed(environ={**JOB, "JAX_COORDINATOR_ADDRESS": "localhost"}),
     ValueError, "must be host:port"),
    (lambda: init_distributed(environ={"JAXMATH_DISTRIBUTED": "yes"}), ValueError,
     "JAXMATH_DISTRIBUTED must be 'auto'"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD)
def test_bad_inputs(call, error, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        call()
