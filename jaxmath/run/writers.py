"""Metric writers: the rows of ``metrics.jsonl`` also as TensorBoard event files and W&B runs.

:func:`~jaxmath.run.loop.train_loop` writes every row to ``metrics.jsonl`` first; a
:class:`MetricWriters` given to it as ``writers=`` gets the same row right after, and hands
it to its writers on a background thread, so the loop never waits on them:

* ``"tensorboard"`` (:class:`~jaxmath.run.tensorboard.TensorBoardWriter`): event files in
  ``workdir/tensorboard`` (``tensorboard --logdir runs/mlp/tensorboard``), written by
  jaxmath itself (:mod:`jaxmath.run.tensorboard`), with no TensorFlow, PyTorch or
  tensorboardX.
* ``"wandb"`` (:class:`WandbWriter`): a Weights & Biases run (``pip install
  'jaxmath[wandb]'``); its ``mode="offline"`` writes local files only (``wandb sync``
  uploads them later).

A config's ``logging`` block (:func:`logging_config`) chooses them; :func:`from_config`
checks it (:func:`check_config`: a :class:`~jaxmath.run.config.ConfigError` naming what
was given and what is accepted) and opens the writers before training starts.

What is written: every value of a row that is a real scalar (Python, NumPy or 0-d JAX
numbers and bools) as a float32 scalar named by its key (``loss``,
``perf/steps_per_s``: TensorBoard groups tags by the part before ``/``); nan and ±inf
are written as they are; arrays with more than one element, strings and None are
skipped. Only process 0 of a multi-process job writes (:func:`from_config` opens nothing
elsewhere).

Failures: a writer that raises is dropped with one ``RuntimeWarning`` naming it and the
error (shown at the caller's next :meth:`MetricWriters.write`, ``flush`` or ``close``);
the other writers, ``metrics.jsonl`` and the checkpoints go on.

A resumed run appends a new event file whose first event marks a restart
(``SessionLog.START`` at its first step), so that TensorBoard drops the killed run's
points from that step on, as ``metrics.jsonl`` does; a W&B run is a new run per launch.

Sweeps: :func:`write_sweep_members` writes each configuration's curves as a series of its
own, named by its hyperparameters (``tensorboard/learning_rate=0.001,seed=0``; a W&B run
per configuration in one group).
"""

from __future__ import annotations

import collections
import difflib
import importlib
import os
import queue
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import ml_collections
import numpy as np
from ml_collections import config_dict

from jaxmath.run.config import ConfigError
from jaxmath.run.tensorboard import TensorBoardWriter, scalars

__all__ = ["TENSORBOARD_DIR", "WANDB_MODES", "WRITER_NAMES", "MetricWriters",
           "TensorBoardWriter", "WandbWriter", "Writer", "check_config", "from_config",
           "logging_config", "member_names", "scalars", "write_sweep_members"]

WRITER_NAMES = ("tensorboard", "wandb")
WANDB_MODES = ("online", "offline", "disabled")
TENSORBOARD_DIR = "tensorboard"  # workdir/tensorboard: the event files
WANDB_INSTALL = "pip install 'jaxmath[wandb]'"
CLOSE_TIMEOUT_S = 120.0  # how long close() waits for the writers to finish the queue
_WANDB_KEYS = ("enabled", "project", "entity", "name", "group", "tags", "notes", "mode")


# --------------------------------------------------------------------------- config


