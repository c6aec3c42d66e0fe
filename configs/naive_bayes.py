"""Gaussian naive Bayes on iris, wine, breast_cancer and digits, against scikit-learn.

    jaxmath run configs/naive_bayes.py --workdir runs/naive_bayes
    jaxmath run configs/naive_bayes.py:quick --workdir /tmp/nb_quick    # smoke variant, seconds

Expected (2-core CPU, 9-21 s): test accuracy (mean of 5 stratified 75/25 splits) iris 0.963,
wine 0.969, breast_cancer 0.936, digits 0.851, for jaxmath and scikit-learn alike; largest
gap 0.0 points (target <= 0.5) and identical predictions on every test point.
"""

from __future__ import annotations

import ml_collections

from jaxmath.run.config import apply_variant


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment = "naive_bayes"
    config.seed = 0                 # split seeds: seed, seed + 1, ..., seed + num_splits - 1
    config.datasets = ("iris", "wine", "breast_cancer", "digits")
    config.num_splits = 5
    config.test_fraction = 0.25
    config.var_smoothing = 1e-9     # scikit-learn's default
    config.target_gap_points = 0.5  # |accuracy - scikit-learn's| in percentage points (target)
    return apply_variant(config, variant, quick={
        "datasets": ("iris", "wine"),
        "num_splits": 1,
    })
