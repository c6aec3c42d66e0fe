"""TensorBoard event files written by jaxmath itself: no TensorFlow, PyTorch or tensorboardX.

An event file is a sequence of TFRecords, each ``length (uint64) | masked CRC-32C of the
length | data | masked CRC-32C of the data``, the data a serialised ``tensorflow.Event``
protocol buffer. A scalar needs only a few of its fields, encoded here by hand
(:func:`_event`): ``wall_time`` (1, double), ``step`` (2, int64), ``file_version`` (3),
``summary`` (5: ``Summary.Value`` with ``tag`` (1) and ``simple_value`` (2, float32)) and
``session_log`` (7: ``status = START``, the restart marker of a resumed run).

Why not a library: tensorboardX imports PyTorch when it is installed (about 1 s and
180 MB more per run), and TensorBoard's own writer needs the ``tensorboard`` package
(grpcio, werkzeug) at run time. The tests read these files back with TensorBoard's
``EventAccumulator``, which checks every CRC.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TensorBoardWriter", "scalars"]


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The real scalars of ``row`` as floats (nan and ±inf kept); other values skipped.

    Example:
      >>> scalars({"loss": np.float32(0.5), "ok": True, "curve": [1, 2], "note": "x",
      ...          "bad": float("nan")})
      {'loss': 0.5, 'ok': 1.0, 'bad': nan}
    """
    out = {}
    for key, value in row.items():
        if value is None or isinstance(value, str | bytes):
            continue
        try:
            arr = np.asarray(value)
        except Exception:
            continue
        if arr.size == 1 and arr.dtype.kind in "fiub":
            out[str(key)] = float(arr.reshape(()))
    return out


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C = _crc32c_table()


def _masked_crc32c(data: bytes) -> bytes:
    """TFRecord's checksum: CRC-32C (Castagnoli), rotated right by 15 and offset."""
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 fields: two's complement
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, wall_time: float, *, summary: Mapping[str, float] | None = None,
           file_version: str | None = None, start: bool = False) -> bytes:
    """A serialised ``tensorflow.Event``: wall_time = 1 (double), step = 2 (int64),
    file_version = 3, summary = 5 (``Summary.Value``: tag = 1, simple_value = 2 (float)),
    session_log = 7 (status = 1, START = 1)."""
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        out += _field(3, file_version.encode())
    if summary:
        values = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", v))
                          for tag, v in summary.items())
        out += _field(5, values)
    if start:
        out += _field(7, b"\x08\x01")
    return out


def _record(data: bytes) -> bytes:
    """One TFRecord: length (uint64), its masked CRC, the data, the data's masked CRC."""
    length = struct.pack("<Q", len(data))
    return length + _masked_crc32c(length) + data + _masked_crc32c(data)


_file_counter = itertools.count()


class TensorBoardWriter:
    """Scalars into a TensorBoard event file in ``logdir`` (created), one event per row.

    The file is ``events.out.tfevents.<time>.<host>.<pid>.<n>``, new for each writer, so
    writers never share a file. The first row's event is preceded by a restart marker
    (``SessionLog.START``) at its step: TensorBoard drops the points of earlier files in
    ``logdir`` at that step and later (those of a killed run that is being resumed).
    Values are float32 (TensorBoard's ``simple_value``); nan and ±inf stay as they are.

    Example:
      >>> import tempfile
      >>> w = TensorBoardWriter(tempfile.mkdtemp())
      >>> w.write(10, {"loss": 0.5})
      >>> w.close()
    """

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        name = (f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}."
                f"{next(_file_counter):04d}")
        self.path = self.logdir / name
        self._file = open(self.path, "wb")
        self._started = False
        self._file.write(_record(_event(0, now, file_version="brain.Event:2")))
        self._file.flush()

    def write(self, step: int, row: Mapping[str, Any]) -> None:
        now = time.time()
        if not self._started:
            self._file.write(_record(_event(step, now, start=True)))
            self._started = True
        values = scalars(row)
        if values:
            self._file.write(_record(_event(step, now, summary=values)))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
