"""What a run does before its first JAX computation: join a job, choose the CPU devices.

``jaxmath run`` calls both before it imports the experiment (:mod:`jaxmath.run.cli`);
a script that runs a sweep on several machines calls :func:`init_distributed` first.

A multi-process run joins its job through ``jax.distributed.initialize(**kwargs)``, with
the keyword arguments :func:`distributed_args` reads from these environment variables:

* ``JAX_COORDINATOR_ADDRESS``: ``host:port`` of process 0's coordinator service;
* ``JAX_NUM_PROCESSES``: the number of processes;
* ``JAX_PROCESS_ID``: this process's index, ``0 <= id < JAX_NUM_PROCESSES``;
* ``JAX_LOCAL_DEVICE_IDS``: optional, e.g. ``0,1``: the local GPUs this process uses
  (default: every GPU it sees; under SLURM, the rule of :func:`distributed_args`);
* ``JAXMATH_DISTRIBUTED=auto``: instead of the three first, take the job from the
  cluster: a SLURM job step (``srun``) is read here (:func:`distributed_args`), anything
  else (Open MPI's ``mpirun``, Cloud TPU pods, Kubernetes) is left to JAX's detection;
* ``JAX_COORDINATOR_PORT``: optional, the coordinator's port under SLURM (default
  ``61440 + SLURM_JOB_ID % 4096``, as JAX chooses).

``--cpu-devices N`` (:func:`use_cpu_devices`) exposes N CPU devices, e.g. one per core,
which :func:`jaxmath.run.sweep.run_sweep` shards a sweep over.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax

from jaxmath.run.config import ConfigError

__all__ = ["describe_processes", "distributed_args", "init_distributed", "use_cpu_devices"]

# What JAX's SlurmCluster needs to see to detect a SLURM job step; srun sets them all.
_SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                    "SLURM_LOCALID")
# Set for the ranks of Open MPI's mpirun: inside an allocation, their SLURM variables (if
# any) describe mpirun's daemons, not the ranks, so the job is Open MPI's (JAX too tries
# Open MPI before SLURM).
_MPIRUN_VARS = ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE")
# Where srun writes how many tasks each node runs ("8(x2),4"), most specific first.
_TASKS_PER_NODE_VARS = ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE",
                        "SLURM_NTASKS_PER_NODE")
_VISIBLE_GPU_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES")
_NO_DETECTION = {"cluster_detection_method": "deactivate"}


def _env_int(environ: Mapping[str, str], name: str, missing: str = "") -> int:
    """``environ[name]`` as an int; a ValueError naming the variable if absent or not one."""
    text = environ.get(name)
    if text is None:
        raise ValueError(missing or f"{name} must be set")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None


def _local_device_ids(environ: Mapping[str, str]) -> list[int] | None:
    """``JAX_LOCAL_DEVICE_IDS="0,1"`` as ``[0, 1]``; None if unset or empty."""
    text = environ.get("JAX_LOCAL_DEVICE_IDS", "")
    if not text.strip():
        return None
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        raise ValueError("JAX_LOCAL_DEVICE_IDS must be comma-separated device ids >= 0 such "
                         f"as '0,1', got {text!r}")
    return [int(part) for part in parts]


def _with_local_ids(args: dict[str, Any], ids: list[int] | None) -> dict[str, Any]:
    return args if ids is None else {**args, "local_device_ids": ids}


def _explicit_args(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The job the ``JAX_*`` variables name, JAX's detection off; None for one process."""
    address = environ["JAX_COORDINATOR_ADDRESS"]
    if ":" not in address:
        raise ValueError(f"JAX_COORDINATOR_ADDRESS must be host:port, got {address!r}")
    missing = ("JAX_COORDINATOR_ADDRESS is set, so {} must be set too (JAX_NUM_PROCESSES: how "
               "many processes; JAX_PROCESS_ID: this one's index)")
    num_processes = _env_int(environ, "JAX_NUM_PROCESSES",
                             missing.format("JAX_NUM_PROCESSES"))
    process_id = _env_int(environ, "JAX_PROCESS_ID", missing.format("JAX_PROCESS_ID"))
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"need JAX_NUM_PROCESSES >= 1 and 0 <= JAX_PROCESS_ID < "
                         f"JAX_NUM_PROCESSES, got {num_processes} and {process_id}")
    if num_processes == 1:
        return None
    args = {"coordinator_address": address, "num_processes": num_processes,
            "process_id": process_id}
    return {**_with_local_ids(args, _local_device_ids(environ)), **_NO_DETECTION}


def _first_host(nodelist: str) -> str:
    """The first host of a SLURM node list, read as JAX's SlurmCluster reads it.

    Example:
      >>> _first_host("gpu[017-018]"), _first_host("node[001,007-015],cpu2"), _first_host("a1,b2")
      ('gpu017', 'node001', 'a1')
    """
    match = re.match(r"([^,\[]+)(?:\[(\d+))?", nodelist)
    if match is None:
        raise ValueError("SLURM_STEP_NODELIST must list hosts such as 'gpu[017-018]', got "
                         f"{nodelist!r}")
    return match.group(1) + (match.group(2) or "")


