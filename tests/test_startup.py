"""Joining a job: what distributed_args reads and init_distributed passes to JAX.

The SLURM, Open MPI and explicit variables are fed to the start-up code with
jax.distributed.initialize replaced by a recorder; JAX's own SLURM detection, read on the
same variables, gives the same coordinator, process count and index; and two processes
on this machine, started with SLURM's variables for each layout, join one job through
the real jax.distributed.initialize and get the GPUs the layout asks for.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from jaxmath.run.startup import describe_processes, distributed_args, init_distributed
from tests._jobs import free_port, result

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120  # per process; a hung coordinator fails the test instead of hanging it
OFF = {"cluster_detection_method": "deactivate"}

EXPLICIT = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
            "JAX_PROCESS_ID": "3"}
# srun --nodes=2 --ntasks-per-node=1 --gpus-per-node=8: task 1 on gpu018
SLURM_PER_NODE = {"JAXMATH_DISTRIBUTED": "auto", "SLURM_JOB_ID": "4242",
                  "SLURM_STEP_NODELIST": "gpu[017-018]", "SLURM_NTASKS": "2",
                  "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
                  "SLURM_NTASKS_PER_NODE": "1", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
# srun --nodes=2 --ntasks-per-node=8 --gpus-per-node=8: task 13, the 6th on gpu018
SLURM_PER_GPU = {**SLURM_PER_NODE, "SLURM_NTASKS": "16", "SLURM_PROCID": "13",
                 "SLURM_LOCALID": "5", "SLURM_NTASKS_PER_NODE": "8",
                 "SLURM_STEP_TASKS_PER_NODE": "8(x2)", "SLURM_TASKS_PER_NODE": "8(x2)"}
# the same with --gpus-per-task=1: Slurm shows each task its own GPU only
SLURM_BOUND = {**SLURM_PER_GPU, "CUDA_VISIBLE_DEVICES": "5"}
# mpirun -np 16 -npernode 8 (Open MPI 4), as JAX's OmpiCluster reads it
OPEN_MPI = {"JAXMATH_DISTRIBUTED": "auto", "OMPI_MCA_orte_hnp_uri":
            "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911", "OMPI_COMM_WORLD_SIZE": "16",
            "OMPI_COMM_WORLD_RANK": "13", "OMPI_COMM_WORLD_LOCAL_RANK": "5",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "8"}
GPU017 = {"coordinator_address": "gpu017:61586"}  # 61440 + 4242 % 4096


# ---------------------------------------------------------------- distributed_args


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, None),
    ({"JAXMATH_DISTRIBUTED": "0"}, None),
    ({**EXPLICIT, "JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"}, None),
    ({k: v for k, v in SLURM_PER_NODE.items() if k != "JAXMATH_DISTRIBUTED"}, None),
    ({**SLURM_PER_NODE, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, None),
    (EXPLICIT, {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                "process_id": 3, **OFF}),
    ({**EXPLICIT, "JAX_LOCAL_DEVICE_IDS": "0,1"},
     {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 3,
      "local_device_ids": [0, 1], **OFF}),
    ({**SLURM_PER_GPU, **EXPLICIT}, {"coordinator_address": "10.0.0.1:1234",
                                     "num_processes": 4, "process_id": 3, **OFF}),
    ({"JAXMATH_DISTRIBUTED": "auto"}, {}),
    ({"JAXMATH_DISTRIBUTED": "AUTO", "JAX_LOCAL_DEVICE_IDS": "2, 3"},
     {"local_device_ids": [2, 3]}),
    (SLURM_PER_NODE, {**GPU017, "num_processes": 2, "process_id": 1, **OFF}),
    (SLURM_PER_GPU, {**GPU017, "num_processes": 16, "process_id": 13,
                     "local_device_ids": [5], **OFF}),
    (SLURM_BOUND, {**GPU017, "num_processes": 16, "process_id": 13, **OFF}),
    ({**SLURM_PER_GPU, "JAX_LOCAL_DEVICE_IDS": "4,5"},
     {**GPU017, "num_processes": 16, "process_id": 13, "local_device_ids": [4, 5], **OFF}),
    ({**SLURM_PER_NODE, "JAX_COORDINATOR_PORT": "1234"},
     {"coordinator_address": "gpu017:1234", "num_processes": 2, "process_id": 1, **OFF}),
    (OPEN_MPI, {}),
    ({**SLURM_PER_GPU, **OPEN_MPI}, {}),  # mpirun inside an allocation: Open MPI's job
])
def test_distributed_args(environ, expected):
    assert distributed_args(environ) == expected


@pytest.mark.parametrize(("tasks_per_node", "node_id", "local_ids"), [
    ("8(x2)", None, [5]),        # the same count everywhere: SLURM_NODEID not needed
    ("8,1", "0", [5]),           # 8 tasks on node 0, 1 on node 1
    ("8,1", "1", None),
    ("2(x3),1", "3", None),
    ("4,2(x2)", "2", [5]),
])
def test_slurm_tasks_on_this_node(tasks_per_node, node_id, local_ids):
    environ = {**SLURM_PER_GPU, "SLURM_STEP_TASKS_PER_NODE": tasks_per_node}
    environ.pop("SLURM_NODEID")
    if node_id is not None:
        environ["SLURM_NODEID"] = node_id
    assert distributed_args(environ).get("local_device_ids") == local_ids


@pytest.mark.parametrize(("nodelist", "host"), [
    ("gpu[017-018]", "gpu017"), ("node001,node002", "node001"), ("node001", "node001"),
    ("node[001,007-015],host2", "node001"), ("a100-[09-10]", "a100-09"),
])
def test_slurm_coordinator_is_the_first_host(nodelist, host):
    args = distributed_args({**SLURM_PER_NODE, "SLURM_STEP_NODELIST": nodelist})
    assert args["coordinator_address"] == f"{host}:61586"


BAD = [
    ({"JAXMATH_DISTRIBUTED": "yes"}, "JAXMATH_DISTRIBUTED must be 'auto' or unset, got 'yes'"),
    ({"JAX_COORDINATOR_ADDRESS": "localhost:1"}, "JAX_NUM_PROCESSES must be set too"),
    ({**EXPLICIT, "JAX_PROCESS_ID": "4"}, "0 <= JAX_PROCESS_ID < JAX_NUM_PROCESSES, got 4 and 4"),
    ({**EXPLICIT, "JAX_LOCAL_DEVICE_IDS": "0,a"},
     "JAX_LOCAL_DEVICE_IDS must be comma-separated device ids >= 0 such as '0,1', got '0,a'"),
    ({**EXPLICIT, "JAX_LOCAL_DEVICE_IDS": "-1"}, "JAX_LOCAL_DEVICE_IDS must be"),
    ({**SLURM_PER_GPU, "SLURM_NTASKS": "sixteen"},
     "SLURM_NTASKS must be an integer, got 'sixteen'"),
    ({**SLURM_PER_GPU, "SLURM_PROCID": "16"},
     "0 <= SLURM_PROCID < SLURM_NTASKS, got 16 and 16"),
    ({**SLURM_PER_GPU, "SLURM_LOCALID": "x"}, "SLURM_LOCALID must be an integer, got 'x'"),
    ({**SLURM_PER_GPU, "SLURM_JOB_ID": "j1"}, "SLURM_JOB_ID must be an integer, got 'j1'"),
    ({**SLURM_PER_GPU, "SLURM_STEP_NODELIST": "[001-002]"},
     "SLURM_STEP_NODELIST must list hosts such as 'gpu\\[017-018\\]', got '\\[001-002\\]'"),
    ({**SLURM_PER_GPU, "JAX_COORDINATOR_PORT": "70000"},
     "JAX_COORDINATOR_PORT must be a port in 1..65535, got 70000"),
    ({**SLURM_PER_GPU, "SLURM_STEP_TASKS_PER_NODE": "8(x)"},
     "SLURM_STEP_TASKS_PER_NODE must read like '8' or '8\\(x2\\),4', got '8\\(x\\)'"),
    ({**SLURM_PER_GPU, "SLURM_STEP_TASKS_PER_NODE": "8,4", "SLURM_NODEID": "2"},
     "SLURM_NODEID must index the 2 nodes of SLURM_STEP_TASKS_PER_NODE='8,4', got 2"),
    ({k: v for k, v in {**SLURM_PER_GPU, "SLURM_STEP_TASKS_PER_NODE": "8,4"}.items()
      if k != "SLURM_NODEID"}, "differs between nodes, so SLURM_NODEID must be set"),
    ({k: v for k, v in SLURM_PER_GPU.items() if "TASKS_PER_NODE" not in k},
     "SLURM_STEP_TASKS_PER_NODE is not set \\(srun sets it\\)"),
]


@pytest.mark.parametrize(("environ", "match"), BAD)
def test_bad_variables(environ, match):
    with pytest.raises(ValueError, match=match):
        distributed_args(environ)


# ------------------------------------------------------- against JAX's SLURM detection


def _jax_detects(environ: dict[str, str], monkeypatch) -> tuple:
    """What JAX's cluster detection makes of ``environ`` as this process's environment."""
    from jax._src import clusters

    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_", "PMIX_", "JAX_", "TPU_", "KUBERNETES_")):
            monkeypatch.delenv(name)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    return clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, 300)


@pytest.mark.parametrize("nodelist", ["gpu[017-018]", "node001,node002",
                                      "node[001,007-015],host2", "a100-[09-10]"])
@pytest.mark.parametrize(("environ", "shared_gpus"), [
    (SLURM_PER_NODE, False), (SLURM_PER_GPU, True), (SLURM_BOUND, False)])
def test_slurm_job_as_jax_reads_it(environ, shared_gpus, nodelist, monkeypatch):
    """Coordinator, count and index agree with JAX's SlurmCluster; JAX alone would give
    every task ``[SLURM_LOCALID]``, which jaxmath keeps only for tasks sharing GPUs."""
    environ = {**environ, "SLURM_STEP_NODELIST": nodelist}
    address, count, index, jax_ids = _jax_detects(environ, monkeypatch)
    args = distributed_args(environ)
    assert (args["coordinator_address"], args["num_processes"], args["process_id"]) == (
        address, count, index)
    assert jax_ids == [int(environ["SLURM_LOCALID"])]
    assert args.get("local_device_ids") == (jax_ids if shared_gpus else None)


def test_open_mpi_is_left_to_jax(monkeypatch):
    assert distributed_args(OPEN_MPI) == {}
    assert _jax_detects(OPEN_MPI, monkeypatch) == ("10.96.0.1:62624", 16, 13, [5])


# ---------------------------------------------------------------- init_distributed


@pytest.fixture
def initialize(monkeypatch):
    """jax.distributed.initialize replaced by a recorder of its keyword arguments."""
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    return calls


@pytest.mark.parametrize("environ", [EXPLICIT, {"JAXMATH_DISTRIBUTED": "auto"}, SLURM_PER_NODE,
                                     SLURM_PER_GPU, SLURM_BOUND, OPEN_MPI])
def test_init_distributed_passes_the_args(environ, initialize):
    assert init_distributed(environ=environ) is True
    assert initialize == [distributed_args(environ)]
    assert jax.config.jax_cpu_collectives_implementation == "gloo"


def test_init_distributed_passes_exact_kwargs(initialize):
    init_distributed(environ=SLURM_PER_GPU)
    init_distributed(environ=SLURM_PER_NODE)
    init_distributed(environ=OPEN_MPI)
    assert initialize == [
        {"coordinator_address": "gpu017:61586", "num_processes": 16, "process_id": 13,
         "local_device_ids": [5], "cluster_detection_method": "deactivate"},
        {"coordinator_address": "gpu017:61586", "num_processes": 2, "process_id": 1,
         "cluster_detection_method": "deactivate"},
        {}]


def test_init_distributed_without_a_job(initialize):
    assert init_distributed(environ={}) is False
    assert init_distributed(environ={**SLURM_PER_GPU, "JAXMATH_DISTRIBUTED": ""}) is False
    assert initialize == []


def test_init_distributed_once(initialize, monkeypatch):
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
    assert init_distributed(environ=EXPLICIT) is True
    assert init_distributed(environ={"JAXMATH_DISTRIBUTED": "bad"}) is True  # not read again
    assert initialize == []


def test_init_distributed_reads_os_environ(initialize, monkeypatch):
    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_", "JAX_", "JAXMATH_")):
            monkeypatch.delenv(name)
    for name, value in EXPLICIT.items():
        monkeypatch.setenv(name, value)
    assert init_distributed() is True
    assert initialize == [distributed_args(EXPLICIT)]


# -------------------------------------------------------------- describe_processes


def test_describe_processes_in_one_process():
    facts = describe_processes()
    assert facts == {"process_index": 0, "process_count": 1,
                     "local_devices": jax.local_device_count(),
                     "global_devices": jax.device_count(),
                     "platform": jax.devices()[0].platform, "coordinator": None}


# ------------------------------------------------------- two processes, real SLURM start

_JOB = """
import json
import jax
from jax._src import xla_bridge
from jaxmath.run import startup
joined = startup.init_distributed()
facts = startup.describe_processes()
facts.update(joined=joined, gpus=xla_bridge.CUDA_VISIBLE_DEVICES.value)
print("RESULT " + json.dumps(facts), flush=True)
jax.distributed.shutdown()
"""


def _srun_task(tasks_per_node: str, task: int, port: int) -> subprocess.Popen:
    """This machine as a SLURM step of 2 tasks (1 per node, or 2 on one), task ``task``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "JAX_", "JAXMATH_", "CUDA_VISIBLE"))}
    env.update(JAX_PLATFORMS="cpu", JAXMATH_DISTRIBUTED="auto", JAX_COORDINATOR_PORT=str(port),
               SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
               SLURM_PROCID=str(task), SLURM_STEP_TASKS_PER_NODE=tasks_per_node,
               SLURM_LOCALID=str(task if tasks_per_node == "2" else 0),
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-c", _JOB], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_slurm_tasks_join_one_job():
    """Both layouts start through the real jax.distributed.initialize: one task per node
    keeps every GPU (``all``); two tasks on a node take GPU 0 and GPU 1."""
    layouts = {"1(x2)": ["all", "all"], "2": ["0", "1"]}
    ports = {layout: free_port() for layout in layouts}
    procs = {(layout, task): _srun_task(layout, task, ports[layout])
             for layout in layouts for task in (0, 1)}
    for (layout, task), proc in procs.items():
        facts = result(proc, f"task {task} of {layout}", TIMEOUT_S)
        assert facts == {"process_index": task, "process_count": 2, "local_devices": 1,
                         "global_devices": 2, "platform": "cpu",
                         "coordinator": f"localhost:{ports[layout]}", "joined": True,
                         "gpus": layouts[layout][task]}, (layout, task)
