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

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmath import _checks
from jaxmath.nn.mha import AttentionOptions, MultiHeadAttention

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
    _checks.check_int(length, "length", 1)
    _checks.check_int(dim, "dim", 1)
    if dim % 2:
        raise ValueError(f"dim must be even (sine/cosine pairs), got {dim}")
    inv_freq = max_timescale ** (-np.arange(0, dim, 2) / dim)
    angles = np.arange(length)[:, None] * inv_freq[None, :]
    pe = np.stack([np.sin(angles), np.cos(angles)], axis=-1).reshape(length, dim)
    return jnp.asarray(pe, dtype=jnp.float32)


class TransformerOptions(AttentionOptions, kw_only=True):
    r"""The fields of a Transformer block, which the stacks built of it share: those of
    :class:`~jaxmath.nn.mha.AttentionOptions` and the width of the MLP.

    Attributes:
      mlp_ratio: MLP hidden width as a multiple of the model width ``D``.
    """

    mlp_ratio: float = 4.0


class _Stack(nn.Module):
    """The fields :class:`Transformer` and :class:`TransformerLM` share beyond
    :class:`TransformerOptions` (described in :class:`Transformer`).

    A base listed after :class:`TransformerOptions`, so that its fields come first:
    ``num_layers`` and ``d_model`` are the positional arguments before ``num_heads``.
    """

    num_layers: int
    d_model: int
    _: dataclasses.KW_ONLY
    max_len: int = 512
    positions: str = "learned"

    def _check_stack(self) -> None:
        _checks.check_int(self.num_layers, "num_layers", 0)
        _checks.check_int(self.d_model, "d_model", 1)
        _checks.check_int(self.max_len, "max_len", 1)
        _checks.check_choice(self.positions, "positions", POSITIONS)


class _Vocabulary(nn.Module):
    """``vocab_size``, the first positional argument of :class:`TransformerLM`."""

    vocab_size: int


class TransformerBlock(TransformerOptions, kw_only=True):
    r"""Pre-LayerNorm Transformer block: attention and a gelu MLP, each with a residual.

    See the module docstring for the equations.

    Attributes:
      num_heads, num_kv_heads, dropout_rate, broadcast_dropout, deterministic,
        is_causal, qk_norm, decode, implementation, dtype, param_dtype, precision,
        mlp_ratio: the fields of :class:`TransformerOptions`: those of the
        :class:`~jaxmath.nn.mha.MultiHeadAttention` layer (``dropout_rate`` also on
        both residual branches, ``dtype``, ``param_dtype`` and ``precision`` also of
        the LayerNorms and the MLP) and the MLP's width.

    Example:
      >>> block = TransformerBlock(num_heads=2, is_causal=True)
      >>> x = jnp.ones((1, 4, 8))
      >>> block.apply(block.init(jax.random.key(0), x), x).shape
      (1, 4, 8)
    """

    @nn.compact
    def __call__(self, x: Array, *, mask: Array | None = None,
                 deterministic: bool | None = None) -> Array:
        """``[..., L, D] -> [..., L, D]``; ``mask`` as in MultiHeadAttention."""
        det = self._dropout_off(deterministic)
        d = x.shape[-1]
        hidden = int(self.mlp_ratio * d)
        if hidden < 1:
            raise ValueError(f"mlp_ratio * D must be >= 1, got mlp_ratio={self.mlp_ratio}, "
                             f"D={d}")
        norm = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        dense = dict(norm, precision=self.precision)
        h = nn.LayerNorm(name="ln_attn", **norm)(x)
        attention = MultiHeadAttention(**self._options_of(AttentionOptions, deterministic=None),
                                       name="attn")
        x = x + nn.Dropout(self.dropout_rate)(attention(h, mask=mask, deterministic=det),
                                              deterministic=det)
        h = nn.LayerNorm(name="ln_mlp", **norm)(x)
        h = nn.gelu(nn.Dense(hidden, name="mlp_in", **dense)(h))
        h = nn.Dense(d, name="mlp_out", **dense)(h)
        return x + nn.Dropout(self.dropout_rate)(h, deterministic=det)


