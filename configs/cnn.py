"""CNN (jaxmath.nn.Conv2D) on the 8x8 digits with random-shift augmentation: test accuracy >= 98%.

    jaxmath run configs/cnn.py --workdir runs/cnn
    jaxmath run configs/cnn.py:quick --workdir /tmp/cnn_quick    # smoke variant, seconds

Expected (seed 0): test accuracy 0.9889 (5 of 450 wrong; target >= 0.98). Seeds 1 and 2:
0.9911 and 0.9956; without the shift augmentation (--config.augment_shift=0) seeds 0-2
give 0.9844, 0.9867 and 0.9822. Time: 40-66 s wall (28-33 s CPU) on a shared 2-core CPU
at load average 4-8.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from jaxmath.run.config import apply_variant
from jaxmath.run.mesh import mesh_config
from jaxmath.run.writers import logging_config


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment = "cnn"
    config.seed = 0                  # initialisation, minibatches and shifts
    config.num_steps = 600
    config.log_every = 50
    config.checkpoint_every = 200
    # updates per jitted call (train_loop): None scans the steps between two log steps on a
    # GPU/TPU and makes one call per step on a CPU (faster there); 0 always scans, 1 never
    config.steps_per_call = config_dict.placeholder(int)
    config.eval_every = config_dict.placeholder(int)  # held-out evaluation; None: each log step
    config.best_metric = "test_accuracy"  # checkpoints_best/ keeps the best state by it
    config.best_mode = "max"
    config.profile_steps = config_dict.placeholder(str)  # "A:B": a profile of updates A+1..B
    config.batch_size = 128
    config.augment_shift = 1         # random translation, pixels in each direction
    config.label_smoothing = 0.0
    config.data = ml_collections.ConfigDict({
        # None: scikit-learn's bundled 8x8 digits; or the user's images: a directory of MNIST
        # IDX files, of CIFAR-10 python batches, of class folders, or a .npz
        # (jaxmath.run.local_data; README "Your own images")
        "path": config_dict.placeholder(str),
        "format": "auto",            # or "idx", "cifar10", "npz", "image_folder"
        "split_seed": 0,
        "test_fraction": 0.25,       # held out (where the files hold no test split)
    })
    config.model = ml_collections.ConfigDict({"features": (16, 32, 32), "hidden": 128})
    config.optim = ml_collections.ConfigDict({
        "learning_rate": 2e-3,       # peak of the warm-up + cosine schedule
        "warmup_steps": 50,
        "weight_decay": 1e-4,
    })
    config.target_accuracy = 0.98    # test accuracy
    # devices: the batch over data x fsdp, weights sharded over fsdp (docs/scaling.md)
    config.mesh = mesh_config()
    # rows also to TensorBoard (workdir/tensorboard); W&B with --config.logging.wandb.enabled=True
    config.logging = logging_config()
    return apply_variant(config, variant, quick={
        "num_steps": 10,
        "log_every": 5,
        "checkpoint_every": 10,
        "batch_size": 32,
        "model.features": (4, 8, 8),
        "model.hidden": 16,
    })
