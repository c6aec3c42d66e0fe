"""A sweep's progress on disk: finished chunks and the running chunk's state.

:func:`jaxmath.run.sweep.run_sweep` and :func:`jaxmath.run.sweep_train.train_sweep`
given a ``workdir`` keep ``workdir/checkpoints_sweep/``::

    manifest.json                  what the sweep is: its hparams table, static names,
                                   chunk plan and settings (num_steps, log_every, ...)
    group<g>_chunk<c>.npz          the results of a finished chunk (its leaves, in order)
    group<g>_chunk<c>.running.npz  the running chunk's vmapped state after its last segment,
                                   with the step it reached; removed when the chunk ends

Every file is written atomically (:func:`~jaxmath.run.files.atomic_write_bytes`), so a
kill at any moment leaves the previous file or the new one. On resume, the manifest
must equal the new sweep's: a different table, plan or setting is a
:class:`~jaxmath.run.config.ConfigError` (a ``ValueError``) naming what differs, never a
silent mix of two sweeps; a manifest with nothing saved under it (a sweep that failed
before its first chunk) is replaced by the new one. An ``.npz`` holds a CRC per
array; a file that cannot be read is reported with a ``RuntimeWarning`` and its chunk
is computed again (the numbers are the same: a chunk is a function of its rows).

Only process 0 of a multi-process job writes; every process reads. The workdir must
then be on a filesystem that every process sees (as orbax's checkpoints need), so that
all of them find the same chunks finished and run the same programs.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxmath.run.config import ConfigError
from jaxmath.run.files import _is_writer, atomic_write_bytes, atomic_write_json

__all__ = ["PROGRESS_DIR", "SweepProgress"]

PROGRESS_DIR = "checkpoints_sweep"  # workdir/checkpoints_sweep/
MANIFEST = "manifest.json"
_FORMAT = 1
_META = "__meta__"  # the npz entry holding the leaf names (and the step of a running chunk)


def _normalised(obj: Any) -> Any:
    """``obj`` as JSON would read it back (tuples as lists, NumPy scalars as numbers)."""
    from jaxmath.run.files import to_json
    return json.loads(json.dumps(obj, default=to_json))


def _first_difference(saved: Any, new: Any, path: str = "") -> str | None:
    """``key: saved -> new`` at the first place two JSON trees differ, or None."""
    if isinstance(saved, dict) and isinstance(new, dict):
        for key in [*saved, *(k for k in new if k not in saved)]:
            if key not in saved or key not in new:
                return (f"{path}{key}: {'(absent)' if key not in saved else 'present'} -> "
                        f"{'(absent)' if key not in new else 'present'}")
            found = _first_difference(saved[key], new[key], f"{path}{key}.")
            if found:
                return found
        return None
    if isinstance(saved, list) and isinstance(new, list):
        if len(saved) != len(new):
            return f"{path.rstrip('.')}: {len(saved)} entries -> {len(new)}"
        for i, (a, b) in enumerate(zip(saved, new, strict=True)):
            found = _first_difference(a, b, f"{path}{i}.")
            if found:
                return found
        return None
    if saved != new:
        return f"{path.rstrip('.')}: {json.dumps(saved)} -> {json.dumps(new)}"
    return None


def _npz_bytes(leaves: Sequence[np.ndarray], meta: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    arrays = {f"leaf_{i:04d}": np.asarray(x) for i, x in enumerate(leaves)}
    np.savez(buffer, **arrays, **{_META: np.asarray(json.dumps(dict(meta)))})
    return buffer.getvalue()


class SweepProgress:
    """The files of one sweep's progress under ``workdir/checkpoints_sweep/``.

    Args:
      workdir: the run directory.
      manifest: a JSON-able description of the sweep (hparams table, static names,
        chunk plan, settings). Written if the directory holds none; otherwise it must
        equal the stored one.

    Raises:
      ConfigError: the directory holds results of a different sweep; the message names
        the first difference.

    Example:
      >>> import tempfile
      >>> d = tempfile.mkdtemp()
      >>> p = SweepProgress(d, {"hparams": {"lr": [0.1, 1.0]}})
      >>> p.save_finished(0, 0, [np.arange(3.0)], ["loss"])
      >>> SweepProgress(d, {"hparams": {"lr": [0.1, 1.0]}}).finished(0, 0, ["loss"])
      [array([0., 1., 2.])]
    """

    def __init__(self, workdir: str | os.PathLike, manifest: Mapping[str, Any]):
        self.directory = Path(workdir) / PROGRESS_DIR
        wanted = _normalised({"format": _FORMAT, **manifest})
        path = self.directory / MANIFEST
        if path.exists():
            try:
                saved = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(f"cannot read the sweep manifest {path} ({e}); delete "
                                 f"{self.directory} to start the sweep afresh") from None
            difference = _first_difference(saved, wanted)
            if difference is not None and not self._holds_results():
                difference = None  # nothing saved under the old settings: take the new ones
                if _is_writer():
                    atomic_write_json(path, wanted)
            if difference is not None:
                raise ConfigError(
                    f"{self.directory} holds the progress of a different sweep ({difference}); "
                    f"use another workdir, or delete {self.directory} to start afresh")
        elif _is_writer():
            atomic_write_json(path, wanted)

    def __repr__(self) -> str:
        return f"SweepProgress({str(self.directory)!r})"

    def _holds_results(self) -> bool:
        """Whether any chunk's results or running state is saved here."""
        return any(self.directory.glob("group*_chunk*.npz"))

    def _path(self, group: int, chunk: int, running: bool = False) -> Path:
        return self.directory / f"group{group}_chunk{chunk}{'.running' if running else ''}.npz"

    def _read(self, path: Path, names: Sequence[str]) -> tuple[dict, list[np.ndarray]] | None:
        """(meta, leaves) of one file, None if absent; a damaged file warns and is None."""
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz[_META]))
                leaves = [npz[f"leaf_{i:04d}"] for i in range(len(meta["names"]))]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
            warnings.warn(f"sweep progress file {path} cannot be read ({type(e).__name__}: "
                          f"{e}); its chunk is computed again", RuntimeWarning, stacklevel=3)
            return None
        if meta["names"] != list(names):
            raise ValueError(
                f"{path} holds the leaves {meta['names']}, but this sweep's function gives "
                f"{list(names)}: the function changed since the progress was saved; use "
                f"another workdir, or delete {self.directory} to start afresh")
        return meta, leaves

    def finished(self, group: int, chunk: int,
                 names: Sequence[str]) -> list[np.ndarray] | None:
        """The saved result leaves of a finished chunk (named ``names``), or None."""
        found = self._read(self._path(group, chunk), names)
        return None if found is None else found[1]

    def save_finished(self, group: int, chunk: int, leaves: Sequence[np.ndarray],
                      names: Sequence[str]) -> None:
        """Save a finished chunk's result leaves; its running state, if any, is removed."""
        if not _is_writer():
            return
        atomic_write_bytes(self._path(group, chunk), _npz_bytes(leaves, {"names": list(names)}))
        self._path(group, chunk, running=True).unlink(missing_ok=True)

    def running(self, group: int, chunk: int,
                names: Sequence[str]) -> tuple[int, list[np.ndarray]] | None:
        """``(step, leaves)`` of the running chunk's saved state, or None."""
        found = self._read(self._path(group, chunk, running=True), names)
        return None if found is None else (int(found[0]["step"]), found[1])

    def save_running(self, group: int, chunk: int, step: int, leaves: Sequence[np.ndarray],
                     names: Sequence[str]) -> None:
        """Save the running chunk's state after ``step`` updates (replacing the previous)."""
        if not _is_writer():
            return
        meta = {"names": list(names), "step": int(step)}
        atomic_write_bytes(self._path(group, chunk, running=True), _npz_bytes(leaves, meta))
