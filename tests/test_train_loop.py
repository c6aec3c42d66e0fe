"""jaxmath.train.loop: train_loop against a bare Python loop of the same jitted step.

The reference is the plain loop ``state, m = step(state, batch_fn(i))``: the final
state and the logged losses must match it. Resuming in-process (the same workdir, a
larger num_steps, a lost last checkpoint and a partial metrics line, no checkpoint at
all) must give bit-identical results; a non-finite loss must stop the run naming the
step, with the last finite state checkpointed. The real kill test (a typed PRNG key in
the state, Adam, SIGKILL during a checkpoint write) is tests/test_train_resume.py.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import shutil
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmath.train.checkpoint import Checkpointer
from jaxmath.train.files import MetricsLog
from jaxmath.train.loop import NonFiniteLossError, TrainResult, train_loop
from tests.tolerances import F32_ATOL, F32_RTOL

_OPT = optax.sgd(0.05, momentum=0.9)
_RNG = np.random.default_rng(0)
_X = _RNG.normal(size=(32, 3)).astype(np.float32)
_Y = (_X @ np.array([1.0, -2.0, 0.5], np.float32) + 0.3).astype(np.float32)
_NAN_AT = -1  # batch index at which batch_fn returns a non-finite batch (set by a test)


def init_state() -> dict:
    params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    return {"params": params, "opt_state": _OPT.init(params)}


def step_fn(state, batch):
    x, y = batch

    def loss_fn(p):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = _OPT.update(grads, state["opt_state"], state["params"])
    return ({"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state},
            {"loss": loss, "w0": state["params"]["w"][0]})


def batch_fn(step: int):
    idx = np.random.default_rng(step).integers(0, 32, size=8)
    x, y = _X[idx], _Y[idx].copy()
    if step == _NAN_AT:
        y[0] = np.nan
    return x, y


def bare_loop(num_steps: int):
    jstep = jax.jit(step_fn)
    state, losses = init_state(), []
    for i in range(num_steps):
        state, metrics = jstep(state, batch_fn(i))
        losses.append(float(metrics["loss"]))
    return state, losses


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                    strict=True))


def run(workdir, num_steps, **kw):
    kw = {"log_every": 10, "checkpoint_every": 25, "progress": "none", **kw}
    return train_loop(init_state(), step_fn, batch_fn, num_steps=num_steps, workdir=workdir, **kw)


@pytest.fixture(scope="module")
def reference():
    return bare_loop(60)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted 60-step run (its workdir must not be changed)."""
    workdir = tmp_path_factory.mktemp("whole")
    result = run(workdir, 60)
    return SimpleNamespace(result=result, state=result.state, history=result.history,
                           workdir=workdir)


@pytest.fixture
def nan_at(monkeypatch):
    def set_(i):
        monkeypatch.setattr(sys.modules[__name__], "_NAN_AT", i)
    return set_


# --------------------------------------------------------------------------- values


def test_matches_the_bare_loop(whole, reference):
    ref_state, ref_losses = reference
    result = whole.result
    assert isinstance(result, TrainResult)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=F32_RTOL, atol=F32_ATOL),
                 result.state, ref_state)
    assert [r["step"] for r in result.history] == [10, 20, 30, 40, 50, 60]
    np.testing.assert_allclose([r["loss"] for r in result.history], ref_losses[9::10],
                               rtol=F32_RTOL, atol=F32_ATOL)
    assert set(result.history[0]) == {"step", "loss", "w0"}
    assert result.history == MetricsLog(whole.workdir).read()
    with Checkpointer(whole.workdir) as ckpt:  # every 25 steps and the last, newest 3 kept
        assert ckpt.all_steps() == [25, 50, 60]


def test_log_and_checkpoint_schedule(tmp_path):
    result = run(tmp_path, 23, log_every=5, checkpoint_every=10, max_to_keep=5)
    assert [r["step"] for r in result.history] == [5, 10, 15, 20, 23]  # and the last step
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [10, 20, 23]


def test_resume_and_extend_is_bit_identical(tmp_path, whole):
    first = run(tmp_path / "split", 30)
    assert [r["step"] for r in first.history] == [10, 20, 30]
    second = run(tmp_path / "split", 60)  # same workdir, a larger num_steps
    assert leaves_equal(second.state, whole.state)
    assert second.history == whole.history


def test_resume_after_a_lost_checkpoint_and_partial_line(tmp_path, whole):
    """What a kill leaves: rows past the last good checkpoint and half a row."""
    run(tmp_path / "split", 50)
    shutil.rmtree(tmp_path / "split" / "checkpoints" / "50")  # as if never finished
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:
        f.write('{"step": 60, "loss": 0.1')
    resumed = run(tmp_path / "split", 60)  # resumes from 25, rewrites rows 30..60
    assert leaves_equal(resumed.state, whole.state)
    assert resumed.history == whole.history


