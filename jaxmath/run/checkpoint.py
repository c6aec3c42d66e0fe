"""Checkpoints of a training state that a kill cannot spoil: orbax plus a checksum.

:class:`Checkpointer` keeps ``workdir/checkpoints/<step>/`` with an orbax
``CheckpointManager``. Each step holds two items: ``state`` (the pytree, saved
with ``StandardSave``) and ``meta`` (JSON: every leaf's path, shape and dtype,
and a SHA-256 of the leaves' bytes).

Why the checksum: orbax writes a step into a temporary directory and renames it
when complete, so a kill during a save leaves no half-written step behind (the
temporary directory is cleaned up by the next run). But a step damaged after
it was written is not always noticed by orbax: a flipped byte in a data file
restores silently to different numbers. :meth:`Checkpointer.restore_latest`
therefore verifies each restored state against its checksum; a step that fails
to restore or to verify is reported with a ``RuntimeWarning`` naming it, moved
to ``workdir/checkpoints_corrupt/`` (kept for inspection, never deleted) and the
step before it is tried.

New-style typed PRNG keys (``jax.random.key``) are stored as their raw
``uint32`` key data and re-wrapped with the template's implementation on
restore, so a state may hold either kind of key.

orbax's INFO log records are dropped (its warnings are kept), and so are
asyncio's reports of the unawaited reads a damaged step leaves behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

try:  # orbax >= 0.11.x: retention as a policy (max_to_keep is deprecated there)
    from orbax.checkpoint.checkpoint_managers import preservation_policy
except ImportError:  # pragma: no cover - older orbax
    preservation_policy = None

PyTree = Any

__all__ = ["Checkpointer"]

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"
_FORMAT = 1


class _QuietOrbax(logging.Filter):
    """Drop orbax's INFO/DEBUG records from the ``absl`` logger; keep its warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return f"{os.sep}orbax{os.sep}" not in (record.pathname or "")


class _QuietDamagedReads(logging.Filter):
    """Drop asyncio's "Future exception was never retrieved" for tensorstore reads.

    When a damaged checkpoint fails to restore, orbax leaves the failed reads of
    the other arrays unawaited and asyncio reports each one when it is collected;
    :meth:`Checkpointer.restore_latest` has already reported the step instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Future exception was never retrieved"):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        return "tensorstore_spec" not in str(exc)


def _install_log_filter() -> None:
    for name, kind in (("absl", _QuietOrbax), ("asyncio", _QuietDamagedReads)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())


_install_log_filter()


# --------------------------------------------------------------------------- leaves


def _is_key(leaf: Any) -> bool:
    dtype = getattr(leaf, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _savable(tree: PyTree) -> PyTree:
    """``tree`` with typed PRNG keys replaced by their raw uint32 key data."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _unsavable(restored: PyTree, template: PyTree) -> PyTree:
    """Re-wrap the key data of ``restored`` where ``template`` holds typed keys."""
    def wrap(t, r):
        if _is_key(t):
            return jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
        return r
    return jax.tree.map(wrap, template, restored)


def _spec(tree: PyTree) -> list[list]:
    """``[path, shape, dtype]`` of every leaf of a savable tree."""
    spec = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, jax.Array | np.ndarray | np.generic):
            shape, dtype = list(leaf.shape), str(leaf.dtype)
        else:  # Python scalars keep their type through orbax
            shape, dtype = [], type(leaf).__name__
        spec.append([jax.tree_util.keystr(path), shape, dtype])
    return spec


