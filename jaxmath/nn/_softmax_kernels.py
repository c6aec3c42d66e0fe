"""The softmax kernels: :func:`softmax` and :func:`log_softmax` of checked logits.

The only implementation of :func:`jaxmath.nn.softmax.softmax` and
:func:`jaxmath.nn.softmax.log_softmax`, which check their arguments and call these;
library code that already holds checked arrays (a float array, an axis or tuple of
axes normalised for it, a boolean mask that broadcasts to it or None) calls these
directly. See :mod:`jaxmath.nn.softmax` for the contract on masked-out rows.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def _shifted(z: jax.Array, axis: int | tuple[int, ...], mask: jax.Array | None) -> jax.Array:
    """``z - max(z)`` along ``axis`` (one or several) over the included entries; excluded
    entries are -inf.

    Computed in float32 at least. The maximum starts from the most negative finite
    number instead of -inf, so a row with no finite included entry stays at -inf
    instead of becoming ``-inf - (-inf) = NaN``. The maximum is a constant shift
    (softmax is invariant to it), so no gradient flows through it.

    Only max, subtract, exp, sum and divide appear on the unmasked path, with no
    compare or select: XLA:CPU then fuses the whole softmax into one vectorised
    kernel, as it does for ``jax.nn.softmax``.
    """
    z = z.astype(jnp.promote_types(z.dtype, jnp.float32))
    if mask is not None:
        z = jnp.where(mask, z, -jnp.inf)
    m = jnp.max(z, axis=axis, keepdims=True, initial=jnp.finfo(z.dtype).min)
    return z - jax.lax.stop_gradient(m)


def _row_sum(e: jax.Array, axis: int | tuple[int, ...]) -> jax.Array:
    """``sum(e)`` along ``axis``, clamped below at 1/2.

    With ``e = exp(z - max z)`` the sum is >= 1 on every row with an included finite
    entry (the maximum contributes ``e^0 = 1``), so the clamp only acts on empty rows,
    where ``e = 0`` and ``s = 0``: there it gives ``0 / (1/2) = 0`` and keeps ``1/s``
    and ``1/s^2`` in the gradients finite. (A clamp at ``tiny`` would overflow 1/s^2;
    one at 1 would tie with s = 1 and halve the gradient.)
    """
    return jnp.maximum(jnp.sum(e, axis=axis, keepdims=True), 0.5)



@partial(jax.jit, static_argnames="axis")
def softmax(z: jax.Array, axis: int | tuple[int, ...], mask: jax.Array | None = None
            ) -> jax.Array:
    """The softmax of float ``z`` along ``axis`` over the entries ``mask`` includes."""
    e = jnp.exp(_shifted(z, axis, mask))
    return (e / _row_sum(e, axis)).astype(z.dtype)


@partial(jax.jit, static_argnames="axis")
def log_softmax(z: jax.Array, axis: int | tuple[int, ...], mask: jax.Array | None = None
                ) -> jax.Array:
    """The log-softmax of float ``z`` along ``axis`` over the entries ``mask`` includes."""
    shifted = _shifted(z, axis, mask)
    s = _row_sum(jnp.exp(shifted), axis)
    out = shifted - jnp.log(s)
    # Empty rows are already -inf; the select makes them a constant (zero gradient).
    keep = s >= 1 if mask is None else (s >= 1) & mask
    return jnp.where(keep, out, -jnp.inf).astype(z.dtype)
