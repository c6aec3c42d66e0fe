"""jaxmath.run.writers: TensorBoard event files and W&B runs fed from the loop's rows.

The event files are read back by TensorBoard's own loader (``EventAccumulator``, which
checks every record's CRC); the W&B runs in offline mode by a reader of W&B's run file
(``run-*.wandb``: a LevelDB-style log of checksummed protobuf records, parsed with the
wandb package's own ``Record`` message).
"""

from __future__ import annotations

import glob
import json
import math
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmath.run import tensorboard
from jaxmath.run import writers as W
from jaxmath.run.config import ConfigError, load_config
from jaxmath.run.files import MetricsLog
from jaxmath.run.loop import train_loop
from tests import _experiment_runs as runs

F32_RTOL = 1e-6  # TensorBoard keeps float32 scalars


# --------------------------------------------------------------------------- readers


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value)]}`` as TensorBoard shows them (restarts purged)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


def wandb_records(run_dir: Path) -> list:
    """The protobuf records of an offline W&B run's ``run-*.wandb`` file, checksums checked.

    The file is a 7-byte header (``:W&B``, magic 0xBEE1, version) and 32 KiB blocks of
    records ``crc32 (uint32), length (uint16), type (uint8), data``: type 1 a whole record,
    2/3/4 its first, middle and last pieces; the crc is zlib's over the type and data.
    """
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pieces, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        assert crc == zlib.crc32(payload, zlib.crc32(bytes([kind]))), "bad checksum"
        pieces = payload if kind in (1, 2) else pieces + payload
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
    return records


