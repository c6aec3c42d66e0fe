"""``jaxmath run``, ``list`` and ``compare``: config-driven experiments from the command line.

::

    jaxmath run CONFIG[:variant] --workdir DIR [--config.a.b=value ...] [--overwrite]
                [--cpu-devices N]
    jaxmath run --rerun WORKDIR [--workdir NEW] [--config.a.b=value ...]
    jaxmath list [--configs DIR]
    jaxmath compare RUN [RUN ...] --out DIR     # RUN: a workdir, or W:3 / W:lr=0.01,seed=0
    python -m jaxmath ...                  # the same

``run`` loads the config (:func:`jaxmath.run.config.load_config`: unknown keys and wrong types
fail here, before any work), writes ``DIR/config.json``, loads the experiment
``<config dir>/../experiments/<config.experiment>.py`` by its file location
(:func:`load_experiment`; ``sys.path`` is left alone), calls its ``run(config, workdir)``, adds
run facts to the returned summary and writes ``summary.json`` and ``report.md``; it ends by
printing the summary table and the report's path.

The record: ``config.json`` holds the resolved config at its top level (what a resume
compares against) and, under the reserved key ``"_record"``
(:data:`jaxmath.run.record.RECORD_KEY`, never a config field), the run's reproducibility
record (:func:`jaxmath.run.record.run_record`): the git commit and dirty flag of the
repository holding the config file (and of jaxmath's own checkout if another), the versions
of Python, jax, jaxlib, flax, optax, orbax-checkpoint, numpy and ml_collections, the backend,
device kinds and counts, the process count, every seed of the config, the config file,
variant and overrides, the command (and ``sys.argv``, the cwd) and the start time.
``report.md`` shows it in a "Reproducibility" section. A resumed run keeps the first record
and appends its own command, commit and versions to the record's ``resumes`` list. A
``config.json`` without ``"_record"`` (written before records) resumes as before.

Rerunning: ``--rerun WORKDIR`` (:func:`rerun_experiment`) loads the recorded config file and
variant, sets every value to the recorded resolved config's (so a config file whose defaults
changed since gives the recorded config; a key added since keeps its default, with a
warning; a key removed since, or a config file that is gone, is an error), applies any
``--config.*`` given with it (recorded as that run's overrides) and runs into ``--workdir``
(default ``WORKDIR-rerun``; ``--workdir WORKDIR`` resumes the recorded run instead). It warns
on stderr when the config file's repository is at another commit or dirty, or a package
version differs. ``jaxmath compare`` (:mod:`jaxmath.run.compare`) overlays the metrics of
runs and sweep members in ``DIR/compare.png`` and tabulates them in ``compare.md`` and
``compare.json``.

Resuming: running again with the same ``--workdir`` continues the run (the training loop resumes
from its last checkpoint). The stored ``config.json`` must then equal the new resolved config
except for the top-level keys in :data:`RESUMABLE_KEYS`: ``num_steps``, ``log_every`` and
``checkpoint_every``, which extend or re-pace a run without changing its result, ``mesh``, the
devices' layout (a run checkpointed on 4 devices resumes on 2 or 1, its numbers equal to
float32 reduction order), and fields derived from them by ``get_ref``; any other difference
is refused with exit status 2, naming the differing keys. ``--overwrite`` starts afresh: it
deletes the run files listed in :data:`RUN_FILES` from the workdir (nothing else).

Multi-process runs: when the environment asks for one (``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, or ``JAXMATH_DISTRIBUTED=auto`` under SLURM,
Open MPI, TPU pods or Kubernetes; see :mod:`jaxmath.run.startup` and docs/scaling.md),
``run`` joins the job before any JAX computation; every process runs the experiment, and only
process 0 writes ``config.json``, ``summary.json``, ``report.md`` and plots, and prints the
summary. ``--dry-run`` prints the processes, devices, mesh and per-device batch and stops.

Several cores, one sweep: ``--cpu-devices N`` exposes N CPU devices
(:func:`jaxmath.run.startup.use_cpu_devices`) and :func:`jaxmath.run.sweep.run_sweep` shards
each sweep over them; on the 2-core machine the MLP sweep benchmark ran 1.25-1.6x faster on
2 devices than on 1, with the same results.

Exit status: 0 on success; 2 for a usage or config error (one line on stderr, no traceback;
also a ``--rerun`` workdir without ``config.json`` or record, and bad ``compare`` input);
1 when the run stops on a non-finite loss (one line naming the step); 130 when interrupted
(run again with the same workdir to resume). Other errors propagate with their traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import importlib
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections

from jaxmath.run import record as records
from jaxmath.run import startup
from jaxmath.run.config import (
    ConfigError,
    apply_overrides,
    config_docstring,
    config_to_dict,
    find_repo,
    import_file,
    load_config,
    resolve_spec,
)
from jaxmath.run.files import atomic_write_bytes, atomic_write_json
from jaxmath.run.record import RECORD_KEY
from jaxmath.run.report import summary_table, write_report, write_summary

__all__ = ["RESUMABLE_KEYS", "RUN_FILES", "launch_facts", "list_configs", "load_experiment", "main",
           "read_record", "rerun_experiment", "run_experiment"]

RESUMABLE_KEYS = ("num_steps", "log_every", "checkpoint_every", "mesh", "eval_every",
                  "profile_steps", "logging")
"""Top-level config keys that may differ from the stored config.json when a run is resumed."""

RUN_FILES = ("config.json", "summary.json", "report.md", "metrics.jsonl", "sweep.jsonl",
             "sweep.csv", "plots", "checkpoints", "checkpoints_best", "checkpoints_sweep",
             "profile", "tensorboard", "wandb")
"""What ``--overwrite`` deletes from a workdir before starting afresh."""

_PROG = "jaxmath"


# ----------------------------------------------------------------------------- helpers


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON trees differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}{key}"
            if key not in old:
                out.append(f"{path}: (absent) -> {json.dumps(new[key])}")
            elif key not in new:
                out.append(f"{path}: {json.dumps(old[key])} -> (absent)")
            else:
                out.extend(_diff(old[key], new[key], path + "."))
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: {json.dumps(old)} -> {json.dumps(new)}"]
    return []


def _check_workdir(workdir: Path, config, overwrite: bool, writer: bool) -> dict | None:
    """Refuse to mix two configs in one workdir; with ``overwrite``, clear the old run.

    The new config is compared with the stored one after setting its :data:`RESUMABLE_KEYS` to
    the stored values, so fields derived from them (``config.get_ref("num_steps") * 2``) may
    change with them; the stored reproducibility record (:data:`RECORD_KEY`) is not compared.

    Returns:
      The stored record of the run being resumed; None for a new run or an old-style
      ``config.json`` without one.
    """
    stored_path = workdir / "config.json"
    if overwrite:
        if writer:
            for name in RUN_FILES:
                target = workdir / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
        return None
    if not stored_path.exists():
        return None
    try:
        stored = json.loads(stored_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"cannot read {stored_path}: {e}; pass --overwrite to start afresh") from None
    if not isinstance(stored, dict):
        raise ConfigError(f"{stored_path} is not a config; pass --overwrite to start afresh")
    stored = dict(stored)
    record = stored.pop(RECORD_KEY, None)
    probe = copy.deepcopy(config)
    for key in RESUMABLE_KEYS:
        if key in stored and key in probe:
            try:
                value = stored[key]
                if isinstance(probe[key], ml_collections.ConfigDict):  # a block: all of it
                    value = ml_collections.ConfigDict(value)
                probe[key] = value
            except (TypeError, ValueError):
                pass  # a type change shows up in the diff below
    probe_dict = config_to_dict(probe)
    for key in RESUMABLE_KEYS:  # e.g. --profile_steps added to a config without the field
        if key in probe_dict and key not in stored:
            del probe_dict[key]
    changes = _diff(stored, probe_dict)
    if changes:
        shown = "; ".join(changes[:3])
        if len(changes) > 3:
            shown += f"; and {len(changes) - 3} more"
        raise ConfigError(
            f"{workdir} holds a run with a different config ({shown}); only "
            f"{', '.join(RESUMABLE_KEYS)} may change on resume: use another --workdir, "
            "or --overwrite to start afresh")
    return record if isinstance(record, dict) else None


def _experiment_file(experiments_dir: str | os.PathLike, name: str) -> Path:
    path = Path(experiments_dir).resolve() / f"{name}.py"
    if not path.is_file():
        raise ConfigError(f"config.experiment={name!r}: no {path}")
    return path


def load_experiment(experiments_dir: str | os.PathLike, name: str) -> ModuleType:
    """The module ``experiments_dir/<name>.py``, imported by its file location.

    The folder is loaded as a package (its ``__init__.py``) under a name made from its
    absolute path, ``_jaxmath_experiments_<digest>``, and the module as ``<that>.<name>``:
    the experiments of one folder may import each other relatively (``from ._train import
    ...``), two repositories' ``experiments/`` never collide, and neither ``sys.path`` nor an
    ``experiments`` package imported by the caller is touched. A second call returns the
    module already loaded.

    Raises:
      ConfigError: no ``<name>.py`` in the folder, or no ``__init__.py``.
    """
    directory = _experiment_file(experiments_dir, name).parent
    init = directory / "__init__.py"
    if not init.is_file():
        raise ConfigError(f"{directory} is not a package of experiments (no __init__.py)")
    package = f"_jaxmath_experiments_{hashlib.sha1(str(directory).encode()).hexdigest()[:12]}"
    if package not in sys.modules:
        import_file(init, package, package=True)
    return importlib.import_module(f"{package}.{name}")


def _run_facts(wall_time_s: float, config) -> dict[str, Any]:
    import jax

    import jaxmath

    devices = jax.devices()
    facts = {
        "wall_time_s": round(wall_time_s, 3),
        "jax_version": jax.__version__,
        "jaxmath_version": jaxmath.__version__,
        "backend": jax.default_backend(),
        "devices": f"{len(devices)} x {devices[0].device_kind}",
    }
    if jax.process_count() > 1:
        facts["processes"] = jax.process_count()
    if "mesh" in config:  # the layout the run used (it may change on resume)
        from jaxmath.run.mesh import from_config

        try:
            shape = from_config(config.mesh).shape
        except ConfigError:  # an experiment that builds no mesh ran with one that cannot fit
            shape = {k: v for k, v in config.mesh.items() if k != "min_shard_size"}
        facts["mesh"] = " ".join(f"{k}={v}" for k, v in shape.items())
    return facts


# ----------------------------------------------------------------------------- run and list


def launch_facts(config) -> dict[str, Any]:
    """What a run would run on: this process (:func:`jaxmath.run.startup.describe_processes`
    plus the local devices' names and kind), the mesh and the per-device batch.

    The mesh is built from ``config.mesh`` (:func:`jaxmath.run.mesh.from_config`; a
    ConfigError if it does not fit the devices or does not divide ``config.batch_size``).
    """
    import jax

    from jaxmath.run import mesh as meshes

    local = jax.local_devices()
    facts: dict[str, Any] = {**startup.describe_processes(),
                             "local_device_names": [str(d) for d in local],
                             "device_kind": local[0].device_kind}
    if "mesh" in config:
        mesh = meshes.from_config(config.mesh)
        facts["mesh"] = dict(mesh.shape)
        if "batch_size" in config:
            facts["batch_size"] = int(config.batch_size)
            facts["per_device_batch"] = meshes.check_batch(config.batch_size, mesh)
    return facts


def _set_profile_steps(config, text: str | None) -> None:
    """Check ``"A:B"`` (``--profile_steps``, else the config's own field) against
    ``config.num_steps`` and store it in ``config.profile_steps``: a ConfigError names
    the range and the run's length before any work."""
    from jaxmath.run.loop import parse_profile_steps

    given = text if text is not None else config.profile_steps
    source = "--profile_steps" if text is not None else "config.profile_steps"
    try:
        a, b = parse_profile_steps(given)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from None
    num_steps = config.get("num_steps")
    if not 0 <= a < b or (isinstance(num_steps, int) and b > num_steps):
        raise ConfigError(f"{source}={given} is outside the run: need 0 <= A < B <= "
                          f"num_steps={num_steps}")
    with config.unlocked() if hasattr(config, "unlocked") else contextlib.nullcontext():
        if "profile_steps" in config:
            config.profile_steps = f"{a}:{b}"
        else:
            config.profile_steps = ml_collections.FieldReference(f"{a}:{b}", field_type=str)


def _print_launch(facts: dict[str, Any]) -> None:
    i, n = facts["process_index"], facts["process_count"]
    print(f"{_PROG}: process {i} of {n}: {facts['local_devices']} local device(s) "
          f"{', '.join(facts['local_device_names'])} ({facts['device_kind']})", flush=True)
    if i == 0:
        joined = f", coordinator {facts['coordinator']}" if facts["coordinator"] else ""
        print(f"{_PROG}: {facts['global_devices']} device(s) in all ({facts['platform']}"
              f"{joined})")
        if "mesh" in facts:
            line = f"{_PROG}: mesh {facts['mesh']}"
            if "batch_size" in facts:
                line += (f"; batch {facts['batch_size']} = {facts['per_device_batch']} per "
                         "device")
            print(line, flush=True)


def _same(a: Any, b: Any) -> bool:
    return a == b or json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # nan


def _first_difference(recorded: dict, current: dict, prefix: tuple = ()) -> tuple | None:
    """The first dotted path (in the config's order) whose value differs; ConfigError for a
    recorded key the config no longer has."""
    for key in recorded:
        if key not in current:
            path = ".".join((*prefix, key))
            raise ConfigError(
                f"the config file no longer has the key {path!r} of the recorded run "
                f"(value {json.dumps(recorded[key])}); restore it or check out the recorded "
                "commit")
    for key, value in current.items():
        if key not in recorded:
            continue
        old = recorded[key]
        if isinstance(old, dict) and isinstance(value, dict):
            found = _first_difference(old, value, (*prefix, key))
            if found is not None:
                return found
        elif not _same(old, value):
            return (*prefix, key)
    return None


def _new_keys(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in current.items():
        if key not in recorded:
            out.append(f"{prefix}{key}")
        elif isinstance(value, dict) and isinstance(recorded[key], dict):
            out.extend(_new_keys(recorded[key], value, f"{prefix}{key}."))
    return out


def _as_field(value: Any, current: Any) -> Any:
    """A JSON value in the Python type of the field it replaces (lists back to tuples)."""
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(_as_field(v, c) for v, c in zip(value, current, strict=False)) + tuple(
            value[len(current):])
    if isinstance(value, dict):
        return ml_collections.ConfigDict(value)
    return value


def _count_leaves(tree: Any) -> int:
    if isinstance(tree, dict):
        return sum(_count_leaves(v) for v in tree.values())
    return 1


def _apply_recorded(config, recorded: dict) -> list[str]:
    """Set every value of ``config`` to the recorded resolved config's, one differing field
    at a time (so fields linked by ``get_ref`` follow the field they are linked to), and
    return the keys the config has gained since the run (kept at their defaults)."""
    current = config_to_dict(config)
    # a resumable key the file lacks was added by a flag (--profile_steps): not a config value
    recorded = {k: v for k, v in recorded.items()
                if k != RECORD_KEY and (k in current or k not in RESUMABLE_KEYS)}
    for _ in range(2 * _count_leaves(recorded) + 1):
        path = _first_difference(recorded, current)
        if path is None:
            return _new_keys(recorded, current)
        holder = config
        for part in path[:-1]:
            holder = holder[part]
        value = recorded
        for part in path:
            value = value[part]
        try:
            holder[path[-1]] = _as_field(value, holder[path[-1]])
        except (TypeError, ValueError) as e:
            raise ConfigError(f"cannot set the recorded value {json.dumps(value)} of config key "
                              f"{'.'.join(path)!r}: {e}") from None
        current = config_to_dict(config)
    raise ConfigError("cannot reproduce the recorded config: its linked fields disagree")


def run_experiment(spec: str, workdir: str | os.PathLike, overrides: Sequence[str] = (), *,
                   overwrite: bool = False, verbose: bool = True,
                   dry_run: bool = False, profile_steps: str | None = None,
                   recorded: dict | None = None, rerun_of: str | None = None
                   ) -> dict[str, Any]:
    """Run the experiment a config names, in ``workdir``, and return its summary.

    Args:
      spec: ``path/to/config.py[:variant]`` (or a bare config name, looked up in the ``configs/``
        folder of the repository that holds the current directory).
      workdir: the run directory (created if needed); see the module docstring on resuming.
      overrides: ``--config.a.b=value`` strings.
      overwrite: delete the workdir's previous run files (:data:`RUN_FILES`) first.
      verbose: print the summary table and the report's path at the end.
      dry_run: check the config, join the job and print (every process) what the run
        would run on (:func:`launch_facts`), then return those facts: nothing is trained
        or written.
      profile_steps: ``"A:B"``: set ``config.profile_steps`` (added if the config has no
        such field), so that the training loop writes a :mod:`jax.profiler` trace of the
        updates ``A+1 .. B`` to ``workdir/profile``; checked against ``num_steps`` first.
      recorded: a resolved config (a ``config.json``) whose values replace the config
        file's before ``overrides`` apply (what :func:`rerun_experiment` passes).
      rerun_of: the workdir this run reruns, for the record.

    Returns:
      The experiment's summary, plus ``wall_time_s`` (seconds spent in ``run``),
      ``jax_version``, ``jaxmath_version``, ``backend``, ``devices`` (``"N x kind"``),
      ``processes`` (if more than one) and ``mesh`` (``"data=4 fsdp=1"``, for a config
      with a ``mesh`` block); with ``dry_run``, :func:`launch_facts`.

    Raises:
      ConfigError: a bad config, override or experiment name, or a workdir that holds a run with
        a different config; raised before the experiment starts.

    Example:
      >>> run_experiment("missing.py", "/tmp/x")
      Traceback (most recent call last):
      ...
      jaxmath.run.config.ConfigError: config file 'missing.py' not found ...
    """
    overrides = list(overrides)
    config_path, variant = resolve_spec(spec)
    new_keys: list[str] = []
    if recorded is None:
        config = load_config(spec, overrides)
    else:
        config = load_config(spec)
        new_keys = _apply_recorded(config, recorded)
        config = apply_overrides(config, overrides)
    name = config.get("experiment")
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(
            f"{config_path.name}: config.experiment must name a module in experiments/, "
            f"got {name!r}")
    experiments_dir = config_path.parent.parent / "experiments"
    _experiment_file(experiments_dir, name)  # fail before any work
    if profile_steps is not None or config.get("profile_steps") is not None:
        _set_profile_steps(config, profile_steps)
    if "logging" in config:  # writer names, W&B options and package: checked before any work
        from jaxmath.run.writers import check_config

        check_config(config.logging)
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {str(workdir)!r} exists and is not a directory")
    resolved = config_to_dict(config)

    startup.init_distributed()
    import jax

    writer = jax.process_index() == 0
    if dry_run:
        facts = launch_facts(config)
        if not overwrite:
            _check_workdir(workdir, config, False, False)  # reads only
        if verbose:
            _print_launch(facts)
        return facts
    first_record = _check_workdir(workdir, config, overwrite, writer)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxmath.run.cli: workdir checked")

    if rerun_of is None:
        command = shlex.join([_PROG, "run", spec, "--workdir", str(workdir), *overrides])
    else:
        command = shlex.join([_PROG, "run", "--rerun", rerun_of, "--workdir", str(workdir),
                              *overrides])
    record, fresh, stored_bytes = None, False, None
    if writer:
        for key in new_keys:
            print(f"{_PROG}: warning: config key {key!r} is new since the recorded run; it keeps "
                  f"its default", file=sys.stderr)
        record = records.run_record(resolved, config_path, variant, overrides, command=command,
                                    rerun_of=rerun_of, workdir=workdir)
        if first_record is not None:  # a resume: the run's first record stays, this is added
            record = records.add_resume(first_record, record)
        workdir.mkdir(parents=True, exist_ok=True)
        fresh = not (workdir / "config.json").exists()
        stored_bytes = None if fresh else (workdir / "config.json").read_bytes()
        atomic_write_json(workdir / "config.json", {**resolved, RECORD_KEY: record})
    if verbose and writer:
        print(f"{_PROG}: experiments/{name}.py in {workdir} (config {spec})", flush=True)
    module = load_experiment(experiments_dir, name)
    if not callable(getattr(module, "run", None)):
        raise ConfigError(f"experiments/{name}.py defines no run(config, workdir)")
    start = time.perf_counter()
    try:
        summary = module.run(config, workdir)
    except ConfigError:  # refused before any work (a bad data path, a sweep's settings):
        if writer and fresh and not (workdir / "metrics.jsonl").exists():  # a fresh workdir
            (workdir / "config.json").unlink(missing_ok=True)             # keeps no config,
        elif writer and stored_bytes is not None:                         # a resumed one
            atomic_write_bytes(workdir / "config.json", stored_bytes)     # its own
        raise
    wall_time_s = time.perf_counter() - start
    if summary is None:
        summary = {}
    if not isinstance(summary, dict):
        raise TypeError(
            f"experiments.{name}.run must return a dict summary, got {type(summary).__name__}")
    summary = {**summary, **_run_facts(wall_time_s, config)}
    if config.get("profile_steps") is not None:
        from jaxmath.run.loop import PROFILE_DIR

        profile = workdir / PROFILE_DIR
        if profile.is_dir():
            summary["profile"] = str(profile)
        elif writer:
            print(f"{_PROG}: warning: profile_steps={config.profile_steps} but "
                  f"experiments/{name}.py wrote no profile (it does not train with "
                  "jaxmath.run.loop.train_loop)", file=sys.stderr)

    title = name if variant is None else f"{name} ({variant})"
    summary_path = write_summary(workdir, summary)
    report_path = write_report(workdir, summary, title,
                               doc=config_docstring(config_path), command=command, record=record)
    if verbose and writer:
        print(f"\n{title}: summary ({summary_path})")
        print(summary_table(summary))
        print(f"report: {report_path}", flush=True)
    return summary


def read_record(workdir: str | os.PathLike) -> tuple[dict, dict]:
    """The resolved config and the reproducibility record stored in ``workdir/config.json``.

    Raises:
      ConfigError: no ``config.json`` there, one that cannot be read, or one without a
        record (written before jaxmath recorded runs).
    """
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{workdir} holds no config.json: not a jaxmath run directory")
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    record = stored.pop(RECORD_KEY, None) if isinstance(stored, dict) else None
    if not isinstance(record, dict) or not isinstance(record.get("spec"), dict):
        raise ConfigError(
            f"{path} holds no reproducibility record (the run predates them); run its config "
            "file again with the values in that config.json")
    return stored, record


def rerun_experiment(workdir: str | os.PathLike, new_workdir: str | os.PathLike | None = None,
                     overrides: Sequence[str] = (), *, overwrite: bool = False,
                     verbose: bool = True, profile_steps: str | None = None,
                     dry_run: bool = False) -> dict[str, Any]:
    """Run again the run recorded in ``workdir`` (``jaxmath run --rerun WORKDIR``).

    The recorded config file and variant are loaded and every value is set to the
    recorded resolved config's (a config file edited since still gives the recorded
    config; a key added since keeps its default, with a warning; a key removed since is a
    ConfigError), then ``overrides`` apply on top. A warning (stderr) names every
    difference from the recorded git commit, a dirty tree and package versions.

    Args:
      workdir: the recorded run's directory.
      new_workdir: where to run (default ``<workdir>-rerun``); ``workdir`` itself resumes
        the recorded run.
      overrides: ``--config.a.b=value`` strings applied on top (recorded in the new run).
      overwrite, verbose, profile_steps, dry_run: as for :func:`run_experiment`.

    Returns:
      The new run's summary (:func:`run_experiment`).

    Raises:
      ConfigError: ``workdir`` holds no ``config.json`` or no record, or the recorded config
        file is gone.
    """
    stored, record = read_record(workdir)
    spec = record["spec"]
    config_file = Path(str(spec.get("config_file")))
    if not config_file.is_file():
        commit = (record.get("git") or {}).get("commit")
        at = f" (at commit {commit})" if commit else ""
        raise ConfigError(f"the config file of the run in {workdir}, {config_file}{at}, is gone; "
                          "restore it to rerun the run")
    source = Path(workdir)
    target = Path(new_workdir) if new_workdir is not None else (
        source.resolve().with_name(source.resolve().name + "-rerun"))
    for line in records.rerun_warnings(record, config_file):
        print(f"{_PROG}: warning: {line}", file=sys.stderr)
    variant = spec.get("variant")
    text = str(config_file) + (f":{variant}" if variant else "")
    return run_experiment(text, target, overrides, overwrite=overwrite, verbose=verbose,
                          dry_run=dry_run, profile_steps=profile_steps, recorded=stored,
                          rerun_of=str(source))


def list_configs(configs_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """``(name, first docstring line)`` for each ``configs_dir/*.py``, sorted by name.

    The files are read, not executed. Files whose name starts with ``_`` are skipped.

    Example:
      >>> import tempfile, pathlib
      >>> d = pathlib.Path(tempfile.mkdtemp())
      >>> _ = (d / "echo.py").write_text('\"\"\"Echo a number.\"\"\"\\n')
      >>> list_configs(d)
      [('echo', 'Echo a number.')]
    """
    rows = []
    for path in sorted(Path(configs_dir).glob("*.py")):
        if path.name.startswith("_"):
            continue
        doc = config_docstring(path).strip()
        rows.append((path.stem, doc.splitlines()[0] if doc else "(no docstring)"))
    return rows


def _cmd_list(args: argparse.Namespace) -> int:
    if args.configs is not None:
        configs_dir = Path(args.configs)
        if not configs_dir.is_dir():
            raise ConfigError(f"--configs {args.configs!r} is not a directory")
    else:
        repo = find_repo()
        if repo is None:
            raise ConfigError(
                f"no configs/ directory in {Path.cwd()} or above; pass --configs DIR")
        configs_dir = repo / "configs"
    rows = list_configs(configs_dir)
    if not rows:
        print(f"no configs in {configs_dir}")
        return 0
    width = max(len(name) for name, _ in rows)
    for name, line in rows:
        print(f"{name:<{width}}  {line}")
    shown = os.path.relpath(configs_dir)
    print(f"\n{len(rows)} configs in {shown}; run one with "
          f"`{_PROG} run {shown}/<name>.py --workdir runs/<name>`")
    return 0


def _cmd_run(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.rerun is not None:
        if args.config is not None:
            raise ConfigError(f"--rerun {args.rerun} takes no CONFIG (got {args.config!r}): the "
                              "recorded config file is used")
    elif args.config is None:
        raise ConfigError("the following arguments are required: CONFIG[:variant] (or --rerun "
                          "WORKDIR)")
    elif args.workdir is None:
        raise ConfigError("the following arguments are required: --workdir")
    if args.cpu_devices is not None:
        startup.use_cpu_devices(args.cpu_devices)
    if args.rerun is not None:
        rerun_experiment(args.rerun, args.workdir, overrides, overwrite=args.overwrite,
                         dry_run=args.dry_run, profile_steps=args.profile_steps)
        return 0
    run_experiment(args.config, args.workdir, overrides, overwrite=args.overwrite,
                   dry_run=args.dry_run, profile_steps=args.profile_steps)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from jaxmath.run.compare import compare_runs

    result = compare_runs(args.runs, args.out)
    print(result["table"])
    print(f"\n{len(result['runs'])} runs compared: {result['files']['plot']}, "
          f"{result['files']['markdown']}, {result['files']['json']}")
    return 0


# ----------------------------------------------------------------------------- argv


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line on stderr, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separate ``--config.a.b=v`` / ``--config.a.b v`` / ``--config.flag`` from other args."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--config."):
            if "=" not in token and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                token = f"{token}={argv[i + 1]}"
                i += 1
            overrides.append(token)
        else:
            rest.append(token)
        i += 1
    return rest, overrides


def _build_parser() -> _Parser:
    parser = _Parser(prog=_PROG, description="Config-driven jaxmath experiments: run, "
                                              "rerun, list and compare them.")
    commands = parser.add_subparsers(dest="command", required=True,
                                     metavar="{run,list,compare}")
    run = commands.add_parser(
        "run", help="run an experiment from its config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the experiment of a configs/<name>.py file in --workdir.\n\n"
                    "Override config fields with --config.a.b=value (parsed to the type of the\n"
                    "field; an unknown key or a wrong type fails before any work). Running\n"
                    "again with the same workdir resumes; only num_steps, log_every,\n"
                    "checkpoint_every and mesh may change then, unless --overwrite.\n\n"
                    "config.json records the git commit, package versions, devices, seeds\n"
                    "and command; --rerun WORKDIR runs a recorded run again.",
        epilog="examples:\n"
               "  jaxmath run configs/ddpm_2d.py --workdir runs/ddpm_2d\n"
               "  jaxmath run configs/ddpm_2d.py:quick --workdir /tmp/q "
               "--config.optim.learning_rate=3e-4\n"
               "  jaxmath run --rerun runs/ddpm_2d            # into runs/ddpm_2d-rerun\n"
               "  jaxmath list")
    run.add_argument("config", metavar="CONFIG[:variant]", nargs="?", default=None,
                     help="config file, e.g. configs/ddpm_2d.py or configs/ddpm_2d.py:quick")
    run.add_argument("--workdir", default=None, metavar="DIR",
                     help="run directory: config.json, metrics.jsonl, summary.json, plots/, "
                          "checkpoints/, report.md (required unless --rerun)")
    run.add_argument("--rerun", default=None, metavar="WORKDIR",
                     help="run again the run recorded in WORKDIR/config.json: its config file "
                          "and variant with the recorded values (plus any --config.* given "
                          "here), into --workdir (default WORKDIR-rerun); warns when the git "
                          "commit or package versions differ")
    run.add_argument("--overwrite", action="store_true",
                     help="delete the workdir's previous run files and start afresh")
    run.add_argument("--dry-run", action="store_true",
                     help="print the processes, devices, mesh and per-device batch the run "
                          "would use, and stop: nothing is trained or written")
    run.add_argument("--profile_steps", "--profile-steps", default=None, metavar="A:B",
                     help="write a jax.profiler trace of the updates A+1..B to "
                          "DIR/profile (open with TensorBoard's profile plugin or "
                          "ui.perfetto.dev)")
    run.add_argument("--cpu-devices", type=int, default=None, metavar="N",
                     help="run on N CPU devices (e.g. the number of cores): sweeps shard "
                          "over them; same results as one device")
    listing = commands.add_parser("list", help="list the experiments' configs",
                                  description="Name and first docstring line of each "
                                              "configs/*.py of the repository around the "
                                              "current directory.")
    listing.add_argument("--configs", metavar="DIR", default=None,
                         help="the configs folder (default: configs/ of the nearest enclosing "
                              "directory that has one)")
    comparing = commands.add_parser(
        "compare", help="overlay the metrics of several runs in one plot and a table",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Overlay the metrics.jsonl of several runs (or the loss curves of sweep\n"
                    "members) in DIR/compare.png, one panel per metric they share, and tabulate\n"
                    "each run's final and best value, the step of the best and the config keys\n"
                    "that differ in DIR/compare.md and DIR/compare.json.",
        epilog="a RUN is a workdir, or a sweep workdir's members:\n"
               "  W        its metrics.jsonl; a sweep workdir without one: all its members\n"
               "  W:3      member 3 of W/sweep.jsonl (its index)\n"
               "  W:learning_rate=0.01,seed=0   the members with those values\n\n"
               "example:\n"
               "  jaxmath compare runs/a runs/b runs/sweep:0 --out runs/compare")
    comparing.add_argument("runs", nargs="+", metavar="RUN",
                           help="workdir, or W:INDEX / W:key=value,... for sweep members")
    comparing.add_argument("--out", required=True, metavar="DIR",
                           help="where compare.png, compare.md and compare.json go")
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxmath`` command; returns the exit status.

    Example:
      >>> main(["list", "--configs", "/nonexistent"])
      2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("MPLBACKEND", "Agg")
    parser = _build_parser()
    rest, overrides = _split_overrides(argv)
    try:
        args = parser.parse_args(rest)
        if overrides and args.command != "run":
            parser.error(f"--config.* overrides apply to 'run' only, got {overrides[0]}")
    except SystemExit as e:  # --help or a usage error; argparse has printed it
        return e.code if isinstance(e.code, int) else 2
    try:
        if args.command == "list":
            return _cmd_list(args)
        if args.command == "compare":
            return _cmd_compare(args)
        return _cmd_run(args, overrides)
    except ConfigError as e:
        print(f"{_PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # NonFiniteLossError: the message names the step
        print(f"{_PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted; run again with the same --workdir to resume",
              file=sys.stderr)
        return 130
