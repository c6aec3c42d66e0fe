r"""Scaled dot-product attention with masks, additive bias and causal masking.

The computation is split so that other layouts and implementations can reuse
the pieces: :func:`_check_shapes` validates and broadcasts shapes,
:func:`_keep_mask` builds the boolean mask of attended keys and
:func:`_scores` the float32 scores (unmasked); :func:`_attention_xla` is the
reference path that materialises the ``[..., Lq, Lk]`` scores, and
:func:`_attention` compiles mask and path into one program.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxmath import _checks
from jaxmath.nn.softmax import softmax

ArrayLike = jax.typing.ArrayLike


def _broadcast(shapes: dict[str, tuple[int, ...]], what: str) -> tuple[int, ...]:
    """Broadcast shape of named shapes; ValueError naming them all if there is none."""
    try:
        return tuple(np.broadcast_shapes(*shapes.values()))
    except ValueError:
        listed = ", ".join(f"{n}={s}" for n, s in shapes.items())
        raise ValueError(f"{what} do not broadcast: {listed}") from None


def _check_shapes(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                  bias: jax.Array | None) -> tuple[int, ...]:
    """Validate ``[..., L, d]`` operands; return the shape ``[..., Lq, Lk]`` of the scores."""
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        _checks.check_ndim(x, name, min_ndim=2)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same feature size d (last axis), got "
                         f"q.shape={tuple(q.shape)} and k.shape={tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of keys Lk (axis -2), got "
                         f"k.shape={tuple(k.shape)} and v.shape={tuple(v.shape)}")
    _checks.check_nonempty(q, "q", axis=-1)
    _checks.check_nonempty(k, "k", axis=-2)
    lead = _broadcast({"q.shape[:-2]": q.shape[:-2], "k.shape[:-2]": k.shape[:-2],
                       "v.shape[:-2]": v.shape[:-2]}, "the leading (batch) axes of q, k, v")
    scores = (*lead, q.shape[-2], k.shape[-2])
    for x, name in ((mask, "mask"), (bias, "bias")):
        if x is None:
            continue
        full = _broadcast({"scores": scores, f"{name}.shape": tuple(x.shape)},
                          f"the scores [..., Lq, Lk] and {name}")
        if full[-2:] != scores[-2:]:
            raise ValueError(f"{name} must broadcast to the scores [..., Lq, Lk] = "
                             f"[..., {scores[-2]}, {scores[-1]}], got {name}.shape="
                             f"{tuple(x.shape)}")
        scores = full
    return scores


def _keep_mask(mask: jax.Array | None, bias: jax.Array | None, is_causal: bool,
               lq: int, lk: int) -> jax.Array | None:
    """Boolean mask of the (query, key) pairs attended to, or None when all are.

    Combines the user's ``mask``, the causal mask (key ``j <= i`` for query ``i``,
    top-left aligned) and keys whose ``bias`` is ``-inf``.
    """
    keep = mask
    if is_causal:
        causal = jnp.tril(jnp.ones((lq, lk), dtype=bool))
        keep = causal if keep is None else keep & causal
    if bias is not None:
        finite = bias != -jnp.inf
        keep = finite if keep is None else keep & finite
    return keep


def _scores(q: jax.Array, k: jax.Array, bias: jax.Array | None,
                   scale: float | jax.Array, compute_dtype: jnp.dtype) -> jax.Array:
    """Scores :math:`s\\, q k^T + b` in ``compute_dtype`` (float32 at least)."""
    logits = jnp.matmul(q, jnp.swapaxes(k, -1, -2), preferred_element_type=compute_dtype)
    logits = logits * jnp.asarray(scale, compute_dtype)
    if bias is not None:
        logits = logits + bias.astype(compute_dtype)
    return logits


def _attention_xla(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None,
                   keep: jax.Array | None, scale: float | jax.Array,
                   scores_shape: tuple[int, ...]) -> jax.Array:
    """Reference path: materialise the scores, softmax in float32, weight the values."""
    compute_dtype = jnp.promote_types(q.dtype, jnp.float32)
    logits = jnp.broadcast_to(_scores(q, k, bias, scale, compute_dtype), scores_shape)
    probs = softmax(logits, axis=-1, where=keep)
    out = jnp.matmul(probs.astype(v.dtype), v, preferred_element_type=compute_dtype)
    return out.astype(v.dtype)


@functools.partial(jax.jit, static_argnames=("is_causal", "scores_shape"))
def _attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
               bias: jax.Array | None, scale: float | jax.Array, is_causal: bool,
               scores_shape: tuple[int, ...]) -> jax.Array:
    """Attention of checked ``[..., L, d]`` arrays, compiled as one program."""
    keep = _keep_mask(mask, bias, is_causal, q.shape[-2], k.shape[-2])
    return _attention_xla(q, k, v, bias, keep, scale, scores_shape)


def attention(q: ArrayLike, k: ArrayLike, v: ArrayLike, mask: ArrayLike | None = None,
              bias: ArrayLike | None = None, is_causal: bool = False,
              scale: float | ArrayLike | None = None) -> jax.Array:
    r"""Scaled dot-product attention.

    .. math:: \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\Big(\frac{Q K^T}{\sqrt{d_k}}
       + B\Big) V,

    with the softmax over keys restricted to the pairs allowed by ``mask`` and
    ``is_causal``. Scores and softmax are computed in float32 (float64 for
    float64 input), also for bfloat16/float16 inputs; the output has the input dtype.

    Args:
      q: ``[..., Lq, d]`` queries.
      k: ``[..., Lk, d]`` keys.
      v: ``[..., Lk, dv]`` values. The leading axes ``...`` of ``q``, ``k``, ``v``
        (batch, heads, ...) broadcast against each other, e.g. ``[B, H, L, d]``.
      mask: optional boolean mask broadcastable to the scores ``[..., Lq, Lk]``;
        True = query attends to key (jax.nn's rule), e.g. ``[B, 1, 1, Lk]`` for key
        padding. Non-boolean masks raise TypeError: pass float masks as ``bias``.
      bias: optional additive bias :math:`B` broadcastable to ``[..., Lq, Lk]``;
        ``-inf`` entries mask their key out, exactly like ``mask``.
      is_causal: if True, query ``i`` attends only to keys ``j <= i``, aligned at
        the top-left as in ``jax.nn.dot_product_attention`` and PyTorch's
        ``scaled_dot_product_attention``: with ``Lq > Lk`` the queries after the
        last key see all keys; with ``Lq < Lk`` (e.g. new queries after a cached
        prefix) the last keys are never seen, so pass an explicit ``mask`` for
        bottom-right alignment. Combined with ``mask`` by logical and.
      scale: multiplier of :math:`QK^T`; default :math:`1/\sqrt{d}`.

    Returns:
      ``[..., Lq, dv]``, the leading axes broadcast from all inputs. A query whose
      keys are all masked out (by ``mask``, ``is_causal`` or ``-inf`` bias) gets
      zeros, as in PyTorch's ``scaled_dot_product_attention`` (2.5 and later) -- not
      NaN (a plain softmax over ``-inf``) and not the uniform average of the values
      that ``jax.nn.dot_product_attention`` returns (it masks with a large negative
      number) -- and its gradients with respect to every input are zero. Elsewhere
      gradients are those of the formula above.

    Raises:
      ValueError: rank < 2, different ``d`` in ``q`` and ``k``, different ``Lk`` in
        ``k`` and ``v``, ``d = 0`` or ``Lk = 0``, leading axes, mask or bias that do
        not broadcast, or a non-scalar ``scale``.
      TypeError: a non-boolean ``mask``, non-bool ``is_causal``, complex input.

    Example:
      >>> q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> k = jnp.array([[1.0, 1.0], [1.0, 0.0]])
      >>> v = jnp.array([[0.0, 1.0], [1.0, 0.0]])
      >>> attention(q, k, v)
      Array([[0.5       , 0.5       ],
             [0.33023846, 0.66976154]], dtype=float32)
      >>> attention(q, k, v, is_causal=True)  # query 0 sees key 0 only
      Array([[0.        , 1.        ],
             [0.33023846, 0.66976154]], dtype=float32)
      >>> attention(q, k, v, mask=jnp.array([[False, False], [True, True]]))
      Array([[0.        , 0.        ],
             [0.33023846, 0.66976154]], dtype=float32)
    """
    if not isinstance(is_causal, bool | np.bool_):
        raise TypeError(f"is_causal must be a Python bool, got {type(is_causal).__name__}")
    q, k, v = _checks.as_floats((q, "q"), (k, "k"), (v, "v"))
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(f"mask must be boolean (True = attend), got dtype {mask.dtype}; "
                            f"pass an additive float mask as bias")
    if bias is not None:
        bias = _checks.as_float(bias, "bias")
    scores_shape = _check_shapes(q, k, v, mask, bias)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    else:
        scale = _checks.as_float(scale, "scale")
        if scale.ndim != 0:
            raise ValueError(f"scale must be a scalar, got shape {tuple(scale.shape)}")
    return _attention(q, k, v, mask, bias, scale, bool(is_causal), scores_shape)