def wandb_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """(the run record's fields, the logged rows ``{"_step": ..., key: value}``)."""
    run, rows = {}, []
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run = {"project": r.project, "name": r.display_name, "group": r.run_group,
                   "tags": list(r.tags),
                   "config": {u.key: json.loads(u.value_json) for u in r.config.update
                              if u.key != "_wandb"}}
        elif kind == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                   for i in record.history.item}
            rows.append({k: v for k, v in row.items() if k not in ("_timestamp", "_runtime")})
    return run, rows


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B in offline mode: its files under tmp_path/wandb_home, no network, no output."""
    wandb = pytest.importorskip("wandb")
    home = tmp_path / "wandb_home"
    home.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(home))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    wandb.teardown()  # W&B reads its settings once per process: read these
    yield home
    wandb.teardown()


def run_dirs(home: Path) -> list[Path]:
    """The offline runs' directories, once W&B's service has written them out (``finish``
    returns before its service process has closed the run's file)."""
    import wandb

    wandb.teardown()
    return sorted(Path(p) for p in glob.glob(str(home / "wandb" / "offline-run-*")))


# --------------------------------------------------------------------------- rows


ROWS = [
    (10, {"loss": np.float32(2.5), "learning_rate": 1e-3, "perf/steps_per_s": 123.0}),
    (20, {"loss": jnp.float32(1.25), "test_accuracy": np.float64(0.5), "ok": True}),
    (30, {"loss": float("nan"), "grad": np.inf, "curve": np.ones(3), "note": "skipped",
          "count": np.int32(7), "none": None}),
]


def expected_series(rows) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    for step, row in rows:
        for key, value in W.scalars(row).items():
            series.setdefault(key, []).append((step, value))
    return series


def assert_series_equal(got, want):
    assert sorted(got) == sorted(want)
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag
        np.testing.assert_allclose([v for _, v in got[tag]], [v for _, v in want[tag]],
                                   rtol=F32_RTOL, err_msg=tag)  # nan == nan here


def test_scalars_keeps_real_scalars_and_non_finite_values():
    got = W.scalars(ROWS[2][1])
    assert set(got) == {"loss", "grad", "count"}
    assert math.isnan(got["loss"]) and got["grad"] == math.inf and got["count"] == 7.0
    assert W.scalars({"x": np.array([[3.0]]), "c": 1 + 2j}) == {"x": 3.0}


# --------------------------------------------------------------------------- TensorBoard


def test_tensorboard_files_read_back_by_tensorboard(tmp_path):
    writer = W.TensorBoardWriter(tmp_path / "tb")
    for step, row in ROWS:
        writer.write(step, row)
    writer.close()
    assert writer.path.name.startswith("events.out.tfevents.")
    got = tensorboard_scalars(tmp_path / "tb")
    assert_series_equal(got, expected_series(ROWS))
    assert math.isnan(got["loss"][-1][1]) and got["grad"] == [(30, math.inf)]


def test_a_resumed_run_replaces_the_killed_runs_later_points(tmp_path):
    first = W.TensorBoardWriter(tmp_path)
    for step in (10, 20, 30, 40):
        first.write(step, {"loss": float(step)})
    first.close()
    second = W.TensorBoardWriter(tmp_path)  # resumed from the checkpoint at step 20
    for step in (30, 40, 50):
        second.write(step, {"loss": -float(step)})
    second.close()
    assert tensorboard_scalars(tmp_path)["loss"] == [(10, 10.0), (20, 20.0), (30, -30.0),
                                                     (40, -40.0), (50, -50.0)]


def test_crc32c_matches_the_standard_check_value():
    # CRC-32C of b"123456789" is 0xE3069283 (RFC 3720); the mask is TFRecord's
    crc = 0xE3069283
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert tensorboard._masked_crc32c(b"123456789") == struct.pack("<I", masked)


# --------------------------------------------------------------------------- the fan-out


class Recorder:
    def __init__(self, fail_at=None, delay=0.0):
        self.rows, self.flushes, self.closed = [], 0, False
        self.fail_at, self.delay = fail_at, delay
        self.threads = set()

    def write(self, step, row):
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if step == self.fail_at:
            raise OSError("disk full")
        self.rows.append((step, dict(row)))

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed = True


def test_rows_arrive_in_order_on_the_background_thread():
    slow = Recorder(delay=0.002)
    writers = W.MetricWriters({"slow": slow})
    t0 = time.perf_counter()
    for step in range(1, 101):
        writers.write(step, {"loss": step})
    queued_s = time.perf_counter() - t0
    writers.close()
    assert queued_s < 0.1  # 100 rows x 2 ms each were written on the thread, not here
    assert [s for s, _ in slow.rows] == list(range(1, 101))
    assert slow.closed and slow.flushes >= 1
    assert slow.threads == {"jaxmath-metric-writers"}
    writers.write(101, {"loss": 0})  # after close: ignored
    writers.close()  # idempotent
    assert len(slow.rows) == 100


def test_flush_waits_for_the_queued_rows():
    slow = Recorder(delay=0.01)
    with W.MetricWriters({"slow": slow}) as writers:
        for step in range(5):
            writers.write(step, {"loss": 1.0})
        assert writers.flush(timeout=10)
        assert len(slow.rows) == 5


def test_a_failing_writer_is_dropped_with_one_warning_and_the_others_go_on():
    bad, good = Recorder(fail_at=2), Recorder()
    writers = W.MetricWriters({"bad": bad, "good": good})
    for step in range(1, 5):
        writers.write(step, {"loss": step})
    with pytest.warns(RuntimeWarning) as record:
        writers.close()
    messages = [str(w.message) for w in record]
    assert len(messages) == 1
    assert "'bad'" in messages[0] and "step 2" in messages[0] and "OSError: disk full" in \
        messages[0]
    assert [s for s, _ in bad.rows] == [1] and bad.closed
    assert [s for s, _ in good.rows] == [1, 2, 3, 4]


def test_a_writer_that_hangs_does_not_hold_up_close(recwarn):
    stuck = threading.Event()

    class Hanging(Recorder):
        def close(self):
            stuck.wait(5)

    writers = W.MetricWriters({"hanging": Hanging()})
    t0 = time.perf_counter()
    with pytest.warns(RuntimeWarning, match=r"did not finish within 0.2 s"):
        writers.close(timeout=0.2)
    stuck.set()
    assert time.perf_counter() - t0 < 2


def tiny_state_and_step():
    def step_fn(w, x):
        loss, g = jax.value_and_grad(lambda w: jnp.mean((x * w - 2.0 * x) ** 2))(w)
        return w - 0.1 * g, {"loss": loss, "w": w}
    return jnp.float32(0.0), step_fn


def test_the_loop_feeds_the_writers_and_survives_a_crashing_one(tmp_path):
    state, step_fn = tiny_state_and_step()
    bad = Recorder(fail_at=20)
    writers = W.MetricWriters({"bad": bad,
                               "tensorboard": W.TensorBoardWriter(tmp_path / "tb")})
    with pytest.warns(RuntimeWarning, match=r"metric writer 'bad' failed at step 20 with "
                                            r"OSError: disk full"):
        result = train_loop(state, step_fn, lambda s: jnp.ones(4), num_steps=40,
                            workdir=tmp_path, log_every=10, checkpoint_every=20,
                            progress="none", writers=writers)
        writers.close()
    rows = MetricsLog(tmp_path).read()
    assert [r["step"] for r in rows] == [10, 20, 30, 40] == [r["step"] for r in result.history]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()
                  if p.name.isdigit()) == ["20", "40"]
    assert [s for s, _ in bad.rows] == [10]
    got = tensorboard_scalars(tmp_path / "tb")
    assert_series_equal({k: got[k] for k in ("loss", "w")},
                        {k: [(r["step"], r[k]) for r in rows] for k in ("loss", "w")})


