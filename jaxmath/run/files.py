"""Files a run writes that must survive a kill at any moment.

Whole files (``config.json``, ``summary.json``, reports) are written with
:func:`atomic_write_text` / :func:`atomic_write_json`: into a temporary file in
the same directory, flushed and fsynced, then moved over the target with
``os.replace``. A reader sees the old file or the new one, never half of one.

``metrics.jsonl`` is append-only (:class:`MetricsLog`): one JSON object per
logged step, each line flushed (and fsynced) before the call returns. A kill can
leave at most one partial last line; reading ignores it and
:meth:`MetricsLog.truncate_after` removes it together with the rows a resumed run
will write again, so the log never holds a duplicated or missing step.
"""

from __future__ import annotations

import json
import numbers
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MetricsLog", "atomic_write_bytes", "atomic_write_json", "atomic_write_text"]

METRICS_FILE = "metrics.jsonl"


def _fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_writer() -> bool:
    """True on process 0 of a multi-process JAX job, and always in a single process."""
    jax = sys.modules.get("jax")
    if jax is None:
        return True
    try:
        return jax.process_index() == 0
    except Exception:  # no backend yet: a single process
        return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file, fsync, ``os.replace``.

    The parent directory is created if needed. If anything fails before the
    replace, ``path`` keeps its old content and the temporary file is removed.
    The file gets the usual permissions (``0666`` less the umask), not
    ``mkstemp``'s private ``0600``.

    Args:
      path: the file to write.
      data: its new content.

    Returns:
      ``path`` as a :class:`pathlib.Path`.

    Example:
      >>> import tempfile, pathlib
      >>> d = pathlib.Path(tempfile.mkdtemp())
      >>> atomic_write_bytes(d / "a.bin", b"hello").read_bytes()
      b'hello'
    """
    if not isinstance(data, bytes | bytearray):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"path {str(path)!r} is a directory, expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, as :func:`atomic_write_bytes` does.

    Example:
      >>> import tempfile, pathlib
      >>> d = pathlib.Path(tempfile.mkdtemp())
      >>> atomic_write_text(d / "a.txt", "hello").read_text()
      'hello'
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_json(obj: Any) -> Any:
    """``json.dumps`` default: NumPy/JAX scalars and arrays, paths, sets."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    if hasattr(obj, "__array__") or isinstance(obj, np.generic):
        arr = np.asarray(obj)
        if arr.dtype.kind in "fiub":
            return arr.item() if arr.ndim == 0 else arr.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (see :func:`atomic_write_text`).

    NumPy and JAX scalars and arrays become numbers and lists, paths become
    strings. The object is serialised before anything is written, so an object
    that cannot be serialised raises ``TypeError`` and leaves ``path`` untouched.

    Example:
      >>> import tempfile, pathlib
      >>> d = pathlib.Path(tempfile.mkdtemp())
      >>> p = atomic_write_json(d / "summary.json", {"loss": np.float32(0.5), "n": 3})
      >>> json.loads(p.read_text())
      {'loss': 0.5, 'n': 3}
    """
    text = json.dumps(obj, indent=indent, default=to_json)
    return atomic_write_text(path, text + "\n")


def _check_step(step: object, name: str = "step") -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(step).__name__}")
    if step < 0:
        raise ValueError(f"{name} must be >= 0, got {step}")
    return int(step)


def _scalar(name: str, value: Any) -> Any:
    """A metric value as a JSON-able Python scalar (or list for arrays)."""
    if isinstance(value, bool | str) or value is None:
        return value
    try:
        arr = np.asarray(value)
    except Exception as e:
        raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__}") from e
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"metric {name!r} must be a number, got dtype {arr.dtype}")
    return arr.item() if arr.ndim == 0 else arr.tolist()


class MetricsLog:
    """``workdir/metrics.jsonl``: one JSON object ``{"step": int, ...}`` per logged step.

    Rows are appended and fsynced one at a time, so after a kill the file holds
    every row written before it, plus at most one partial last line, which
    :meth:`read` ignores and :meth:`truncate_after` removes. Non-finite values
    are written as ``NaN``/``Infinity`` (Python's ``json`` reads them back).

    Args:
      workdir: the run directory (created if needed).

    Example:
      >>> import tempfile
      >>> log = MetricsLog(tempfile.mkdtemp())
      >>> log.write(10, {"loss": 0.5})
      >>> log.write(20, {"loss": np.float32(0.25), "accuracy": 0.75})
      >>> log.truncate_after(10)
      >>> log.read()
      [{'step': 10, 'loss': 0.5}]
    """

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.path = self.workdir / METRICS_FILE
        self._kept: list[dict] | None = None if _is_writer() else []  # rows not written
        self._base: int | None = None  # the step the file is read up to, off process 0

    def __repr__(self) -> str:
        return f"MetricsLog({str(self.workdir)!r})"

    def write(self, step: int, metrics: Mapping[str, Any], *, fsync: bool = True) -> None:
        """Append the row ``{"step": step, **metrics}``, flushed and (by default) fsynced.

        Values may be Python, NumPy or JAX scalars (arrays become lists). A flushed
        row survives a killed process; ``fsync`` also makes it survive a machine
        crash. :func:`~jaxmath.run.loop.train_loop` passes ``fsync=False`` and calls
        :meth:`sync` before each checkpoint instead, so that a crash never leaves
        a checkpoint newer than the rows before it, at one fsync per checkpoint.
        """
        step = _check_step(step)
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a mapping, got {type(metrics).__name__}")
        if "step" in metrics:
            raise ValueError("metrics must not contain the key 'step'; it is the step argument")
        row = {"step": step}
        for key, value in metrics.items():
            if not isinstance(key, str):
                raise TypeError(f"metric names must be str, got {key!r}")
            row[key] = _scalar(key, value)
        if self._kept is not None:  # in a multi-process job, process 0 writes the file
            self._kept.append(row)
            return
        line = json.dumps(row) + "\n"
        new = not self.path.exists()
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if new:
            _fsync_dir(self.workdir)

    def sync(self) -> None:
        """fsync ``metrics.jsonl`` (rows written with ``fsync=False``)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _rows(self) -> tuple[list[dict], bool]:
        """The complete, parseable rows, and whether anything else was found."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return [], False
        lines = text.split("\n")
        partial = lines.pop()  # text after the last newline: "" or a partial line
        rows, dirty = [], bool(partial)
        for number, line in enumerate(lines, 1):
            if not line.strip():
                dirty = True
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                warnings.warn(f"{self.path}: line {number} is not valid JSON; it is dropped",
                              RuntimeWarning, stacklevel=3)
                dirty = True
                continue
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                warnings.warn(f"{self.path}: line {number} has no integer 'step'; it is dropped",
                              RuntimeWarning, stacklevel=3)
                dirty = True
                continue
            rows.append(row)
        return rows, dirty

    def read(self) -> list[dict]:
        """All complete rows, in file order (a partial last line is ignored)."""
        rows = self._rows()[0]
        if self._kept is None:
            return rows
        return [r for r in rows if self._base is None or r["step"] <= self._base] + self._kept

    def truncate_after(self, step: int) -> None:
        """Drop the rows with ``"step" > step`` and any partial last line (atomic rewrite).

        A run resumed from the checkpoint at ``step`` calls this before it logs
        again, so the steps after the checkpoint are written exactly once.
        """
        step = _check_step(step)
        if self._kept is not None:
            self._base = step
            self._kept = [row for row in self._kept if row["step"] <= step]
            return
        rows, dirty = self._rows()
        kept = [row for row in rows if row["step"] <= step]
        if len(kept) == len(rows) and not dirty:
            return
        text = "".join(json.dumps(row) + "\n" for row in kept)
        atomic_write_text(self.path, text)