def test_one_compilation_for_fresh_and_resumed_runs(tmp_path, caplog):
    """Same argument placements on every call, restored or not: one compilation."""
    traces = []

    def counting_step(state, batch):
        traces.append(1)
        return step_fn(state, batch)

    caplog.set_level(logging.WARNING, logger="jax._src.dispatch")
    with jax.log_compiles(True):
        first = train_loop(init_state(), counting_step, batch_fn, num_steps=10,
                           workdir=tmp_path, progress="none")
        second = train_loop(init_state(), counting_step, batch_fn, num_steps=20,
                            workdir=tmp_path, progress="none")  # resumes from step 10
    compiles = [r for r in caplog.records
                if "Finished XLA compilation of jit(_guarded_step)" in r.getMessage()]
    assert len(traces) == 1 and len(compiles) == 1
    assert [r["step"] for r in second.history] == [10, 20] and first.history == second.history[:1]


class _UnhashableStep:
    __hash__ = None

    def __eq__(self, other):
        return isinstance(other, _UnhashableStep)

    def __call__(self, state, batch):
        return step_fn(state, batch)


def test_unhashable_step_fn(tmp_path):
    result = train_loop(init_state(), _UnhashableStep(), batch_fn, num_steps=10,
                        workdir=tmp_path, progress="none")
    ref_state, _ = bare_loop(10)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=F32_RTOL, atol=F32_ATOL),
                 result.state, ref_state)


def test_restart_before_any_checkpoint_starts_over(tmp_path, whole):
    """A run killed before its first checkpoint: metrics rows but no checkpoint."""
    run(tmp_path / "split", 20)
    shutil.rmtree(tmp_path / "split" / "checkpoints")
    resumed = run(tmp_path / "split", 60)
    assert leaves_equal(resumed.state, whole.state)
    assert resumed.history == whole.history


def test_metrics_are_synced_before_each_checkpoint(tmp_path, monkeypatch):
    events = []
    real_sync, real_save = MetricsLog.sync, Checkpointer.save
    monkeypatch.setattr(MetricsLog, "sync", lambda self: (events.append("sync"),
                                                          real_sync(self))[1])
    monkeypatch.setattr(Checkpointer, "save", lambda self, step, state: (
        events.append(f"save {step}"), real_save(self, step, state))[1])
    run(tmp_path, 25, log_every=5, checkpoint_every=10)
    assert events == ["sync", "save 10", "sync", "save 20", "sync", "save 25"]


def test_finished_run_returns_without_stepping(tmp_path):
    done = run(tmp_path, 20)

    def no_batches(step):
        raise AssertionError("batch_fn must not be called")

    again = train_loop(init_state(), step_fn, no_batches, num_steps=20, workdir=tmp_path,
                       progress="none")
    assert leaves_equal(again.state, done.state)
    assert again.history == done.history
    with pytest.warns(RuntimeWarning, match="at step 20, past num_steps=10"):
        train_loop(init_state(), step_fn, no_batches, num_steps=10, workdir=tmp_path,
                   progress="none")


def test_caller_state_survives_donation(tmp_path):
    state = init_state()
    donated = train_loop(state, step_fn, batch_fn, num_steps=5, workdir=tmp_path / "a",
                         progress="none")
    assert not any(x.is_deleted() for x in jax.tree.leaves(state))
    kept = run(tmp_path / "b", 5, log_every=5, donate=False)
    assert leaves_equal(kept.state, donated.state)


def test_metrics_fn_adds_columns(tmp_path):
    seen = []

    def metrics_fn(state, step):
        seen.append(step)
        return {"w_norm": jnp.linalg.norm(state["params"]["w"]), "tag": "eval"}

    result = run(tmp_path, 20, metrics_fn=metrics_fn)
    assert seen == [10, 20]
    assert [set(r) for r in result.history] == [{"step", "loss", "w0", "w_norm", "tag"}] * 2
    np.testing.assert_allclose(result.history[-1]["w_norm"],
                               np.linalg.norm(result.state["params"]["w"]), rtol=F32_RTOL)


# --------------------------------------------------------------------------- non-finite loss


@pytest.mark.parametrize("bad_batch", [16, 20, 0])
def test_non_finite_loss_stops_and_saves_the_last_finite_state(tmp_path, nan_at, bad_batch):
    nan_at(bad_batch)
    bad_step = bad_batch + 1  # update s uses batch_fn(s - 1)
    with pytest.raises(NonFiniteLossError, match=rf"non-finite loss nan at step {bad_step} "
                       rf"\(batch_fn\({bad_batch}\)\).* checkpointed as step {bad_batch}") as info:
        run(tmp_path, 60, log_every=5, checkpoint_every=20)
    err = info.value
    assert (err.step, err.saved_step) == (bad_step, bad_batch) and np.isnan(err.loss)
    assert isinstance(err, FloatingPointError)
    assert pickle.loads(pickle.dumps(err)).step == bad_step
    # metrics: every logged row before the bad step, none after
    assert [r["step"] for r in MetricsLog(tmp_path).read()] == list(range(5, bad_step, 5))
    # the checkpoint holds the state after `bad_batch` finite updates: the bare loop's
    ref_state, _ = bare_loop(bad_batch)
    with Checkpointer(tmp_path) as ckpt:
        step, state = ckpt.restore_latest(init_state())
    assert step == bad_batch
    assert leaves_equal(state, ref_state)