# --------------------------------------------------------------------------- config


def test_logging_config_defaults():
    block = W.logging_config()
    assert W.check_config(block) == W.Settings(tensorboard=True, wandb=None)
    assert W.check_config(None) == W.Settings(False, None)
    assert W.check_config({"writers": ()}) == W.Settings(False, None)


@pytest.mark.parametrize("block, match", [
    ({"writers": ("tensorbord",)},
     r"config.logging.writers: unknown writer 'tensorbord' in \('tensorbord',\); accepted: "
     r"'tensorboard', 'wandb' \(did you mean 'tensorboard'\?\)"),
    ({"writers": ("tensorboard", "csv")}, r"unknown writer 'csv'.*accepted: 'tensorboard', "),
    ({"writers": 3}, r"config.logging.writers must be a tuple of writer names"),
    ({"writer": ("tensorboard",)}, r"config.logging: unknown key\(s\) \['writer'\]; accepted"),
    ({"wandb": {"enabled": True, "projet": "x"}},
     r"config.logging.wandb: unknown key\(s\) \['projet'\].*did you mean 'project'"),
    ({"wandb": {"enabled": "yes"}}, r"wandb.enabled must be True or False, got 'yes'"),
    ({"wandb": {"enabled": True, "mode": "offlne"}},
     r"wandb.mode='offlne'; accepted: 'online', 'offline', 'disabled'"),
    ({"wandb": {"enabled": True, "tags": "a"}}, r"wandb.tags must be a tuple of str"),
    ({"wandb": {"enabled": True, "project": 3}}, r"wandb.project must be a str or None"),
])
def test_bad_blocks_raise_config_errors(block, match):
    with pytest.raises(ConfigError, match=match):
        W.check_config(block)


@pytest.mark.parametrize("block", [{"writers": ("wandb",)}, {"wandb": {"enabled": True}}])
def test_wandb_without_the_package_names_the_extra(block, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ConfigError, match=r"the wandb package cannot be imported .*install it "
                                          r"with pip install 'jaxmath\[wandb\]'"):
        W.from_config(block, tmp_path)
    assert not (tmp_path / "tensorboard").exists()


def test_an_override_reaches_the_block():
    config = load_config(runs.config_path("mlp"), ["--config.logging.writers=('tensorbord',)"])
    with pytest.raises(ConfigError, match="unknown writer 'tensorbord'"):
        W.from_config(config.logging, "unused")


def test_processes_other_than_zero_write_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda *a, **k: 1)
    writers = W.from_config(W.logging_config(), tmp_path)
    assert not writers and writers.names == ()
    writers.write(1, {"loss": 1.0})
    writers.close()
    names = W.write_sweep_members(W.logging_config(), tmp_path, {"lr": [0.1, 0.2]},
                                  {"loss": np.ones((2, 3))}, [1, 2, 3])
    assert names == ["lr=0.1", "lr=0.2"]
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="unknown writer"):  # still checked everywhere
        W.from_config({"writers": ("x",)}, tmp_path)


