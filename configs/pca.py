"""SVD and PCA of the 8x8 digits: explained variance, 2-D projection, reconstruction error.

    jaxmath run configs/pca.py --workdir runs/pca
    jaxmath run configs/pca.py:quick --workdir /tmp/pca_quick    # smoke variant, seconds

Expected (2-core CPU, 11-23 s): the first two components explain 14.9 % and 13.6 % of the
variance, 21 components reach 90 % and 28 reach 95 %; test MSE per pixel 13.6 with 2
components, 5.05 with 10, 0.81 with 30; explained-variance ratios within 1.1e-7 of
scikit-learn's (target 1e-5) and test reconstruction errors within 2.2e-6 x the total
variance (target 1e-4): target met.
"""

from __future__ import annotations

import ml_collections

from jaxmath.run.config import apply_variant


def get_config(variant: str | None = None) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.experiment = "pca"
    config.seed = 0                # train/test split seed
    config.test_fraction = 0.25
    config.svd_solver = "full"     # jaxmath.PCA and scikit-learn alike
    config.ratio_atol = 1e-5       # |ratio - sklearn ratio| (target)
    config.recon_rtol = 1e-4       # |MSE - sklearn MSE| / total variance per pixel (target)
    config.num_shown = 10          # test digits in reconstructions.png
    config.shown_components = (2, 5, 10, 20, 30, 64)
    return apply_variant(config, variant, quick={
        "num_shown": 4,
        "shown_components": (2, 10),
    })