def _coordinator_port(environ: Mapping[str, str]) -> int:
    """``JAX_COORDINATOR_PORT``, else ``61440 + SLURM_JOB_ID % 4096`` (JAX's choice)."""
    if environ.get("JAX_COORDINATOR_PORT"):
        port = _env_int(environ, "JAX_COORDINATOR_PORT")
        if not 0 < port < 2**16:
            raise ValueError(f"JAX_COORDINATOR_PORT must be a port in 1..65535, got {port}")
        return port
    return 65536 - 2**12 + _env_int(environ, "SLURM_JOB_ID") % 2**12


def _tasks_per_node(name: str, text: str) -> list[int]:
    """SLURM's tasks-per-node format, ``"8(x2),4"``, as ``[8, 8, 4]``."""
    counts = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if match is None:
            raise ValueError(f"{name} must read like '8' or '8(x2),4', got {text!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _tasks_on_this_node(environ: Mapping[str, str]) -> int:
    """How many tasks of the job step run on this process's node."""
    name = next((n for n in _TASKS_PER_NODE_VARS if environ.get(n)), None)
    if name is None:
        raise ValueError("SLURM_STEP_TASKS_PER_NODE is not set (srun sets it), so the tasks on "
                         "this node are unknown: launch with srun, or set JAX_LOCAL_DEVICE_IDS")
    counts = _tasks_per_node(name, environ[name])
    if len(set(counts)) == 1:
        return counts[0]
    node = _env_int(environ, "SLURM_NODEID",
                    f"{name}={environ[name]!r} differs between nodes, so SLURM_NODEID "
                    "must be set")
    if not 0 <= node < len(counts):
        raise ValueError(f"SLURM_NODEID must index the {len(counts)} nodes of "
                         f"{name}={environ[name]!r}, got {node}")
    return counts[node]


def _visible_gpus(environ: Mapping[str, str]) -> int | None:
    """How many GPUs ``CUDA_VISIBLE_DEVICES`` (or ROCm's) shows; None if unset."""
    text = next((environ[n] for n in _VISIBLE_GPU_VARS if n in environ), None)
    return None if text is None else len([p for p in text.split(",") if p.strip()])


def _slurm_local_ids(environ: Mapping[str, str]) -> list[int] | None:
    """The GPUs a SLURM task uses: None (every GPU it sees) or ``[SLURM_LOCALID]``.

    One task on the node (``--ntasks-per-node=1``) drives every GPU it sees, and so does a
    task that sees exactly one (Slurm bound it to the task: ``--gpus-per-task=1``). Several
    tasks that all see the node's GPUs (``--ntasks-per-node=8 --gpus-per-node=8``) take one
    each, the task of local id i the i-th.
    """
    local_id = _env_int(environ, "SLURM_LOCALID")
    if _tasks_on_this_node(environ) == 1 or _visible_gpus(environ) == 1:
        return None
    return [local_id]


def _slurm_args(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The job of a SLURM step, JAX's detection off; None for a one-task step."""
    num_processes = _env_int(environ, "SLURM_NTASKS")
    process_id = _env_int(environ, "SLURM_PROCID")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"need SLURM_NTASKS >= 1 and 0 <= SLURM_PROCID < SLURM_NTASKS, got "
                         f"{num_processes} and {process_id}")
    if num_processes == 1:
        return None
    host = _first_host(environ["SLURM_STEP_NODELIST"])
    args = {"coordinator_address": f"{host}:{_coordinator_port(environ)}",
            "num_processes": num_processes, "process_id": process_id}
    ids = _local_device_ids(environ)
    return {**_with_local_ids(args, ids if ids is not None else _slurm_local_ids(environ)),
            **_NO_DETECTION}


def _is_srun_step(environ: Mapping[str, str]) -> bool:
    return (all(name in environ for name in _SLURM_STEP_VARS)
            and not any(name in environ for name in _MPIRUN_VARS))


def distributed_args(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    r"""The keyword arguments :func:`init_distributed` passes to ``jax.distributed.initialize``.

    * ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` set: that job,
      with JAX's cluster detection off (``cluster_detection_method="deactivate"``): each
      process uses every GPU it sees, or those ``JAX_LOCAL_DEVICE_IDS`` lists.
    * ``JAXMATH_DISTRIBUTED=auto`` in a SLURM job step (``srun``): the job from SLURM's
      variables, as JAX's own SLURM detection reads them (coordinator: the first host of
      ``SLURM_STEP_NODELIST`` at port ``61440 + SLURM_JOB_ID % 4096`` or
      ``JAX_COORDINATOR_PORT``; ``SLURM_NTASKS`` processes; this one ``SLURM_PROCID``), but
      with the GPUs chosen for both layouts: a task alone on its node
      (``SLURM_STEP_TASKS_PER_NODE`` 1) or one that sees a single GPU uses every GPU it
      sees; tasks that share a node's GPUs use one each, ``local_device_ids=[SLURM_LOCALID]``.
      (JAX alone would restrict every SLURM task to GPU ``SLURM_LOCALID``: one GPU per node
      with one task per node, and a missing device with ``--gpus-per-task=1``.)
    * ``JAXMATH_DISTRIBUTED=auto`` elsewhere: ``{}`` (plus ``JAX_LOCAL_DEVICE_IDS``): JAX
      detects the job (Open MPI's ``mpirun``, Cloud TPU pods, Kubernetes).

    Args:
      environ: the variables to read; default ``os.environ``.

    Returns:
      The keyword arguments, or None when the environment asks for one process: no
      variables, ``JAX_NUM_PROCESSES=1`` or ``SLURM_NTASKS=1``.

    Raises:
      ValueError: a variable that is missing or malformed, named with its value.

    Example:
      >>> distributed_args({}) is None
      True
      >>> distributed_args({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
      ...                   "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
      {'coordinator_address': '10.0.0.1:1234', 'num_processes': 2, 'process_id': 1,
       'cluster_detection_method': 'deactivate'}
      >>> slurm = {"JAXMATH_DISTRIBUTED": "auto", "SLURM_JOB_ID": "4242",
      ...          "SLURM_STEP_NODELIST": "gpu[017-018]", "SLURM_NTASKS": "16",
      ...          "SLURM_PROCID": "13", "SLURM_LOCALID": "5",
      ...          "SLURM_STEP_TASKS_PER_NODE": "8(x2)"}
      >>> distributed_args(slurm)
      {'coordinator_address': 'gpu017:61586', 'num_processes': 16, 'process_id': 13,
       'local_device_ids': [5], 'cluster_detection_method': 'deactivate'}
      >>> distributed_args({"JAXMATH_DISTRIBUTED": "auto"})
      {}
    """
    environ = os.environ if environ is None else environ
    mode = environ.get("JAXMATH_DISTRIBUTED", "").lower()
    if mode not in ("", "0", "auto"):
        raise ValueError(f"JAXMATH_DISTRIBUTED must be 'auto' or unset, got {mode!r}")
    if "JAX_COORDINATOR_ADDRESS" in environ:
        return _explicit_args(environ)
    if mode != "auto":
        return None
    if _is_srun_step(environ):
        return _slurm_args(environ)
    return _with_local_ids({}, _local_device_ids(environ))


def init_distributed(*, environ: Mapping[str, str] | None = None) -> bool:
    r"""Join a multi-process JAX job when the environment asks for it.

    Calls ``jax.distributed.initialize(**distributed_args(environ))``
    (:func:`distributed_args`: explicit ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``
    and ``JAX_PROCESS_ID``, or ``JAXMATH_DISTRIBUTED=auto`` for SLURM, Open MPI, TPU pods,
    ...). After it, ``jax.devices()`` lists the devices of all processes, and
    :func:`~jaxmath.run.sweep.run_sweep` shards over them and returns every result
    on every process. Call it first,
    before anything runs a JAX computation, on every process with the same code.
    On CPU the processes talk through gloo (``jax_cpu_collectives_implementation``,
    set to ``"gloo"`` here if it is ``"none"``).

    Args:
      environ: the variables to read; default ``os.environ``.

    Returns:
      True if this process is part of a multi-process job (initialised now or
      before), False if the environment asks for none (no variables set, or
      ``JAX_NUM_PROCESSES=1``): a single process then runs on its local devices.

    Example:
      >>> init_distributed(environ={})
      False
    """
    if jax.distributed.is_initialized():
        return True
    kwargs = distributed_args(environ)
    if kwargs is None:
        return False
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return True


def _coordinator() -> str | None:
    """The coordinator's ``host:port`` this process joined, or None outside a job."""
    if not jax.distributed.is_initialized():
        return None
    from jax._src import distributed  # JAX keeps the address it joined with only here

    return getattr(getattr(distributed, "global_state", None), "coordinator_address", None)


def describe_processes() -> dict[str, Any]:
    """This process and the job's devices, as ``jaxmath run --dry-run`` prints them.

    Call it after :func:`init_distributed`: it starts JAX's backend.

    Returns:
      ``process_index``, ``process_count``, ``local_devices`` (this process's device
      count), ``global_devices`` (all processes'), ``platform`` (``"cpu"``, ``"gpu"``,
      ``"tpu"``) and ``coordinator`` (``host:port`` of the job's coordinator; None in a
      single process).

    Example:
      >>> facts = describe_processes()
      >>> facts["process_index"], facts["process_count"], facts["coordinator"]
      (0, 1, None)
    """
    local = jax.local_devices()
    return {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "local_devices": len(local), "global_devices": jax.device_count(),
            "platform": local[0].platform, "coordinator": _coordinator()}


def use_cpu_devices(count: int) -> None:
    """Expose ``count`` CPU devices (``jax_num_cpu_devices``), e.g. one per core.

    :func:`jaxmath.run.sweep.run_sweep` then shards a sweep over them, one thread of work each;
    results are those of one device. Only the CPU backend is affected, and only before JAX
    has started a backend in this process.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"--cpu-devices must be a positive int, got {count!r}")
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError as e:  # a backend already runs: the count can no longer change
        raise ConfigError(f"--cpu-devices {count}: {e}") from None
