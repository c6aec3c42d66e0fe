"""Tests for jaxmath.run.sweep_train: resumable training sweeps and diverged members.

The sweep is tests/_sweep_job.py's: a 3-8-1 network trained by SGD with momentum and
noise from a typed key in the state, 10 configurations (one learning rate diverges) in
3 chunks of 4, 60 updates in segments of 8. Resuming is checked in this process (a
sweep stopped by an exception after a segment, and files removed as a kill would
leave them) and with a real SIGKILL of a subprocess.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmath.run.report import write_report
from jaxmath.run.sweep import grid
from jaxmath.run.sweep_progress import PROGRESS_DIR
from jaxmath.run.sweep_train import TrainSweepResult, diverged_members, train_sweep
from tests._sweep_job import (
    TRAIN,
    TRAIN_HPARAMS,
    fast_random,
    train_finish,
    train_init,
    train_run,
    train_step,
)
from tests.tolerances import F32_ATOL, F32_RTOL

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 120.0   # generous: the machine is shared
POLL_S = 0.002
DIVERGING_LR = 40.0


class Stop(Exception):
    """Raised by on_segment to stop a sweep after a chosen segment, as a kill would."""


@pytest.fixture(scope="module")
def whole() -> TrainSweepResult:
    return train_run()


def _leaves(out) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(out)]


def assert_identical(got, want) -> None:
    """Same structure, dtypes and bits (nan where nan)."""
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(_leaves(got), _leaves(want), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=True)


# ------------------------------------------------------------------- the numbers


def test_equals_a_loop_of_jitted_steps(whole):
    """vmap/jit consistency: each member equals its own run, one jitted step at a time."""
    step, finish = jax.jit(train_step), jax.jit(train_finish)
    num_steps, log_every = TRAIN["num_steps"], TRAIN["log_every"]
    with fast_random():  # the random bits of train_run
        _loop_of_jitted_steps(whole, step, finish, num_steps, log_every)
    assert whole.curves["loss"].shape == (10, num_steps // log_every)
    assert set(whole.curves) == {"loss", "grad_norm"}


def _loop_of_jitted_steps(whole, step, finish, num_steps, log_every):
    for s in range(len(TRAIN_HPARAMS["seed"])):
        hp = {k: np.asarray(v[s]).astype(jax.dtypes.canonicalize_dtype(v.dtype))
              for k, v in TRAIN_HPARAMS.items()}
        state, losses, diverged_at = jax.jit(train_init)(hp), [], 0
        for t in range(num_steps):
            new, metrics = step(state, hp, np.int32(t))
            losses.append(float(metrics["loss"]))
            if not np.isfinite(losses[-1]):
                diverged_at = t + 1
                break
            state = new
        assert whole.diverged_step[s] == diverged_at
        if diverged_at:  # its last losses are huge, past any float32 tolerance
            assert np.isnan(whole.curves["loss"][s, diverged_at // log_every:]).all()
            continue
        want = finish(state, hp)
        np.testing.assert_allclose(whole.results["w2"][s], want["w2"], rtol=F32_RTOL,
                                   atol=F32_ATOL)
        np.testing.assert_allclose(whole.curves["loss"][s], losses[log_every - 1::log_every],
                                   rtol=F32_RTOL, atol=F32_ATOL)


def test_segments_compute_the_bits_of_one_scan(whole):
    # TRAIN has segments of 8 (the last one 4 of 8, masked); None: all 60 updates in one
    assert_identical(train_run(checkpoint_every=None), whole)


def test_compiles_once_for_every_chunk_and_segment(caplog):
    traces = []

    def step(state, hp, t):  # new functions: cache entries of their own
        traces.append(1)
        w = state["w"] - hp["learning_rate"] * (state["w"] - hp["seed"])
        return {"w": w}, {"loss": jnp.sum(w ** 2)}

    def init(hp):
        return {"w": jnp.zeros(2) + hp["learning_rate"]}

    def finish(state, hp):
        return state["w"]

    with caplog.at_level(logging.WARNING), jax.log_compiles(True):
        train_sweep(init, step, finish, TRAIN_HPARAMS, **TRAIN)  # 3 chunks of 8 segments
        out = train_sweep(init, step, finish,
                          {"learning_rate": TRAIN_HPARAMS["learning_rate"] / 2,
                           "seed": TRAIN_HPARAMS["seed"] + 3}, **TRAIN)
    compiled = [r.getMessage().split()[1] for r in caplog.records
                if r.getMessage().startswith("Compiling jit(_")]
    assert len(traces) == 1
    assert sorted(compiled) == ["jit(_finish_chunk)", "jit(_init_chunk)", "jit(_segment_chunk)"]
    assert out.results.shape == (10, 2)


# ------------------------------------------------------------------ diverged members


def test_a_diverged_member_is_marked_and_frozen(whole):
    diverged = TRAIN_HPARAMS["learning_rate"] == DIVERGING_LR
    assert whole.diverged.tolist() == diverged.tolist()
    steps = whole.diverged_step[diverged]
    assert (steps > 1).all() and (steps < TRAIN["num_steps"]).all()  # the sweep went on
    assert np.isfinite(whole.curves["loss"][~diverged]).all()
    # frozen: its state is the one the non-finite loss was computed on, x^(t), t = step - 1
    for s in np.flatnonzero(diverged):
        t = int(whole.diverged_step[s])
        short = train_run(num_steps=t - 1, log_every=1)  # the same programs, t - 1 updates
        assert short.diverged_step[s] == 0
        np.testing.assert_array_equal(whole.results["w2"][s], short.results["w2"][s])
        assert np.isfinite(whole.results["w2"][s]).all()  # no nan spread into the state


def test_other_members_are_unchanged_by_a_diverged_one(whole):
    """The same sweep with a sane rate in place of the diverging one: every other
    member's results, curves and steps are the same bits."""
    sane = dict(TRAIN_HPARAMS)
    sane["learning_rate"] = np.where(sane["learning_rate"] == DIVERGING_LR, 0.07,
                                     sane["learning_rate"])
    calm = train_run(hparams=sane)
    assert not calm.diverged.any()
    others = TRAIN_HPARAMS["learning_rate"] != DIVERGING_LR
    for a, b in zip(_leaves(whole), _leaves(calm), strict=True):
        assert np.array_equal(a[others], b[others])


