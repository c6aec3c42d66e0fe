"""The reproducibility record: git state, versions, devices, seeds, resumes, report section."""

import importlib.metadata
import platform
import subprocess
from collections import Counter
from pathlib import Path

import jax
import pytest

from jaxmath.run import record as records
from jaxmath.run.record import (
    PACKAGES,
    add_resume,
    find_seeds,
    git_state,
    record_section,
    rerun_warnings,
    run_record,
    versions,
)
from tests._jobs import git


@pytest.fixture
def repo(tmp_path):
    """A git repository with one commit holding ``c.py``."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    (root / "c.py").write_text("x = 1\n")
    git(root, "add", "c.py")
    git(root, "commit", "-q", "-m", "first")
    return root


def test_git_state_matches_git(repo):
    state = git_state(repo / "c.py")
    assert state == {"root": git(repo, "rev-parse", "--show-toplevel"),
                     "commit": git(repo, "rev-parse", "HEAD"), "dirty": False}
    assert git_state(repo) == state  # a folder works as well as a file in it
    (repo / "c.py").write_text("x = 2\n")
    assert git_state(repo / "c.py")["dirty"] is True
    git(repo, "commit", "-q", "-am", "second")
    after = git_state(repo / "c.py")
    assert after["dirty"] is False and after["commit"] == git(repo, "rev-parse", "HEAD")
    assert after["commit"] != state["commit"]
    (repo / "new.txt").write_text("untracked")
    assert git_state(repo)["dirty"] is True  # an untracked file counts


def test_git_state_outside_a_repo_or_without_git(tmp_path, repo, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert git_state(plain) is None
    assert git_state(tmp_path / "missing" / "c.py") is None

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(records.subprocess, "run", no_git)
    assert git_state(repo) is None

    def slow_git(*args, **kwargs):
        raise subprocess.TimeoutExpired("git", 10)

    monkeypatch.setattr(records.subprocess, "run", slow_git)
    assert git_state(repo) is None


def test_versions_match_importlib_metadata():
    found = versions()
    assert found["python"] == platform.python_version()
    assert set(found) == {"python", *PACKAGES}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy"):
        assert found[name] == importlib.metadata.version(name)
    assert found["jax"] == jax.__version__


def test_find_seeds():
    config = {"seed": 3, "data": {"split_seed": 1, "seeds_total": 4},
              "sweep": {"axes": {"seed": [0, 1]}}, "model": {"init": {"param_seed": 7}}}
    assert find_seeds(config) == {"seed": 3, "data.split_seed": 1, "sweep.axes.seed": [0, 1],
                                  "model.init.param_seed": 7}
    assert find_seeds({}) == {}


def test_run_record_against_independent_sources(repo):
    resolved = {"seed": 5, "data": {"split_seed": 2}, "value": 1.0}
    record = run_record(resolved, repo / "c.py", "quick", ["--config.seed=5"],
                        command="jaxmath run c.py:quick --workdir w --config.seed=5",
                        argv=["jaxmath", "run", "c.py:quick", "--workdir", "w"],
                        workdir="runs/w x")
    assert record["git"]["commit"] == git(repo, "rev-parse", "HEAD")
    assert record["git"]["dirty"] is False
    assert record["versions"] == versions()
    assert record["backend"] == jax.default_backend()
    assert record["devices"] == dict(Counter(d.device_kind for d in jax.devices()))
    assert sum(record["devices"].values()) == jax.device_count()
    assert record["process_count"] == jax.process_count()
    assert record["seeds"] == {"seed": 5, "data.split_seed": 2}
    assert record["spec"] == {"config_file": str((repo / "c.py").resolve()), "variant": "quick",
                              "overrides": ["--config.seed=5"], "rerun_of": None}
    assert record["argv"] == "jaxmath run c.py:quick --workdir w"
    assert record["rerun_command"] == "jaxmath run --rerun 'runs/w x'"
    assert record["cwd"] == str(Path.cwd())
    assert record["started"].endswith("+00:00")
    # jaxmath itself is imported from another checkout (or none): described apart
    package = git_state(Path(records.__file__).parent)
    assert record["jaxmath_git"] == package


def test_add_resume_keeps_the_first_record():
    first = {"started": "t0", "command": "a", "seeds": {"seed": 0}}
    second = add_resume(first, {"started": "t1", "command": "b", "seeds": {"seed": 0}})
    third = add_resume(second, {"started": "t2", "command": "c"})
    assert third["started"] == "t0" and third["command"] == "a"
    assert [r["command"] for r in third["resumes"]] == ["b", "c"]
    assert "resumes" not in first and len(second["resumes"]) == 1


def test_rerun_warnings(repo):
    record = {"git": git_state(repo / "c.py"), "versions": versions()}
    assert rerun_warnings(record, repo / "c.py") == []
    (repo / "c.py").write_text("x = 3\n")
    git(repo, "commit", "-q", "-am", "later")
    (repo / "c.py").write_text("x = 4\n")
    record["versions"] = {**record["versions"], "jax": "0.0.1"}
    lines = rerun_warnings(record, repo / "c.py")
    assert any(line.startswith(f"the run was made at commit {record['git']['commit']}")
               for line in lines)
    assert any("the tree has uncommitted changes" in line for line in lines)
    assert f"jax 0.0.1 when recorded, {jax.__version__} now" in lines


def test_record_section(repo):
    record = run_record({"seed": 1}, repo / "c.py", None, [], command="jaxmath run c.py",
                        workdir="w")
    record = add_resume(record, {**record, "command": "jaxmath run c.py --config.num_steps=9"})
    text = record_section(record)
    assert text.startswith("## Reproducibility\n")
    assert f"`{record['git']['commit']}` (clean)" in text
    assert f"jax {jax.__version__}" in text and "seed = 1" in text
    assert f"processes: {jax.process_count()}" in text
    assert "```sh\njaxmath run c.py\n```" in text
    assert "```sh\njaxmath run --rerun w\n```" in text
    assert "Resumed 1 time(s)" in text and "--config.num_steps=9" in text
    assert "not in a git repository" in record_section({"git": None})
