"""The reproducibility record of a run: code, packages, machine, seeds and command line.

``jaxmath run`` stores it in ``config.json`` under the reserved top-level key
:data:`RECORD_KEY` (``"_record"``), beside the resolved config, and ``report.md`` shows it
in a "Reproducibility" section (:func:`record_section`). A record is plain JSON::

    {"started": "2026-12-05T02:10:00+00:00",      # UTC, when the run started
     "command": "jaxmath run configs/mlp.py:quick --workdir runs/q --config.seed=1",
     "argv": "...",  "cwd": "/home/me/jaxmath",   # sys.argv as given, and the cwd
     "spec": {"config_file": "/abs/configs/mlp.py", "variant": "quick",
              "overrides": ["--config.seed=1"], "rerun_of": null},
     "git": {"root": "/home/me/jaxmath", "commit": "3f2a...", "dirty": false},
     "jaxmath_git": null,                         # jaxmath's checkout, if another one
     "versions": {"python": "3.12.3", "jax": "0.10.2", "jaxlib": "0.10.2", ...},
     "backend": "cpu", "devices": {"cpu": 1}, "process_count": 1,
     "seeds": {"seed": 1, "data.split_seed": 0},
     "rerun_command": "jaxmath run --rerun runs/q",
     "resumes": [{"started": ..., "command": ..., "git": ..., ...}]}

``git`` describes the repository that holds the config file (``git -C DIR rev-parse HEAD``;
``dirty``: ``git status --porcelain`` lists a change, untracked files included); it is None
where ``git`` is missing or the folder is not in a repository. ``jaxmath_git`` describes
the checkout jaxmath itself is imported from when that is another repository (None when
it is the same one, or not a checkout). A resumed run keeps the first record and appends
what changed to ``resumes`` (:func:`add_resume`).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "RECORD_KEY", "add_resume", "find_seeds", "git_state", "record_section",
           "rerun_warnings", "run_record", "versions"]

RECORD_KEY = "_record"
"""The top-level key of ``config.json`` that holds the record (never a config field: a
ConfigDict attribute cannot start with ``_``)."""

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml_collections",
            "jaxmath")
"""The distributions whose versions a record holds (with Python's)."""

_GIT_TIMEOUT_S = 10


def _git(directory: Path, *args: str) -> str | None:
    """``git -C directory ARGS`` stdout (stripped), or None if git fails or is absent."""
    try:
        proc = subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                              text=True, timeout=_GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """``{"root", "commit", "dirty"}`` of the git repository holding ``path`` (a file or folder).

    ``dirty`` is True when ``git status --porcelain`` lists anything (a modified, staged or
    untracked file). None when ``git`` is not installed, times out, or ``path`` is not in a
    repository (or the repository has no commit yet).

    Example:
      >>> git_state("/") is None or "commit" in git_state("/")
      True
    """
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    if not directory.is_dir():
        return None
    commit = _git(directory, "rev-parse", "HEAD")
    root = _git(directory, "rev-parse", "--show-toplevel")
    if not commit or not root:
        return None
    status = _git(directory, "status", "--porcelain")
    return {"root": root, "commit": commit, "dirty": None if status is None else bool(status)}


def versions() -> dict[str, str | None]:
    """Python's version and each of :data:`PACKAGES` (importlib.metadata; None if absent).

    Example:
      >>> import platform
      >>> versions()["python"] == platform.python_version()
      True
    """
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def find_seeds(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every value under a key named ``seed`` or ending in ``_seed``, by dotted path.

    Example:
      >>> find_seeds({"seed": 1, "data": {"split_seed": 0}, "seeds": 3})
      {'seed': 1, 'data.split_seed': 0}
    """
    seeds = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            seeds.update(find_seeds(value, path + "."))
        elif key == "seed" or str(key).endswith("_seed"):
            seeds[path] = value
    return seeds


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _jaxmath_git(config_git: Mapping[str, Any] | None) -> dict[str, Any] | None:
    import jaxmath

    state = git_state(Path(jaxmath.__file__).resolve().parent)
    if state is None or (config_git is not None and state["root"] == config_git["root"]):
        return None
    return state


def run_record(resolved: Mapping[str, Any], config_file: str | os.PathLike,
               variant: str | None, overrides: Sequence[str], *, command: str,
               argv: Sequence[str] | None = None, rerun_of: str | None = None,
               workdir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The reproducibility record of a run that starts now (see the module docstring).

    Args:
      resolved: the resolved config (plain JSON data), for its seeds.
      config_file: the config file; its git repository is recorded.
      variant: the config variant (None: the default config).
      overrides: the ``--config.a.b=value`` strings, as given.
      command: the ``jaxmath run ...`` command that starts the run.
      argv: the process's command line (default ``sys.argv``).
      rerun_of: the workdir this run reruns (``jaxmath run --rerun``), if any.
      workdir: the run directory, for ``rerun_command``.

    Returns:
      A JSON-able dict. JAX is imported (and its backend started) for the devices.
    """
    import jax

    config_git = git_state(config_file)
    devices = Counter(d.device_kind for d in jax.devices())
    record = {
        "started": _now(),
        "command": command,
        "argv": shlex.join(sys.argv if argv is None else list(argv)),
        "cwd": os.getcwd(),
        "spec": {"config_file": str(Path(config_file).resolve()), "variant": variant,
                 "overrides": list(overrides), "rerun_of": rerun_of},
        "git": config_git,
        "jaxmath_git": _jaxmath_git(config_git),
        "versions": versions(),
        "backend": jax.default_backend(),
        "devices": dict(devices),
        "process_count": jax.process_count(),
        "seeds": find_seeds(resolved),
    }
    if workdir is not None:
        record["rerun_command"] = shlex.join(["jaxmath", "run", "--rerun", str(workdir)])
    return record


_RESUME_KEYS = ("started", "command", "argv", "cwd", "git", "jaxmath_git", "versions",
                "backend", "devices", "process_count")


def add_resume(first: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """``first`` (the record of the run's start) with ``now``'s launch facts appended to
    its ``resumes`` list; ``first`` itself is not modified.

    Example:
      >>> add_resume({"command": "a"}, {"command": "b", "seeds": {}})["resumes"]
      [{'command': 'b'}]
    """
    record = dict(first)
    entry = {k: now[k] for k in _RESUME_KEYS if k in now}
    record["resumes"] = [*first.get("resumes", []), entry]
    return record


def rerun_warnings(record: Mapping[str, Any], config_file: str | os.PathLike) -> list[str]:
    """What differs between a recorded run and this machine now, one line each: the git
    commit or a dirty tree of the config file's repository, and package versions.

    Example:
      >>> rerun_warnings({"versions": {"nopkg": "1.0"}}, "/")
      ['nopkg 1.0 when recorded, None now']
    """
    lines = []
    then, now = record.get("git"), git_state(config_file)
    if then and now:
        if then.get("commit") != now["commit"]:
            lines.append(f"the run was made at commit {then.get('commit')}, the code is now at "
                         f"{now['commit']}")
        if then.get("dirty"):
            lines.append(f"the run was made from a tree with uncommitted changes "
                         f"({then.get('root')})")
    if now and now["dirty"]:
        lines.append(f"the tree has uncommitted changes ({now['root']})")
    current = versions()
    for name, version in (record.get("versions") or {}).items():
        if current.get(name) != version:
            lines.append(f"{name} {version} when recorded, {current.get(name)} now")
    return lines


def _git_text(state: Mapping[str, Any] | None) -> str:
    if not state:
        return "not in a git repository"
    dirty = {True: " (dirty: uncommitted changes)", False: " (clean)"}.get(state.get("dirty"), "")
    return f"`{state.get('commit')}`{dirty} in `{state.get('root')}`"


def record_section(record: Mapping[str, Any]) -> str:
    """The "Reproducibility" section of ``report.md`` for a record.

    Example:
      >>> print(record_section({"command": "jaxmath run c.py --workdir w"}).splitlines()[0])
      ## Reproducibility
    """
    lines = ["## Reproducibility", ""]
    if "started" in record:
        lines.append(f"- started: {record['started']}")
    lines.append(f"- code: {_git_text(record.get('git'))}")
    if record.get("jaxmath_git"):
        lines.append(f"- jaxmath: {_git_text(record['jaxmath_git'])}")
    if record.get("versions"):
        lines.append("- versions: " + ", ".join(
            f"{k} {v}" for k, v in record["versions"].items() if v is not None))
    if "backend" in record:
        devices = ", ".join(f"{n} x {kind}" for kind, n in (record.get("devices") or {}).items())
        lines.append(f"- backend: {record['backend']}; devices: {devices}; processes: "
                     f"{record.get('process_count')}")
    if record.get("seeds"):
        lines.append("- seeds: " + ", ".join(f"{k} = {v}" for k, v in record["seeds"].items()))
    spec = record.get("spec") or {}
    if spec.get("rerun_of"):
        lines.append(f"- a rerun of: {spec['rerun_of']}")
    if record.get("cwd"):
        lines.append(f"- working directory: {record['cwd']}")
    if record.get("command"):
        lines += ["", "Command:", "", f"```sh\n{record['command']}\n```"]
    if record.get("rerun_command"):
        lines += ["", "Rerun it (same config file, variant and recorded values, into "
                      "a new workdir):", "", f"```sh\n{record['rerun_command']}\n```"]
    resumes = record.get("resumes") or []
    if resumes:
        lines += ["", f"Resumed {len(resumes)} time(s):", ""]
        lines += [f"- {r.get('started')}: `{r.get('command')}` at "
                  f"{_git_text(r.get('git'))}" for r in resumes]
    return "\n".join(lines)
