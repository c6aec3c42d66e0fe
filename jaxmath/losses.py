r"""Loss functions: mean squared error and the cross-entropies.

:func:`cross_entropy` and :func:`binary_cross_entropy` live in
:mod:`jaxmath.probability` and are re-exported here, so every loss can be found
in one place.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxmath import _checks
from jaxmath.nn.softmax import _mask, log_softmax
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
    return _mse(y, y_hat, w, _mask(where, shape, "y_true"))


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


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike, axis: int = -1,
                          label_smoothing: float | ArrayLike = 0.0,
                          where: ArrayLike | None = None, validate: bool = False) -> jax.Array:
    r"""Cross-entropy between targets and the softmax of ``logits``, per example.

    .. math:: \ell = -\sum_k t_k \log \sigma(z)_k,
       \qquad t = (1 - \varepsilon)\, y + \varepsilon / K

    where :math:`y` is the one-hot label or the target distribution,
    :math:`\varepsilon` the label smoothing and :math:`K` the number of
    (included) classes. The log-softmax is computed stably in log space.

    Args:
      logits: ``[..., K]`` unnormalised log probabilities (classes along ``axis``).
      labels: either integer class indices of shape ``logits.shape`` without
        ``axis`` (integer dtype), or target probabilities of the shape of
        ``logits`` (floating dtype). The dtype decides which.
      axis: the class axis of ``logits``.
      label_smoothing: :math:`\varepsilon` in [0, 1], as in
        ``torch.nn.functional.cross_entropy(label_smoothing=...)``; a scalar that
        may be traced (e.g. swept with ``jax.vmap``), checked when concrete.
      where: optional boolean mask broadcastable to ``logits.shape``; True =
        include the class (optax/jax.nn rule). Excluded classes get probability 0
        and are left out of the smoothing.
      validate: also check traced integer labels (through ``checkify``, see
        :mod:`jaxmath._checks`) and check that floating targets are distributions.

    Returns:
      ``[...]`` losses, one per example (``logits.shape`` without ``axis``); take
      the mean for the usual batch loss. Terms with target 0 contribute 0 even
      where the logit is ``-inf``; positive target mass on a ``-inf`` (or
      excluded) class gives +inf. Gradients with respect to ``logits`` are
      :math:`\sigma(z) \sum_k t_k - t`, finite even for logits of :math:`\pm 10^4`.

    Raises:
      ValueError: integer labels outside ``[0, K)``, whenever they are concrete.
        Traced labels (under ``jax.jit``) are checked with ``validate=True`` inside
        ``checkify.checkify``; otherwise the loss of such an example is NaN
        rather than a silently wrong number.

    Example:
      >>> logits = jnp.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
      >>> print(softmax_cross_entropy(logits, jnp.array([0, 1])).tolist())
      [0.4170, 0.2200]
      >>> soft = jnp.array([[0.9, 0.1, 0.0], [0.0, 1.0, 0.0]])
      >>> print(softmax_cross_entropy(logits, soft).tolist())
      [0.5170, 0.2200]
    """
    logits = _checks.as_float(logits, "logits")
    axis = _checks.check_axis(logits, axis, "logits")
    _checks.check_nonempty(logits, "logits", axis)
    num_classes = logits.shape[axis]
    shape = tuple(logits.shape)
    mask = _mask(where, shape, "logits")
    smoothing = _checks.as_float(label_smoothing, "label_smoothing")
    _checks.check_ndim(smoothing, "label_smoothing", 0)
    # Read the range from the argument itself: under jit even a constant becomes a tracer
    # once converted with jnp.
    if not isinstance(label_smoothing, jax.core.Tracer) and not 0 <= float(
            np.asarray(label_smoothing)) <= 1:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")

    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        batch_shape = shape[:axis] + shape[axis + 1:]
        if tuple(labels.shape) != batch_shape:
            raise ValueError(
                f"integer labels must have the shape of logits without axis {axis}, i.e. "
                f"{batch_shape}, got labels.shape={tuple(labels.shape)} for "
                f"logits.shape={shape}")
        message = (f"integer labels must lie in [0, {num_classes}) for logits with "
                   f"{num_classes} classes along axis {axis}")
        if not isinstance(labels, jax.core.Tracer):
            values = np.asarray(labels)
            if np.any((values < 0) | (values >= num_classes)):
                raise ValueError(f"{message}, got values from {values.min()} to {values.max()}")
        elif validate:
            _checks.check_values((labels >= 0) & (labels < num_classes), message)
    elif jnp.issubdtype(labels.dtype, jnp.floating):
        _checks.check_same_shape(labels, logits, "labels", "logits")
        if validate:
            _checks.check_distribution(labels, "labels", axis)
    else:
        raise TypeError(f"labels must be integer class indices or floating target "
                        f"probabilities, got dtype {labels.dtype}")
    return _softmax_cross_entropy(logits, labels, mask, smoothing, axis)


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
    if mask is None:
        uniform = jnp.full((), 1 / num_classes, dtype)
    else:
        included = jnp.broadcast_to(mask, logits.shape).astype(dtype)
        count = jnp.sum(included, axis=axis, keepdims=True)
        uniform = included / jnp.where(count > 0, count, 1)
    smoothing = smoothing.astype(dtype)
    targets = (1 - smoothing) * targets + smoothing * uniform

    log_p = log_softmax(logits.astype(dtype), axis=axis, where=mask)
    # 0 * log p = 0 even where log p = -inf; the inner where keeps that gradient finite.
    terms = targets * jnp.where((targets == 0) & jnp.isneginf(log_p), 0, log_p)
    loss = -jnp.sum(terms, axis=axis)
    if valid is not None:
        loss = jnp.where(valid, loss, jnp.nan)
    return loss.astype(logits.dtype)
