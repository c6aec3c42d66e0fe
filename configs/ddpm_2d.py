"""DDPM on two moons, Swiss roll and eight Gaussians (MLP denoiser): DDPM vs 10x-faster DDIM.

    jaxmath run configs/ddpm_2d.py --workdir runs/ddpm_2d
    jaxmath run configs/ddpm_2d.py:quick --workdir /tmp/ddpm_2d_quick    # smoke, ~15 s

Expected (2-core CPU shared at load ~1.2-1.9: 59-71 s wall, 87-104 s CPU; bit-identical
across runs): three MLP denoisers (64 wide, 2 residual blocks) trained as one vmapped program,
4,000 Adam steps of 512 points per dataset in ~36 s. Sliced W2 to 2,000 held-out points,
DDPM (1,000 steps) / DDIM (100 steps) / reference (two independent data draws):
two_moons 0.093 / 0.076 / 0.058, swiss_roll 0.068 / 0.045 / 0.041, eight_gaussians
0.115 / 0.058 / 0.104; worst DDPM ratio 1.67 and DDIM 1.31 against the target
SW <= 2 x reference on every dataset: target met. Sampling 3 x 2,000 points: DDPM 4.1-6.5 s,
DDIM 0.53-0.56 s (7.8x faster). The quick variant takes ~14 s (mostly compilation).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from jaxmath.run.config import apply_variant
from jaxmath.run.mesh import mesh_config
from jaxmath.run.writers import logging_config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment = "ddpm_2d"
    config.seed = 0
    config.data = ml_collections.ConfigDict({
        "datasets": ("two_moons", "swiss_roll", "eight_gaussians"),
        "num_train": 10_000,        # per dataset, standardised with its own mean and std
        "two_moons": {"noise": 0.1},
        "swiss_roll": {"noise": 0.1},
        "eight_gaussians": {"radius": 2.0, "std": 0.1},
    })
    config.model = ml_collections.ConfigDict({
        "features": 64,
        "num_blocks": 2,
        "schedule": "linear",
        "num_timesteps": 1000,
        "prediction_type": "epsilon",
    })
    config.optim = ml_collections.ConfigDict({
        "learning_rate": 2e-3,
        "warmup_steps": 100,
        "end_factor": 0.05,         # cosine decay to end_factor * learning_rate ...
        "decay_steps": 4000,        # ... at this step (set it with num_steps)
        "grad_clip": 1.0,
        "ema_decay": 0.995,         # samples come from the moving average of the parameters
    })
    config.batch_size = 512         # per dataset
    config.num_steps = 4000
    config.log_every = 20
    config.checkpoint_every = 1000
    # updates per jitted call (train_loop): None scans the steps between two log steps on a
    # GPU/TPU and makes one call per step on a CPU (faster there); 0 always scans, 1 never
    config.steps_per_call = config_dict.placeholder(int)
    config.eval_every = 200  # the held-out denoising loss, every this many steps and the last
    config.best_metric = "heldout_loss"  # checkpoints_best/ keeps the EMA state lowest on it
    config.best_mode = "min"
    config.profile_steps = config_dict.placeholder(str)  # "A:B": a profile of updates A+1..B
    config.eval = ml_collections.ConfigDict({
        "num_eval": 2000,           # samples per sampler and dataset; held-out set size
        "num_reference": 8,         # independent held-out draws for the reference level
        "ddim_factor": 10,          # DDIM takes num_timesteps // ddim_factor steps
        "timestep_spacing": "trailing",
        "num_projections": 256,     # sliced Wasserstein directions
        "bandwidth_points": 1000,   # held-out points for the median-heuristic MMD bandwidth
        "target_factor": 2.0,       # target: SW_2(DDPM, held-out) <= factor x reference
    })
    # devices: the batch over data x fsdp, weights sharded over fsdp (docs/scaling.md)
    config.mesh = mesh_config()
    # rows also to TensorBoard (workdir/tensorboard); W&B with --config.logging.wandb.enabled=True
    config.logging = logging_config()
    return apply_variant(config, variant, quick={
        "data.datasets": ("two_moons", "eight_gaussians"),
        "data.num_train": 512,
        "model.features": 16,
        "model.num_blocks": 1,
        "model.num_timesteps": 50,
        "batch_size": 64,
        "num_steps": 20,
        "optim.decay_steps": 20,
        "optim.warmup_steps": 5,
        "log_every": 10,
        "checkpoint_every": 20,
        "eval_every": 10,
        "eval.num_eval": 128,
        "eval.num_reference": 2,
        "eval.num_projections": 32,
        "eval.bandwidth_points": 128,
    })