def _checksum(tree: PyTree) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        h.update(jax.tree_util.keystr(path).encode())
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            h.update(repr((leaf.shape, str(leaf.dtype))).encode())  # other hosts hold parts
            continue
        arr = np.asarray(leaf)
        h.update(repr((arr.shape, str(arr.dtype))).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _describe(entry: list | None) -> str:
    """``[path, shape, dtype]`` as ``path dtype[shape]``."""
    if entry is None:
        return "no leaf"
    path, shape, dtype = entry
    return f"leaf {path} {dtype}{shape}"


def _spec_digest(spec: list) -> str:
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()


class _Corrupt(Exception):
    """A checkpoint step that cannot be restored or does not verify."""


def _brief(e: BaseException) -> str:
    """``Type: first line of the message`` (tensorstore's errors run over many lines)."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(e).__name__}: {text[:200]}"


# --------------------------------------------------------------------------- manager


class Checkpointer:
    """Saves and restores a training state under ``workdir/checkpoints/`` (orbax).

    Saves are synchronous: :meth:`save` returns once the step is complete on
    disk, so a process killed right after it resumes from that step. The last
    ``max_to_keep`` saved steps are kept; older ones are deleted.

    Args:
      workdir: the run directory; checkpoints go to ``workdir/checkpoints``.
      max_to_keep: how many of the newest steps to keep (>= 1; keep >= 2 so that
        a damaged latest step still has one to fall back on).
      subdir: the folder under ``workdir`` (``"checkpoints"``; the training loop keeps
        its best state in ``"checkpoints_best"``).

    Example:
      >>> import tempfile
      >>> state = {"w": jnp.arange(3.0), "key": jax.random.key(0)}
      >>> with Checkpointer(tempfile.mkdtemp()) as ckpt:
      ...     ckpt.save(10, state)
      ...     step, restored = ckpt.restore_latest(state)
      >>> step, restored["w"]
      (10, Array([0., 1., 2.], dtype=float32))
    """

    def __init__(self, workdir: str | os.PathLike, max_to_keep: int = 3,
                 subdir: str = CHECKPOINT_DIR):
        if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int):
            raise TypeError(f"max_to_keep must be an int, got {type(max_to_keep).__name__}")
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.workdir = Path(workdir).absolute()
        if not isinstance(subdir, str) or not subdir or Path(subdir).name != subdir:
            raise ValueError(f"subdir must be a folder name, got {subdir!r}")
        self.directory = self.workdir / subdir
        keep = ({"max_to_keep": max_to_keep} if preservation_policy is None else
                {"preservation_policy": preservation_policy.LatestN(n=max_to_keep)})
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False,
            cleanup_tmp_directories=True,  # half-written steps of a killed run
            create=True,
            **keep,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.workdir)!r})"

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def all_steps(self) -> list[int]:
        """The saved steps, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: PyTree, metrics: dict | None = None) -> None:
        """Save ``state`` as ``step`` and wait until it is on disk.

        An existing checkpoint with the same step is replaced. ``metrics``, a JSON-able
        dict, is saved with it (in the same commit) and read back by
        :meth:`latest_metrics`.
        """
        if isinstance(step, bool) or not isinstance(step, int | np.integer):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        step = int(step)
        tree = _savable(state)
        spec = _spec(tree)
        meta = {"format": _FORMAT, "step": step, "leaves": spec,
                "spec_sha256": _spec_digest(spec), "sha256": _checksum(tree)}
        if metrics is not None:
            meta["metrics"] = dict(metrics)
        if step in self._manager.all_steps():
            self._manager.delete(step)
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"state": tree}), meta=ocp.args.JsonSave(meta)), force=True)
        self._manager.wait_until_finished()

    def _restore_step(self, step: int, template: PyTree) -> PyTree:
        """Restore and verify one step; _Corrupt if it is damaged."""
        try:
            meta = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            spec = meta["leaves"]
            ok = meta["format"] == _FORMAT and meta["spec_sha256"] == _spec_digest(spec)
        except Exception as e:
            raise _Corrupt(f"its metadata cannot be read ({_brief(e)})") from e
        if not ok:
            raise _Corrupt("its metadata does not match its own checksum")
        tree = _savable(template)
        want = _spec(tree)
        if spec != want:
            saved, wanted = next((a, b) for a, b in zip([*spec, None], [*want, None], strict=False)
                                 if a != b)
            raise ValueError(
                f"the checkpoint at step {step} in {self.directory} holds a different state "
                f"than the template: saved {_describe(saved)} vs template {_describe(wanted)}; "
                "use a new workdir or a state like the one it was saved from")
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore({"state": tree}))).state["state"]
        except Exception as e:
            raise _Corrupt(f"it cannot be restored ({_brief(e)})") from e
        if _checksum(restored) != meta["sha256"]:
            raise _Corrupt("its arrays do not match the checksum saved with them")
        return _unsavable(restored, template)

    def _quarantine(self, step: int) -> Path:
        """Move a damaged step out of orbax's directory, to workdir/checkpoints_corrupt/."""
        dest_dir = self.workdir / CORRUPT_DIR
        dest_dir.mkdir(parents=True, exist_ok=True)
        dest = dest_dir / str(step)
        n = 1
        while dest.exists():
            dest, n = dest_dir / f"{step}.{n}", n + 1
        shutil.move(str(self.directory / str(step)), str(dest))
        self._manager.reload()
        return dest

    def restore_latest(self, template: PyTree) -> tuple[int, PyTree] | None:
        """The newest good checkpoint as ``(step, state)``, or None if there is none.

        ``template`` is a state of the same structure (e.g. the freshly
        initialised one); it fixes the pytree types, dtypes and shardings of the
        result. A damaged step (unreadable, partial, or failing its checksum) is
        reported with a ``RuntimeWarning`` naming the step, moved to
        ``workdir/checkpoints_corrupt/`` and the step before it is tried.

        Raises:
          ValueError: the checkpoint holds a different state (other leaf paths,
            shapes or dtypes) than ``template``: nothing is moved.
        """
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                return step, self._restore_step(step, template)
            except _Corrupt as e:
                dest = self._quarantine(step)
                warnings.warn(
                    f"checkpoint at step {step} in {self.directory} is corrupt or partial: {e}. "
                    f"Moved it to {dest}; trying the checkpoint before it.",
                    RuntimeWarning, stacklevel=2)
        return None

    def latest_metrics(self) -> dict | None:
        """The ``metrics`` saved with the newest step, or None (none saved, no step, or
        its metadata unreadable: :meth:`restore_latest` would then set it aside)."""
        steps = self._manager.all_steps()
        if not steps:
            return None
        try:
            meta = self._manager.restore(
                max(steps), args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception:
            return None
        metrics = meta.get("metrics") if isinstance(meta, dict) else None
        return metrics if isinstance(metrics, dict) else None

    def close(self) -> None:
        """Wait for pending writes and release orbax's resources."""
        self._manager.wait_until_finished()
        self._manager.close()
