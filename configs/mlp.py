"""MLP by backprop (jax.grad + optax AdamW) on two-moons and digits: digits test accuracy >= 97%.

    jaxmath run configs/mlp.py --workdir runs/mlp
    jaxmath run configs/mlp.py:quick --workdir /tmp/mlp_quick    # smoke variant, seconds

Expected (seed 0): digits test accuracy 0.9844 (7 of 450 wrong; target >= 0.97), two-moons
test accuracy 0.9648 (noise 0.2: the classes overlap). Seeds 1 and 2: digits 0.9867 and
0.9844. Time: 23-42 s wall (18-21 s CPU) on a shared 2-core CPU at load average 6-8.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from jaxmath.run.config import apply_variant
from jaxmath.run.mesh import mesh_config
from jaxmath.run.writers import logging_config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment = "mlp"
    config.seed = 0                  # initialisation, minibatches and the two-moons samples
    config.num_steps = 1000
    config.log_every = 100
    config.checkpoint_every = 500
    # updates per jitted call (train_loop): None scans the steps between two log steps on a
    # GPU/TPU and makes one call per step on a CPU (faster there); 0 always scans, 1 never
    config.steps_per_call = config_dict.placeholder(int)
    config.eval_every = config_dict.placeholder(int)  # held-out evaluation; None: each log step
    config.best_metric = "digits_test_accuracy"  # checkpoints_best/ keeps the best state by it
    config.best_mode = "max"
    config.profile_steps = config_dict.placeholder(str)  # "A:B": a profile of updates A+1..B
    config.batch_size = 128          # per dataset
    config.data = ml_collections.ConfigDict({
        # the image task: None, scikit-learn's bundled 8x8 digits; or the user's images (a
        # directory of MNIST IDX files, of CIFAR-10 batches, of class folders, or a .npz)
        # as flattened pixels (jaxmath.run.local_data; README "Your own images")
        "path": config_dict.placeholder(str),
        "format": "auto",            # or "idx", "cifar10", "npz", "image_folder"
        "split_seed": 0,             # the digits train/test split
        "test_fraction": 0.25,       # held out (where the files hold no test split)
        "two_moons_train": 512,
        "two_moons_test": 2048,
        "two_moons_noise": 0.2,
    })
    config.label_smoothing = 0.1    # of the cross-entropy targets
    config.model = ml_collections.ConfigDict({"hidden": (256, 256)})
    config.optim = ml_collections.ConfigDict({
        "learning_rate": 1e-3,       # peak of the warm-up + cosine schedule
        "warmup_steps": 50,
        "weight_decay": 1e-4,
    })
    config.target_accuracy = 0.97    # digits test accuracy
    # devices: the batch over data x fsdp, weights sharded over fsdp (docs/scaling.md)
    config.mesh = mesh_config()
    # rows also to TensorBoard (workdir/tensorboard); W&B with --config.logging.wandb.enabled=True
    config.logging = logging_config()
    return apply_variant(config, variant, quick={
        "num_steps": 20,
        "log_every": 10,
        "checkpoint_every": 20,
        "model.hidden": (32,),
    })
