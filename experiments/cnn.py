r"""A convolutional network on the 8x8 handwritten digits.

Data. scikit-learn's 1,797 8x8 digits (grey levels 0..16 scaled to [0, 1], one channel,
NHWC), split 75/25 stratified by class (``experiments._data.load_sklearn``, split seed
``data.split_seed``): 1,347 training and 450 test images. With ``data.path`` set, the
user's images instead (MNIST IDX files, CIFAR-10 batches, a ``.npz`` or a folder of class
folders, read by :func:`jaxmath.run.local_data.load_dataset`; their own test split, or
``data.test_fraction`` held out), scaled to [0, 1]; the network below then sees
:math:`H{\times}W{\times}C` images (at least 4x4) and their number of classes.

Model. Three 3x3 convolutions (:class:`jaxmath.nn.Conv2D`, 'SAME' padding) with relu,
2x2 max-pooling after the second and the third, then a relu dense layer and the logits:

.. math:: 8{\times}8{\times}1 \xrightarrow{\mathrm{conv}} 8{\times}8{\times}c_1
          \xrightarrow{\mathrm{conv,\,pool}} 4{\times}4{\times}c_2
          \xrightarrow{\mathrm{conv,\,pool}} 2{\times}2{\times}c_3
          \xrightarrow{\mathrm{dense}} h \xrightarrow{\mathrm{dense}} 10,

with :math:`(c_1, c_2, c_3)` = ``model.features`` and :math:`h` = ``model.hidden``. Each
convolution is :math:`y[n,i,j,o] = b_o + \sum_{u,v,c} x[n, i+u-1, j+v-1, c]\,k[u,v,c,o]`
(zero padding), computed by :func:`jaxmath.nn.conv2d`.

Method. The mean softmax cross-entropy (:func:`jaxmath.softmax_cross_entropy`) of
minibatches of ``batch_size`` training images drawn with replacement is minimised by
AdamW with warm-up and cosine decay (the training step of :mod:`experiments._train`:
``jax.grad`` and optax, run by :func:`jaxmath.run.loop.train_loop`; the images sit on the
device and the steps between two log steps run as one compiled ``lax.scan``, which
draws and shifts each minibatch from the traced step). Each training image is
translated by a random offset of up to ``augment_shift`` pixels in each direction (zero
fill), drawn from ``fold_in(key, step)`` like the batch: with 8x8 images a one-pixel
shift is a large, label-preserving change, and it took the test accuracy from 98.4% to
99.2% (mean over seeds 0, 1, 2 of the default config). Every ``log_every`` steps the loop
records the minibatch loss and the training- and test-set accuracies.

Target. Test accuracy >= ``target_accuracy`` (0.98), i.e. at most 9 of the 450 test
images misclassified.

Plots. ``curves.png``: training loss and train/test accuracy against the step;
``misclassified.png``: every misclassified test image with its true and predicted
label; ``filters.png``: the first layer's 3x3 kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from jaxmath._checks import check_ndim
from jaxmath.losses import softmax_cross_entropy
from jaxmath.nn import Conv2D
from jaxmath.run.config import ConfigError
from jaxmath.run.mesh import on_every_device
from jaxmath.run.report import save_figure

from ._data import ImageDataset, describe, load_images
from ._train import (
    accuracy,
    classifier_summary,
    count_params,
    plot_curves,
    train_classifier,
    training_mesh,
)


class CNN(nn.Module):
    """``[N, H, W, C]`` images (the digits: 8x8x1) to ``[N, num_classes]`` logits (see the
    module docstring)."""

    features: Sequence[int] = (16, 32, 32)
    hidden: int = 128
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c1, c2, c3 = self.features
        x = nn.relu(Conv2D(c1, 3, padding="SAME")(x))
        x = nn.relu(Conv2D(c2, 3, padding="SAME")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(Conv2D(c3, 3, padding="SAME")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x)


def random_shift(key: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
    """Translate each ``[N, H, W, C]`` image by its own offset in ``[-max_shift, max_shift]^2``.

    Pixels shifted in are 0 (the digits' background); ``max_shift = 0`` is the identity.
    """
    images = jnp.asarray(images)
    check_ndim(images, "images", 4)
    n, h, w, c = images.shape
    if (isinstance(max_shift, bool) or not isinstance(max_shift, int | np.integer)
            or not 0 <= max_shift < min(h, w)):
        raise ValueError(f"max_shift must be an int in [0, {min(h, w)}) for images of shape "
                         f"{tuple(images.shape)}, got {max_shift!r}")
    if max_shift == 0:
        return images
    pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
    padded = jnp.pad(images, pad)
    # drawn flat: XLA:CPU compiles the threefry of a 1-D shape much faster than of a 2-D one
    offsets = jax.random.randint(key, (2 * n,), 0, 2 * max_shift + 1).reshape(n, 2)
    crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c))  # noqa: E731
    return jax.vmap(crop)(padded, offsets)


@partial(jax.jit, static_argnames=("batch_size", "max_shift"))
def sample_batch(key: jax.Array, step: jax.Array, x: jax.Array, y: jax.Array,
                 batch_size: int, max_shift: int) -> tuple[jax.Array, jax.Array]:
    """A minibatch drawn with replacement and randomly shifted, from ``fold_in(key, step)``."""
    key_idx, key_shift = jax.random.split(jax.random.fold_in(key, step))
    idx = jax.random.randint(key_idx, (batch_size,), 0, x.shape[0])
    return random_shift(key_shift, x[idx], max_shift), y[idx]


MIN_SIDE = 4  # two 2x2 poolings leave at least one pixel
EVAL_BATCH = 4096  # larger evaluation sets (MNIST, CIFAR-10) go through in chunks of this


def predict(model: CNN, params, x: jax.Array) -> jax.Array:
    """``[N]`` predicted classes: one forward pass, or chunks of :data:`EVAL_BATCH` images
    (``lax.map``) when ``N`` is larger, so memory stays bounded on the user's big datasets."""
    n = x.shape[0]
    if n <= EVAL_BATCH:
        return jnp.argmax(model.apply(params, x), axis=-1)
    padded = jnp.pad(x, ((0, -n % EVAL_BATCH),) + ((0, 0),) * (x.ndim - 1))
    chunks = padded.reshape(-1, EVAL_BATCH, *x.shape[1:])
    labels = jax.lax.map(lambda c: jnp.argmax(model.apply(params, c), axis=-1), chunks)
    return labels.reshape(-1)[:n]


def load_digits(config) -> ImageDataset:
    """The digits ``[N, 8, 8, 1]`` (or the images at ``config.data.path``) in [0, 1], int32
    labels; a ConfigError for images too small for the network's two poolings."""
    images = load_images(config.data, config.data.split_seed)
    h, w = images.x_train.shape[1:3]
    if min(h, w) < MIN_SIDE:
        raise ConfigError(f"config.data.path={config.data.path!r}: the CNN pools twice by 2, so "
                          f"images must be at least {MIN_SIDE}x{MIN_SIDE}, got {h}x{w}")
    return images


def _plot_misclassified(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                        max_shown: int = 24) -> Figure:
    wrong = np.flatnonzero(predictions != labels)
    shown = wrong[:max_shown]
    cols = min(8, max(1, len(shown)))
    rows = max(1, -(-len(shown) // cols))
    fig = Figure(figsize=(max(1.3 * cols, 4.0), 1.5 * rows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, shown, strict=False):
        if images.shape[-1] == 3:  # colour
            ax.imshow(images[i])
        else:
            ax.imshow(images[i, :, :, 0], cmap="gray_r", vmin=0, vmax=1)
        ax.set_title(f"true {labels[i]}, pred {predictions[i]}", fontsize=8)
    fig.suptitle(f"misclassified test images: {len(wrong)} of {len(labels)}"
                 + (f" (first {max_shown} shown)" if len(wrong) > max_shown else ""))
    return fig


def _plot_filters(kernel: np.ndarray) -> Figure:
    """``kernel [3, 3, C, c1]``: one panel per output channel (its weights on input channel 0)."""
    count = kernel.shape[-1]
    cols = min(count, 8)
    rows = -(-count // cols)
    fig = Figure(figsize=(1.2 * cols, 1.3 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    bound = float(np.abs(kernel).max())
    for ax in axes:
        ax.axis("off")
    for o, ax in enumerate(axes[:count]):
        ax.imshow(kernel[:, :, 0, o], cmap="RdBu_r", vmin=-bound, vmax=bound)
        ax.set_title(f"filter {o}", fontsize=8)
    fig.suptitle("first-layer 3x3 filters (red > 0 > blue)")
    return fig


def run(config, workdir) -> dict:
    workdir = Path(workdir)
    images = load_digits(config)  # a bad data.path fails here, before any work
    mesh = training_mesh(config)
    x_train, y_train, x_test, y_test = on_every_device(
        tuple(jnp.asarray(a) for a in images[:4]), mesh)
    key_init, key_batch = jax.random.split(jax.random.key(config.seed))
    model = CNN(tuple(config.model.features), config.model.hidden, images.num_classes)

    def loss_fn(params, batch):
        x, y = batch
        logits = model.apply(params, x)
        loss = jnp.mean(softmax_cross_entropy(logits, y, label_smoothing=config.label_smoothing))
        return loss, {"batch_accuracy": accuracy(logits, y)}

    def batch_fn(step):  # traced inside the loop's scan
        return sample_batch(key_batch, step, x_train, y_train, config.batch_size,
                            config.augment_shift)

    @jax.jit
    def test_predictions_and_accuracies(params):
        predictions = predict(model, params, x_test)
        return predictions, {"train_accuracy": jnp.mean(predict(model, params, x_train) == y_train),
                             "test_accuracy": jnp.mean(predictions == y_test)}

    def evaluate(state, step=None) -> dict[str, float]:
        _, metrics = jax.device_get(test_predictions_and_accuracies(state["params"]))
        return {k: float(v) for k, v in metrics.items()}

    result, timing = train_classifier(config, workdir, lambda key: model.init(key, x_train[:1]),
                                      key_init, loss_fn, batch_fn, desc="cnn",
                                      metrics_fn=evaluate, mesh=mesh)
    params = result.state["params"]
    final = evaluate(result.state)
    predictions = np.asarray(test_predictions_and_accuracies(params)[0])

    save_figure(plot_curves(result.history, losses={"train (augmented minibatch)": "loss"},
                            accuracies={"train": "train_accuracy", "test": "test_accuracy"},
                            target=config.target_accuracy, accuracy_label="accuracy"),
                workdir, "curves")
    save_figure(_plot_misclassified(np.asarray(x_test), np.asarray(y_test), predictions),
                workdir, "misclassified")
    save_figure(_plot_filters(np.asarray(params["params"]["Conv2D_0"]["kernel"])),
                workdir, "filters")

    return classifier_summary(
        "test_accuracy", final["test_accuracy"], config.target_accuracy, "test accuracy",
        result, timing, count_params(params), train_accuracy=final["train_accuracy"],
        test_errors=int(np.sum(predictions != np.asarray(y_test))), num_test=len(predictions),
        **describe(images))