def logging_config(writers: Sequence[str] = ("tensorboard",)) -> ml_collections.ConfigDict:
    """A config's ``logging`` block: ``writers`` (names from :data:`WRITER_NAMES`) and a
    ``wandb`` block (off unless ``wandb.enabled`` or ``"wandb"`` is in ``writers``).

    ``wandb``: ``project`` (default ``"jaxmath"``), ``entity``, ``name`` (default: the
    workdir's name), ``group``, ``tags``, ``notes`` and ``mode`` (``"online"``,
    ``"offline"``, ``"disabled"``; None: W&B's own default, e.g. ``WANDB_MODE``).

    Example:
      >>> block = logging_config()
      >>> block.writers, block.wandb.enabled, block.wandb.project
      (('tensorboard',), False, 'jaxmath')
    """
    block = ml_collections.ConfigDict()
    block.writers = tuple(writers)
    block.wandb = ml_collections.ConfigDict({
        "enabled": False,
        "project": "jaxmath",
        "entity": config_dict.placeholder(str),
        "name": config_dict.placeholder(str),
        "group": config_dict.placeholder(str),
        "tags": (),
        "notes": config_dict.placeholder(str),
        "mode": config_dict.placeholder(str),
    })
    return block


class Settings(NamedTuple):
    """A checked ``logging`` block: whether to write TensorBoard files, and the
    ``wandb.init`` arguments (None: no W&B)."""

    tensorboard: bool
    wandb: dict[str, Any] | None