# --------------------------------------------------------------------------- W&B


def test_wandb_offline_run_holds_the_rows(offline_wandb, tmp_path):
    block = W.logging_config()
    block.writers = ()
    block.wandb.enabled = True
    block.wandb.tags = ("smoke",)
    block.wandb.group = "tests"
    writers = W.from_config(block, tmp_path / "run", run_name="mlp",
                            hparams={"optim": {"learning_rate": 1e-3}, "seed": 0})
    assert writers.names == ("wandb",)
    for step, row in ROWS:
        writers.write(step, row)
    writers.close()
    (run_dir,) = run_dirs(offline_wandb)
    run, rows = wandb_run(run_dir)
    assert run["project"] == "jaxmath" and run["name"] == "mlp" and run["group"] == "tests"
    assert run["tags"] == ["smoke"]
    assert run["config"] == {"optim": {"learning_rate": 1e-3}, "seed": 0}
    got = {}
    for row in rows:
        for key, value in row.items():
            if key != "_step":
                got.setdefault(key, []).append((row["_step"], float(value)))
    assert_series_equal(got, expected_series(ROWS))


def test_sweep_members_are_separate_series(offline_wandb, tmp_path):
    hparams = {"learning_rate": np.array([1e-3, 1e-3, 1e-2]), "seed": np.array([0, 1, 0])}
    curves = {"loss": np.array([[3.0, 2.0], [3.5, 2.5], [np.nan, np.nan]])}
    block = W.logging_config(("tensorboard", "wandb"))
    names = W.write_sweep_members(block, tmp_path, hparams, curves, [5, 10])
    assert names == ["learning_rate=0.001,seed=0", "learning_rate=0.001,seed=1",
                     "learning_rate=0.01,seed=0"]
    members = sorted(p.name for p in (tmp_path / W.TENSORBOARD_DIR).iterdir())
    assert members == sorted(names)
    for i, name in enumerate(names):
        got = tensorboard_scalars(tmp_path / W.TENSORBOARD_DIR / name)
        assert_series_equal(got, {"loss": [(5, curves["loss"][i, 0]),
                                           (10, curves["loss"][i, 1])]})
    runs_seen = [wandb_run(d) for d in run_dirs(offline_wandb)]
    assert sorted(r["name"] for r, _ in runs_seen) == sorted(names)
    for run, rows in runs_seen:
        i = names.index(run["name"])
        assert run["group"] == tmp_path.name
        assert run["config"] == {"learning_rate": hparams["learning_rate"][i],
                                 "seed": int(hparams["seed"][i])}
        np.testing.assert_allclose([r["loss"] for r in rows], curves["loss"][i])
        assert [r["_step"] for r in rows] == [5, 10]


def test_member_names_stay_unique():
    assert W.member_names({"lr": [0.1, 0.1]}) == ["lr=0.1,index=0", "lr=0.1,index=1"]
    assert W.member_names({"act": np.array(["relu", "a/b"])}) == ["act=relu", "act=a_b"]
    with pytest.raises(ValueError, match=r"curves\['loss'\] must have shape \[N, T\] = "
                                         r"\[2, 3\], got \(2, 2\)"):
        W.write_sweep_members(None, "unused", {"lr": [1, 2]}, {"loss": np.ones((2, 2))},
                              [1, 2, 3])


# --------------------------------------------------------------------------- end to end


def test_jaxmath_run_leaves_tensorboard_files_equal_to_metrics_jsonl(tmp_path):
    from jaxmath.run.cli import run_experiment

    run_experiment(f"{runs.config_path('mlp')}:quick", tmp_path, verbose=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    got = tensorboard_scalars(tmp_path / W.TENSORBOARD_DIR)
    for key in ("loss", "digits_test_accuracy", "learning_rate"):
        assert_series_equal({key: got[key]}, {key: [(r["step"], r[key]) for r in rows]})
