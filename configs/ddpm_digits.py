"""DDPM with a small UNet on the 8x8 digits: a grid of samples, MMD to held-out digits.

    jaxmath run configs/ddpm_digits.py --workdir runs/ddpm_digits
    jaxmath run configs/ddpm_digits.py:quick --workdir /tmp/ddpm_digits_quick    # smoke variant

Expected (2-core CPU, TBD): TBD
"""

from __future__ import annotations

import ml_collections


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment = "ddpm_digits"
    config.seed = 0
    config.data = ml_collections.ConfigDict({"test_fraction": 0.25})
    config.model = ml_collections.ConfigDict({
        "channels": 16,
        "channel_mults": (1, 2),        # 8x8 and 4x4
        "num_res_blocks": 1,
        "attention_resolutions": (),    # self-attention only in the middle (4x4)
        "mid_attention": True,
        "num_heads": 2,
        "num_groups": 8,
        "schedule": "linear",
        "num_timesteps": 1000,
        "prediction_type": "epsilon",
    })
    config.optim = ml_collections.ConfigDict({
        "learning_rate": 2e-3,
        "warmup_steps": 100,
        "end_factor": 0.05,         # cosine decay to end_factor * learning_rate ...
        "decay_steps": 1000,        # ... at this step (set it with num_steps)
        "grad_clip": 1.0,
        "ema_decay": 0.995,         # samples come from the moving average of the parameters
    })
    config.batch_size = 128
    config.num_steps = 1000
    config.log_every = 50
    config.checkpoint_every = 250
    config.sample = ml_collections.ConfigDict({
        "sampler": "ddim",
        "num_inference_steps": 100,
        "timestep_spacing": "trailing",
        "num_samples": 450,             # the size of the held-out split
    })
    config.num_reference = 4            # training-digit subsets for the reference MMD
    config.grid_rows = 10
    config.target_factor = 1.5          # target: MMD(samples, held-out) <= factor x reference
    if variant == "quick":
        config.model.channels = 8
        config.model.channel_mults = (1,)
        config.model.num_groups = 4
        config.model.mid_attention = False
        config.model.num_timesteps = 50
        config.batch_size = 16
        config.num_steps = 10
        config.optim.decay_steps = 10
        config.optim.warmup_steps = 2
        config.log_every = 5
        config.checkpoint_every = 10
        config.sample.num_inference_steps = 5
        config.sample.num_samples = 36
        config.num_reference = 2
        config.grid_rows = 6
    elif variant is not None:
        raise ValueError(f"unknown variant {variant!r}; expected None or 'quick'")
    return config