def _suggest(name: object, accepted: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(name), accepted, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _import_wandb():
    try:
        return importlib.import_module("wandb")
    except ImportError as e:
        raise ConfigError(
            f"config.logging asks for W&B, but the wandb package cannot be imported ({e}); "
            f"install it with {WANDB_INSTALL}, or set config.logging.wandb.enabled=False "
            "and leave 'wandb' out of config.logging.writers") from None


def _optional_str(value: object, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"config.logging.wandb.{name} must be a str or None, got {value!r}")
    return value


def check_config(block: Any) -> Settings:
    """Check a ``logging`` block (:func:`logging_config`; None: no writers).

    Raises:
      ConfigError: an unknown writer name or key, a bad W&B option, or W&B asked for
        without the wandb package; the message names what was given and what is
        accepted (or how to install it).

    Example:
      >>> check_config(logging_config())
      Settings(tensorboard=True, wandb=None)
      >>> check_config({"writers": ("tensorbord",)})
      Traceback (most recent call last):
      ...
      jaxmath.run.config.ConfigError: config.logging.writers: unknown writer 'tensorbord' ...
    """
    if block is None:
        return Settings(False, None)
    if hasattr(block, "to_dict"):
        block = block.to_dict()
    if not isinstance(block, Mapping):
        raise ConfigError(f"config.logging must be a block of writers and options, got "
                          f"{type(block).__name__}")
    unknown = sorted(set(block) - {"writers", "wandb"})
    if unknown:
        raise ConfigError(f"config.logging: unknown key(s) {unknown}; accepted: 'writers', "
                          "'wandb'")
    writers = block.get("writers", ())
    if isinstance(writers, str):
        writers = (writers,)
    if not isinstance(writers, Sequence):
        raise ConfigError(f"config.logging.writers must be a tuple of writer names from "
                          f"{WRITER_NAMES}, got {writers!r}")
    for name in writers:
        if name not in WRITER_NAMES:
            raise ConfigError(
                f"config.logging.writers: unknown writer {name!r} in {tuple(writers)}; "
                f"accepted: {', '.join(map(repr, WRITER_NAMES))}{_suggest(name, WRITER_NAMES)}")
    options = dict(block.get("wandb") or {})
    unknown = sorted(set(options) - set(_WANDB_KEYS))
    if unknown:
        raise ConfigError(f"config.logging.wandb: unknown key(s) {unknown}; accepted: "
                          f"{', '.join(map(repr, _WANDB_KEYS))}"
                          f"{_suggest(unknown[0], _WANDB_KEYS)}")
    enabled = options.pop("enabled", False)
    if not isinstance(enabled, bool):
        raise ConfigError(f"config.logging.wandb.enabled must be True or False, got {enabled!r}")
    if not (enabled or "wandb" in writers):
        return Settings("tensorboard" in writers, None)
    mode = options.get("mode")
    if mode is not None and mode not in WANDB_MODES:
        raise ConfigError(f"config.logging.wandb.mode={mode!r}; accepted: "
                          f"{', '.join(map(repr, WANDB_MODES))} or None (W&B's default)")
    for key in ("project", "entity", "name", "group", "notes"):
        _optional_str(options.get(key), key)
    tags = options.get("tags") or ()
    if isinstance(tags, str) or not all(isinstance(t, str) for t in tags):
        raise ConfigError(f"config.logging.wandb.tags must be a tuple of str, got {tags!r}")
    options["tags"] = tuple(tags)
    _import_wandb()
    return Settings("tensorboard" in writers, options)


# --------------------------------------------------------------------------- writers


class Writer(Protocol):
    """What :class:`MetricWriters` runs: ``write(step, row)``, ``flush()``, ``close()``."""

    def write(self, step: int, row: Mapping[str, Any]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class WandbWriter:
    """A Weights & Biases run: ``wandb.init(**init)``, each row ``run.log(row, step=step)``.

    ``init`` takes :func:`wandb.init`'s arguments (``project``, ``name``, ``group``,
    ``tags``, ``config``, ``mode``, ``dir``, ...); a run is created even if another is
    active (``reinit="create_new"``). Rows go through :func:`scalars`; W&B shows nan as
    nan. ``close()`` finishes the run (in offline mode its files stay in
    ``<dir>/wandb/offline-run-*``, for ``wandb sync``).
    """

    def __init__(self, **init: Any):
        wandb = _import_wandb()
        init = {k: v for k, v in init.items() if v is not None}
        if "tags" in init:
            init["tags"] = list(init["tags"])
        self.run = wandb.init(reinit="create_new", **init)

    def write(self, step: int, row: Mapping[str, Any]) -> None:
        self.run.log(scalars(row), step=int(step))

    def flush(self) -> None:
        pass  # the run streams its rows to its own service process

    def close(self) -> None:
        self.run.finish()


# --------------------------------------------------------------------------- the fan-out


class _Failure(NamedTuple):
    name: str
    step: int | None
    error: BaseException


class MetricWriters:
    """Writers fed on one background thread: ``write`` queues a row and returns at once.

    Rows reach every writer in the order written. The thread flushes the writers whenever
    the queue is empty, so a viewer sees each row soon after it is written. A writer
    whose ``write``, ``flush`` or ``close`` raises is closed (best effort) and dropped;
    one ``RuntimeWarning`` names it and the error, raised in the caller's thread at its
    next ``write``, :meth:`flush` or :meth:`close`. The others go on. The caller closes
    the writers (:meth:`close`, or ``with``); :func:`~jaxmath.run.loop.train_loop` never
    does.

    Args:
      writers: ``{name: writer}``; empty: every call is a no-op and no thread is started.

    Example:
      >>> import tempfile
      >>> with MetricWriters({"tensorboard": TensorBoardWriter(tempfile.mkdtemp())}) as w:
      ...     w.write(10, {"loss": 0.5})
      >>> w.names
      ('tensorboard',)
    """

    def __init__(self, writers: Mapping[str, Writer] | None = None):
        self._writers = dict(writers or {})
        self.names = tuple(self._writers)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._failures: collections.deque[_Failure] = collections.deque()
        self._closed = False
        self._thread = None
        if self._writers:
            self._thread = threading.Thread(target=self._work, name="jaxmath-metric-writers",
                                            daemon=True)
            self._thread.start()

    def __repr__(self) -> str:
        return f"MetricWriters({list(self.names)})"

    def __bool__(self) -> bool:
        return bool(self._writers)

    def __enter__(self) -> MetricWriters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the caller's side

    def write(self, step: int, row: Mapping[str, Any]) -> None:
        """Queue the row ``{"step": step, **row}`` for every writer; never blocks."""
        self._warn()
        if self._thread is not None and not self._closed:
            self._queue.put(("write", int(step), dict(row)))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued row is written and the writers flushed: False if that
        took longer than ``timeout`` seconds."""
        done = True
        if self._thread is not None and not self._closed and self._thread.is_alive():
            event = threading.Event()
            self._queue.put(("flush", event))
            done = event.wait(timeout)
        self._warn()
        return done

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Write what is queued, close the writers and stop the thread (idempotent).

        If the writers have not finished within ``timeout`` seconds (a stalled network),
        a warning says so and the thread is left behind (a daemon: it does not keep the
        process alive); ``metrics.jsonl`` holds every row regardless.
        """
        if self._thread is not None and not self._closed:
            self._closed = True
            self._queue.put(("close",))
            self._thread.join(timeout)
            if self._thread.is_alive():
                warnings.warn(f"metric writers {list(self.names)} did not finish within "
                              f"{timeout:g} s; left behind (metrics.jsonl is complete)",
                              RuntimeWarning, stacklevel=2)
        self._closed = True
        self._warn()

    def _warn(self) -> None:
        while self._failures:
            name, step, error = self._failures.popleft()
            at = "" if step is None else f" at step {step}"
            warnings.warn(
                f"metric writer {name!r} failed{at} with {type(error).__name__}: {error}; "
                "it is dropped (metrics.jsonl, the checkpoints and the other writers go on)",
                RuntimeWarning, stacklevel=3)

    # -- the thread

    def _call(self, live: dict[str, Writer], method: str, *args: Any,
              step: int | None = None) -> None:
        for name, writer in list(live.items()):
            try:
                getattr(writer, method)(*args)
            except Exception as e:
                self._failures.append(_Failure(name, step, e))
                del live[name]
                if method != "close":
                    try:
                        writer.close()
                    except Exception:
                        pass

    def _work(self) -> None:
        live = dict(self._writers)
        while True:
            item = self._queue.get()
            if item[0] == "write":
                self._call(live, "write", item[1], item[2], step=item[1])
            elif item[0] == "flush":
                self._call(live, "flush")
                item[1].set()
                continue
            else:  # close
                self._call(live, "flush")
                self._call(live, "close")
                return
            if self._queue.empty():
                self._call(live, "flush")


def _is_process_zero() -> bool:
    import jax

    return jax.process_index() == 0


def from_config(block: Any, workdir: str | os.PathLike, run_name: str | None = None,
                hparams: Mapping[str, Any] | None = None) -> MetricWriters:
    """The writers a ``logging`` block asks for (:func:`check_config`; None: none), open.

    TensorBoard writes into ``workdir/tensorboard``. W&B's run is named ``wandb.name``,
    else ``run_name``, else the workdir's name; its config is ``hparams`` (e.g. the whole
    experiment config as a dict) and its files go to ``workdir/wandb`` (``WANDB_DIR``, if
    set, takes precedence). On processes other than 0 nothing is opened: the result
    writes nothing.

    Raises:
      ConfigError: as :func:`check_config`, before anything is opened.
    """
    settings = check_config(block)
    if not _is_process_zero():
        return MetricWriters()
    workdir = Path(workdir)
    writers: dict[str, Writer] = {}
    try:
        if settings.tensorboard:
            writers["tensorboard"] = TensorBoardWriter(workdir / TENSORBOARD_DIR)
        if settings.wandb is not None:
            options = dict(settings.wandb)
            options["name"] = options.get("name") or run_name or workdir.name
            writers["wandb"] = WandbWriter(config=dict(hparams or {}), dir=_wandb_dir(workdir),
                                           **options)
    except BaseException:
        for writer in writers.values():
            writer.close()
        raise
    return MetricWriters(writers)


def _wandb_dir(workdir: Path) -> str | None:
    if os.environ.get("WANDB_DIR"):
        return None
    workdir.mkdir(parents=True, exist_ok=True)
    return str(workdir)


# --------------------------------------------------------------------------- sweeps


def _format(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):.6g}"
    return str(value.item() if isinstance(value, np.generic) else value).replace("/", "_")


def member_names(hparams: Mapping[str, Any]) -> list[str]:
    """A name per configuration of a sweep table ``{name: [N]}``: ``"lr=0.001,seed=0"``
    (floats to 6 significant digits; ``,index=i`` appended if two names would clash).

    Example:
      >>> member_names({"lr": np.array([1e-3, 1e-2]), "seed": np.array([0, 1])})
      ['lr=0.001,seed=0', 'lr=0.01,seed=1']
    """
    columns = {k: np.asarray(v).tolist() for k, v in hparams.items()}
    size = len(next(iter(columns.values()))) if columns else 0
    names = [",".join(f"{k}={_format(v[i])}" for k, v in columns.items()) for i in range(size)]
    if len(set(names)) < len(names):
        names = [f"{n},index={i}" for i, n in enumerate(names)]
    return names


def write_sweep_members(block: Any, workdir: str | os.PathLike, hparams: Mapping[str, Any],
                        curves: Mapping[str, Any], steps: Sequence[int], *,
                        group: str | None = None) -> list[str]:
    """Each configuration of a sweep as a series of its own, by the ``logging`` block.

    Args:
      block: the config's ``logging`` block (:func:`check_config`; None: nothing written).
      workdir: the sweep's run directory.
      hparams: the sweep table ``{name: [N]}`` (:func:`jaxmath.run.sweep.from_config`).
      curves: ``{metric: [N, T]}``, e.g. ``{"loss": loss_curve}``.
      steps: the ``T`` steps of the curves' points.
      group: the W&B group of the runs (default: ``wandb.group``, else the workdir's name).

    TensorBoard: one run directory per configuration,
    ``workdir/tensorboard/<member name>`` (:func:`member_names`), so ``tensorboard
    --logdir workdir/tensorboard`` overlays them. W&B: one run per configuration, named
    like it, in ``group``, with its hyperparameters as the run's config, written one after
    another. Only process 0 writes. A writer that fails is dropped with a warning (the
    sweep's table is already written).

    Returns:
      The member names, in table order.

    Raises:
      ConfigError: as :func:`check_config`.
      ValueError: a curve whose shape is not ``[N, T]``.
    """
    settings = check_config(block)
    names = member_names(hparams)
    steps = [int(s) for s in steps]
    arrays = {k: np.asarray(v, np.float64) for k, v in curves.items()}
    for key, arr in arrays.items():
        if arr.shape != (len(names), len(steps)):
            raise ValueError(f"curves[{key!r}] must have shape [N, T] = "
                             f"[{len(names)}, {len(steps)}], got {arr.shape}")
    if not _is_process_zero():
        return names
    workdir = Path(workdir)
    columns = {k: np.asarray(v).tolist() for k, v in hparams.items()}
    openers = {}
    if settings.tensorboard:
        openers["tensorboard"] = lambda i: TensorBoardWriter(
            workdir / TENSORBOARD_DIR / names[i])
    if settings.wandb is not None:
        options = dict(settings.wandb)
        options["group"] = group or options.get("group") or workdir.name
        openers["wandb"] = lambda i: WandbWriter(
            **{**options, "name": names[i]}, job_type="sweep",
            config={k: v[i] for k, v in columns.items()}, dir=_wandb_dir(workdir))
    for kind, opener in openers.items():
        for i in range(len(names)):
            try:
                writer = opener(i)
                try:
                    for t, step in enumerate(steps):
                        writer.write(step, {k: a[i, t] for k, a in arrays.items()})
                finally:
                    writer.close()
            except Exception as e:
                warnings.warn(f"metric writer {kind!r} failed on sweep member {names[i]!r} "
                              f"with {type(e).__name__}: {e}; it is dropped for the rest of "
                              "the sweep", RuntimeWarning, stacklevel=2)
                break
    return names

