"""jaxmath.run.files: atomic writes and metrics.jsonl, checked against plain reads.

The reference for every value is the file read back with ``open``/``json.loads``.
These are I/O functions, so jit/vmap/gradient checks do not apply; the kill-related
properties are checked directly: the old file survives a failed write, no temporary
file is left, every write is fsynced, and a partial last line is ignored and removed.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxmath.run.files import MetricsLog, atomic_write_json, atomic_write_text


def _leftovers(directory: pathlib.Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- atomic writes


def test_atomic_write_text_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "dir" / "a.txt"        # parents are created
    assert atomic_write_text(path, "one\n") == path
    assert path.read_text() == "one\n"
    atomic_write_text(str(path), "two ünïcode")       # str paths work, UTF-8
    assert path.read_text(encoding="utf-8") == "two ünïcode"
    assert _leftovers(path.parent) == []


def test_atomic_write_text_fsyncs_file_and_directory(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    atomic_write_text(tmp_path / "a.txt", "x")
    assert len(calls) == 2  # the temporary file before the rename, the directory after


def test_failed_replace_keeps_old_file_and_removes_tmp(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert _leftovers(tmp_path) == []


def test_atomic_write_json_converts_numpy_and_jax(tmp_path):
    obj = {"f32": np.float32(0.5), "i64": np.int64(3), "jax": jnp.float32(2.0),
           "arr": np.arange(3), "jarr": jnp.ones(2), "path": tmp_path, "b": np.bool_(True),
           "nested": [{"x": 1}]}
    path = atomic_write_json(tmp_path / "s.json", obj)
    got = json.loads(path.read_text())
    assert got == {"f32": 0.5, "i64": 3, "jax": 2.0, "arr": [0, 1, 2], "jarr": [1.0, 1.0],
                   "path": str(tmp_path), "b": True, "nested": [{"x": 1}]}


def test_atomic_write_json_unserialisable_leaves_file_untouched(tmp_path):
    path = tmp_path / "s.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError, match="not JSON serializable"):
        atomic_write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- MetricsLog


def test_metrics_log_round_trip(tmp_path):
    log = MetricsLog(tmp_path)
    log.write(1, {"loss": jnp.float32(0.25), "acc": np.float64(0.5), "n": np.int32(7)})
    log.write(2, {"loss": 0.125, "note": "ok", "flag": True, "vec": jnp.arange(2)})
    log.write(3, {"loss": float("nan"), "inf": np.inf})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines][:2] == [
        {"step": 1, "loss": 0.25, "acc": 0.5, "n": 7},
        {"step": 2, "loss": 0.125, "note": "ok", "flag": True, "vec": [0, 1]}]
    rows = MetricsLog(tmp_path).read()  # a new instance reads what the first wrote
    assert rows[:2] == [json.loads(line) for line in lines[:2]]
    assert np.isnan(rows[2]["loss"]) and rows[2]["inf"] == np.inf


def test_metrics_log_appends_and_fsyncs_every_row(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path)
    log.write(1, {"loss": 1.0})
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    for step in range(2, 6):
        log.write(step, {"loss": 1.0 / step})
    assert len(calls) == 4
    assert [r["step"] for r in MetricsLog(tmp_path).read()] == [1, 2, 3, 4, 5]


def test_write_without_fsync_then_sync(tmp_path, monkeypatch):
    log = MetricsLog(tmp_path)
    log.sync()  # no file yet: nothing to do
    log.write(1, {"loss": 1.0})
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    log.write(2, {"loss": 0.5}, fsync=False)
    log.write(3, {"loss": 0.25}, fsync=False)
    assert calls == []
    assert [r["step"] for r in MetricsLog(tmp_path).read()] == [1, 2, 3]  # flushed already
    log.sync()
    assert len(calls) == 1


def test_read_missing_file_is_empty(tmp_path):
    assert MetricsLog(tmp_path / "new").read() == []
    MetricsLog(tmp_path / "new").truncate_after(0)  # nothing to do, no error
    assert not (tmp_path / "new" / "metrics.jsonl").exists()


def test_partial_last_line_is_ignored_then_dropped(tmp_path):
    log = MetricsLog(tmp_path)
    for step in (10, 20, 30):
        log.write(step, {"loss": step / 10})
    with open(log.path, "a") as f:  # what a kill in the middle of a write leaves
        f.write('{"step": 40, "lo')
    assert [r["step"] for r in log.read()] == [10, 20, 30]
    log.truncate_after(20)
    assert log.path.read_text() == '{"step": 10, "loss": 1.0}\n{"step": 20, "loss": 2.0}\n'
    log.write(30, {"loss": 3.5})  # the resumed run writes step 30 once
    assert [(r["step"], r["loss"]) for r in log.read()] == [(10, 1.0), (20, 2.0), (30, 3.5)]
    assert _leftovers(tmp_path) == []


def test_truncate_after_keeps_everything_when_nothing_is_later(tmp_path):
    log = MetricsLog(tmp_path)
    log.write(5, {"loss": 1.0})
    before = log.path.stat().st_mtime_ns, log.path.read_text()
    log.truncate_after(5)
    assert (log.path.stat().st_mtime_ns, log.path.read_text()) == before  # not rewritten


def test_malformed_complete_line_is_dropped_with_warning(tmp_path):
    log = MetricsLog(tmp_path)
    log.path.write_text('{"step": 1, "loss": 1}\nnot json\n{"loss": 2}\n{"step": 3, "loss": 3}\n')
    with pytest.warns(RuntimeWarning) as record:
        rows = log.read()
    assert [r["step"] for r in rows] == [1, 3]
    messages = [str(w.message) for w in record]
    assert any("line 2 is not valid JSON" in m for m in messages)
    assert any("line 3 has no integer 'step'" in m for m in messages)
    with pytest.warns(RuntimeWarning):
        log.truncate_after(3)  # rewrites the file without the bad lines
    assert log.path.read_text() == '{"step": 1, "loss": 1}\n{"step": 3, "loss": 3}\n'


@settings(max_examples=10)
@given(steps=st.lists(st.integers(0, 50), min_size=0, max_size=8, unique=True),
       cut=st.integers(0, 50), partial=st.booleans())
def test_truncate_after_matches_a_filter(tmp_path_factory, steps, cut, partial):
    log = MetricsLog(tmp_path_factory.mktemp("m"))
    steps = sorted(steps)
    for s in steps:
        log.write(s, {"loss": s * 0.5})
    if partial:
        with open(log.path, "a") as f:
            f.write('{"step": 99')
    log.truncate_after(cut)
    assert log.read() == [{"step": s, "loss": s * 0.5} for s in steps if s <= cut]
    assert not log.path.exists() or log.path.read_text().endswith(("\n", ""))


# --------------------------------------------------------------------------- bad inputs


def _log(tmp_path):
    return MetricsLog(tmp_path)


BAD = [
    (lambda d: _log(d).write(-1, {"loss": 1.0}), ValueError, r"step must be >= 0, got -1"),
    (lambda d: _log(d).write(1.5, {"loss": 1.0}), TypeError, r"step must be an int, got float"),
    (lambda d: _log(d).write(True, {"loss": 1.0}), TypeError, r"step must be an int, got bool"),
    (lambda d: _log(d).write(1, [("loss", 1.0)]), TypeError,
     r"metrics must be a mapping, got list"),
    (lambda d: _log(d).write(1, {"step": 2}), ValueError, r"must not contain the key 'step'"),
    (lambda d: _log(d).write(1, {"loss": object()}), TypeError, r"metric 'loss' must be a number"),
    (lambda d: _log(d).write(1, {"loss": np.array(["a"])}), TypeError,
     r"metric 'loss' must be a number, got dtype <U1"),
    (lambda d: _log(d).write(1, {3: 1.0}), TypeError, r"metric names must be str, got 3"),
    (lambda d: _log(d).truncate_after(-2), ValueError, r"step must be >= 0, got -2"),
    (lambda d: atomic_write_text(d / "a.txt", b"x"), TypeError, r"text must be a str, got bytes"),
    (lambda d: atomic_write_text(d, "x"), IsADirectoryError, r"is a directory"),
    (lambda d: atomic_write_json(d / "a.json", {"a": {1, object()}}), TypeError,
     r"not JSON serializable|not supported between"),
]


@pytest.mark.parametrize(("fn", "exc", "match"), BAD)
def test_bad_inputs(tmp_path, fn, exc, match):
    with pytest.raises(exc, match=match):
        fn(tmp_path)
    metrics = tmp_path / "metrics.jsonl"
    assert not metrics.exists() or metrics.read_text() == ""  # nothing half-written
