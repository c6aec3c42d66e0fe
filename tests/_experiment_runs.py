"""What the experiments' tests check alike: their files, the loop's timing, the scan path.

Every experiment trained by ``train_loop`` (mlp, cnn, transformer, ddpm_2d, ddpm_digits)
runs its quick variant once per test module (:func:`quick_fixture`) and once more with
``steps_per_call=0`` (:func:`check_scan_path`); every experiment's slow test runs its
default config (:func:`default_run`). The test modules use it as ``runs``.
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxmath.run.cli import run_experiment
from jaxmath.run.throughput import without_perf
from tests.tolerances import default_precision_tol

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = ("config.json", "summary.json", "report.md")


def config_path(name: str) -> str:
    """The path of ``configs/<name>.py``, as ``jaxmath run`` takes it."""
    return str(ROOT / "configs" / f"{name}.py")


def quick_fixture(config: str):
    """A module-scoped fixture ``quick``: ``(summary, workdir)`` of the quick variant's run."""

    @pytest.fixture(scope="module")
    def quick(tmp_path_factory):
        """The quick variant's default run: one call per update on a CPU, the scan elsewhere."""
        workdir = tmp_path_factory.mktemp("quick")
        return run_experiment(f"{config}:quick", workdir, verbose=False), workdir

    return quick


def default_run(config: str, workdir: Path) -> dict:
    """The default config's full run (the slow tests): its summary, whose target is met."""
    summary = run_experiment(config, workdir, verbose=False)
    assert summary["target_met"] is True
    return summary


def metrics_rows(workdir: Path) -> list[dict]:
    """The rows of ``workdir/metrics.jsonl``, without their throughput timings (``perf/``)."""
    return [without_perf(json.loads(line))
            for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def assert_run_files(workdir: Path, *names: str) -> None:
    """``config.json``, ``summary.json``, ``report.md`` and ``names`` are files in ``workdir``."""
    for name in (*RUN_FILES, *names):
        assert (workdir / name).is_file(), name


def assert_stored_summary(workdir: Path, summary: dict, keys: set[str]) -> None:
    """``keys`` are in the summary, and ``summary.json`` holds the same values for them."""
    assert keys <= set(summary)
    stored = json.loads((workdir / "summary.json").read_text())
    assert {k: stored[k] for k in keys} == {k: summary[k] for k in keys}


def assert_loop_timing(summary: dict, scan_steps: int) -> None:
    """The loop's timing fields, and its default steps per call: 1 on a CPU, else the scan
    of the ``scan_steps`` updates between two log or checkpoint steps."""
    expected = 1 if jax.default_backend() == "cpu" else scan_steps  # steps_per_call=None: auto
    assert summary["steps_per_call"] == expected
    assert 0 < summary["train_compile_s"] < summary["train_s"] <= summary["wall_time_s"]
    assert summary["train_steps_per_s"] > 0 and summary["backend"] and summary["devices"]
    assert summary["train_flops_per_step"] > 0 and summary["train_flops_per_s"] > 0
    assert summary["train_examples_per_s"] > summary["train_steps_per_s"]  # batches of > 1
    if jax.default_backend() == "cpu":
        assert summary["train_mfu"] is None  # no peak for a CPU


def check_scan_path(config: str, quick: tuple[dict, Path], workdir: Path,
                    scan_steps: int) -> None:
    """steps_per_call=0, the scan of the steps between log steps that a GPU runs (batch_fn
    traced): the rows of the default run (one call per update on a CPU), to float
    rounding, and the same summary keys."""
    summary = run_experiment(f"{config}:quick", workdir, ["--config.steps_per_call=0"],
                             verbose=False)
    assert summary["steps_per_call"] == scan_steps  # gcd(log_every, checkpoint_every)
    assert set(summary) == set(quick[0])
    rows, want = metrics_rows(workdir), metrics_rows(quick[1])
    assert [set(r) for r in rows] == [set(r) for r in want]
    for got, ref in zip(rows, want, strict=True):
        for key, value in ref.items():
            np.testing.assert_allclose(got[key], value, **default_precision_tol(), err_msg=key)
