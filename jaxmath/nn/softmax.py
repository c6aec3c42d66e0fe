r"""Softmax and log-softmax, stable for large logits, with an optional mask.

Both subtract the (masked) maximum before exponentiating, so any finite
logits (say :math:`\pm 10^4` in float32) neither overflow nor give 0/0.
Arithmetic runs in float32 at least (bfloat16 and float16 inputs are upcast
internally) and the result is cast back to the input dtype.

Contract for masked-out rows, relied on by attention: a row in which every
entry is masked out by ``where`` (or is ``-inf``) has softmax exactly 0 and
log-softmax exactly ``-inf``, with no NaN, and zero gradients.
"""

from __future__ import annotations

import jax
import numpy as np

from jaxmath import _checks
from jaxmath.nn import _softmax_kernels as kernels

ArrayLike = jax.typing.ArrayLike


def _checked_logits(z: ArrayLike, axis: int | tuple[int, ...], where: ArrayLike | None):
    """Checked float logits, the normalised axis (an int, or a tuple for several axes)
    and the boolean mask (or None)."""
    z = _checks.as_float(z, "z")
    axes = _checks.check_axes(z, axis, "z")
    axis = axes[0] if isinstance(axis, int | np.integer) else axes
    return z, axis, _checks.check_mask(where, tuple(z.shape), "z")


def softmax(z: ArrayLike, axis: int | tuple[int, ...] = -1,
            where: ArrayLike | None = None) -> jax.Array:
    r"""Softmax of logits ``z`` along ``axis``.

    .. math:: \sigma(z)_i = \frac{e^{z_i - m}}{\sum_{j \in W} e^{z_j - m}},
       \qquad m = \max_{j \in W} z_j,

    where :math:`W` is the set of entries selected by ``where`` (all by default).

    Args:
      z: ``[..., n, ...]`` logits; integer inputs are converted to float.
      axis: the axis to normalise over, or a tuple of axes normalised together (the
        softmax of the flattened slice).
      where: optional boolean mask broadcastable to ``z.shape``; True = include
        (jax.nn's rule). Excluded entries get probability 0.

    Returns:
      An array of the shape and dtype of ``z`` (float32 for integer input) whose
      included entries along ``axis`` sum to 1. ``-inf`` logits get probability 0.
      A row with no included entry, or whose included entries are all ``-inf``,
      is all zeros (not NaN, not uniform) and has zero gradient. ``+inf`` or NaN
      logits give NaN, as in jax.nn and PyTorch. Gradients are those of the exact
      softmax, :math:`\partial\sigma_i/\partial z_j = \sigma_i(\delta_{ij} - \sigma_j)`,
      and 0 with respect to excluded entries.

    Example:
      >>> print(softmax(jnp.array([1.0, 2.0, 3.0])).tolist())
      [0.0900, 0.2447, 0.6652]
      >>> mask = jnp.array([[True, True], [False, False]])  # second row fully masked
      >>> print(softmax(jnp.array([[1.0, 2.0], [3.0, 4.0]]), where=mask).tolist())
      [[0.2689, 0.7311], [0.0, 0.0]]
    """
    return kernels.softmax(*_checked_logits(z, axis, where))


def log_softmax(z: ArrayLike, axis: int | tuple[int, ...] = -1,
                where: ArrayLike | None = None) -> jax.Array:
    r"""Logarithm of the softmax of ``z`` along ``axis``, computed in log space.

    .. math:: \log\sigma(z)_i = (z_i - m) - \log \sum_{j \in W} e^{z_j - m},
       \qquad m = \max_{j \in W} z_j.

    Args:
      z: ``[..., n, ...]`` logits; integer inputs are converted to float.
      axis: the axis to normalise over, or a tuple of axes normalised together.
      where: optional boolean mask broadcastable to ``z.shape``; True = include.

    Returns:
      An array of the shape and dtype of ``z`` (float32 for integer input).
      Excluded entries and ``-inf`` logits give ``-inf``; a row with no included
      finite entry is all ``-inf`` (no NaN) with zero gradient. Elsewhere the
      gradient is :math:`\partial\log\sigma_i/\partial z_j = \delta_{ij} - \sigma_j`,
      finite even for logits of :math:`\pm 10^4`.

    Example:
      >>> print(log_softmax(jnp.array([1.0, 2.0, 3.0])).tolist())
      [-2.4076, -1.4076, -0.4076]
      >>> print(log_softmax(jnp.array([0.0, 1e4])))
      [-10000.      0.]
    """
    return kernels.log_softmax(*_checked_logits(z, axis, where))
