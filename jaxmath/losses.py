r"""Loss functions: mean squared error and the cross-entropies.

:func:`cross_entropy` and :func:`binary_cross_entropy` live in
:mod:`jaxmath.probability` and are re-exported here, so every loss can be found
in one place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxmath import _checks
from jaxmath.nn import _softmax_kernels
from jaxmath.probability import binary_cross_entropy, cross_entropy

ArrayLike = jax.typing.ArrayLike

__all__ = ["binary_cross_entropy", "cross_entropy", "mse", "softmax_cross_entropy"]


def mse(y_true: ArrayLike, y_pred: ArrayLike, weights: ArrayLike | None = None,
        where: ArrayLike | None = None) -> jax.Array:
    r"""Mean squared error, optionally weighted or masked.

    .. math:: \mathrm{MSE} = \frac{\sum_i w_i m_i (y_i - \hat y_i)^2}{\sum_i w_i m_i}

    with :math:`w_i = 1` without ``weights`` and :math:`m_i = 1` without
    ``where``, which gives the plain :math:`\frac1n \sum_i (y_i - \hat y_i)^2`.

    Args:
      y_true: targets, any shape.
      y_pred: predictions, the same shape as ``y_true`` (not broadcast, so that
        ``[n]`` against ``[n, 1]`` is an error rather than an ``[n, n]`` loss).
      weights: optional non-negative weights broadcastable to ``y_true.shape``.
      where: optional boolean mask broadcastable to ``y_true.shape``; True = include.
        An excluded element is treated as deleted, whatever ``y_true``, ``y_pred`` and
        ``weights`` hold there (inf or NaN included): its gradient is exactly 0.

    Returns:
      A scalar. If no element is selected (``where`` all False, or the selected
      weights sum to 0) the mean over the empty set is defined as 0, with zero
      gradient, rather than NaN. The gradient with respect to ``y_pred`` is
      :math:`2 w_i m_i (\hat y_i - y_i) / \sum_j w_j m_j`.

    Example:
      >>> float(mse(jnp.array([1.0, 2.0, 3.0]), jnp.array([1.1, 1.9, 3.2])))
      0.02
      >>> float(mse(jnp.array([1.0, 2.0]), jnp.array([2.0, 4.0]), weights=jnp.array([3.0, 1.0])))
      1.75
    """
    y, y_hat = _checks.as_floats((y_true, "y_true"), (y_pred, "y_pred"))
    _checks.check_same_shape(y, y_hat, "y_true", "y_pred")
    _checks.check_nonempty(y, "y_true")
    shape = tuple(y.shape)
    w = None
    if weights is not None:
        w = _checks.as_float(weights, "weights")
        if _checks.broadcast_shapes((y, "y_true"), (w, "weights")) != shape:
            raise ValueError(f"weights must broadcast to the shape of y_true {shape}, got "
                             f"weights.shape={tuple(w.shape)}")
    return _mse(y, y_hat, w, _checks.check_mask(where, shape, "y_true"))


@jax.jit
def _mse(y: jax.Array, y_hat: jax.Array, w: jax.Array | None,
         mask: jax.Array | None) -> jax.Array:
    dtype = y.dtype
    y, y_hat = (a.astype(jnp.promote_types(dtype, jnp.float32)) for a in (y, y_hat))
    if w is None and mask is None:
        return jnp.mean(jnp.square(y_hat - y)).astype(dtype)
    w = jnp.ones((), y.dtype) if w is None else w.astype(y.dtype)
    if mask is not None:
        w = jnp.where(mask, w, 0)
    w = jnp.broadcast_to(w, y.shape)
    # Excluded entries (possibly inf or NaN) are zeroed before squaring, so they reach
    # neither the sum nor the gradient.
    err = jnp.where(w != 0, y_hat - y, 0)
    total = jnp.sum(w)
    nonzero = total != 0
    out = jnp.where(nonzero, jnp.sum(w * jnp.square(err)) / jnp.where(nonzero, total, 1), 0)
    return out.astype(dtype)


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike,
                          axis: int | Sequence[int] = -1,
                          label_smoothing: float | ArrayLike = 0.0,
                          where: ArrayLike | None = None, validate: bool = False) -> jax.Array:
    r"""Cross-entropy between targets and the softmax of ``logits``, per example.

    .. math:: \ell = -\sum_{k \in W} t_k \log \sigma_W(z)_k,
       \qquad t = (1 - \varepsilon)\, y + \varepsilon / |W|

    where :math:`y` is the one-hot label or the target distribution,
    :math:`\varepsilon` the label smoothing, :math:`W` the classes that ``where``
    includes (all :math:`K` by default) and :math:`\sigma_W` the softmax over them.
    The log-softmax is computed stably in log space.

    Args:
      logits: ``[..., K]`` unnormalised log probabilities (classes along ``axis``).
      labels: either integer class indices of shape ``logits.shape`` without
        ``axis`` (integer dtype), or target probabilities of the shape of
        ``logits`` (floating dtype). The dtype decides which.
      axis: the class axis of ``logits``, or a tuple of axes that hold the classes
        together (:math:`K` is then the product of their sizes). An integer label is
        then a flat index into them, in the order given, as in optax's
        ``softmax_cross_entropy_with_integer_labels``:
        ``np.ravel_multi_index(index, [logits.shape[a] for a in axis])``.
      label_smoothing: :math:`\varepsilon` in [0, 1], as in
        ``torch.nn.functional.cross_entropy(label_smoothing=...)``; a scalar that
        may be traced (e.g. swept with ``jax.vmap``), checked when concrete.
      where: optional boolean mask, True = include (the optax/jax.nn rule), read in
        one of two ways:

        * If it broadcasts to ``logits.shape`` (NumPy's rule, aligned on the right) it
          masks entries: excluded classes get probability 0, are left out of the
          smoothing, and contribute nothing to the loss, whatever the logits and
          targets hold there. This reading is tried first, so a mask that fits both
          (e.g. ``[B]`` when ``B == K``) masks classes.
        * Otherwise, if it broadcasts to the loss's shape (``logits.shape`` without
          ``axis``) it masks examples, as optax's ``where`` of the batch shape does.
          An excluded example is an example with every class excluded.

        Any other shape is a ValueError naming both. To mask examples unambiguously,
        give the mask the rank of ``logits`` with size 1 on the class axes
        (``jnp.expand_dims(mask, axis)``).
      validate: also check traced integer labels (through ``checkify``, see
        :mod:`jaxmath._checks`) and check that floating targets are distributions
        (over the included classes).

    Returns:
      ``[...]`` losses, one per example (``logits.shape`` without ``axis``); take
      the mean for the usual batch loss. Terms with target 0 contribute 0 even
      where the logit is ``-inf``; positive target mass on a ``-inf`` (included)
      class gives +inf. An example with no included class (an excluded example)
      gives exactly 0 with zero gradient; an integer label on an excluded class
      contributes nothing (the loss is then that of the smoothing alone).
      Gradients with respect to ``logits`` are :math:`\sigma_W(z) \sum_k t_k - t`
      on included classes, 0 on excluded ones, finite even for logits of
      :math:`\pm 10^4`.

    Raises:
      ValueError: integer labels outside ``[0, K)``, whenever they (and ``where``) are
        concrete; the labels of excluded examples are not checked (they may hold a
        padding value such as -1). Traced labels (under ``jax.jit``) are checked with
        ``validate=True`` inside ``checkify.checkify``; otherwise the loss of such an
        included example is NaN rather than a silently wrong number.

    Example:
      >>> logits = jnp.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
      >>> print(softmax_cross_entropy(logits, jnp.array([0, 1])).tolist())
      [0.4170, 0.2200]
      >>> soft = jnp.array([[0.9, 0.1, 0.0], [0.0, 1.0, 0.0]])
      >>> print(softmax_cross_entropy(logits, soft).tolist())
      [0.5170, 0.2200]
      >>> print(softmax_cross_entropy(logits, jnp.array([0, -1]),
      ...                             where=jnp.array([True, False])).tolist())
      [0.4170, 0.0]
    """
    logits = _checks.as_float(logits, "logits")
    axes = _checks.check_axes(logits, axis, "logits")
    axis = axes[0] if isinstance(axis, int | np.integer) else axes
    _checks.check_nonempty(logits, "logits", axis)
    num_classes = math.prod(logits.shape[a] for a in axes)
    shape = tuple(logits.shape)
    batch_shape = tuple(n for i, n in enumerate(shape) if i not in axes)
    mask = _checks.check_mask(where, shape, "logits", rows=axes)
    smoothing = _checks.as_float(label_smoothing, "label_smoothing")
    _checks.check_ndim(smoothing, "label_smoothing", 0)
    # Read the range from the argument itself: under jit even a constant becomes a tracer
    # once converted with jnp.
    if not _checks.is_tracer(label_smoothing) and not 0 <= float(
            np.asarray(label_smoothing)) <= 1:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")

    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        if tuple(labels.shape) != batch_shape:
            raise ValueError(
                f"integer labels must have the shape of logits without axis {axis}, i.e. "
                f"{batch_shape}, got labels.shape={tuple(labels.shape)} for "
                f"logits.shape={shape}")
        message = (f"integer labels must lie in [0, {num_classes}) for logits with "
                   f"{num_classes} classes along axis {axis}")
        counted = None if mask is None else jnp.any(jnp.broadcast_to(mask, shape), axis=axes)
        if not _checks.is_tracer(labels) and not _checks.is_tracer(counted):
            values = np.asarray(labels)
            if counted is not None:  # the labels of excluded examples are not read
                values = values[np.asarray(counted)]
            if np.any((values < 0) | (values >= num_classes)):
                raise ValueError(f"{message}, got values from {values.min()} to {values.max()}")
        elif validate:
            in_range = (labels >= 0) & (labels < num_classes)
            _checks.check_values(in_range if counted is None else in_range | ~counted,
                                 message)
    elif jnp.issubdtype(labels.dtype, jnp.floating):
        _checks.check_same_shape(labels, logits, "labels", "logits")
        if validate:
            _checks.check_distribution(labels, "labels", axis, where=mask)
    else:
        raise TypeError(f"labels must be integer class indices or floating target "
                        f"probabilities, got dtype {labels.dtype}")
    if isinstance(axis, tuple):  # classes last, flattened (a label is a flat index)
        return _softmax_cross_entropy_axes(logits, labels, mask, smoothing, axis)
    return _softmax_cross_entropy(logits, labels, mask, smoothing, axis)


@partial(jax.jit, static_argnames="axes")
def _softmax_cross_entropy_axes(logits: jax.Array, labels: jax.Array, mask: jax.Array | None,
                                smoothing: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    batch = tuple(a for a in range(logits.ndim) if a not in axes)
    order = batch + axes

    def flat(x: jax.Array) -> jax.Array:
        x = jnp.transpose(jnp.broadcast_to(x, logits.shape), order)
        return x.reshape((*x.shape[:len(batch)], -1))

    if jnp.issubdtype(labels.dtype, jnp.floating):
        labels = flat(labels)
    return _softmax_cross_entropy(flat(logits), labels, None if mask is None else flat(mask),
                                  smoothing, len(batch))


@partial(jax.jit, static_argnames="axis")
def _softmax_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None,
                           smoothing: jax.Array, axis: int) -> jax.Array:
    dtype = jnp.promote_types(logits.dtype, jnp.float32)
    num_classes = logits.shape[axis]
    valid = None
    if jnp.issubdtype(labels.dtype, jnp.integer):
        valid = (labels >= 0) & (labels < num_classes)
        targets = jax.nn.one_hot(labels, num_classes, dtype=dtype, axis=axis)
    else:
        targets = labels.astype(dtype)
    smoothing = smoothing.astype(dtype)
    if mask is None:
        uniform = jnp.full((), 1 / num_classes, dtype)
        targets = (1 - smoothing) * targets + smoothing * uniform
        log_p = _softmax_kernels.log_softmax(logits.astype(dtype), axis)
        # 0 * log p = 0 even where log p = -inf; the inner where keeps that gradient finite.
        terms = targets * jnp.where((targets == 0) & jnp.isneginf(log_p), 0, log_p)
        loss = -jnp.sum(terms, axis=axis)
        if valid is not None:
            loss = jnp.where(valid, loss, jnp.nan)
        return loss.astype(logits.dtype)

    included = jnp.broadcast_to(mask, logits.shape)
    count = jnp.sum(included, axis=axis, keepdims=True, dtype=dtype)
    uniform = included / jnp.maximum(count, 1)
    # Excluded classes are deleted: their targets (possibly inf or NaN) become 0 and
    # their log-probabilities (-inf) a finite 0 before the product, so they reach
    # neither the sum nor any gradient.
    targets = (1 - smoothing) * jnp.where(included, targets, 0) + smoothing * uniform
    log_p = _softmax_kernels.log_softmax(logits.astype(dtype), axis, mask)
    log_p = jnp.where(included, log_p, 0)
    terms = targets * jnp.where((targets == 0) & jnp.isneginf(log_p), 0, log_p)
    loss = -jnp.sum(terms, axis=axis)
    counted = jnp.squeeze(count, axis) > 0
    if valid is not None:
        loss = jnp.where(valid | ~counted, loss, jnp.nan)
    return jnp.where(counted, loss, 0).astype(logits.dtype)