class Transformer(TransformerOptions, _Stack, kw_only=True):
    r"""A stack of :class:`TransformerBlock` on embedded inputs: an encoder, or causal.

    .. math:: h_0 = E(x) + P, \quad h_{l} = \mathrm{Block}_l(h_{l-1}), \quad
       y = \mathrm{LN}(h_N),

    where :math:`E` is a token embedding (``vocab_size`` set) or a linear map of
    continuous features, and :math:`P` learned or sinusoidal position encodings.

    Attributes:
      num_layers: number of blocks ``N``.
      d_model: model width ``D``.
      num_heads, num_kv_heads, dropout_rate, broadcast_dropout, deterministic,
        qk_norm, implementation, dtype, param_dtype, precision, mlp_ratio: the fields
        of :class:`TransformerOptions`, for every block (``dropout_rate`` also on the
        embedded inputs).
      is_causal: causal attention in every block (a decoder).
      decode: token-by-token decoding (implies causal): ``init`` with a
        ``[..., max_len]`` input creates the ``'cache'``; each ``apply`` with
        ``mutable=['cache']`` takes the next token(s) and their positions continue
        from the cached position. More than ``max_len`` tokens in total is not
        detected under jit.
      vocab_size: token inputs ``[..., L]`` (ints in ``[0, vocab_size)``) if set;
        continuous inputs ``[..., L, F]`` if None.
      max_len: the largest ``L`` (size of the learned position table).
      positions: ``'learned'`` (default; normal init, std 0.02) or ``'sinusoidal'``
        (:func:`sinusoidal_positions`, ``D`` even).

    Example:
      >>> enc = Transformer(num_layers=1, d_model=8, num_heads=2, vocab_size=10, max_len=6)
      >>> tokens = jnp.array([[1, 2, 3, 4]])
      >>> enc.apply(enc.init(jax.random.key(0), tokens), tokens).shape
      (1, 4, 8)
    """

    vocab_size: int | None = None

    def _embed(self, inputs: Array) -> Array:
        """Tokens ``[..., L]`` or features ``[..., L, F]`` to ``[..., L, D]``."""
        kwargs = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.vocab_size is None:
            x = _checks.as_float(inputs, "inputs")
            _checks.check_ndim(x, "inputs", min_ndim=2)
            return nn.Dense(self.d_model, name="input_proj", precision=self.precision,
                            **kwargs)(x)
        vocab_size = _checks.check_int(self.vocab_size, "vocab_size", 1)
        tokens = jnp.asarray(inputs)
        _checks.check_integer(tokens, "inputs (tokens, since vocab_size is set)")
        _checks.check_ndim(tokens, "inputs", min_ndim=1)
        return nn.Embed(vocab_size, self.d_model, name="embed", **kwargs)(tokens)

    def _positions(self, length: int) -> Array:
        """``[L, D]`` encodings of the next ``L`` positions (after the cached ones)."""
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
        self._check_stack()
        det = self._dropout_off(deterministic)
        x = self._embed(inputs)
        x = x + self._positions(x.shape[-2]).astype(x.dtype)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=det)
        block = self._options_of(TransformerBlock, is_causal=self.is_causal or self.decode,
                                 deterministic=None)
        for i in range(self.num_layers):
            x = TransformerBlock(**block, name=f"block_{i}")(x, mask=mask, deterministic=det)
        return nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="ln_final")(x)


class TransformerLM(TransformerOptions, _Stack, _Vocabulary, kw_only=True):
    r"""Decoder-only language model: causal :class:`Transformer` and a logits head.

    .. math:: p(x_{t+1} \mid x_{\le t}) = \mathrm{softmax}(W h_t), \qquad
       h = \mathrm{Transformer}_{\text{causal}}(x),

    so logit ``t`` depends on tokens ``0..t`` only. With ``decode=True``, feeding
    the tokens one at a time (``mutable=['cache']``) gives the same logits as one
    call on the whole sequence.

    Attributes:
      vocab_size: number of tokens ``V``.
      num_layers, d_model, num_heads, num_kv_heads, dropout_rate, broadcast_dropout,
        deterministic, qk_norm, decode, implementation, dtype, param_dtype, precision,
        mlp_ratio, max_len, positions: of the :class:`Transformer` trunk
        (``precision`` also of the logits head).
      is_causal: True, the only value a language model takes (False raises).

    Example:
      >>> lm = TransformerLM(vocab_size=10, num_layers=1, d_model=8, num_heads=2, max_len=6)
      >>> tokens = jnp.array([[1, 2, 3]])
      >>> lm.apply(lm.init(jax.random.key(0), tokens), tokens).shape
      (1, 3, 10)
    """

    is_causal: bool = True

    @nn.compact
    def __call__(self, tokens: Array, *, mask: Array | None = None,
                 deterministic: bool | None = None) -> Array:
        """Tokens ``[..., L]`` to logits ``[..., L, V]`` (float32 or wider)."""
        if self.is_causal is not True:
            raise ValueError(f"a language model is causal: is_causal must be True, got "
                             f"{self.is_causal!r}")
        h = Transformer(**self._options_of(Transformer), name="trunk")(
            tokens, mask=mask, deterministic=deterministic)
        logits = nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype,
                          param_dtype=self.param_dtype, precision=self.precision,
                          name="head")(h)
        return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
