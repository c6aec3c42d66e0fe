"""`jaxmath run|list` on a tiny fixture repository (tests/fixtures: configs/ + experiments/)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from jaxmath.run import cli, startup
from jaxmath.run.cli import RUN_FILES, list_configs, main, run_experiment
from jaxmath.run.config import ConfigError
from tests._jobs import git

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
ECHO = str(FIXTURES / "configs" / "echo.py")
FACTS = {"wall_time_s", "jax_version", "jaxmath_version", "backend", "devices"}


# ----------------------------------------------------------------------------- list


def test_list_configs():
    rows = list_configs(FIXTURES / "configs")
    assert rows == [
        ("echo", "Echo: doubles config.value, logs it, and draws one plot (a CLI test fixture)."),
        ("nodoc", "(no docstring)")]


def test_list_finds_the_repo_from_the_cwd(monkeypatch, capsys):
    monkeypatch.chdir(FIXTURES / "experiments")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["echo", "Echo:"]
    assert "nodoc  (no docstring)" in out and "2 configs in" in out


def test_list_without_a_repo(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no configs/ directory" in err and "--configs DIR" in err


# ----------------------------------------------------------------------------- run


def test_run_writes_every_file(tmp_path, capsys):
    workdir = tmp_path / "run"
    summary = run_experiment(f"{ECHO}:quick", workdir, ["--config.value=2"])
    assert summary["doubled"] == 4.0 and summary["num_steps"] == 2
    assert summary["config_written_first"] is True  # config.json exists before run() starts
    assert FACTS <= set(summary)
    assert summary["mesh"] == f"data={jax.device_count()} fsdp=1"  # the echo config has one
    assert summary["jax_version"] == jax.__version__
    assert summary["backend"] == jax.default_backend()
    assert summary["devices"].startswith(f"{jax.device_count()} x ")

    config = json.loads((workdir / "config.json").read_text())
    assert config["value"] == 2.0 and config["num_steps"] == 2 and config["eval_steps"] == 2
    assert json.loads((workdir / "summary.json").read_text()) == summary
    assert (workdir / "plots" / "echo.png").is_file()
    report = (workdir / "report.md").read_text()
    assert report.startswith("# echo (quick)\n")
    assert "jaxmath run tests/fixtures/configs/echo.py --workdir runs/echo" in report
    assert f"--workdir {workdir} --config.value=2" in report
    assert "![echo](plots/echo.png)" in report and "| doubled | 4 |" in report
    assert "[metrics.jsonl](metrics.jsonl)" in report

    out = capsys.readouterr().out
    assert "doubled" in out and "wall_time_s" in out
    assert out.rstrip().endswith(f"report: {workdir / 'report.md'}")


def test_resume_policy(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main(["run", ECHO, "--workdir", str(workdir)]) == 0
    # the same config, or one that only extends the run, resumes in the same workdir
    assert main(["run", ECHO, "--workdir", str(workdir)]) == 0
    assert main(["run", ECHO, "--workdir", str(workdir), "--config.num_steps=8",
                 "--config.log_every", "4"]) == 0  # eval_steps and twice_steps follow num_steps
    stored = json.loads((workdir / "config.json").read_text())
    assert (stored["num_steps"], stored["log_every"], stored["twice_steps"]) == (8, 4, 16)
    capsys.readouterr()
    # anything else is refused, before the run starts, naming what differs
    (workdir / "summary.json").unlink()
    assert main(["run", ECHO, "--workdir", str(workdir), "--config.value=9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "holds a run with a different config (value: 1.5 -> 9.0)" in err
    assert "--overwrite" in err
    assert not (workdir / "summary.json").exists()
    # --overwrite deletes the old run files (only those) and starts afresh
    (workdir / "notes.txt").write_text("mine")
    assert main(["run", ECHO, "--workdir", str(workdir), "--config.value=9", "--overwrite"]) == 0
    assert json.loads((workdir / "config.json").read_text())["value"] == 9.0
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 3
    assert (workdir / "notes.txt").read_text() == "mine"
    assert set(RUN_FILES) >= {"config.json", "metrics.jsonl", "checkpoints", "plots"}


def test_unknown_key_fails_before_any_work(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = main(["run", ECHO, "--workdir", str(workdir), "--config.optim.learning_rat=1e-3"])
    assert code == 2
    err = capsys.readouterr().err
    assert err == ("jaxmath: error: unknown config key 'optim.learning_rat'; "
                   "closest valid keys: optim.learning_rate\n")
    assert not workdir.exists()


W = "--workdir={w}"
BAD_RUNS = [
    # (argv after "run" ({w}: a fresh workdir), exit status, pattern of the one-line error)
    ([ECHO, W, "--config.seed=1.5"], 2, r"config key 'seed' expects int, got '1\.5'"),
    ([f"{ECHO}:huge", W], 2, r"unknown variant 'huge'"),
    (["no/such.py", W], 2, r"config file 'no/such\.py' not found"),
    ([str(FIXTURES / "configs" / "nodoc.py"), W], 2,
     r"config\.experiment='missing': no .*missing\.py"),
    ([ECHO, W, "--config.mode=nonfinite"], 1, r"non-finite loss nan at step 3"),
    ([ECHO, W, "--config.mode=interrupt"], 130,
     r"interrupted; run again with the same --workdir to resume"),
    ([ECHO], 2, r"the following arguments are required: --workdir"),
    ([ECHO, W, "--bogus"], 2, r"unrecognized arguments: --bogus"),
    ([W], 2, r"the following arguments are required: CONFIG\[:variant\]"),
]


@pytest.mark.parametrize(("args", "code", "pattern"), BAD_RUNS)
def test_run_errors_are_one_line(tmp_path, capsys, args, code, pattern):
    argv = [a.format(w=tmp_path / "w") for a in args]
    assert main(["run", *argv]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jaxmath"), err
    assert "Traceback" not in err
    assert re.search(pattern, err), err


def test_overrides_only_apply_to_run(capsys):
    assert main(["list", "--config.seed=1"]) == 2
    assert "apply to 'run' only" in capsys.readouterr().err


def test_override_forms_on_the_command_line():
    rest, overrides = cli._split_overrides(
        ["run", "c.py", "--config.a=1", "--config.b", "2", "--config.flag", "--workdir", "w"])
    assert rest == ["run", "c.py", "--workdir", "w"]
    assert overrides == ["--config.a=1", "--config.b=2", "--config.flag"]


def test_bad_config_experiment_name(tmp_path):
    (tmp_path / "configs").mkdir()
    spec = tmp_path / "configs" / "c.py"
    spec.write_text("def get_config():\n    return {'experiment': 'no-module', 'seed': 0}\n")
    with pytest.raises(ConfigError, match=r"config\.experiment must name a module"):
        run_experiment(str(spec), tmp_path / "w")


def test_another_repos_experiments_package_is_restored(tmp_path):
    import experiments  # this repository's package (tests run from its root)

    before = sys.modules["experiments"]
    run_experiment(ECHO, tmp_path / "w", verbose=False)
    assert sys.modules["experiments"] is before is experiments
    assert "experiments.echo" not in sys.modules


def test_experiments_load_by_file_location(tmp_path):
    """The fixture's experiments/echo.py: loaded from its folder, sys.path untouched, once."""
    path = list(sys.path)
    module = cli.load_experiment(FIXTURES / "experiments", "echo")
    assert Path(module.__file__) == FIXTURES / "experiments" / "echo.py"
    assert cli.load_experiment(FIXTURES / "experiments", "echo") is module
    run_experiment(ECHO, tmp_path / "w", verbose=False)
    assert sys.path == path
    with pytest.raises(ConfigError, match=r"config\.experiment='nope': no .*nope\.py"):
        cli.load_experiment(FIXTURES / "experiments", "nope")