def test_diverged_members_and_report(tmp_path, whole):
    members = diverged_members(TRAIN_HPARAMS, whole.diverged_step)
    steps = whole.diverged_step.tolist()
    assert members == [
        {"index": 8, "learning_rate": DIVERGING_LR, "seed": 0, "step": steps[8]},
        {"index": 9, "learning_rate": DIVERGING_LR, "seed": 1, "step": steps[9]}]
    json.dumps(members)  # Python scalars: summary.json can hold them
    text = write_report(tmp_path, {"num_diverged": 2, "diverged_members": members},
                        "sweep").read_text()
    assert "## diverged_members" in text
    assert f"- index = 8, learning_rate = 40, seed = 0, step = {steps[8]}" in text
    assert diverged_members(TRAIN_HPARAMS, np.zeros(10, int)) == []


# --------------------------------------------------------------------- resuming


def _stop_at(chunk: int, done: int, calls: list):
    def on_segment(group, c, d):
        calls.append((c, d))
        if (c, d) == (chunk, done):
            raise Stop
    return on_segment


def test_resumes_mid_chunk_bit_identical(tmp_path, whole):
    calls = []
    with pytest.raises(Stop):  # stopped after chunk 1's third segment (24 updates)
        train_run(tmp_path, on_segment=_stop_at(1, 24, calls))
    files = sorted(p.name for p in (tmp_path / PROGRESS_DIR).iterdir())
    assert files == ["group0_chunk0.npz", "group0_chunk1.running.npz", "manifest.json"]
    calls.clear()
    resumed = train_run(tmp_path, on_segment=_stop_at(-1, -1, calls))
    assert calls[0] == (1, 32)  # chunk 0 loaded, chunk 1 continued from update 24
    assert_identical(resumed, whole)
    # a finished sweep run again loads every chunk
    calls.clear()
    assert_identical(train_run(tmp_path, on_segment=_stop_at(-1, -1, calls)), whole)
    assert calls == []


def test_resume_may_change_checkpoint_every(tmp_path, whole):
    with pytest.raises(Stop):
        train_run(tmp_path, on_segment=_stop_at(0, 16, []))
    assert_identical(train_run(tmp_path, checkpoint_every=None), whole)  # 17..60 in one


def test_a_damaged_running_state_recomputes_its_chunk(tmp_path, whole):
    with pytest.raises(Stop):
        train_run(tmp_path, on_segment=_stop_at(0, 16, []))
    running = tmp_path / PROGRESS_DIR / "group0_chunk0.running.npz"
    running.write_bytes(running.read_bytes()[:-100])
    with pytest.warns(RuntimeWarning, match="cannot be read.*computed again"):
        resumed = train_run(tmp_path)
    assert_identical(resumed, whole)


@pytest.mark.parametrize(("change", "match"), [
    ({"hparams": {**TRAIN_HPARAMS, "seed": TRAIN_HPARAMS["seed"] + 1}},
     r"different sweep \(hparams\.seed\.0: 0 -> 1\)"),
    ({"num_steps": 80}, r"different sweep \(num_steps: 60 -> 80\)"),
    ({"log_every": 10}, r"log_every: 5 -> 10"),
    ({"chunk_size": 2}, r"different sweep \(plan\.0\.num_chunks: 1 -> 2\)"),
    ({"identity": {"width": 16}}, r"different sweep \(identity\.width: 8 -> 16\)"),
])
def test_a_changed_sweep_is_refused(tmp_path, change, match):
    first = {k: v[:4] for k, v in TRAIN_HPARAMS.items()}
    train_run(tmp_path, hparams=first, identity={"width": 8})
    change = {"identity": {"width": 8}, **change}
    hparams = change.pop("hparams", TRAIN_HPARAMS)
    with pytest.raises(ValueError, match=match + r".*use another workdir"):
        train_run(tmp_path, hparams={k: v[:4] for k, v in hparams.items()}, **change)
    assert_identical(train_run(tmp_path, hparams=first, identity={"width": 8}),
                     train_run(hparams=first))  # the same sweep resumes