def test_inf_loss_is_non_finite_too(tmp_path):
    def inf_step(state, batch):
        new, _ = step_fn(state, batch)
        return new, {"loss": jnp.where(state["params"]["w"][0] != 0, jnp.inf, 1.0)}

    with pytest.raises(NonFiniteLossError, match=r"non-finite loss inf at step 2 "):
        train_loop(init_state(), inf_step, batch_fn, num_steps=10, workdir=tmp_path,
                   progress="none")


# --------------------------------------------------------------------------- progress


def test_plain_lines_when_not_a_terminal(tmp_path, capsys):
    run(tmp_path, 20, progress="auto", desc="fit")
    lines = capsys.readouterr().out.strip().splitlines()
    pattern = r"fit step (10|20)/20 loss \d\S* elapsed \d+\.\ds eta \d+\.\ds"
    assert len(lines) == 2 and all(re.fullmatch(pattern, line) for line in lines), lines
    run(tmp_path, 30, progress="lines", desc="fit")
    out = capsys.readouterr().out
    assert out.startswith("fit: resumed from the checkpoint at step 20 in ")
    assert "fit step 30/30" in out


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_tqdm_bar_on_a_terminal(tmp_path, monkeypatch):
    term = _Terminal()
    monkeypatch.setattr("sys.stdout", term)
    run(tmp_path, 20, progress="auto", desc="fit")
    out = term.getvalue()
    assert "fit: 100%" in out and "20/20" in out and "loss=" in out
    assert "<00:00" in out or "?" in out  # the ETA field


def test_no_output_when_progress_is_none(tmp_path, capsys):
    run(tmp_path, 10, progress="none")
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------------- bad inputs


def _no_loss(state, batch):
    return state, {"error": jnp.float32(0.0)}


def _vector_loss(state, batch):
    return state, {"loss": jnp.ones(2)}


def _grows(state, batch):
    return {**state, "extra": jnp.zeros(())}, {"loss": jnp.float32(0.0)}


def _casts(state, batch):
    new = jax.tree.map(lambda x: x, state)
    new["params"]["b"] = new["params"]["b"].astype(jnp.int32)
    return new, {"loss": jnp.float32(0.0)}


def _loop(workdir, **kw):
    args = {"state": init_state(), "step_fn": step_fn, "batch_fn": batch_fn, "num_steps": 3,
            "workdir": workdir, "progress": "none"}
    args.update(kw)
    return train_loop(args.pop("state"), args.pop("step_fn"), args.pop("batch_fn"), **args)


def _mismatched_checkpoint(workdir):
    _loop(workdir)
    return _loop(workdir, state={"params": {"w": jnp.zeros(4), "b": jnp.zeros(())},
                                 "opt_state": _OPT.init({"w": jnp.zeros(4), "b": jnp.zeros(())})})


BAD = [
    (lambda d: _loop(d, num_steps=-1), ValueError, r"num_steps must be >= 0, got -1"),
    (lambda d: _loop(d, num_steps=2.0), TypeError, r"num_steps must be an int, got float"),
    (lambda d: _loop(d, log_every=0), ValueError, r"log_every must be >= 1, got 0"),
    (lambda d: _loop(d, checkpoint_every=0), ValueError, r"checkpoint_every must be >= 1, got 0"),
    (lambda d: _loop(d, step_fn="step"), TypeError, r"step_fn must be callable, got str"),
    (lambda d: _loop(d, batch_fn=None), TypeError, r"batch_fn must be callable, got NoneType"),
    (lambda d: _loop(d, metrics_fn=1), TypeError, r"metrics_fn must be callable, got int"),
    (lambda d: _loop(d, progress="fancy"), ValueError, r"progress must be one of"),
    (lambda d: _loop(d, max_to_keep=0), ValueError, r"max_to_keep must be >= 1, got 0"),
    # raised while the loop's jitted step is traced
    (lambda d: _loop(d, step_fn=_no_loss), ValueError,
     r"with a 'loss' in metrics, got \['error'\]"),
    (lambda d: _loop(d, step_fn=_vector_loss), ValueError,
     r"metrics\['loss'\] must be a scalar, got shape \(2,\)"),
    (lambda d: _loop(d, step_fn=_grows), TypeError, r"a state of the same structure"),
    (lambda d: _loop(d, step_fn=_casts), TypeError,
     r"changed state leaf \['params'\]\['b'\] from float32\[\] to int32\[\]"),
    (_mismatched_checkpoint, ValueError, r"holds a different state than the template"),
]


@pytest.mark.parametrize(("fn", "exc", "match"), BAD)
def test_bad_inputs(tmp_path, fn, exc, match):
    with pytest.raises(exc, match=match):
        fn(tmp_path)
