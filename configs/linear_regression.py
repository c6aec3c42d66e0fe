"""Linear regression by gradient descent: 256 learning rates x 4 seeds as one compiled sweep.

    jaxmath run configs/linear_regression.py --workdir runs/linear_regression
    jaxmath run configs/linear_regression.py:quick --workdir /tmp/lr_quick    # smoke, seconds

Expected (2-core CPU, 24-26 s): 1,024 runs of 1,000 steps in one compiled, vmapped program;
eta_c = 2/lambda_max = 0.946, 0.936, 1.011, 0.889 for seeds 0-3; 723 runs converged, all
within 2.2e-6 (relative) of np.linalg.lstsq (target 1e-4); 300 diverged (293 with non-finite
losses); every run with eta < 0.98 eta_c converged and every one with eta > 1.02 eta_c
diverged (the measured boundary lies between 0.988 and 1.001 eta_c): target met.
"""

from __future__ import annotations

import ml_collections

from jaxmath.run.config import apply_variant


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment = "linear_regression"
    config.seed = 0                 # the seed whose loss curves are plotted
    config.data = ml_collections.ConfigDict({
        "num_samples": 128,
        "num_features": 8,
        "min_scale": 0.5,           # feature scales evenly spaced in [min_scale, 1]
        "noise": 0.1,
    })
    config.num_steps = 1000
    # One compiled program: every learning rate x seed (data and initial point) at once.
    config.sweep = ml_collections.ConfigDict({
        "kind": "grid",
        "axes": {"learning_rate": {"logspace": (-1.3, 0.5, 256)}, "seed": (0, 1, 2, 3)},
        "chunk_size": 0,            # 0: the whole sweep in one call
    })
    config.margin = 0.02            # runs within 2 % of eta_c = 2/lambda_max are not judged
    config.grad_rtol = 1e-5         # converged: |grad L(theta_T)| <= grad_rtol |grad L(theta_0)|
    config.param_rtol = 1e-4        # converged runs: |theta - theta*| / |theta*| (target)
    config.num_curves = 10          # learning rates drawn in loss_curves.png
    return apply_variant(config, variant, quick={
        "num_steps": 300,
        "sweep.axes.learning_rate": {"logspace": (-0.5, 0.3, 16)},
        "sweep.axes.seed": (0, 1),
        "num_curves": 6,
    })
