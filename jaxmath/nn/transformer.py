r"""Pre-LayerNorm Transformer blocks, a small encoder and a decoder-only language model.

One block (pre-LN, as GPT-2 and ViT):

.. math:: x \leftarrow x + \mathrm{Drop}(\mathrm{MHA}(\mathrm{LN}(x))), \qquad
   x \leftarrow x + \mathrm{Drop}\big(W_2\, \mathrm{gelu}(W_1 \mathrm{LN}(x) + b_1) + b_2\big),

with an MLP of hidden width ``mlp_ratio · D``. :class:`Transformer` embeds the
input (tokens or continuous features), adds positions, applies ``num_layers``
blocks and a final LayerNorm; :class:`TransformerLM` adds causal attention and a
logits head, and decodes token by token through the blocks' attention caches.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmath import _checks
from jaxmath.nn.mha import MultiHeadAttention

Array = jax.Array
Dtype = Any

POSITIONS = ("learned", "sinusoidal")


def sinusoidal_positions(length: int, dim: int, max_timescale: float = 10_000.0) -> Array:
    r"""Sinusoidal position encodings of Vaswani et al. (2017).

    .. math:: PE_{p, 2i} = \sin\big(p / \tau^{2i/D}\big), \qquad
       PE_{p, 2i+1} = \cos\big(p / \tau^{2i/D}\big), \qquad \tau = 10^4.

    Args:
      length: number of positions ``L`` (``p = 0 .. L-1``).
      dim: encoding width ``D``, even.
      max_timescale: :math:`\tau`.

    Returns:
      ``[L, D]`` float32 encodings in [-1, 1] (sine and cosine interleaved).

    Example:
      >>> sinusoidal_positions(2, 4)
      Array([[0.        , 1.        , 0.        , 1.        ],
             [0.84147096, 0.5403023 , 0.00999983, 0.99995   ]], dtype=float32)
    """
    for value, name in ((length, "length"), (dim, "dim")):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if dim % 2:
        raise ValueError(f"dim must be even (sine/cosine pairs), got {dim}")
    inv_freq = max_timescale ** (-np.arange(0, dim, 2) / dim)
    angles = np.arange(length)[:, None] * inv_freq[None, :]
    pe = np.stack([np.sin(angles), np.cos(angles)], axis=-1).reshape(length, dim)
    return jnp.asarray(pe, dtype=jnp.float32)


def _deterministic(rate: float, attribute: bool | None, argument: bool | None) -> bool:
    """True when dropout is off: rate 0, or the merged ``deterministic`` flag."""
    return rate == 0.0 or nn.merge_param("deterministic", attribute, argument)


class TransformerBlock(nn.Module):
    r"""Pre-LayerNorm Transformer block: attention and a gelu MLP, each with a residual.

    See the module docstring for the equations.

    Attributes:
      num_heads, num_kv_heads, qk_norm, implementation: of the
        :class:`~jaxmath.nn.mha.MultiHeadAttention` layer.
      mlp_ratio: MLP hidden width as a multiple of the model width ``D``.
      dropout_rate: dropout on the attention weights and on both residual branches.
      deterministic: disables dropout; merged with the call's argument.
      is_causal: causal self-attention.
      decode: autoregressive decoding through the attention's ``'cache'``.
      dtype, param_dtype: computation and parameter dtypes.
      precision: of every matrix product (attention, projections, MLP): ``None``
        (default) is JAX's default (TF32 for float32 on recent NVIDIA GPUs, one
        bfloat16 pass on TPUs), ``"highest"`` float32 on every backend.

    Example:
      >>> block = TransformerBlock(num_heads=2, is_causal=True)
      >>> x = jnp.ones((1, 4, 8))
      >>> block.apply(block.init(jax.random.key(0), x), x).shape
      (1, 4, 8)
    """

    num_heads: int
    num_kv_heads: int | None = None
    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0
    deterministic: bool | None = None
    is_causal: bool = False
    qk_norm: str | None = None
    decode: bool = False
    implementation: str | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: lax.PrecisionLike = None

    @nn.compact
    def __call__(self, x: Array, *, mask: Array | None = None,
                 deterministic: bool | None = None) -> Array:
        """``[..., L, D] -> [..., L, D]``; ``mask`` as in MultiHeadAttention."""
        det = _deterministic(self.dropout_rate, self.deterministic, deterministic)
        d = x.shape[-1]
        hidden = int(self.mlp_ratio * d)
        if hidden < 1:
            raise ValueError(f"mlp_ratio * D must be >= 1, got mlp_ratio={self.mlp_ratio}, "
                             f"D={d}")
        norm = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dense = dict(norm, precision=self.precision)
        h = nn.LayerNorm(name="ln_attn", **norm)(x)
        h = MultiHeadAttention(
            self.num_heads, num_kv_heads=self.num_kv_heads, dropout_rate=self.dropout_rate,
            is_causal=self.is_causal, qk_norm=self.qk_norm, decode=self.decode,
            implementation=self.implementation, name="attn", **dense)(h, mask=mask,
                                                                      deterministic=det)
        x = x + nn.Dropout(self.dropout_rate)(h, deterministic=det)
        h = nn.LayerNorm(name="ln_mlp", **norm)(x)
        h = nn.gelu(nn.Dense(hidden, name="mlp_in", **dense)(h))
        h = nn.Dense(d, name="mlp_out", **dense)(h)
        return x + nn.Dropout(self.dropout_rate)(h, deterministic=det)


class Transformer(nn.Module):
    r"""A stack of :class:`TransformerBlock` on embedded inputs: an encoder, or causal.

    .. math:: h_0 = E(x) + P, \quad h_{l} = \mathrm{Block}_l(h_{l-1}), \quad
       y = \mathrm{LN}(h_N),

    where :math:`E` is a token embedding (``vocab_size`` set) or a linear map of
    continuous features, and :math:`P` learned or sinusoidal position encodings.

    Attributes:
      num_layers: number of blocks ``N``.
      d_model: model width ``D``.
      num_heads, num_kv_heads, mlp_ratio, dropout_rate, qk_norm, implementation:
        of every block.
      vocab_size: token inputs ``[..., L]`` (ints in ``[0, vocab_size)``) if set;
        continuous inputs ``[..., L, F]`` if None.
      max_len: the largest ``L`` (size of the learned position table).
      positions: ``'learned'`` (default; normal init, std 0.02) or ``'sinusoidal'``
        (:func:`sinusoidal_positions`, ``D`` even).
      is_causal: causal attention in every block (a decoder).
      decode: token-by-token decoding (implies causal): ``init`` with a
        ``[..., max_len]`` input creates the ``'cache'``; each ``apply`` with
        ``mutable=['cache']`` takes the next token(s) and their positions continue
        from the cached position. More than ``max_len`` tokens in total is not
        detected under jit.
      deterministic, dtype, param_dtype, precision: as in :class:`TransformerBlock`.

    Example:
      >>> enc = Transformer(num_layers=1, d_model=8, num_heads=2, vocab_size=10, max_len=6)
      >>> tokens = jnp.array([[1, 2, 3, 4]])
      >>> enc.apply(enc.init(jax.random.key(0), tokens), tokens).shape
      (1, 4, 8)
    """

    num_layers: int
    d_model: int
    num_heads: int
    num_kv_heads: int | None = None
    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0
    vocab_size: int | None = None
    max_len: int = 512
    positions: str = "learned"
    is_causal: bool = False
    qk_norm: str | None = None
    decode: bool = False
    implementation: str | None = None
    deterministic: bool | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: lax.PrecisionLike = None

    def _embed(self, inputs: Array) -> Array:
        """Tokens ``[..., L]`` or features ``[..., L, F]`` to ``[..., L, D]``."""
        kwargs = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.vocab_size is None:
            x = _checks.as_float(inputs, "inputs")
            _checks.check_ndim(x, "inputs", min_ndim=2)
            return nn.Dense(self.d_model, name="input_proj", precision=self.precision,
                            **kwargs)(x)
        tokens = jnp.asarray(inputs)
        _checks.check_integer(tokens, "inputs (tokens, since vocab_size is set)")
        _checks.check_ndim(tokens, "inputs", min_ndim=1)
        return nn.Embed(self.vocab_size, self.d_model, name="embed", **kwargs)(tokens)

    def _positions(self, length: int) -> Array:
        """``[L, D]`` encodings of the next ``L`` positions (after the cached ones)."""
        _checks.check_choice(self.positions, "positions", POSITIONS)
        start = 0
        if self.decode:
            initialized = self.has_variable("cache", "position")
            position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
            if initialized:
                start = position.value
                position.value = start + length
        if length > self.max_len:
            raise ValueError(f"the sequence length L={length} exceeds max_len={self.max_len}")
        if self.positions == "sinusoidal":
            table = sinusoidal_positions(self.max_len, self.d_model)
        else:
            table = self.param("pos_embed", nn.initializers.normal(0.02),
                               (self.max_len, self.d_model), self.param_dtype)
        return lax.dynamic_slice_in_dim(table, start, length)

    @nn.compact
    def __call__(self, inputs: Array, *, mask: Array | None = None,
                 deterministic: bool | None = None) -> Array:
        """Embed, add positions, run the blocks, normalise.

        Args:
          inputs: tokens ``[..., L]`` or features ``[..., L, F]`` (see ``vocab_size``).
          mask: optional boolean attention mask broadcastable to ``[..., H, L, L]``
            (True = attend), e.g. ``valid[:, None, None, :]`` for key padding.
          deterministic: disables dropout (merged with the attribute).

        Returns:
          ``[..., L, D]`` hidden states after the final LayerNorm.
        """
        det = _deterministic(self.dropout_rate, self.deterministic, deterministic)
        x = self._embed(inputs)
        x = x + self._positions(x.shape[-2]).astype(x.dtype)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=det)
        for i in range(self.num_layers):
            x = TransformerBlock(
                self.num_heads, num_kv_heads=self.num_kv_heads, mlp_ratio=self.mlp_ratio,
                dropout_rate=self.dropout_rate, is_causal=self.is_causal or self.decode,
                qk_norm=self.qk_norm, decode=self.decode, implementation=self.implementation,
                dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
                name=f"block_{i}",
            )(x, mask=mask, deterministic=det)
        return nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="ln_final")(x)


class TransformerLM(nn.Module):
    r"""Decoder-only language model: causal :class:`Transformer` and a logits head.

    .. math:: p(x_{t+1} \mid x_{\le t}) = \mathrm{softmax}(W h_t), \qquad
       h = \mathrm{Transformer}_{\text{causal}}(x),

    so logit ``t`` depends on tokens ``0..t`` only. With ``decode=True``, feeding
    the tokens one at a time (``mutable=['cache']``) gives the same logits as one
    call on the whole sequence.

    Attributes:
      vocab_size: number of tokens ``V``.
      num_layers, d_model, num_heads, num_kv_heads, mlp_ratio, dropout_rate,
        max_len, positions, qk_norm, decode, implementation, deterministic, dtype,
        param_dtype, precision: of the :class:`Transformer` trunk (``precision``
        also of the logits head).

    Example:
      >>> lm = TransformerLM(vocab_size=10, num_layers=1, d_model=8, num_heads=2, max_len=6)
      >>> tokens = jnp.array([[1, 2, 3]])
      >>> lm.apply(lm.init(jax.random.key(0), tokens), tokens).shape
      (1, 3, 10)
    """

    vocab_size: int
    num_layers: int
    d_model: int
    num_heads: int
    num_kv_heads: int | None = None
    mlp_ratio: float = 4.0
    dropout_rate: float = 0.0
    max_len: int = 512
    positions: str = "learned"
    qk_norm: str | None = None
    decode: bool = False
    implementation: str | None = None
    deterministic: bool | None = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: lax.PrecisionLike = None

    @nn.compact
    def __call__(self, tokens: Array, *, mask: Array | None = None,
                 deterministic: bool | None = None) -> Array:
        """Tokens ``[..., L]`` to logits ``[..., L, V]`` (float32 or wider)."""
        h = Transformer(
            self.num_layers, self.d_model, self.num_heads, num_kv_heads=self.num_kv_heads,
            mlp_ratio=self.mlp_ratio, dropout_rate=self.dropout_rate,
            vocab_size=self.vocab_size, max_len=self.max_len, positions=self.positions,
            is_causal=True, qk_norm=self.qk_norm, decode=self.decode,
            implementation=self.implementation, deterministic=self.deterministic,
            dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision,
            name="trunk",
        )(tokens, mask=mask, deterministic=deterministic)
        logits = nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype,
                          param_dtype=self.param_dtype, precision=self.precision,
                          name="head")(h)
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
