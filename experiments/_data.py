"""scikit-learn's bundled datasets as standardised, stratified train/test splits."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

LOADERS = ("iris", "wine", "breast_cancer", "digits")
DIGITS_MAX = 16.0  # the digits' grey levels are 0..16


class Split(NamedTuple):
    x_train: np.ndarray  # [n_train, d] float32
    y_train: np.ndarray  # [n_train] int32
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


def load_sklearn(name: str, test_fraction: float = 0.25, seed: int = 0,
                 standardize: bool = True) -> Split:
    """Load ``sklearn.datasets.load_<name>`` and split it, stratified by class.

    With ``standardize`` each feature is centred and scaled by the training split's
    mean and standard deviation (constant features are left at scale 1), so no test
    statistics leak into training.
    """
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    if name not in LOADERS:
        raise ValueError(f"name must be one of {LOADERS}, got {name!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    data = getattr(datasets, f"load_{name}")()
    x_tr, x_te, y_tr, y_te = train_test_split(
        data.data.astype(np.float64), data.target, test_size=test_fraction,
        random_state=seed, stratify=data.target)
    if standardize:
        mean, std = x_tr.mean(0), x_tr.std(0)
        std = np.where(std > 0, std, 1.0)
        x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    return Split(x_tr.astype(np.float32), y_tr.astype(np.int32), x_te.astype(np.float32),
                 y_te.astype(np.int32), int(data.target.max()) + 1)