def _start_job(workdir: Path, cache: Path, seconds: float) -> subprocess.Popen:
    # the runs share a persistent compilation cache: only the first one compiles
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
               JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen([sys.executable, "-m", "tests._sweep_job", "train", str(workdir),
                             str(seconds)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_killed_sweep_resumes_to_the_same_results(tmp_path, whole):
    """SIGKILL a subprocess once chunk 0 is finished and chunk 1 is mid-way; run it again."""
    workdir, cache = tmp_path / "run", tmp_path / "jax_cache"
    progress = workdir / PROGRESS_DIR
    proc = _start_job(workdir, cache, seconds=0.02)
    deadline = time.monotonic() + WAIT_S
    while not ((progress / "group0_chunk0.npz").exists()
               and (progress / "group0_chunk1.running.npz").exists()):
        if proc.poll() is not None:
            pytest.fail(f"the job ended (rc {proc.returncode}) too soon:\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for chunk 1 to be saved mid-way")
        time.sleep(POLL_S)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=WAIT_S)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (progress / "group0_chunk2.npz").exists()

    proc = _start_job(workdir, cache, seconds=0.0)
    out, _ = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, out
    with np.load(workdir / "final.npz") as final:
        leaves = [final[f"arr_{i}"] for i in range(len(final.files))]
    for got, want in zip(leaves, _leaves(whole), strict=True):
        assert got.dtype == want.dtype and np.array_equal(got, want, equal_nan=True)


# ------------------------------------------------------------------- bad inputs


def _no_loss(state, hp, t):
    return state, {"error": 0.0}


def _grows(state, hp, t):
    return {**state, "key": state["key"][None]}, {"loss": 0.0}


def _curve_metric(state, hp, t):
    return state, {"loss": 0.0, "per_class": state["params"]["w2"]}


def _sweep(**kwargs):
    args = {"init_fn": train_init, "step_fn": train_step, "finish_fn": train_finish,
            "hparams": grid(learning_rate=[0.1], seed=[0]), "num_steps": 4, "chunk_size": 4}

    def call():
        with fast_random():  # the init program of train_run's, compiled once
            train_sweep(**{**args, **kwargs})
    return call


BAD = [
    (_sweep(init_fn=3), TypeError, "init_fn must be callable"),
    (_sweep(step_fn=None), TypeError, "step_fn must be callable"),
    (_sweep(finish_fn="f"), TypeError, "finish_fn must be callable"),
    (_sweep(hparams=[0.1]), TypeError, "hparams must be a dict"),
    (_sweep(hparams={"act": ["relu"]}), TypeError, "'act' holds strings"),
    (_sweep(num_steps=0), ValueError, "num_steps must be >= 1, got 0"),
    (_sweep(num_steps=2.5), TypeError, "num_steps must be an int, got float"),
    (_sweep(log_every=0), ValueError, "log_every must be >= 1"),
    (_sweep(log_every=5), ValueError, "log_every must be <= num_steps = 4, got 5"),
    (_sweep(checkpoint_every=0), ValueError, "checkpoint_every must be >= 1"),
    (_sweep(checkpoint_every=True), TypeError, "checkpoint_every must be an int, got bool"),
    (_sweep(chunk_size=-1), ValueError, "chunk_size must be >= 0"),
    (_sweep(static="width"), ValueError, "static name 'width'"),
    (_sweep(loss=1), TypeError, "loss must be a metric name"),
    (_sweep(on_segment=1), TypeError, "on_segment must be callable"),
    (_sweep(workdir=3), TypeError, "workdir must be a path or None, got int"),
    (_sweep(identity=[1]), TypeError, "identity must be a mapping or None, got list"),
    (_sweep(identity={"f": print}), TypeError, "identity must be JSON-able"),
    (_sweep(mesh="cpu"), TypeError, "mesh must be a jax.sharding.Mesh"),
    # raised while the segment program traces step_fn
    (_sweep(step_fn=_no_loss), ValueError, r"metrics a dict holding 'loss'.*keys \['error'\]"),
    (_sweep(step_fn=_grows), TypeError, "changed state leaf 'key'"),
    (_sweep(step_fn=_curve_metric), ValueError, r"metric 'per_class' must be a scalar"),
    (lambda: diverged_members(TRAIN_HPARAMS, [0, 1]), ValueError,
     r"diverged_step must have shape \(N,\) = \(10,\), got \(2,\)"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD)
def test_bad_inputs(call, error, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        call()

