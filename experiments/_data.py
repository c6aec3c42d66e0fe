"""The experiments' data: scikit-learn's bundled datasets as stratified train/test splits, and
the image task's data, the bundled digits or the user's own files (``config.data.path``)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from jaxmath.run.config import ConfigError
from jaxmath.run.local_data import ImageDataset, load_dataset, scale_to_unit

LOADERS = ("iris", "wine", "breast_cancer", "digits")
DIGITS_MAX = 16.0  # the digits' grey levels are 0..16
DIGITS_SIDE = 8    # ... of 8x8 images


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


def load_images(data, split_seed: int) -> ImageDataset:
    """The image task's data: the user's files at ``data.path``, or the bundled digits.

    ``data`` is an experiment's ``config.data`` block with ``path`` (None: scikit-learn's
    8x8 digits, split by :func:`load_sklearn` with ``data.test_fraction`` and
    ``split_seed``), ``format`` (``"auto"`` or one of :data:`jaxmath.run.local_data.FORMATS`)
    and ``test_fraction`` (the held-out share where the files hold no test split).

    Returns:
      An :class:`~jaxmath.run.local_data.ImageDataset` with float32 images ``[N, H, W, C]``
      in [0, 1] (digits: grey levels / 16; files: :func:`~jaxmath.run.local_data.scale_to_unit`).

    Raises:
      ConfigError: a path that cannot be loaded, naming ``config.data.path`` and why.
    """
    path = data.get("path")
    if path is None:
        split = load_sklearn("digits", data.test_fraction, split_seed, standardize=False)

        def images(x):
            return (x / DIGITS_MAX).reshape(-1, DIGITS_SIDE, DIGITS_SIDE, 1)

        return ImageDataset(images(split.x_train), split.y_train, images(split.x_test),
                            split.y_test, split.num_classes,
                            tuple(str(k) for k in range(split.num_classes)), "sklearn_digits")
    fmt = data.get("format", "auto")
    try:
        files = load_dataset(path, fmt, test_fraction=data.test_fraction, seed=split_seed)
    except (ValueError, TypeError, OSError) as e:
        raise ConfigError(f"config.data.path={path!r} (format {fmt!r}): {e}") from None
    return files._replace(x_train=scale_to_unit(files.x_train),
                          x_test=scale_to_unit(files.x_test))


def describe(images: ImageDataset, prefix: str = "") -> dict[str, Any]:
    """Summary fields that say which images a run used: their format and ``HxWxC`` shape."""
    return {f"{prefix}data_format": images.format,
            f"{prefix}image_shape": "x".join(map(str, images.x_train.shape[1:]))}
