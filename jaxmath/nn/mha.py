r"""Multi-head attention as a Flax (Linen) module, with GQA, qk-norm and a decode cache.

:class:`MultiHeadAttention` projects its inputs to ``H`` query heads and ``H_kv``
key/value heads, runs :func:`jaxmath.nn.attention.multi_head_attention` on the
``[..., L, H, d]`` projections and projects the heads back:

.. math:: \mathrm{MHA}(X_q, X_{kv}) = \sum_{h=1}^{H} O_h W^O_h + b^O, \qquad
   O_h = \mathrm{softmax}\Big(\frac{Q_h K_{g(h)}^T}{\sqrt{d}}\Big) V_{g(h)},

with :math:`Q_h = X_q W^Q_h + b^Q_h`, :math:`K_j = X_{kv} W^K_j + b^K_j`,
:math:`V_j = X_{kv} W^V_j + b^V_j`, head size :math:`d = d_{qkv} / H` and the
grouping :math:`g(h) = \lfloor h / G \rfloor`, :math:`G = H / H_{kv}`: query heads
share key/value heads in consecutive groups of ``G`` (``H_kv = H`` is multi-head
attention, ``H_kv = 1`` multi-query attention).

Parameters have ``flax.linen.MultiHeadDotProductAttention``'s names and layouts
(``query``/``key``/``value`` kernels ``[D, H, d]``, ``out`` kernel ``[H, d, D_out]``),
so its checkpoints load unchanged when ``H_kv = H``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxmath import _checks
from jaxmath.nn.attention import IMPLEMENTATIONS, _check_dropout_rate, multi_head_attention

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]

QK_NORMS = ("layernorm", "rmsnorm")


class AttentionOptions(nn.Module):
    r"""The fields a multi-head attention layer shares with the modules built on it.

    :class:`MultiHeadAttention` and the Transformer modules of
    :mod:`jaxmath.nn.transformer` inherit these fields (Flax Linen modules are
    dataclasses), so each option is declared and described once, here, and a module
    hands its options on to the module it builds (``_options_of``). ``num_heads`` is
    positional; the others are keyword-only. Not a layer itself.

    Attributes:
      num_heads: number of query heads ``H``.
      num_kv_heads: number of key/value heads ``H_kv``; must divide ``num_heads``.
        None (default) = ``num_heads``; fewer gives grouped-query attention (GQA),
        1 gives multi-query attention. K/V heads are not copied: each serves a
        group of ``G = H / H_kv`` query heads.
      dropout_rate: dropout probability on the attention weights, as
        ``flax.linen.MultiHeadDotProductAttention``: weights are zeroed with this
        probability and rescaled by ``1/(1 - p)`` after the softmax; the same
        ``'dropout'`` rng drops the same weights as flax's layer. It is an option of
        :func:`~jaxmath.nn.attention.multi_head_attention` on every
        ``implementation`` but ``'cudnn'`` (which refuses it); with
        ``deterministic=True`` or rate 0 the call is the one without dropout. The
        Transformer modules also drop each residual branch (and :class:`Transformer`
        the embedded inputs) at this rate.
      broadcast_dropout: one ``[Lq, Lk]`` pattern of attention dropout shared by every
        batch element and head (default, flax's), instead of one per weight.
      deterministic: disables dropout; merged with the call's argument (one of
        them must be set when ``dropout_rate > 0``).
      is_causal: query ``i`` attends only to keys ``j <= i`` (top-left aligned).
      qk_norm: None, ``'layernorm'`` (as ViT-22B and flax's ``normalize_qk``: a
        LayerNorm without bias) or ``'rmsnorm'``, applied to each head's queries and
        keys over the head dimension ``d`` before the dot product.
      decode: autoregressive decoding with a ``'cache'`` collection (causal
        self-attention). ``init`` with a full-length input ``[..., L_max, ...]``
        creates zero caches of ``L_max`` keys and values; each ``apply`` with
        ``mutable=['cache']`` then takes the next token(s) ``[..., n, ...]``, writes
        their keys/values at the cache index and attends to everything cached so
        far. Feeding more than ``L_max`` tokens in total is not detected under jit.
      implementation: passed to :func:`~jaxmath.nn.attention.multi_head_attention`
        (``None``, ``'xla'``, ``'blockwise'``, ``'cudnn'`` or ``'pallas'``).
      dtype: computation dtype (default: inferred from inputs and params);
        the attention's softmax is computed in float32 whatever it is.
      param_dtype: parameter dtype.
      precision: of every matrix product: projections, attention, MLPs. ``None``
        (default) is JAX's default (TF32 for float32 on recent NVIDIA GPUs, one
        bfloat16 pass on TPUs); ``"highest"`` gives float32 products on every
        backend.
    """

    num_heads: int
    _: dataclasses.KW_ONLY
    num_kv_heads: int | None = None
    dropout_rate: float = 0.0
    broadcast_dropout: bool = True
    deterministic: bool | None = None
    is_causal: bool = False
    qk_norm: str | None = None
    decode: bool = False
    implementation: str | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: lax.PrecisionLike = None

    def _options_of(self, module: type[nn.Module], **overrides: Any) -> dict[str, Any]:
        """This module's values of the fields of ``module`` (a class whose fields this
        module has), with ``overrides``: the keyword arguments that build it."""
        names = [f.name for f in dataclasses.fields(module)
                 if f.init and f.name not in ("parent", "name")]
        return {n: getattr(self, n) for n in names} | overrides

    def _dropout_off(self, deterministic: bool | None) -> bool:
        """Whether a call with this ``deterministic`` argument runs without dropout: a
        rate of 0, or the argument merged with the field (``flax.linen.merge_param``:
        ValueError when the rate is above 0 and both or neither are set)."""
        return self.dropout_rate == 0.0 or nn.merge_param("deterministic", self.deterministic,
                                                           deterministic)

    def _check_options(self) -> int:
        """Validate the options; return the number of key/value heads ``H_kv``."""
        h = _checks.check_int(self.num_heads, "num_heads", 1)
        h_kv = h if self.num_kv_heads is None else _checks.check_int(self.num_kv_heads,
                                                                     "num_kv_heads", 1)
        if h % h_kv:
            raise ValueError(f"num_kv_heads={h_kv} must divide num_heads={h}")
        _check_dropout_rate(self.dropout_rate)
        if self.qk_norm is not None:
            _checks.check_choice(self.qk_norm, "qk_norm", QK_NORMS)
        if self.implementation is not None:
            _checks.check_choice(self.implementation, "implementation", IMPLEMENTATIONS)
        return h_kv


class MultiHeadAttention(AttentionOptions, kw_only=True):
    r"""Multi-head (and grouped-query) dot-product attention layer.

    .. math:: \mathrm{MHA}(X_q, X_{kv}) = \sum_{h=1}^{H} O_h W^O_h + b^O, \qquad
       O_h = \mathrm{softmax}\Big(\frac{Q_h K_{g(h)}^T}{\sqrt{d}}\Big) V_{g(h)}

    with the projections and the grouping :math:`g(h)` of the module docstring.
    Self-attention when ``inputs_kv`` is None, cross-attention otherwise.

    Attributes:
      num_heads, num_kv_heads, dropout_rate, broadcast_dropout, deterministic,
        is_causal, qk_norm, decode, implementation, dtype, param_dtype, precision:
        the fields of :class:`AttentionOptions`. ``precision`` is that of the four
        projections and of the attention itself.
      qkv_features: total query width ``H·d`` (default: ``inputs_q.shape[-1]``);
        must be divisible by ``num_heads``. Keys and values have width ``H_kv·d``.
      out_features: output width (default: ``inputs_q.shape[-1]``).
      use_bias: biases in the four projections.
      kernel_init, bias_init: initialisers of the projections (flax's defaults:
        LeCun normal and zeros).

    Example:
      >>> layer = MultiHeadAttention(num_heads=4, num_kv_heads=2, is_causal=True)
      >>> x = jnp.ones((2, 5, 16))
      >>> params = layer.init(jax.random.key(0), x)
      >>> layer.apply(params, x).shape
      (2, 5, 16)
    """

    qkv_features: int | None = None
    out_features: int | None = None
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()

    def _check(self, features: int) -> tuple[int, int]:
        """Validate the attributes; return ``(H_kv, d)``."""
        h_kv = self._check_options()
        qkv = _checks.check_int(self.qkv_features or features, "qkv_features", 1)
        if qkv % self.num_heads:
            raise ValueError(f"qkv_features={qkv} must be divisible by "
                             f"num_heads={self.num_heads}")
        return h_kv, qkv // self.num_heads

    def _project(self, x: Array, heads: int, head_dim: int, name: str) -> Array:
        """``[..., L, D] -> [..., L, heads, head_dim]``."""
        return nn.DenseGeneral((heads, head_dim), axis=-1, use_bias=self.use_bias,
                               dtype=self.dtype, param_dtype=self.param_dtype,
                               precision=self.precision, kernel_init=self.kernel_init,
                               bias_init=self.bias_init, name=name)(x)

    def _norm(self, x: Array, name: str) -> Array:
        if self.qk_norm is None:
            return x
        norm = (nn.LayerNorm if self.qk_norm == "layernorm" else nn.RMSNorm)
        kwargs = {"use_bias": False} if self.qk_norm == "layernorm" else {}
        return norm(dtype=self.dtype, param_dtype=self.param_dtype, name=name, **kwargs)(x)

    def _update_cache(self, k: Array, v: Array, mask: Array | None):
        """Write ``k, v`` into the cache (after init); return keys, values, mask, causal."""
        initialized = self.has_variable("cache", "cached_key")
        cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
        cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
        index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not initialized:  # init with a full-length input: plain causal attention
            return k, v, mask, True
        full = cached_k.value.shape
        n, max_len = k.shape[-3], full[-3]
        if k.shape[:-3] != full[:-3] or k.shape[-2:] != full[-2:] or n > max_len:
            raise ValueError(
                f"decode: the cache holds keys of shape {full} ([..., L_max, H_kv, d]); "
                f"the input gives keys of shape {tuple(k.shape)}: the batch axes and "
                f"heads must match and at most L_max={max_len} tokens fit")
        i = index.value
        start = (0,) * (k.ndim - 3) + (i, 0, 0)
        cached_k.value = lax.dynamic_update_slice(cached_k.value, k, start)
        cached_v.value = lax.dynamic_update_slice(cached_v.value, v, start)
        index.value = i + n
        # new token t (position i + t) sees the cached keys j <= i + t
        seen = jnp.arange(max_len) <= i + jnp.arange(n)[:, None]
        mask = seen if mask is None else jnp.logical_and(mask, seen)
        return cached_k.value, cached_v.value, mask, False

    @nn.compact
    def __call__(self, inputs_q: Array, inputs_kv: Array | None = None, *,
                 mask: Array | None = None, deterministic: bool | None = None) -> Array:
        """Attend from ``inputs_q`` to ``inputs_kv`` (itself if None).

        Args:
          inputs_q: ``[..., Lq, D]`` queries' inputs.
          inputs_kv: ``[..., Lk, D_kv]`` keys' and values' inputs; None for
            self-attention (required with ``decode``).
          mask: optional boolean mask broadcastable to ``[..., H, Lq, Lk]``, True =
            attend; e.g. key padding ``valid[:, None, None, :]`` for ``valid`` of
            shape ``[B, Lk]``. With ``decode``, ``Lk`` is the cache length ``L_max``.
          deterministic: disables dropout (merged with the attribute).

        Returns:
          ``[..., Lq, out_features]``. A query that attends to no key gets zeros
          before the output projection (so ``out``'s bias after it), with zero
          gradients -- not the uniform average over keys of flax's layer.

        Raises:
          ValueError: head counts that do not divide (naming them), a mask that does
            not broadcast, a decode input that does not fit the cache, a bad
            ``dropout_rate``, ``qk_norm`` or ``implementation``.
          TypeError: non-int head counts, a non-boolean mask, complex inputs.
        """
        inputs_q = _checks.as_float(inputs_q, "inputs_q")
        _checks.check_ndim(inputs_q, "inputs_q", min_ndim=2)
        h_kv, head_dim = self._check(inputs_q.shape[-1])
        if inputs_kv is None:
            inputs_kv = inputs_q
        elif self.decode:
            raise ValueError("decode=True caches self-attention: inputs_kv must be None")
        else:
            inputs_kv = _checks.as_float(inputs_kv, "inputs_kv")
            _checks.check_ndim(inputs_kv, "inputs_kv", min_ndim=2)
        if mask is not None:
            mask = _checks.check_bool_mask(mask, "mask")

        q = self._norm(self._project(inputs_q, self.num_heads, head_dim, "query"), "query_norm")
        k = self._norm(self._project(inputs_kv, h_kv, head_dim, "key"), "key_norm")
        v = self._project(inputs_kv, h_kv, head_dim, "value")

        is_causal = self.is_causal
        if self.decode:
            k, v, mask, is_causal = self._update_cache(k, v, mask)

        dropout = not self._dropout_off(deterministic)
        out = multi_head_attention(
            q, k, v, mask=mask, is_causal=is_causal,
            dropout_rate=self.dropout_rate if dropout else 0.0,
            dropout_rng=self.make_rng("dropout") if dropout else None,
            broadcast_dropout=self.broadcast_dropout, implementation=self.implementation,
            precision=self.precision)
        return nn.DenseGeneral(self.out_features or inputs_q.shape[-1], axis=(-2, -1),
                               use_bias=self.use_bias, dtype=self.dtype,
                               param_dtype=self.param_dtype, precision=self.precision,
                               kernel_init=self.kernel_init, bias_init=self.bias_init,
                               name="out")(out)
