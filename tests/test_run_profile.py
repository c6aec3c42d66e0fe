"""`jaxmath run --profile_steps=A:B`: a jax.profiler trace in the workdir, its report section,
and the range checked against the run before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxmath.run.cli import main

ROOT = Path(__file__).parent.parent
MLP = str(ROOT / "configs" / "mlp.py")
ECHO = str(Path(__file__).parent / "fixtures" / "configs" / "echo.py")


def test_profile_steps_trace_the_run_and_the_report_says_how_to_open_it(tmp_path, capsys):
    workdir = tmp_path / "mlp"
    assert main(["run", f"{MLP}:quick", "--workdir", str(workdir),
                 "--profile_steps=5:10"]) == 0
    traces = list((workdir / "profile").glob("plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1
    assert list((workdir / "profile").glob("plugins/profile/*/perfetto_trace.json.gz"))
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["profile"] == str(workdir / "profile")
    assert json.loads((workdir / "config.json").read_text())["profile_steps"] == "5:10"
    report = (workdir / "report.md").read_text()
    assert "## Profile" in report and f"tensorboard --logdir {workdir / 'profile'}" in report
    assert "https://ui.perfetto.dev" in report


@pytest.mark.parametrize("args, message", [
    (["--profile_steps=5:100"],
     "--profile_steps=5:100 is outside the run: need 0 <= A < B <= num_steps=20"),
    (["--profile_steps=9:3"], "outside the run"),
    (["--profile_steps=5"], "profile_steps must be 'A:B' with integers A < B"),
    (["--profile_steps=a:b"], "profile_steps must be 'A:B'"),
    (["--config.profile_steps=0:21"], "config.profile_steps=0:21 is outside the run"),
])
def test_bad_profile_ranges_stop_before_any_work(tmp_path, capsys, args, message):
    workdir = tmp_path / "w"
    assert main(["run", f"{MLP}:quick", "--workdir", str(workdir), *args]) == 2
    assert message in capsys.readouterr().err
    assert not workdir.exists()


def test_an_experiment_without_the_loop_is_told_nothing_was_profiled(tmp_path, capsys):
    assert main(["run", f"{ECHO}:quick", "--workdir", str(tmp_path),
                 "--profile_steps=0:2"]) == 0
    err = capsys.readouterr().err
    assert "profile_steps=0:2 but experiments/echo.py wrote no profile" in err
    assert not (tmp_path / "profile").exists()


def test_a_profile_may_be_asked_for_when_resuming(tmp_path, capsys):
    """profile_steps changes no number: a workdir accepts a new range, or one where its
    config had none."""
    assert main(["run", f"{ECHO}:quick", "--workdir", str(tmp_path)]) == 0
    assert main(["run", f"{ECHO}:quick", "--workdir", str(tmp_path),
                 "--profile_steps=0:2"]) == 0
    assert main(["run", f"{ECHO}:quick", "--workdir", str(tmp_path),
                 "--profile_steps=1:2"]) == 0
