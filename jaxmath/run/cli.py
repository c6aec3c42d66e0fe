"""``jaxmath run`` and ``jaxmath list``: config-driven experiments from the command line.

::

    jaxmath run CONFIG[:variant] --workdir DIR [--config.a.b=value ...] [--overwrite]
                [--cpu-devices N]
    jaxmath list [--configs DIR]
    python -m jaxmath ...                  # the same

``run`` loads the config (:func:`jaxmath.run.config.load_config`: unknown keys and wrong types
fail here, before any work), writes ``DIR/config.json``, loads the experiment
``<config dir>/../experiments/<config.experiment>.py`` by its file location
(:func:`load_experiment`; ``sys.path`` is left alone), calls its ``run(config, workdir)``, adds
run facts to the returned summary and writes ``summary.json`` and ``report.md``; it ends by
printing the summary table and the report's path.

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

Exit status: 0 on success; 2 for a usage or config error (one line on stderr, no traceback);
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

from jaxmath.run import startup
from jaxmath.run.config import (
    ConfigError,
    config_docstring,
    config_to_dict,
    find_repo,
    import_file,
    load_config,
    resolve_spec,
)
from jaxmath.run.files import atomic_write_json
from jaxmath.run.report import summary_table, write_report, write_summary

__all__ = ["RESUMABLE_KEYS", "RUN_FILES", "launch_facts", "list_configs", "load_experiment", "main",
           "run_experiment"]

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


def _check_workdir(workdir: Path, config, overwrite: bool, writer: bool) -> None:
    """Refuse to mix two configs in one workdir; with ``overwrite``, clear the old run.

    The new config is compared with the stored one after setting its :data:`RESUMABLE_KEYS` to
    the stored values, so fields derived from them (``config.get_ref("num_steps") * 2``) may
    change with them.
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
        return
    if not stored_path.exists():
        return
    try:
        stored = json.loads(stored_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"cannot read {stored_path}: {e}; pass --overwrite to start afresh") from None
    if not isinstance(stored, dict):
        raise ConfigError(f"{stored_path} is not a config; pass --overwrite to start afresh")
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


def run_experiment(spec: str, workdir: str | os.PathLike, overrides: Sequence[str] = (), *,
                   overwrite: bool = False, verbose: bool = True,
                   dry_run: bool = False, profile_steps: str | None = None) -> dict[str, Any]:
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
    config = load_config(spec, overrides)
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
    _check_workdir(workdir, config, overwrite, writer)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxmath.run.cli: workdir checked")

    if writer:
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(workdir / "config.json", resolved)
    if verbose and writer:
        print(f"{_PROG}: experiments/{name}.py in {workdir} (config {spec})", flush=True)
    module = load_experiment(experiments_dir, name)
    if not callable(getattr(module, "run", None)):
        raise ConfigError(f"experiments/{name}.py defines no run(config, workdir)")
    start = time.perf_counter()
    summary = module.run(config, workdir)
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
    command = shlex.join([_PROG, "run", spec, "--workdir", str(workdir), *overrides])
    summary_path = write_summary(workdir, summary)
    report_path = write_report(workdir, summary, title,
                               doc=config_docstring(config_path), command=command)
    if verbose and writer:
        print(f"\n{title}: summary ({summary_path})")
        print(summary_table(summary))
        print(f"report: {report_path}", flush=True)
    return summary


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
    if args.cpu_devices is not None:
        startup.use_cpu_devices(args.cpu_devices)
    run_experiment(args.config, args.workdir, overrides, overwrite=args.overwrite,
                   dry_run=args.dry_run, profile_steps=args.profile_steps)
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
    parser = _Parser(prog=_PROG, description="Config-driven jaxmath experiments.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,list}")
    run = commands.add_parser(
        "run", help="run an experiment from its config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the experiment of a configs/<name>.py file in --workdir.\n\n"
                    "Override config fields with --config.a.b=value (parsed to the type of the\n"
                    "field; an unknown key or a wrong type fails before any work). Running\n"
                    "again with the same workdir resumes; only num_steps, log_every,\n"
                    "checkpoint_every and mesh may change then, unless --overwrite.",
        epilog="examples:\n"
               "  jaxmath run configs/ddpm_2d.py --workdir runs/ddpm_2d\n"
               "  jaxmath run configs/ddpm_2d.py:quick --workdir /tmp/q "
               "--config.optim.learning_rate=3e-4\n"
               "  jaxmath list")
    run.add_argument("config", metavar="CONFIG[:variant]",
                     help="config file, e.g. configs/ddpm_2d.py or configs/ddpm_2d.py:quick")
    run.add_argument("--workdir", required=True, metavar="DIR",
                     help="run directory: config.json, metrics.jsonl, summary.json, plots/, "
                          "checkpoints/, report.md")
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
