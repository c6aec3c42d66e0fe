"""jaxmath.run.loop: train_loop against a bare Python loop of the same jitted step.

The reference is the plain loop ``state, m = step(state, batch_fn(i))``: the final
state and the logged losses must match it. Resuming in-process (the same workdir, a
larger num_steps, a lost last checkpoint and a partial metrics line, no checkpoint at
all) must give bit-identical results; a non-finite loss must stop the run naming the
step, with the last finite state checkpointed. The real kill test (a typed PRNG key in
the state, Adam, SIGKILL during a checkpoint write) is tests/test_train_resume.py.

The scan path (``steps_per_call != 1``: the updates between log steps as one
``lax.scan``, ``batch_fn`` traced) is checked the same way against the per-step path
of the same traced ``batch_fn``: the same rows and checkpoints, values equal to float
rounding, bit-identical however the steps are split into calls (resumed, extended
from an odd step, replayed after a non-finite loss), and one compilation.
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

from jaxmath.run.checkpoint import Checkpointer
from jaxmath.run.files import MetricsLog
from jaxmath.run.loop import NonFiniteLossError, TrainResult, TrainTiming, train_loop
from jaxmath.run.steps import _calls, _chunk_length, _resolve_steps_per_call
from jaxmath.run.throughput import without_perf
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


_XD, _YD = jnp.asarray(_X), jnp.asarray(_Y)  # on the device, for traced batch_fns
_BATCH_KEY = jax.random.key(3)


def make_device_batch_fn(nan_at: int = -1):
    """A traceable batch_fn: rows of the device arrays drawn from fold_in(key, step).

    A new function per call, so that a jitted program traced with one ``nan_at`` is
    never reused for another.
    """
    def device_batch_fn(step):
        idx = jax.random.randint(jax.random.fold_in(_BATCH_KEY, step), (8,), 0, 32)
        y = _YD[idx]
        return _XD[idx], y.at[0].set(jnp.where(step == nan_at, jnp.nan, y[0]))
    return device_batch_fn


device_batch_fn = make_device_batch_fn()


def bare_loop(num_steps: int, batch_fn=batch_fn):
    """The reference: jit(step_fn) called num_steps times on batch_fn(i), no train_loop."""
    jstep = jax.jit(step_fn)
    state, losses = init_state(), []
    for i in range(num_steps):
        state, metrics = jstep(state, batch_fn(i))
        losses.append(float(metrics["loss"]))
    return state, losses


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                                    strict=True))


def run(workdir, num_steps, batch_fn=batch_fn, **kw):
    """train_loop on the test problem; its rows without the throughput timings."""
    kw = {"log_every": 10, "checkpoint_every": 25, "progress": "none", **kw}
    result = train_loop(init_state(), step_fn, batch_fn, num_steps=num_steps, workdir=workdir,
                        **kw)
    return result._replace(history=[without_perf(r) for r in result.history])


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
    assert result.history == [without_perf(r) for r in MetricsLog(whole.workdir).read()]
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
    assert [without_perf(r) for r in again.history] == done.history
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


# --------------------------------------------------------------------------- the scan path


def scan_run(workdir, num_steps, batch_fn=device_batch_fn, **kw):
    return run(workdir, num_steps, **{"steps_per_call": 0, **kw}, batch_fn=batch_fn)


@pytest.fixture(scope="module")
def whole_scan(tmp_path_factory):
    """An uninterrupted 60-step run on the scan path (log 10, checkpoint 25: 5 per call)."""
    workdir = tmp_path_factory.mktemp("whole_scan")
    return scan_run(workdir, 60)


@pytest.mark.parametrize(("log_every", "checkpoint_every", "steps_per_call", "length"), [
    (10, 25, 0, 5), (100, 500, 0, 100), (100, 500, 64, 50), (100, 500, 100, 100),
    (100, 500, 1000, 100), (20, 1000, 0, 20), (7, 7, 3, 1), (6, 4, 5, 2)])
def test_chunk_length_divides_every_log_and_checkpoint_step(log_every, checkpoint_every,
                                                            steps_per_call, length):
    assert _chunk_length(log_every, checkpoint_every, steps_per_call) == length


def test_calls_end_at_multiples_of_the_length():
    assert list(_calls(0, 10, 5)) == [(0, 5), (5, 5)]
    assert list(_calls(23, 35, 5)) == [(23, 2), (25, 5), (30, 5)]
    assert list(_calls(20, 23, 5)) == [(20, 3)]
    assert list(_calls(7, 7, 5)) == []


def test_scan_path_matches_the_per_step_path(tmp_path, whole_scan):
    per_step = run(tmp_path, 60, batch_fn=device_batch_fn)
    assert [r["step"] for r in whole_scan.history] == [10, 20, 30, 40, 50, 60]
    assert [set(r) for r in whole_scan.history] == [set(r) for r in per_step.history]
    for got, want in zip(whole_scan.history, per_step.history, strict=True):
        np.testing.assert_allclose([got["loss"], got["w0"]], [want["loss"], want["w0"]],
                                   rtol=F32_RTOL, atol=F32_ATOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=F32_RTOL, atol=F32_ATOL),
                 whole_scan.state, per_step.state)
    assert (per_step.timing.steps_per_call, whole_scan.timing.steps_per_call) == (1, 5)


def test_scan_path_log_and_checkpoint_schedule(tmp_path):
    """23 steps, 5 per call: the last call runs 3 updates and 2 discarded iterations."""
    seen = []

    def batch_fn(step):
        jax.debug.callback(seen.append, step)
        return device_batch_fn(step)

    result = scan_run(tmp_path, 23, batch_fn=batch_fn, log_every=5, checkpoint_every=10,
                      max_to_keep=5)
    assert [r["step"] for r in result.history] == [5, 10, 15, 20, 23]
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [10, 20, 23]
    steps = [int(s) for s in seen]
    assert len(steps) == 25 and set(steps) == set(range(23))  # never past num_steps - 1
    assert steps[-5:] == [20, 21, 22, 22, 22]  # discarded iterations repeat the last batch
    ref_state, _ = bare_loop(23, device_batch_fn)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=F32_RTOL, atol=F32_ATOL),
                 result.state, ref_state)


@pytest.mark.parametrize("first", [30, 23, 1])
def test_scan_path_resume_and_extend_is_bit_identical(tmp_path, whole_scan, first):
    """Resumed at a call boundary (30) or between (23, 1: calls of 2 and 4 updates first)."""
    part = scan_run(tmp_path / "split", first)
    assert [r["step"] for r in part.history] == [s for s in range(10, first, 10)] + [first]
    second = scan_run(tmp_path / "split", 60)
    assert leaves_equal(second.state, whole_scan.state)
    # the same rows, and the first run's last row where it ended between log steps
    assert [r for r in second.history if r["step"] % 10 == 0] == whole_scan.history
    assert [r["step"] for r in second.history if r["step"] % 10] == (
        [first] if first % 10 else [])
    assert second.timing.first_steps == (5 - first % 5 if first % 5 else 5)


def test_scan_path_resume_after_a_lost_checkpoint(tmp_path, whole_scan):
    scan_run(tmp_path / "split", 50)
    shutil.rmtree(tmp_path / "split" / "checkpoints" / "50")
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:
        f.write('{"step": 60, "loss": 0.1')
    resumed = scan_run(tmp_path / "split", 60)  # from 25
    assert leaves_equal(resumed.state, whole_scan.state)
    assert resumed.history == whole_scan.history


def _count_compiles(caplog, name):
    return [r for r in caplog.records
            if f"Finished XLA compilation of jit({name})" in r.getMessage()]


def test_scan_path_compiles_once(tmp_path, caplog):
    """Calls of 5, 3 (at 23), 2 (from 23) and 4 updates (at 49): one program, one trace."""
    traces = []

    def counting_step(state, batch):
        traces.append(1)
        return step_fn(state, batch)

    batch_fn = make_device_batch_fn()
    kw = {"workdir": tmp_path, "progress": "none", "log_every": 5, "checkpoint_every": 10,
          "steps_per_call": 0}
    caplog.set_level(logging.WARNING, logger="jax._src.dispatch")
    with jax.log_compiles(True):
        first = train_loop(init_state(), counting_step, batch_fn, num_steps=23, **kw)
        second = train_loop(init_state(), counting_step, batch_fn, num_steps=49, **kw)
    # traced twice: for the scan, and alone for its FLOP count (lowered, never compiled)
    assert len(traces) == 2 and len(_count_compiles(caplog, "_scan_steps")) == 1
    assert not _count_compiles(caplog, "_guarded_step")
    assert [r["step"] for r in second.history] == [5, 10, 15, 20, 23, 25, 30, 35, 40, 45, 49]
    assert first.history == second.history[:5]


def test_scan_path_metrics_fn_sees_the_state_of_its_step(tmp_path):
    seen = {}

    def metrics_fn(state, step):
        seen[step] = np.asarray(state["params"]["w"])
        return {"w_norm": jnp.linalg.norm(state["params"]["w"])}

    result = scan_run(tmp_path, 20, metrics_fn=metrics_fn, log_every=10, checkpoint_every=20)
    assert sorted(seen) == [10, 20]
    np.testing.assert_array_equal(seen[20], result.state["params"]["w"])
    ten = scan_run(tmp_path / "ten", 10, log_every=10, checkpoint_every=20)
    np.testing.assert_array_equal(seen[10], ten.state["params"]["w"])
    assert result.history[0]["w_norm"] == pytest.approx(float(np.linalg.norm(seen[10])))
    assert result.timing.eval_s > 0


@pytest.mark.parametrize("bad_batch", [16, 20, 0])
def test_scan_path_non_finite_loss_saves_the_last_finite_state(tmp_path, bad_batch):
    bad_step = bad_batch + 1
    with pytest.raises(NonFiniteLossError, match=rf"non-finite loss nan at step {bad_step} "
                       rf"\(batch_fn\({bad_batch}\)\).* checkpointed as step {bad_batch}"):
        scan_run(tmp_path / "bad", 60, batch_fn=make_device_batch_fn(bad_batch), log_every=5,
                 checkpoint_every=20)
    assert [r["step"] for r in MetricsLog(tmp_path / "bad").read()] == list(
        range(5, bad_step, 5))
    # the replayed state: bit-identical to a clean run stopped there (same program)
    clean = scan_run(tmp_path / "clean", max(bad_batch, 1), log_every=5, checkpoint_every=20)
    with Checkpointer(tmp_path / "bad") as ckpt:
        step, state = ckpt.restore_latest(init_state())
    assert step == bad_batch
    assert leaves_equal(state, clean.state if bad_batch else init_state())


def test_scan_path_needs_a_traceable_batch_fn(tmp_path):
    with pytest.raises(TypeError, match=r"steps_per_call=0, batch_fn is traced.*"
                                        r"Pass steps_per_call=1"):
        scan_run(tmp_path, 10, batch_fn=batch_fn)  # NumPy's generator seeded by the step


@pytest.mark.parametrize(("given", "platform", "used"), [
    (None, "cpu", 1), (None, "gpu", 0), (None, "cuda", 0), (None, "tpu", 0), (1, "gpu", 1),
    (0, "cpu", 0), (4, "tpu", 4)])
def test_auto_steps_per_call_scans_on_accelerators_only(given, platform, used):
    assert _resolve_steps_per_call(given, platform) == used


def test_auto_steps_per_call_on_this_cpu(tmp_path):
    """None: one call per update here, but batch_fn must be traceable all the same."""
    result = run(tmp_path / "auto", 20, batch_fn=device_batch_fn, steps_per_call=None)
    assert result.timing.steps_per_call == (1 if jax.default_backend() == "cpu" else 5)
    with pytest.raises(TypeError, match=r"steps_per_call=None, batch_fn is traced"):
        run(tmp_path / "host", 10, steps_per_call=None)  # NumPy's generator seeded by the step


def test_timing_of_a_run(tmp_path, whole_scan):
    timing = whole_scan.timing
    assert isinstance(timing, TrainTiming)
    assert (timing.first_steps, timing.steps, timing.steps_per_call) == (5, 55, 5)
    assert timing.compile_s > 0 and timing.steps_s > 0 and timing.checkpoint_s > 0
    assert timing.steps_per_s == pytest.approx(55 / timing.steps_s)
    assert timing.eval_s == 0.0  # no metrics_fn
    per_step = run(tmp_path / "per_step", 10).timing
    assert (per_step.first_steps, per_step.steps, per_step.steps_per_call) == (1, 9, 1)
    finished = run(tmp_path / "per_step", 10)
    assert finished.timing is None
    assert TrainTiming(1.0, 1, 0, 0.0, 0.0, 0.0, 1).steps_per_s is None


# --------------------------------------------------------------------------- progress


def test_plain_lines_when_not_a_terminal(tmp_path, capsys):
    run(tmp_path, 20, progress="auto", desc="fit")
    lines = capsys.readouterr().out.strip().splitlines()
    pattern = (r"fit step (10|20)/20 loss \d\S* \(\S+ \S*steps/s, \S+ \S*FLOP/s\) "
               r"elapsed \d+\.\ds eta \d+\.\ds")
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
    (lambda d: _loop(d, steps_per_call=-1), ValueError, r"steps_per_call must be >= 0, got -1"),
    (lambda d: _loop(d, steps_per_call=2.0), TypeError,
     r"steps_per_call must be an int, got float"),
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
# the same trace-time checks inside the scan
BAD += [(lambda d, fn=fn: fn(d, steps_per_call=0, batch_fn=device_batch_fn), exc, match)
        for fn, exc, match in [
            (lambda d, **kw: _loop(d, step_fn=_no_loss, **kw), ValueError,
             r"with a 'loss' in metrics, got \['error'\]"),
            (lambda d, **kw: _loop(d, step_fn=_vector_loss, **kw), ValueError,
             r"metrics\['loss'\] must be a scalar, got shape \(2,\)"),
            (lambda d, **kw: _loop(d, step_fn=_grows, **kw), TypeError,
             r"a state of the same structure"),
            (lambda d, **kw: _loop(d, step_fn=_casts, **kw), TypeError,
             r"changed state leaf \['params'\]\['b'\] from float32\[\] to int32\[\]"),
        ]]


@pytest.mark.parametrize(("fn", "exc", "match"), BAD)
def test_bad_inputs(tmp_path, fn, exc, match):
    with pytest.raises(exc, match=match):
        fn(tmp_path)


# --------------------------------------------------------------------------- evaluation


def score_fn(state, step):
    """A held-out score peaking at step 20 (and nan at step 45)."""
    return {"score": jnp.where(step == 45, jnp.nan, -abs(step - 20.0)),
            "w_norm": jnp.linalg.norm(state["params"]["w"])}


def test_eval_every_adds_rows_and_calls(tmp_path):
    seen = []

    def metrics_fn(state, step):
        seen.append(step)
        return score_fn(state, step)

    result = run(tmp_path, 40, log_every=10, eval_every=15, metrics_fn=metrics_fn)
    assert seen == [15, 30, 40]  # every 15 steps and the last
    assert [r["step"] for r in result.history] == [10, 15, 20, 30, 40]
    assert [("score" in r) for r in result.history] == [False, True, False, True, True]
    whole = run(tmp_path / "whole", 40)  # evaluation does not change the training
    assert [r["loss"] for r in result.history if r["step"] % 10 == 0] == [
        r["loss"] for r in whole.history]


@pytest.mark.parametrize("steps_per_call", [1, 0])
def test_best_checkpoint_is_kept_beside_the_latest(tmp_path, steps_per_call):
    kw = {"eval_every": 5, "metrics_fn": score_fn, "best_metric": "score",
          "steps_per_call": steps_per_call, "batch_fn": device_batch_fn}
    result = run(tmp_path, 50, **kw)
    assert result.best == {"step": 20, "metric": "score", "value": 0.0,
                           "directory": str(tmp_path / "checkpoints_best")}
    at_20 = run(tmp_path / "short", 20, batch_fn=device_batch_fn,
                steps_per_call=steps_per_call)
    with Checkpointer(tmp_path, subdir="checkpoints_best") as best:
        assert best.all_steps() == [20]
        step, state = best.restore_latest(init_state())
        assert best.latest_metrics() == {"metric": "score", "mode": "max", "step": 20,
                                         "value": 0.0}
    assert step == 20 and leaves_equal(state, at_20.state)
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [25, 50]  # the latest ones, as without best_metric


def test_best_by_min_and_resumed_runs_compare_with_the_saved_best(tmp_path):
    def loss_fn(state, step):  # lowest at step 30, then 10 again
        return {"eval_loss": jnp.float32({10: 3.0, 20: 2.0, 30: 1.0, 40: 5.0}[step])}

    first = run(tmp_path, 20, metrics_fn=loss_fn, best_metric="eval_loss", best_mode="min")
    assert first.best["step"] == 20 and first.best["value"] == 2.0
    second = run(tmp_path, 40, metrics_fn=loss_fn, best_metric="eval_loss", best_mode="min")
    assert second.best["step"] == 30 and second.best["value"] == 1.0
    whole = run(tmp_path / "whole", 40, metrics_fn=loss_fn, best_metric="eval_loss",
                best_mode="min")
    assert whole.best["step"] == 30


def test_nan_is_never_the_best(tmp_path):
    def nan_first(state, step):
        return {"score": jnp.float32(np.nan if step == 10 else -step)}

    result = run(tmp_path, 30, metrics_fn=nan_first, best_metric="score")
    assert result.best["step"] == 20 and result.best["value"] == -20.0


@pytest.mark.parametrize("kw, error, match", [
    ({"best_metric": "score"}, ValueError, "best_metric='score' needs a metrics_fn"),
    ({"best_metric": "score", "metrics_fn": score_fn, "best_mode": "median"}, ValueError,
     "best_mode must be one of"),
    ({"best_metric": 3, "metrics_fn": score_fn}, TypeError, "best_metric must be a str"),
    ({"eval_every": 0}, ValueError, "eval_every must be >= 1, got 0"),
    ({"profile_steps": (5, 3)}, ValueError,
     r"profile_steps=\(5, 3\) is outside the run: need 0 <= a < b <= num_steps=20"),
    ({"profile_steps": (0, 21)}, ValueError, "outside the run"),
    ({"profile_steps": "2:5"}, TypeError, "profile_steps must be a pair of ints"),
])
def test_bad_evaluation_and_profile_options(tmp_path, kw, error, match):
    with pytest.raises(error, match=match):
        run(tmp_path, 20, **kw)
    assert not (tmp_path / "checkpoints").exists()  # refused before any step


def test_best_metric_missing_from_the_evaluation(tmp_path):
    with pytest.raises(ValueError, match=r"best_metric='acc' is not among the metrics "
                                         r"metrics_fn returned at step 10: \['score', "):
        run(tmp_path, 20, metrics_fn=score_fn, best_metric="acc")


def test_chunks_do_not_cross_evaluation_steps():
    assert _chunk_length(10, 30, 0, 15) == 5
    assert _chunk_length(10, 30, 0) == 10


# --------------------------------------------------------------------------- profile


def _traces(workdir):
    return sorted(p.name for p in (workdir / "profile").rglob("*") if p.is_file())


def test_profile_steps_write_a_trace(tmp_path):
    result = run(tmp_path, 20, profile_steps=(3, 7))
    names = _traces(tmp_path)
    assert any(n.endswith(".xplane.pb") for n in names), names
    assert "perfetto_trace.json.gz" in names
    assert [r["step"] for r in result.history] == [10, 20]  # the rows are unchanged
    again = run(tmp_path / "plain", 20)
    assert result.history == again.history


def test_profile_is_not_repeated_by_a_resumed_run(tmp_path):
    run(tmp_path, 10, checkpoint_every=10, profile_steps=(2, 4))
    before = _traces(tmp_path)
    run(tmp_path, 20, checkpoint_every=10, profile_steps=(2, 4))
    assert _traces(tmp_path) == before
