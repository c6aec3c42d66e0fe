"""The training loop's cost: ``train_loop`` against a bare Python loop of the same jitted step.

One update, the same on every side: the digits MLP of ``configs/mlp.py`` (64 -> 256 ->
256 -> 10, relu) on a minibatch of 128 rows drawn from the 1,347 training digits by
``fold_in(key, step)`` on the device, the mean softmax cross-entropy, one AdamW step
(``optax.adamw``, learning rate 1e-3), the state donated. ``NUM_STEPS`` updates per call:

* ``bare loop`` (the peer): ``state = step(state, s)`` for ``s`` in range, nothing else;
* ``train_loop`` (the subject): :func:`jaxmath.run.loop.train_loop` with a row every
  ``LOG_EVERY`` updates (each waits for its updates, checks the losses, measures the
  throughput and writes ``metrics.jsonl``), one checkpoint at the end, and the same
  per-step path (``steps_per_call=1``), in a fresh workdir per call;
* ``train_loop + TensorBoard`` (info): the same with the rows also sent to the
  TensorBoard writer (:mod:`jaxmath.run.writers`, a background thread);
* ``train_loop + evaluation`` (info): the same with a held-out evaluation (the test
  accuracy on the 450 test digits) every ``LOG_EVERY`` updates and the best state kept
  in ``checkpoints_best`` (``best_metric``).

Both compute the same updates (the final parameters are checked equal). The record also
holds the throughput the loop reported in its last row (``perf/steps_per_s``) against the
bare loop's measured rate: how far the meter's figure is from the truth. Goal: the loop
costs at most 10% (>= 0.9x the bare loop's updates per second).

    python -m benchmarks.run --only train_loop [--quick]
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._harness import Impl, check_close, measure, summarise
from jaxmath.losses import softmax_cross_entropy
from jaxmath.run.files import MetricsLog
from jaxmath.run.loop import train_loop

NUM_STEPS = 2000
LOG_EVERY = 100
BATCH = 128
WIDTH = 256
GOAL = 0.9


def _data():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(d.data / 16.0, d.target, test_size=0.25,
                                              random_state=0, stratify=d.target)
    return (jnp.asarray(x_tr, jnp.float32), jnp.asarray(y_tr, jnp.int32),
            jnp.asarray(x_te, jnp.float32), jnp.asarray(y_te, jnp.int32))


def _problem():
    x, y, x_test, y_test = _data()
    opt = optax.adamw(1e-3)
    sizes = (64, WIDTH, WIDTH, 10)
    keys = jax.random.split(jax.random.key(0), len(sizes) - 1)
    params = [(jax.random.normal(k, (a, b)) * np.sqrt(2 / a), jnp.zeros(b))
              for k, a, b in zip(keys, sizes[:-1], sizes[1:], strict=True)]

    def apply(params, x):
        for w, b in params[:-1]:
            x = jax.nn.relu(x @ w + b)
        w, b = params[-1]
        return x @ w + b

    def step(state, s):
        idx = jax.random.randint(jax.random.fold_in(jax.random.key(1), s), (BATCH,), 0,
                                 x.shape[0])
        loss, grads = jax.value_and_grad(
            lambda p: jnp.mean(softmax_cross_entropy(apply(p, x[idx]), y[idx])))(
                state["params"])
        updates, opt_state = opt.update(grads, state["opt_state"], state["params"])
        return ({"params": optax.apply_updates(state["params"], updates),
                 "opt_state": opt_state}, {"loss": loss})

    @jax.jit
    def test_accuracy(params):
        return jnp.mean(jnp.argmax(apply(params, x_test), -1) == y_test)

    def evaluate(state, step):
        return {"test_accuracy": test_accuracy(state["params"])}

    init = {"params": params, "opt_state": opt.init(params)}
    return init, step, evaluate


def _bare(init, jstep):
    state = jax.tree.map(jnp.copy, init)
    for s in range(NUM_STEPS):
        state, _ = jstep(state, s)
    return state["params"]


def _loop(init, step, root: Path, **kw):
    workdir = Path(tempfile.mkdtemp(dir=root))
    try:
        result = train_loop(init, step, lambda s: s, num_steps=NUM_STEPS, workdir=workdir,
                            log_every=LOG_EVERY, checkpoint_every=NUM_STEPS, progress="none",
                            examples_per_step=BATCH, **kw)
        rows = MetricsLog(workdir).read()
        return result.state["params"], rows[-1]["perf/steps_per_s"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _loop_with_tensorboard(init, step, root: Path):
    from jaxmath.run.writers import MetricWriters, TensorBoardWriter

    logdir = Path(tempfile.mkdtemp(dir=root))
    try:
        with MetricWriters({"tensorboard": TensorBoardWriter(logdir)}) as writers:
            return _loop(init, step, root, writers=writers)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def bench(quick: bool = False) -> dict:
    init, step, evaluate = _problem()
    jstep = jax.jit(step, donate_argnums=0)
    root = Path(tempfile.mkdtemp(prefix="jaxmath-bench-loop-"))
    try:
        impls = [
            Impl("train_loop", functools.partial(lambda: _loop(init, step, root)[0]),
                 role="jaxmath", configs=NUM_STEPS),
            Impl("bare loop", functools.partial(_bare, init, jstep), configs=NUM_STEPS),
            Impl("train_loop + TensorBoard",
                 lambda: _loop_with_tensorboard(init, step, root)[0], role="info",
                 configs=NUM_STEPS),
            Impl("train_loop + evaluation + best checkpoint",
                 lambda: _loop(init, step, root, metrics_fn=evaluate,
                               best_metric="test_accuracy")[0],
                 role="info", configs=NUM_STEPS),
        ]
        timings, outputs = measure(impls, repeats=3 if quick else 5)
        reported = [_loop(init, step, root)[1] for _ in range(3)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for name in ("train_loop", "train_loop + TensorBoard",
                 "train_loop + evaluation + best checkpoint"):
        for i, (got, want) in enumerate(zip(jax.tree.leaves(outputs[name]),
                                            jax.tree.leaves(outputs["bare loop"]), strict=True)):
            check_close(f"train_loop/{name}/{i}", got, want, 0.0, 0.0)
    description = (f"{NUM_STEPS} AdamW updates of a 64-{WIDTH}-{WIDTH}-10 MLP on digits "
                   f"minibatches of {BATCH}: train_loop (a row every {LOG_EVERY} updates, one "
                   "checkpoint) vs a bare Python loop of the same jitted step (updates/s)")
    record = summarise("train_loop", description, impls, timings, GOAL,
                       f">= {GOAL:g}x the bare loop's updates per second")
    bare_rate = NUM_STEPS / timings["bare loop"].median_s
    record.update({
        "reported_steps_per_s": reported,
        "bare_steps_per_s": bare_rate,
        "reported_over_bare": float(np.median(reported)) / bare_rate,
        "note": "reported_steps_per_s: perf/steps_per_s of the last row of three more "
                "train_loop calls (rates between rows, evaluation and checkpoints left "
                "out); reported_over_bare compares their median with the bare loop's "
                "median rate.",
    })
    print(f"  train_loop reported {np.median(reported):.0f} steps/s; the bare loop ran "
          f"{bare_rate:.0f} steps/s")
    return record


BENCHMARKS = {"train_loop": bench}

if __name__ == "__main__":
    import sys

    from benchmarks.run import main
    sys.exit(main(["--only", "train_loop", "--no-write", *sys.argv[1:]]))