def test_multi_process_only_process_zero_writes(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(startup, "init_distributed", lambda: calls.append(1) or False)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    summary = run_experiment(ECHO, tmp_path / "w", verbose=False)
    assert calls == [1]  # asked before any computation
    assert summary["doubled"] == 3.0
    written = {p.name for p in (tmp_path / "w").iterdir()} if (tmp_path / "w").exists() else set()
    assert not written & {"config.json", "summary.json", "report.md", "plots"}


# ----------------------------------------------------------------------------- subprocess


def _env():
    """The environment of a `python -m jaxmath` subprocess: on the CPU, with this checkout
    importable whether or not jaxmath is installed."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run_echo_quick(workdir, *args):
    """``python -m jaxmath run configs/echo.py:quick --workdir DIR ARGS`` in tests/fixtures."""
    return subprocess.run(
        [sys.executable, "-m", "jaxmath", "run", "configs/echo.py:quick", "--workdir",
         str(workdir), *args],
        cwd=FIXTURES, env=_env(), capture_output=True, text=True, timeout=120)


def test_python_m_jaxmath_run(tmp_path):
    workdir = tmp_path / "w"
    proc = _run_echo_quick(workdir, "--config.value", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith(f"report: {workdir / 'report.md'}")
    assert json.loads((workdir / "summary.json").read_text())["doubled"] == 2.0


def test_console_script_unknown_key_exits_2(tmp_path):
    script = Path(sys.executable).parent / "jaxmath"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "jaxmath"]
    proc = subprocess.run(
        [*command, "run", ECHO, "--workdir", str(tmp_path / "w"), "--config.sed=1"],
        env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "jaxmath: error: unknown config key 'sed'; closest valid keys: seed\n"
    assert not (tmp_path / "w").exists()


def test_cpu_devices_sets_the_device_count(tmp_path):
    """--cpu-devices 2: the run sees 2 CPU devices (that a sharded sweep then equals a
    one-device run is tests/test_sweep_devices.py's)."""
    workdir = tmp_path / "w"
    proc = _run_echo_quick(workdir, "--cpu-devices", "2")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((workdir / "summary.json").read_text())["devices"] == "2 x cpu"


@pytest.mark.parametrize("count", [0, -1, True, "2"])
def test_cpu_devices_rejects_bad_counts(count):
    with pytest.raises(ConfigError, match="--cpu-devices must be a positive int"):
        startup.use_cpu_devices(count)


def test_cpu_devices_after_jax_started_is_a_config_error():
    jax.devices()  # the backend runs
    with pytest.raises(ConfigError, match="--cpu-devices 3: jax_num_cpu_devices"):
        startup.use_cpu_devices(3)


def test_dry_run_prints_the_layout_and_writes_nothing(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main(["run", str(ROOT / "configs" / "transformer.py"), "--workdir", str(workdir),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    n = jax.device_count()
    assert f"process 0 of 1: {n} local device(s)" in out
    assert f"mesh {{'data': {n}, 'fsdp': 1}}; batch 128 = {128 // n} per device" in out
    assert not workdir.exists()


@pytest.mark.parametrize(("override", "pattern"), [
    ("--config.mesh.data=3", r"mesh.data=3 x mesh.fsdp=1 = 3 devices, but the run has \d+"),
    ("--config.batch_size=0", r"batch_size must be >= 1, got 0"),
])
def test_a_mesh_or_batch_that_does_not_fit_fails_before_any_work(tmp_path, capsys, override,
                                                                   pattern):
    code = main(["run", str(ROOT / "configs" / "transformer.py"), "--workdir",
                 str(tmp_path / "run"), "--dry-run", override])
    assert code == 2
    assert re.search(pattern, capsys.readouterr().err)


def test_the_mesh_may_change_on_resume(tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main(["run", ECHO, "--workdir", str(workdir)]) == 0
    assert main(["run", ECHO, "--workdir", str(workdir), "--config.mesh.data=1",
                 "--config.mesh.fsdp", str(jax.device_count()),
                 "--config.mesh.min_shard_size=7"]) == 0
    assert json.loads((workdir / "config.json").read_text())["mesh"]["min_shard_size"] == 7
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["mesh"] == f"data=1 fsdp={jax.device_count()}"
    assert main(["run", ECHO, "--workdir", str(workdir), "--config.value=9"]) == 2


# ----------------------------------------------------------------------------- record and rerun



@pytest.fixture
def echo_repo(tmp_path):
    """A git repository with the echo fixture's configs/ and experiments/, committed."""
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(FIXTURES / "configs", repo / "configs")
    shutil.copytree(FIXTURES / "experiments", repo / "experiments",
                    ignore=shutil.ignore_patterns("__pycache__"))
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "echo")
    return repo


def _stored(workdir):
    stored = json.loads((workdir / "config.json").read_text())
    return stored, stored.pop("_record", None)


def _without_wall_time(workdir):
    summary = json.loads((workdir / "summary.json").read_text())
    summary.pop("wall_time_s")
    return summary


def test_config_json_holds_the_record(echo_repo, tmp_path):
    workdir = tmp_path / "run"
    spec = f"{echo_repo / 'configs' / 'echo.py'}:quick"
    assert main(["run", spec, "--workdir", str(workdir), "--config.seed=4"]) == 0
    resolved, record = _stored(workdir)
    assert resolved["seed"] == 4 and resolved["value"] == 1.5  # the config at the top level
    assert record["git"] == {"root": git(echo_repo, "rev-parse", "--show-toplevel"),
                             "commit": git(echo_repo, "rev-parse", "HEAD"), "dirty": False}
    assert record["spec"] == {"config_file": str(echo_repo / "configs" / "echo.py"),
                              "variant": "quick", "overrides": ["--config.seed=4"],
                              "rerun_of": None}
    assert record["seeds"] == {"seed": 4}
    assert record["command"] == f"jaxmath run {spec} --workdir {workdir} --config.seed=4"
    assert record["devices"] == {jax.devices()[0].device_kind: jax.device_count()}
    assert record["versions"]["jax"] == jax.__version__
    report = (workdir / "report.md").read_text()
    assert "## Reproducibility" in report and record["git"]["commit"] in report
    assert f"jaxmath run --rerun {workdir}" in report and "seeds: seed = 4" in report


def test_a_resume_keeps_the_first_record(tmp_path):
    workdir = tmp_path / "run"
    assert main(["run", ECHO, "--workdir", str(workdir)]) == 0
    first = _stored(workdir)[1]
    assert main(["run", ECHO, "--workdir", str(workdir), "--config.num_steps=8"]) == 0
    resolved, record = _stored(workdir)
    assert resolved["num_steps"] == 8
    assert {k: v for k, v in record.items() if k != "resumes"} == first
    assert [r["command"] for r in record["resumes"]] == [
        f"jaxmath run {ECHO} --workdir {workdir} --config.num_steps=8"]
    assert "Resumed 1 time(s)" in (workdir / "report.md").read_text()


def test_an_old_style_workdir_resumes(tmp_path):
    """A config.json written before records (the resolved config alone) still resumes."""
    workdir = tmp_path / "run"
    assert main(["run", ECHO, "--workdir", str(workdir)]) == 0
    resolved, _ = _stored(workdir)
    (workdir / "config.json").write_text(json.dumps(resolved))
    assert main(["run", ECHO, "--workdir", str(workdir), "--config.num_steps=8"]) == 0
    assert _stored(workdir)[1]["command"].endswith("--config.num_steps=8")
    (workdir / "config.json").write_text(json.dumps(resolved))
    assert main(["run", ECHO, "--workdir", str(workdir), "--config.value=9"]) == 2


def test_rerun_reproduces_the_recorded_run(echo_repo, tmp_path, capsys):
    workdir = tmp_path / "run"
    config_file = echo_repo / "configs" / "echo.py"
    assert main(["run", f"{config_file}:quick", "--workdir", str(workdir),
                 "--config.value=2"]) == 0
    # the config file's defaults change after the run (a linked field among them), and it
    # gains a key
    text = config_file.read_text()
    config_file.write_text(text.replace("config.value = 1.5", "config.value = 5.0")
                           .replace('"num_steps": 2,', '"num_steps": 6,')
                           .replace("    config.note = None\n",
                                    "    config.note = None\n    config.extra = 3\n"))
    git(echo_repo, "commit", "-q", "-am", "new defaults")
    capsys.readouterr()
    assert main(["run", "--rerun", str(workdir)]) == 0
    rerun = tmp_path / "run-rerun"
    err = capsys.readouterr().err
    assert re.search(r"jaxmath: warning: the run was made at commit [0-9a-f]{40}, the code is "
                     r"now at [0-9a-f]{40}", err), err
    assert "jaxmath: warning: config key 'extra' is new since the recorded run" in err
    assert _stored(rerun)[0] == {**_stored(workdir)[0], "extra": 3}
    assert (rerun / "metrics.jsonl").read_bytes() == (workdir / "metrics.jsonl").read_bytes()
    assert _without_wall_time(rerun) == _without_wall_time(workdir)
    record = _stored(rerun)[1]
    assert record["spec"]["rerun_of"] == str(workdir)
    assert record["command"] == f"jaxmath run --rerun {workdir} --workdir {rerun}"
    # overrides apply on top of the recorded values and are recorded; a rerun reruns too
    other = tmp_path / "other"
    assert main(["run", "--rerun", str(workdir), "--workdir", str(other),
                 "--config.log_every=1"]) == 0
    resolved, record = _stored(other)
    assert (resolved["value"], resolved["num_steps"], resolved["log_every"]) == (2.0, 2, 1)
    assert record["spec"]["overrides"] == ["--config.log_every=1"]
    assert main(["run", "--rerun", str(other), "--workdir", str(tmp_path / "third")]) == 0
    assert _stored(tmp_path / "third")[0] == resolved
    # --rerun into the recorded workdir itself resumes it (if the config is still the same:
    # the key gained since is a change the resume policy refuses)
    assert main(["run", "--rerun", str(other), "--workdir", str(other)]) == 0
    assert len(_stored(other)[1]["resumes"]) == 1
    capsys.readouterr()
    assert main(["run", "--rerun", str(workdir), "--workdir", str(workdir)]) == 2
    assert "holds a run with a different config (extra: (absent) -> 3)" in capsys.readouterr().err


def test_rerun_bad_inputs(echo_repo, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text('{"experiment": "echo"}')
    gone = tmp_path / "gone"
    moved = tmp_path / "moved"
    config_file = echo_repo / "configs" / "echo.py"
    assert main(["run", str(config_file), "--workdir", str(gone)]) == 0
    assert main(["run", str(config_file), "--workdir", str(moved)]) == 0
    capsys.readouterr()
    cases = [
        (["--rerun", str(empty)], r"empty holds no config\.json: not a jaxmath run directory"),
        (["--rerun", str(old)], r"old/config\.json holds no reproducibility record"),
        ([ECHO, "--rerun", str(moved)], r"--rerun .*moved takes no CONFIG"),
    ]
    for args, pattern in cases:
        assert main(["run", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("jaxmath: error: "), err
        assert re.search(pattern, err), err
    stored = json.loads((moved / "config.json").read_text())  # e.g. added by --profile_steps
    (moved / "config.json").write_text(json.dumps({**stored, "profile_steps": "0:1"}))
    assert main(["run", "--rerun", str(moved), "--workdir", str(tmp_path / "m2")]) == 0
    config_file.write_text(config_file.read_text().replace("    config.note = None\n", ""))
    assert main(["run", "--rerun", str(moved)]) == 2
    assert re.search(r"the config file no longer has the key 'note' of the recorded run",
                     capsys.readouterr().err)
    config_file.unlink()
    assert main(["run", "--rerun", str(gone)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"the config file of the run in .*gone, .*echo\.py \(at commit [0-9a-f]{40}"
                     r"\), is gone", err), err
    assert not (tmp_path / "gone-rerun").exists()
