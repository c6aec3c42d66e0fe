"""What a run does before its first JAX computation: join a job, choose the CPU devices.

``jaxmath run`` calls both before it imports the experiment (:mod:`jaxmath.run.cli`);
a script that runs a sweep on several machines calls :func:`init_distributed` first.

Multi-process runs read these environment variables (:func:`init_distributed`):

* ``JAX_COORDINATOR_ADDRESS``: ``host:port`` of process 0's coordinator service;
* ``JAX_NUM_PROCESSES``: the number of processes;
* ``JAX_PROCESS_ID``: this process's index, ``0 <= id < JAX_NUM_PROCESSES``;
* ``JAXMATH_DISTRIBUTED=auto``: instead of the three above, let
  ``jax.distributed.initialize()`` detect the cluster (SLURM, Open MPI, TPU pods).

``--cpu-devices N`` (:func:`use_cpu_devices`) exposes N CPU devices, e.g. one per core,
which :func:`jaxmath.run.sweep.run_sweep` shards a sweep over.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax

from jaxmath.run.config import ConfigError

__all__ = ["init_distributed", "use_cpu_devices"]


def _env_int(environ: Mapping[str, str], name: str) -> int:
    text = environ.get(name)
    if text is None:
        raise ValueError(f"JAX_COORDINATOR_ADDRESS is set, so {name} must be set too "
                         "(JAX_NUM_PROCESSES: how many processes; JAX_PROCESS_ID: this one's "
                         "index)")
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {text!r}") from None


def init_distributed(*, environ: Mapping[str, str] | None = None) -> bool:
    r"""Join a multi-process JAX job when the environment asks for it.

    With ``JAX_COORDINATOR_ADDRESS=host:port``, ``JAX_NUM_PROCESSES=P`` and
    ``JAX_PROCESS_ID=i`` set, calls
    ``jax.distributed.initialize(host:port, P, i)``; with
    ``JAXMATH_DISTRIBUTED=auto``, calls ``jax.distributed.initialize()`` and lets
    JAX detect the cluster (SLURM, Open MPI, TPU pods, ...). After it,
    ``jax.devices()`` lists the devices of all processes, and
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
    environ = os.environ if environ is None else environ
    if jax.distributed.is_initialized():
        return True
    address = environ.get("JAX_COORDINATOR_ADDRESS")
    auto = environ.get("JAXMATH_DISTRIBUTED", "").lower()
    if auto not in ("", "0", "auto"):
        raise ValueError(f"JAXMATH_DISTRIBUTED must be 'auto' or unset, got {auto!r}")
    if address is None and auto != "auto":
        return False
    if jax.config.jax_cpu_collectives_implementation in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if address is None:
        jax.distributed.initialize()
        return True
    if ":" not in address:
        raise ValueError(f"JAX_COORDINATOR_ADDRESS must be host:port, got {address!r}")
    num_processes = _env_int(environ, "JAX_NUM_PROCESSES")
    process_id = _env_int(environ, "JAX_PROCESS_ID")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"need JAX_NUM_PROCESSES >= 1 and 0 <= JAX_PROCESS_ID < "
                         f"JAX_NUM_PROCESSES, got {num_processes} and {process_id}")
    if num_processes == 1:
        return False
    jax.distributed.initialize(address, num_processes, process_id)
    return True


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
