r"""A training loop that resumes bit-identically after a kill and stops on a non-finite loss.

:func:`train_loop` applies ``state_{s} = step_fn(state_{s-1}, batch_fn(s - 1))`` for
``s = 1 .. num_steps``. Step numbers count completed updates (like optax's and
flax's ``step``): the row ``{"step": s, "loss": ...}`` of ``metrics.jsonl`` holds
the metrics of update ``s``, and the checkpoint ``s`` holds ``state_s``.

Resuming: the state is restored from the newest good checkpoint ``s`` (see
:class:`~jaxmath.run.checkpoint.Checkpointer`), the rows after ``s`` are dropped
from ``metrics.jsonl`` and the loop goes on with ``batch_fn(s)``. Because the
state (parameters, optimiser state, PRNG keys) is restored exactly and
``batch_fn`` is a function of the step alone, the resumed run computes the same
numbers as an uninterrupted one: bit-identical on CPU.

Non-finite losses: the jitted step also records, on the device, the first update
whose loss is nan or ±inf. The loop looks at that record at log and checkpoint
steps (no checkpoint is saved without looking), and on a hit it restores the
newest checkpoint, replays the few updates up to the one before the bad loss
(same compiled step, same batches, so the same bits), saves that state and
raises :class:`NonFiniteLossError`.

Speed: nothing leaves the device between log steps. With ``steps_per_call=1`` (the
default) each update is one call of a jitted step and ``batch_fn(step)`` runs on the
host; with ``steps_per_call != 1`` the updates between two log or checkpoint steps
run as one jitted :func:`jax.lax.scan` over the step numbers, ``batch_fn`` traced
inside it with a traced ``int32`` step (so the data it samples from stays on the
device). A call then holds ``K`` updates, ``K`` a divisor of
``gcd(log_every, checkpoint_every)``, and calls start at multiples of ``K``: a
function of the step numbers alone, so that a resumed run makes the same calls as an
uninterrupted one. One program serves every call: a call of fewer than ``K`` updates
(at ``num_steps``, or from a checkpoint at an odd step) runs the same ``K``
iterations with the extra ones masked (computed and discarded), and each iteration
runs the same compiled body, so the bits do not depend on how the steps were split.
On a GPU or TPU the scan removes the per-update dispatch (a Python call and a
jitted call's launch) that dominates the time of small models. On a CPU it rarely
pays: XLA:CPU compiles a loop's body less well than a top-level program (it rewrites
only top-level convolutions to its fast Eigen form, so a CNN's weight gradients ran
15-200x slower inside the scan, and it splits only top-level operations across the
cores). ``steps_per_call=None`` takes the scan on accelerators and one call per
update on a CPU.

At a log step the loop waits for the updates to finish, checks the losses, and writes
(and shows) the row with the throughput since the last one (:mod:`jaxmath.run.throughput`:
steps/s, examples/s, FLOP/s, MFU): the one wait per row costs the device one dispatch's
idle time (tens of microseconds) and makes every row's clock read when its updates were
done, so that the rates are right whether the host or the device is the bottleneck. The
loop adds little to a bare Python loop of the jitted step.

Evaluation, the best state and profiles: ``metrics_fn`` (held-out metrics) runs every
``eval_every`` steps; with ``best_metric`` the best state by it is kept in
``workdir/checkpoints_best`` beside the latest checkpoints; ``profile_steps`` traces a
range of updates with :mod:`jax.profiler` into ``workdir/profile``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np

from jaxmath._checks import check_choice
from jaxmath.run.best import BEST_DIR, BestState
from jaxmath.run.checkpoint import Checkpointer
from jaxmath.run.files import MetricsLog
from jaxmath.run.progress import PROGRESS_MODES, Progress
from jaxmath.run.steps import (
    _carry,
    _check_traceable,
    _first_bad,
    _Layout,
    _resolve_steps_per_call,
    _Stepper,
)
from jaxmath.run.throughput import Meter, peak_flops

PyTree = Any

__all__ = ["BEST_DIR", "PROFILE_DIR", "NonFiniteLossError", "TrainResult", "TrainTiming",
           "parse_profile_steps", "train_loop"]

PROFILE_DIR = "profile"        # workdir/profile: the jax.profiler trace of profile_steps


class NonFiniteLossError(FloatingPointError):
    """A training step produced a non-finite loss; the message names the step.

    Attributes:
      step: the update whose loss was non-finite (computed on ``batch_fn(step - 1)``).
      loss: that loss value (nan or ±inf).
      saved_step: the checkpoint holding the last state with a finite loss
        (``step - 1``), or None if nothing was saved.
      directory: the checkpoint directory.

    Example:
      >>> print(NonFiniteLossError(37, float("nan"), 36, "runs/x/checkpoints"))
      non-finite loss nan at step 37 (batch_fn(36)); the state before it is checkpointed
      as step 36 in runs/x/checkpoints, and metrics.jsonl holds the rows up to it
    """

    def __init__(self, step: int, loss: float = math.nan, saved_step: int | None = None,
                 directory: str | None = None):
        super().__init__(step, loss, saved_step, directory)
        self.step, self.loss, self.saved_step, self.directory = step, loss, saved_step, directory

    def __str__(self) -> str:
        msg = f"non-finite loss {self.loss} at step {self.step} (batch_fn({self.step - 1}))"
        if self.saved_step is not None:
            msg += (f"; the state before it is checkpointed as step {self.saved_step} "
                    f"in {self.directory}, and metrics.jsonl holds the rows up to it")
        return msg


class TrainTiming(NamedTuple):
    """Where the wall time of one :func:`train_loop` call went, in seconds.

    Attributes:
      compile_s: the first jitted call alone, waited for: tracing and compilation (or a
        load from JAX's persistent cache) of the step, and the ``first_steps`` updates
        it ran.
      first_steps: the updates run by that first call.
      steps: the updates run after it.
      steps_s: their wall time, less ``eval_s`` and ``checkpoint_s``: the steps, their
        dispatch and the metrics rows.
      eval_s: time in ``metrics_fn``, from when the updates before it were done (its
        own compilation included).
      checkpoint_s: time checking the losses and saving checkpoints, from when the
        updates before them were done.
      steps_per_call: the updates per jitted call (``K``; 1 on the per-step path).
      examples_per_step: the global batch size, if given to :func:`train_loop`.
      flops_per_step: one update's FLOPs (:func:`jaxmath.run.throughput.step_flops`:
        the whole global batch, before XLA's optimisations), or None.
      peak_flops: the summed peak FLOP/s of the devices the state lives on
        (:func:`jaxmath.run.throughput.peak_flops`), or None (a CPU, a device not in
        the table).

    Example:
      >>> t = TrainTiming(2.0, 10, 90, 0.5, 0.1, 0.2, 10, 32, 1e9, 1e12)
      >>> t.steps_per_s, t.examples_per_s, t.mfu
      (180.0, 5760.0, 0.18)
    """

    compile_s: float
    first_steps: int
    steps: int
    steps_s: float
    eval_s: float
    checkpoint_s: float
    steps_per_call: int
    examples_per_step: int | None = None
    flops_per_step: float | None = None
    peak_flops: float | None = None

    @property
    def steps_per_s(self) -> float | None:
        """Updates per second after the first call (None if none ran after it)."""
        return self.steps / self.steps_s if self.steps and self.steps_s > 0 else None

    @property
    def examples_per_s(self) -> float | None:
        """Examples per second after the first call (None without a batch size)."""
        rate = self.steps_per_s
        return None if rate is None or not self.examples_per_step else rate * self.examples_per_step

    @property
    def flops_per_s(self) -> float | None:
        """FLOP/s after the first call (None without a FLOP count)."""
        rate = self.steps_per_s
        return None if rate is None or not self.flops_per_step else rate * self.flops_per_step

    @property
    def mfu(self) -> float | None:
        """Model FLOPs utilisation after the first call: FLOP/s over the devices' peak."""
        flops = self.flops_per_s
        return None if flops is None or not self.peak_flops else flops / self.peak_flops


class TrainResult(NamedTuple):
    """What :func:`train_loop` returns.

    Attributes:
      state: the final state (after ``num_steps`` updates).
      history: every row of ``metrics.jsonl``, across resumed runs, oldest first.
      timing: where this call's time went (:class:`TrainTiming`), or None if it ran
        no update (the workdir held a finished run).
      best: with ``best_metric``, ``{"step", "metric", "value", "directory"}`` of the
        best evaluation so far (across resumed runs; its state is the checkpoint in
        ``directory``), or None.
    """

    state: PyTree
    history: list[dict]
    timing: TrainTiming | None = None
    best: dict | None = None


# --------------------------------------------------------------------------- checks


def _check_int(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_callable(fn: object, name: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")


# --------------------------------------------------------------------------- the loop


def _placed(state: PyTree, copy: bool) -> tuple[PyTree, Any]:
    """``state`` with every leaf a device array committed where it is (copied if
    ``copy``, so that donating it leaves the caller's arrays intact), and the
    sharding for the loop's carry.

    A restored checkpoint arrives committed to its devices; a fresh state is made
    so too. The jitted step then sees the same argument placements on the first
    call as on every later one and in a resumed run as in a fresh one: one
    compilation, and the same executable (and persistent-cache entry) in both.
    """
    leaves = jax.tree.leaves(state)
    first = next((x for x in leaves if isinstance(x, jax.Array)), None)
    if first is None:
        home = jax.sharding.SingleDeviceSharding(next(iter(jax.device_put(0).devices())))
    else:
        home = first.sharding
    if isinstance(home, jax.sharding.NamedSharding):
        carry_sharding = jax.sharding.NamedSharding(home.mesh, jax.sharding.PartitionSpec())
    else:
        carry_sharding = jax.sharding.SingleDeviceSharding(next(iter(home.device_set)))

    def put(x):
        if isinstance(x, jax.Array):
            return jax.device_put(x, x.sharding, may_alias=not copy)
        return jax.device_put(x, carry_sharding)

    return jax.tree.map(put, state), carry_sharding


def train_loop(state: PyTree, step_fn: Callable, batch_fn: Callable[[int], Any], *,
               num_steps: int, workdir: str | Path, log_every: int = 100,
               checkpoint_every: int = 1000, desc: str = "train",
               metrics_fn: Callable[[PyTree, int], Mapping[str, Any]] | None = None,
               max_to_keep: int = 3, progress: str = "auto", donate: bool = True,
               steps_per_call: int | None = 1, batch_sharding: Any = None,
               eval_every: int | None = None, best_metric: str | None = None,
               best_mode: str = "max", examples_per_step: int | None = None,
               profile_steps: tuple[int, int] | None = None,
               writers: Any = None) -> TrainResult:
    r"""Train ``state`` for ``num_steps`` updates in ``workdir``, resuming where a run stopped.

    .. math:: \mathrm{state}_s = \mathrm{step\_fn}(\mathrm{state}_{s-1},\,
              \mathrm{batch\_fn}(s-1)), \qquad s = s_0 + 1, \dots, \mathrm{num\_steps}

    where :math:`s_0` is the step of the newest good checkpoint in ``workdir``
    (0 and the given ``state`` if there is none).

    Args:
      state: any pytree of arrays (``{"params": ..., "opt_state": ...}``, a flax
        ``TrainState``); PRNG keys in it may be raw ``uint32`` or typed keys. It is
        also the template a checkpoint is restored into.
      step_fn: ``step_fn(state, batch) -> (state, metrics)`` with a scalar
        ``metrics["loss"]``; pure and jit-able (it is traced inside the loop's own
        jitted step, so the caller's ``jax.jit`` is optional).
      batch_fn: ``batch_fn(step) -> batch`` for ``step = 0 .. num_steps - 1``;
        must depend on ``step`` alone (derive randomness with
        ``jax.random.fold_in(key, step)``) for a resumed run to match. With
        ``steps_per_call=1`` it is called on the host with a Python int and may
        return anything ``step_fn`` takes (NumPy arrays, data read from disk);
        otherwise it is traced, with ``step`` a traced int32 scalar, and must build
        the batch with JAX operations (e.g. index device arrays it closes over).
      num_steps: total number of updates, counting those of earlier runs.
      workdir: the run directory: ``metrics.jsonl`` and ``checkpoints/`` live here.
      log_every: write a metrics row (and a progress update) every this many
        steps and at the last step (flushed at once: a killed run keeps its rows).
      checkpoint_every: save a checkpoint every this many steps and at the last.
      desc: the progress bar's label.
      metrics_fn: the evaluation, optional: ``metrics_fn(state, step) -> dict`` of extra
        metrics (e.g. accuracy on held-out data), called every ``eval_every`` steps and
        at the last; its values join that step's row.
      max_to_keep: how many checkpoints to keep.
      progress: ``"auto"`` (a tqdm bar when stdout is a terminal, plain lines
        otherwise), ``"bar"``, ``"lines"`` or ``"none"``; process 0 alone shows it.
      donate: donate the state's buffers to each step (updates in place). The
        ``state`` passed in is copied first, so it stays valid.
      steps_per_call: how many updates one jitted call may run. ``1`` (the
        default): one call per update, ``batch_fn`` on the host. Any other int
        (``0``: no bound) traces ``batch_fn`` and runs up to ``K`` updates per call
        as one ``lax.scan``, ``K`` the largest divisor of
        ``gcd(log_every, checkpoint_every)`` not above ``steps_per_call``: the way
        to train small models at accelerator speed. ``None``: ``0`` where the state
        lives on a GPU or TPU and ``1`` on a CPU (see the module docstring), with
        ``batch_fn`` traced once on every backend to check that it can be, so that
        a CPU run catches a ``batch_fn`` an accelerator could not scan. The rows,
        checkpoints, ``metrics_fn`` calls and errors are the same on both paths; the
        values agree to float rounding (the scan is compiled as one program).
      batch_sharding: where the batch lives on a device mesh (a ``Sharding`` for
        every leaf, or a pytree of them; :func:`jaxmath.run.mesh.batch_sharding`
        splits the examples over the data axes), or None to leave it where
        ``batch_fn`` puts it. On the per-step path ``batch_fn(step)`` then returns
        this process's rows of the global batch (all of it in a single process;
        :func:`jaxmath.run.mesh.process_rows`), assembled into one global array; on
        the scan path the traced batch is constrained to it. The state keeps the
        shardings it arrives with (place it with
        :func:`jaxmath.run.mesh.shard_init`), and a checkpoint is restored onto them,
        whatever layout it was saved from.
      eval_every: call ``metrics_fn`` every this many steps (and at the last); such a
        step also gets a row. Default: every log step.
      best_metric: a key of ``metrics_fn``'s result: each evaluation that improves on
        the best so far (by ``best_mode``; nan never does) saves the state in
        ``workdir/checkpoints_best`` (:data:`BEST_DIR`, one step kept, its metrics
        beside it), besides the latest checkpoints. A resumed run compares with the
        best recorded there.
      best_mode: ``"max"`` (accuracy) or ``"min"`` (a loss).
      examples_per_step: the global batch size, for the examples/s of the progress
        line and rows.
      profile_steps: ``(a, b)``, ``0 <= a < b <= num_steps``: a :mod:`jax.profiler`
        trace of the updates ``a + 1 .. b`` (from the state at step ``a`` to the state
        at step ``b``) is written to ``workdir/profile`` (:data:`PROFILE_DIR`): open it
        with TensorBoard's profile plugin (``tensorboard --logdir workdir/profile``) or
        load its ``*.trace.json.gz`` in https://ui.perfetto.dev. Steps already done by
        a resumed run are not traced again.
      writers: more places for the rows, e.g. TensorBoard and W&B
        (:class:`jaxmath.run.writers.MetricWriters`, from a config's ``logging`` block by
        :func:`jaxmath.run.writers.from_config`): anything with ``write(step, row)``, called
        with each row right after it is written to ``metrics.jsonl``. The loop never
        closes them: the caller does.

    Throughput: each row after the first call's gets ``perf/steps_per_s``,
    ``perf/examples_per_s`` (with ``examples_per_step``), ``perf/flops_per_s`` and, on
    a device in :data:`jaxmath.run.throughput.PEAK_FLOPS`, ``perf/mfu``: rates between
    the completions of successive rows, evaluation and checkpoint time left out
    (:class:`jaxmath.run.throughput.Meter`); the first row after compilation gets
    ``perf/compile_s``. They are timings: compare runs on
    :func:`jaxmath.run.throughput.without_perf` of their rows.

    Returns:
      ``TrainResult(state, history, timing, best)``: the state after ``num_steps``
      updates, all rows of ``metrics.jsonl`` and where this call's time went
      (:class:`TrainTiming`: the first call alone, with compilation, and the
      updates per second after it). A workdir whose checkpoint is already at
      ``num_steps`` returns at once (``timing`` None); a larger ``num_steps``
      extends the run.

    Raises:
      NonFiniteLossError: a loss was nan or ±inf. Before raising, the state after
        the last update with a finite loss is checkpointed (as the step before the
        one named; replayed from the newest checkpoint, at most
        ``checkpoint_every`` updates) and ``metrics.jsonl`` holds every row up to
        it. The check is recorded on the device every step and read at log and
        checkpoint steps.
      ValueError: a checkpoint in ``workdir`` holds a differently shaped state.
      TypeError: ``steps_per_call`` is not 1 and ``batch_fn`` cannot be traced.

    Example:
      >>> import tempfile
      >>> def step_fn(w, x):
      ...     loss, g = jax.value_and_grad(lambda w: jnp.mean((x * w - 2.0 * x) ** 2))(w)
      ...     return w - 0.1 * g, {"loss": loss}
      >>> result = train_loop(jnp.float32(0.0), step_fn, lambda s: jnp.ones(4),
      ...                     num_steps=50, workdir=tempfile.mkdtemp(), log_every=25,
      ...                     progress="none")
      >>> result.state, [row["step"] for row in result.history]
      (Array(2., dtype=float32), [25, 50])

      The same run as two calls of 25 scanned updates (``batch_fn`` traced):

      >>> result = train_loop(jnp.float32(0.0), step_fn, lambda s: jnp.ones(4),
      ...                     num_steps=50, workdir=tempfile.mkdtemp(), log_every=25,
      ...                     progress="none", steps_per_call=0)
      >>> result.state, result.timing.steps_per_call
      (Array(2., dtype=float32), 25)
    """
    num_steps = _check_int(num_steps, "num_steps", 0)
    log_every = _check_int(log_every, "log_every", 1)
    checkpoint_every = _check_int(checkpoint_every, "checkpoint_every", 1)
    if steps_per_call is not None:
        steps_per_call = _check_int(steps_per_call, "steps_per_call", 0)
    _check_callable(step_fn, "step_fn")
    _check_callable(batch_fn, "batch_fn")
    if metrics_fn is not None:
        _check_callable(metrics_fn, "metrics_fn")
    check_choice(progress, "progress", PROGRESS_MODES)
    if eval_every is not None:
        eval_every = _check_int(eval_every, "eval_every", 1)
    if examples_per_step is not None:
        examples_per_step = _check_int(examples_per_step, "examples_per_step", 1)
    best = BestState.check(best_metric, best_mode, metrics_fn)
    profile = _check_profile_steps(profile_steps, num_steps)
    workdir = Path(workdir)
    log = MetricsLog(workdir)
    with Checkpointer(workdir, max_to_keep=max_to_keep) as ckpt, best.open(workdir):
        initial = state
        restored = ckpt.restore_latest(state)
        start, state = (0, state) if restored is None else restored
        state, carry_sharding = _placed(state, copy=donate and restored is None)
        log.truncate_after(start)
        if start >= num_steps:
            if start > num_steps:
                warnings.warn(f"the checkpoint in {ckpt.directory} is at step {start}, past "
                              f"num_steps={num_steps}; returning it unchanged",
                              RuntimeWarning, stacklevel=2)
            return TrainResult(state, log.read(), None, best.record())
        if steps_per_call != 1:
            _check_traceable(batch_fn, steps_per_call)
        steps_per_call = _resolve_steps_per_call(
            steps_per_call, next(iter(carry_sharding.device_set)).platform)
        stepper = _Stepper(step_fn, batch_fn, donate, steps_per_call, log_every,
                           checkpoint_every, carry_sharding, _Layout.of(state, batch_sharding),
                           eval_every if metrics_fn else None)
        bar = Progress(progress if jax.process_index() == 0 else "none", desc, start,
                        num_steps)
        try:
            if restored is not None:
                bar.message(f"{desc}: resumed from the checkpoint at step {start} "
                            f"in {ckpt.directory}")
            plan = _Plan(num_steps, log_every, checkpoint_every,
                         eval_every if eval_every and metrics_fn else log_every,
                         profile, workdir / PROFILE_DIR, examples_per_step)
            state, timing = _run(state, initial, stepper, start, restored is not None, plan,
                                 metrics_fn, best, donate, log, ckpt, bar, writers)
        finally:
            bar.close()
    return TrainResult(state, log.read(), timing, best.record())


class _Plan(NamedTuple):
    """When things happen in a run: rows, checkpoints, evaluations, the profile."""

    num_steps: int
    log_every: int
    checkpoint_every: int
    eval_every: int
    profile: tuple[int, int] | None
    profile_dir: Path
    examples_per_step: int | None

    def next_boundary(self, step: int) -> int:
        """The first log, checkpoint, evaluation or profile step after ``step``."""
        nxt = min((step // p + 1) * p
                  for p in (self.log_every, self.checkpoint_every, self.eval_every))
        for point in self.profile or ():
            if point > step:
                nxt = min(nxt, point)
        return min(nxt, self.num_steps)

    def at(self, done: int) -> tuple[bool, bool, bool]:
        """(row, evaluation, checkpoint) at step ``done``."""
        last = done == self.num_steps
        evaluate = done % self.eval_every == 0 or last
        return done % self.log_every == 0 or evaluate, evaluate, (
            done % self.checkpoint_every == 0 or last)


def parse_profile_steps(text: str | None) -> tuple[int, int] | None:
    """``"A:B"`` (a config field or ``--profile_steps``) as ``(A, B)``; None stays None.

    Example:
      >>> parse_profile_steps("10:20"), parse_profile_steps(None)
      ((10, 20), None)
    """
    if text is None or isinstance(text, tuple):
        return text
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        return int(parts[0]), int(parts[1])
    except ValueError:
        raise ValueError(f"profile_steps must be 'A:B' with integers A < B (trace the updates "
                         f"A+1 .. B), got {text!r}") from None


def _check_profile_steps(profile_steps: Any, num_steps: int) -> tuple[int, int] | None:
    if profile_steps is None:
        return None
    if (not isinstance(profile_steps, tuple | list) or len(profile_steps) != 2
            or not all(isinstance(x, int | np.integer) and not isinstance(x, bool)
                       for x in profile_steps)):
        raise TypeError(f"profile_steps must be a pair of ints (a, b), got {profile_steps!r}")
    a, b = (int(x) for x in profile_steps)
    if not 0 <= a < b <= num_steps:
        raise ValueError(f"profile_steps=({a}, {b}) is outside the run: need "
                         f"0 <= a < b <= num_steps={num_steps}")
    return a, b


def _run(state, initial, stepper, start, restored, plan, metrics_fn, best, donate, log, ckpt,
         bar, writers=None):
    """The loop, from boundary to boundary (log, checkpoint, evaluation or profile step).

    At a row or checkpoint step the loop waits for the updates, reads the clock (the
    throughput's) and checks the losses before anything else, so that nothing is
    evaluated, written or checkpointed after a non-finite loss.

    Timing: the first call is waited for (its time is the compilation's). Before
    ``metrics_fn``, a checkpoint and the profiler's start and stop the loop waits for
    the updates to finish anyway (to read their results), so their time is measured
    apart from the steps'.
    """
    carry = jax.device_put(_carry(start), stepper.carry_sharding)
    last_saved = start if restored else None
    paused = {"eval": 0.0, "checkpoint": 0.0, "other": 0.0}
    meter, compile_row = None, True

    def check(carry):
        """Raise NonFiniteLossError (the last good state saved) if a loss was not finite."""
        first_bad, bad_loss = _first_bad(carry)
        if first_bad:
            saved = first_bad - 1
            log.sync()
            if saved != last_saved:
                _save_replayed(saved, initial, stepper, donate, ckpt)
            raise NonFiniteLossError(first_bad, bad_loss, saved, str(ckpt.directory))

    try:
        if plan.profile is not None and plan.profile[0] <= start < plan.profile[1]:
            _start_profile(plan, carry, stepper, paused)
        done = start
        while done < plan.num_steps:
            step, done = done, plan.next_boundary(done)
            state, metrics, carry = stepper.advance(state, carry, step, done)
            if meter is None:  # the rates start after the first call (compilation)
                t0 = time.perf_counter()
                meter = _meter(stepper, plan, state, carry)
                meter.mark(start + stepper.first_call[1], stepper.first_done_at, 0.0)
                paused["other"] += time.perf_counter() - t0
            if stepper.profiling and done >= plan.profile[1]:
                t0 = _ready(carry)
                jax.profiler.stop_trace()
                stepper.profiling = False
                paused["other"] += time.perf_counter() - t0
            row_now, eval_now, save_now = plan.at(done)
            if row_now or save_now:
                perf = meter.mark(done, _ready(carry), sum(paused.values()))
                check(carry)
            extra = {}
            if eval_now and metrics_fn is not None:
                t0 = time.perf_counter()
                extra = dict(metrics_fn(state, done))
                if best.metric is not None:
                    best.consider(done, extra, state)
                paused["eval"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            if row_now:
                if compile_row:
                    perf["perf/compile_s"], compile_row = stepper.first_call[0], False
                row = {**jax.device_get(metrics), **jax.device_get(extra), **perf}
                log.write(done, row, fsync=False)  # flushed: safe from a killed process
                if writers is not None:
                    writers.write(done, row)
                bar.log(done, float(row["loss"]), meter.describe(perf),
                        perf.get("perf/steps_per_s"))
            if save_now:
                log.sync()  # the rows up to a checkpoint are on disk before it
                ckpt.save(done, state)
                last_saved = done
                paused["checkpoint"] += time.perf_counter() - t0
            if plan.profile is not None and done == plan.profile[0]:
                _start_profile(plan, carry, stepper, paused)
    finally:
        if stepper.profiling:
            jax.profiler.stop_trace()
            stepper.profiling = False

    # the last step is a checkpoint step: every update is done
    compile_s, first_steps = stepper.first_call
    after_first = time.perf_counter() - stepper.first_done_at
    timing = TrainTiming(compile_s=compile_s, first_steps=first_steps,
                         steps=plan.num_steps - start - first_steps,
                         steps_s=max(after_first - sum(paused.values()), 0.0),
                         eval_s=paused["eval"], checkpoint_s=paused["checkpoint"],
                         steps_per_call=stepper.length,
                         examples_per_step=plan.examples_per_step,
                         flops_per_step=meter.flops_per_step if meter else None,
                         peak_flops=meter.peak if meter else None)
    return state, timing


def _meter(stepper: _Stepper, plan: _Plan, state: PyTree, carry: jax.Array) -> Meter:
    """The throughput meter: one update's FLOPs and the peak of the devices it runs on."""
    flops = stepper.flops(state, carry)
    devices = stepper.carry_sharding.device_set
    kind = next(iter(devices)).device_kind
    dtypes = [x.dtype for x in jax.tree.leaves(state) if hasattr(x, "dtype")]
    peak = peak_flops(kind, dtypes)
    return Meter(plan.examples_per_step, flops, None if peak is None else peak * len(devices))


def _start_profile(plan: _Plan, carry: jax.Array, stepper: _Stepper, paused: dict) -> None:
    """Start a :mod:`jax.profiler` trace into ``plan.profile_dir`` once the updates before
    it are done (the run stops it when the state reaches ``plan.profile[1]``)."""
    t0 = _ready(carry)
    plan.profile_dir.mkdir(parents=True, exist_ok=True)
    jax.profiler.start_trace(str(plan.profile_dir), create_perfetto_trace=True)
    stepper.profiling = True
    paused["other"] += time.perf_counter() - t0


def _ready(carry: jax.Array) -> float:
    """Wait until the updates that produced ``carry`` are done; the time then."""
    carry.block_until_ready()
    return time.perf_counter()


def _save_replayed(target, initial, stepper, donate, ckpt):
    """Checkpoint the state after ``target`` updates (the last with a finite loss).

    Every checkpoint of the run was saved after its losses were checked, so the
    newest one is at or before ``target``: restore it (or take the initial state)
    and replay the few updates up to ``target``. The replay runs the same compiled
    program on the same batches, split into calls at the same steps (the last one
    stopped early), so it reproduces the original states bit for bit.
    """
    restored = ckpt.restore_latest(initial)
    base, state = (0, initial) if restored is None else restored
    state, _ = _placed(state, copy=donate and restored is None)
    carry = jax.device_put(_carry(base), stepper.carry_sharding)
    state, _, carry = stepper.advance(state, carry, base, target, timed=False)
    ckpt.save(target, state)
