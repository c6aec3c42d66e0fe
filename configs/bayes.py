"""Bayes' theorem for a disease test: P(D|T+) over prevalence x sensitivity x false-positive rate.

    jaxmath run configs/bayes.py --workdir runs/bayes
    jaxmath run configs/bayes.py:quick --workdir /tmp/bayes_quick    # smoke variant, seconds

Expected (2-core CPU, 7-8 s in all, the grid itself 0.03 s): a 193 x 101 x 193 grid (3.76
million posteriors) in one vmapped call; P(D|T+) = 0.33333334 (float32) at the blog post's
example (prevalence 0.01, sensitivity 0.99, false-positive rate 0.02) against the exact 1/3
(error 1e-8); max abs error vs float64 NumPy 1.1e-7; target (both errors <= 1e-6) met.
"""

from __future__ import annotations

import ml_collections

from jaxmath.run.config import apply_variant


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment = "bayes"
    config.seed = 0  # unused: the experiment is deterministic
    # Axes: {"logspace": (lo, hi, n)} (exponents of 10) or {"linspace": (lo, hi, n)};
    # the example's value is added to each axis.
    config.grid = ml_collections.ConfigDict({
        "prevalence": {"logspace": (-5.0, 0.0, 192)},
        "sensitivity": {"linspace": (0.5, 1.0, 101)},
        "false_positive_rate": {"logspace": (-5.0, 0.0, 192)},
    })
    # The blog post's example: 1 % prevalence, a 99 %-sensitive test, 2 % false positives.
    config.example = ml_collections.ConfigDict({
        "prevalence": 0.01, "sensitivity": 0.99, "false_positive_rate": 0.02})
    config.tolerance = 1e-6  # max abs error of the float32 grid (target)
    return apply_variant(config, variant, quick={
        "grid.prevalence": {"logspace": (-4.0, 0.0, 16)},
        "grid.sensitivity": {"linspace": (0.5, 1.0, 8)},
        "grid.false_positive_rate": {"logspace": (-4.0, 0.0, 16)},
    })
