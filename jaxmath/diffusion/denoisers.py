r"""Denoisers (Flax Linen): a residual MLP for vector data and a small UNet for images.

Both are functions :math:`(x_t, t) \mapsto` a prediction shaped like :math:`x_t` (the noise,
:math:`x_0` or :math:`v`, whichever they are trained on), conditioned on the timestep
through the sinusoidal embedding of DDPM (Ho et al., 2020), a small MLP on top of it, and
a learned projection added inside every residual block:

.. math:: e(t)_i = \sin(s\, t\, \omega_i), \quad e(t)_{h + i} = \cos(s\, t\, \omega_i),
   \qquad \omega_i = \tau^{-i / (h - \delta)}, \quad i = 0, \dots, h - 1,
   \quad h = \lfloor D / 2 \rfloor

(:func:`timestep_embedding`). :class:`MLPDenoiser` takes ``x`` ``[B, d]``;
:class:`UNet` takes images ``[B, H, W, C]`` (NHWC, JAX's layout). ``t`` is ``[B]``
(integers, as the samplers of :mod:`jaxmath.diffusion.samplers` pass, or floats), or a
scalar for the whole batch. Bad shapes raise ValueError at trace time, so under ``jit``
too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmath import _checks
from jaxmath.nn.mha import MultiHeadAttention

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
Dtype = Any

__all__ = ["MLPDenoiser", "UNet", "timestep_embedding"]


def timestep_embedding(t: ArrayLike, dim: int, max_period: float = 10_000.0, *,
                       flip_sin_to_cos: bool = False, downscale_freq_shift: float = 1.0,
                       scale: float = 1.0) -> jax.Array:
    r"""Sinusoidal timestep embedding of DDPM (diffusers' ``get_timestep_embedding``).

    .. math:: e(t) = \big[\sin(s\, t\, \omega_0), \dots, \sin(s\, t\, \omega_{h-1}),
       \cos(s\, t\, \omega_0), \dots, \cos(s\, t\, \omega_{h-1})\big], \qquad
       \omega_i = \tau^{-i / (h - \delta)}, \quad h = \lfloor D / 2 \rfloor

    with :math:`\tau` = ``max_period``, :math:`\delta` = ``downscale_freq_shift`` and
    :math:`s` = ``scale``; cosines first with ``flip_sin_to_cos``, and a zero column
    appended when ``dim`` is odd. The defaults are DDPM's and ``get_timestep_embedding``'s
    (:math:`\delta = 1`: the frequencies run from 1 down to exactly :math:`1/\tau`);
    diffusers' ``UNet2DModel`` uses ``flip_sin_to_cos=True, downscale_freq_shift=0``,
    guided-diffusion the same. With :math:`\delta = 0` the frequencies are those of
    :func:`jaxmath.nn.transformer.sinusoidal_positions` (Vaswani et al.), which
    tabulates integer positions with sine and cosine interleaved; this function takes
    traced, possibly fractional ``t``, so it computes the angles itself.

    Args:
      t: ``[B]`` timesteps (integers or floats; fractional values are fine).
      dim: embedding width :math:`D \ge 2`.
      max_period: :math:`\tau > 0`, the longest period (the lowest frequency is
        :math:`1/\tau` for :math:`\delta = 1`).
      flip_sin_to_cos: put the cosines first.
      downscale_freq_shift: :math:`\delta`; must be below :math:`h` (else 0/0, which
        diffusers returns as NaN).
      scale: :math:`s`, multiplies the angles.

    Returns:
      ``[B, dim]`` embeddings in ``[-1, 1]``: float ``t`` keeps its dtype, integer ``t``
      gives the default float (float32; float64 under ``jax_enable_x64``). The
      frequencies are computed in float64 and rounded once, so float32 angles are
      exact to an ulp of :math:`t\,\omega_i`. The gradient with respect to ``t`` is
      :math:`s\,\omega_i \cos` and :math:`-s\,\omega_i \sin`, finite everywhere.

    Raises:
      ValueError: ``t`` not of rank 1, ``dim < 2``, ``max_period <= 0`` or
        ``downscale_freq_shift >= dim // 2``.
      TypeError: non-integer ``dim``, complex ``t``.

    Example:
      >>> e = timestep_embedding(jnp.array([0, 1]), 4, downscale_freq_shift=0)  # freqs 1, 0.01
      >>> print(np.round(e, 6))  # sin and cos round differently by backend in the last ulp
      [[0.       0.       1.       1.      ]
       [0.841471 0.01     0.540302 0.99995 ]]
    """
    t = _checks.as_float(t, "t")
    _checks.check_ndim(t, "t", 1)
    dim = _checks.check_int(dim, "dim", 2, static="it fixes the shape")  # a sine and a cosine
    if not max_period > 0:
        raise ValueError(f"max_period must be > 0, got {max_period}")
    half = dim // 2
    if not downscale_freq_shift < half:
        raise ValueError(f"downscale_freq_shift must be < dim // 2 = {half} (the exponent "
                         f"divides by dim // 2 - downscale_freq_shift), got "
                         f"{downscale_freq_shift}")
    freqs = np.exp(-math.log(max_period) * np.arange(half) / (half - downscale_freq_shift))
    angles = t[:, None] * jnp.asarray(scale * freqs, t.dtype)
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    parts = [cos, sin] if flip_sin_to_cos else [sin, cos]
    if dim % 2:
        parts.append(jnp.zeros_like(t)[:, None])
    return jnp.concatenate(parts, axis=-1)


def _inputs(x: ArrayLike, t: ArrayLike, rank: int, layout: str) -> tuple[Array, Array]:
    """``x`` as float of the given rank and ``t`` as ``[B]``: a scalar ``t`` is broadcast."""
    x = _checks.as_float(x, "x")
    if x.ndim != rank:
        raise ValueError(f"x must have rank {rank} ({layout}), got shape {tuple(x.shape)}")
    _checks.check_nonempty(x, "x")
    t = jnp.asarray(t)
    if jnp.issubdtype(t.dtype, jnp.complexfloating) or t.dtype == jnp.bool_:
        raise TypeError(f"t must hold real timesteps (integers or floats), got dtype {t.dtype}")
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
        raise ValueError(f"t must be a scalar or have shape [B] = ({x.shape[0]},) for x of "
                         f"shape {tuple(x.shape)}, got t.shape={tuple(t.shape)}")
    return x, jnp.broadcast_to(t, (x.shape[0],))


class _TimeEmbedding(nn.Module):
    """Sinusoidal embedding of ``t`` followed by Dense -> activation -> Dense."""

    features: int
    frequency_dim: int
    max_period: float
    flip_sin_to_cos: bool
    downscale_freq_shift: float
    activation: Callable[[Array], Array]
    dtype: Dtype | None
    param_dtype: Dtype
    precision: lax.PrecisionLike

    @nn.compact
    def __call__(self, t: Array) -> Array:
        e = timestep_embedding(t, self.frequency_dim, self.max_period,
                               flip_sin_to_cos=self.flip_sin_to_cos,
                               downscale_freq_shift=self.downscale_freq_shift)
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        e = self.activation(nn.Dense(self.features, name="dense_0", **dense)(e))
        return nn.Dense(self.features, name="dense_1", **dense)(e)


class MLPDenoiser(nn.Module):
    r"""A residual MLP denoiser for vector data ``[B, d]`` (2-D toy distributions and the like).

    .. math:: e = W_{e,2}\, \phi(W_{e,1}\, \mathrm{emb}(t) + b_{e,1}) + b_{e,2}, \qquad
       h_0 = W_{\text{in}} x_t + b_{\text{in}},

    .. math:: h_{k} = h_{k-1} + W_{k,2}\, \phi\big(W_{k,1} h_{k-1} + b_{k,1}
       + U_k \phi(e) + c_k\big) + b_{k,2}, \qquad
       \hat y = W_{\text{out}}\, \phi(h_K) + b_{\text{out}}

    with :math:`\phi` the activation (SiLU), :math:`\mathrm{emb}` the
    :func:`timestep_embedding` and :math:`K` = ``num_blocks`` residual blocks of width
    ``features``. Parameter names: ``time_embed``, ``dense_in``, ``block_k`` (``dense_0``,
    ``time_proj``, ``dense_1``) and ``dense_out``.

    Attributes:
      features: width of the hidden layers and of the time embedding MLP.
      num_blocks: number of residual blocks :math:`K \ge 0`.
      frequency_dim: width of the sinusoidal embedding (default ``features``).
      max_period, flip_sin_to_cos, downscale_freq_shift: of :func:`timestep_embedding`.
      activation: :math:`\phi`.
      dtype: computation dtype (default: from inputs and parameters); e.g.
        ``jnp.bfloat16`` to run the matmuls in bfloat16 with float32 parameters.
      param_dtype: parameter dtype.
      precision: of every dense layer, convolution and attention product: ``None``
        (default) is JAX's default (TF32 for float32 on recent NVIDIA GPUs, one
        bfloat16 pass on TPUs), ``"highest"`` float32 on every backend.

    Example:
      >>> model = MLPDenoiser(features=8, num_blocks=1)
      >>> x, t = jnp.zeros((4, 2)), jnp.array([0, 10, 100, 999])
      >>> model.apply(model.init(jax.random.key(0), x, t), x, t).shape
      (4, 2)
    """

    features: int = 128
    num_blocks: int = 2
    frequency_dim: int | None = None
    max_period: float = 10_000.0
    flip_sin_to_cos: bool = False
    downscale_freq_shift: float = 1.0
    activation: Callable[[Array], Array] = nn.silu
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: lax.PrecisionLike = None

    @nn.compact
    def __call__(self, x: ArrayLike, t: ArrayLike) -> Array:
        """Predict from ``x`` ``[B, d]`` at timesteps ``t`` ``[B]`` (or a scalar).

        Returns:
          ``[B, d]`` in ``dtype`` (default float32). A smooth function of ``x``, ``t`` and
          the parameters: gradients are finite everywhere.

        Raises:
          ValueError: ``x`` not ``[B, d]``, ``t`` neither a scalar nor ``[B]``, or a
            width below 1.
        """
        x, t = _inputs(x, t, 2, "[B, d]")
        width = _checks.check_int(self.features, "features", 1)
        _checks.check_int(self.num_blocks, "num_blocks", 0)
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        frequency_dim = width if self.frequency_dim is None else self.frequency_dim
        e = _TimeEmbedding(width, _checks.check_int(frequency_dim, "frequency_dim", 1),
                           self.max_period, self.flip_sin_to_cos, self.downscale_freq_shift,
                           self.activation, name="time_embed", **dense)(t)
        e = self.activation(e)
        h = nn.Dense(width, name="dense_in", **dense)(x)
        for k in range(self.num_blocks):
            h = _MLPBlock(width, self.activation, name=f"block_{k}", **dense)(h, e)
        return nn.Dense(x.shape[-1], name="dense_out", **dense)(self.activation(h))


class _MLPBlock(nn.Module):
    features: int
    activation: Callable[[Array], Array]
    dtype: Dtype | None
    param_dtype: Dtype
    precision: lax.PrecisionLike

    @nn.compact
    def __call__(self, h: Array, e: Array) -> Array:
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype, precision=self.precision)
        y = (nn.Dense(self.features, name="dense_0", **dense)(h)
             + nn.Dense(self.features, name="time_proj", **dense)(e))
        return h + nn.Dense(self.features, name="dense_1", **dense)(self.activation(y))


class _ResBlock(nn.Module):
    r"""DDPM's residual block: GroupNorm, SiLU, conv, plus the time projection, twice."""

    features: int
    num_groups: int
    dtype: Dtype | None
    param_dtype: Dtype
    precision: lax.PrecisionLike

    @nn.compact
    def __call__(self, x: Array, e: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        lin = dict(kw, precision=self.precision)
        h = nn.silu(nn.GroupNorm(self.num_groups, name="norm_0", **kw)(x))
        h = nn.Conv(self.features, (3, 3), padding=1, name="conv_0", **lin)(h)
        h = h + nn.Dense(self.features, name="time_proj", **lin)(e)[:, None, None, :]
        h = nn.silu(nn.GroupNorm(self.num_groups, name="norm_1", **kw)(h))
        h = nn.Conv(self.features, (3, 3), padding=1, name="conv_1", **lin)(h)
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), name="skip", **lin)(x)
        return x + h


class _AttentionBlock(nn.Module):
    """GroupNorm, then self-attention over the ``H·W`` positions, with a residual."""

    num_heads: int
    num_groups: int
    dtype: Dtype | None
    param_dtype: Dtype
    precision: lax.PrecisionLike

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, height, width, c = x.shape
        h = nn.GroupNorm(self.num_groups, name="norm", **kw)(x).reshape(b, height * width, c)
        h = MultiHeadAttention(self.num_heads, name="attention", precision=self.precision,
                               **kw)(h)
        return x + h.reshape(x.shape)


class UNet(nn.Module):
    r"""A small UNet denoiser for images ``[B, H, W, C]`` (DDPM's architecture, scaled down).

    .. math:: \hat y = \mathrm{Conv}\big(\mathrm{SiLU}(\mathrm{GN}(
       \mathrm{Up} \circ \mathrm{Mid} \circ \mathrm{Down}(\mathrm{Conv}(x_t), e(t))))\big)

    ``Down``: for each level :math:`l` (``channel_mults[l] * channels`` channels),
    ``num_res_blocks`` residual blocks (GroupNorm, SiLU, 3x3 conv, the projection of the
    time embedding added, GroupNorm, SiLU, 3x3 conv, plus a 1x1-conv skip where the
    width changes), each followed by self-attention at the attention levels, then a
    stride-2 3x3 conv (not after the last level). ``Mid``: residual block,
    self-attention (``mid_attention``), residual block. ``Up``: the mirror image with
    ``num_res_blocks + 1`` blocks per level, each taking the matching ``Down`` output
    concatenated on the channels (the skip connections), and nearest-neighbour x2
    upsampling followed by a 3x3 conv. Self-attention (GroupNorm, then
    :class:`~jaxmath.nn.mha.MultiHeadAttention` over the :math:`H_l W_l` positions, plus
    the input) is what lets the low-resolution features see the whole image.

    Attributes:
      out_channels: output channels (default: the input's ``C``).
      channels: width of the first level.
      channel_mults: width of each level as a multiple of ``channels``; the number of
        levels :math:`L` is its length, and ``H`` and ``W`` must be divisible by
        :math:`2^{L-1}`.
      num_res_blocks: residual blocks per level on the way down.
      attention_resolutions: downsampling factors :math:`2^l` of the levels that get
        self-attention after their residual blocks (guided-diffusion's convention:
        ``(2,)`` is the level at half resolution, whatever the image size). Each must be
        :math:`2^l` for a level :math:`l < L`.
      mid_attention: self-attention between the two middle residual blocks.
      num_heads: attention heads; must divide the width of every attention level.
      num_groups: GroupNorm groups; must divide every level's width.
      time_embed_dim: width of the time embedding MLP (default ``4 * channels``).
      max_period, flip_sin_to_cos, downscale_freq_shift: of :func:`timestep_embedding`
        (whose width is ``channels``).
      dtype: computation dtype (default: from inputs and parameters); the attention's
        softmax is float32 whatever it is.
      param_dtype: parameter dtype.
      precision: of every dense layer, convolution and attention product: ``None``
        (default) is JAX's default (TF32 for float32 on recent NVIDIA GPUs, one
        bfloat16 pass on TPUs), ``"highest"`` float32 on every backend.

    Example:
      Shapes only, with ``jax.eval_shape`` (``unet.init(key, x, t)`` makes the
      parameters, ``unet.apply(variables, x, t)`` runs it):

      >>> unet = UNet(channels=8, channel_mults=(1, 2), num_groups=4, num_heads=2)
      >>> x, t = jnp.zeros((2, 8, 8, 1)), jnp.array([3, 7])
      >>> variables = jax.eval_shape(unet.init, jax.random.key(0), x, t)
      >>> jax.eval_shape(unet.apply, variables, x, t).shape
      (2, 8, 8, 1)
      >>> variables["params"]["down_1_attn_0"]["attention"]["query"]["kernel"].shape
      (16, 2, 8)
    """

    out_channels: int | None = None
    channels: int = 32
    channel_mults: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    attention_resolutions: Sequence[int] = (2,)
    mid_attention: bool = True
    num_heads: int = 4
    num_groups: int = 8
    time_embed_dim: int | None = None
    max_period: float = 10_000.0
    flip_sin_to_cos: bool = False
    downscale_freq_shift: float = 1.0
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: lax.PrecisionLike = None

    def _check(self, x: Array) -> tuple[list[int], set[int]]:
        """Validate attributes against ``x``; return each level's width and attention levels."""
        channels = _checks.check_int(self.channels, "channels", 1)
        mults = tuple(self.channel_mults)
        if not mults:
            raise ValueError("channel_mults must name at least one level, got ()")
        widths = [channels * _checks.check_int(m, "channel_mults entries", 1) for m in mults]
        _checks.check_int(self.num_res_blocks, "num_res_blocks", 1)
        groups = _checks.check_int(self.num_groups, "num_groups", 1)
        heads = _checks.check_int(self.num_heads, "num_heads", 1)
        if self.out_channels is not None:
            _checks.check_int(self.out_channels, "out_channels", 1)
        bad = [w for w in widths if w % groups]
        if bad:
            raise ValueError(f"num_groups={groups} must divide every level's width "
                             f"channels * channel_mults = {widths}; it does not divide {bad}")
        factors = {2 ** level: level for level in range(len(widths))}
        attention = set()
        for r in self.attention_resolutions:
            if r not in factors:
                raise ValueError(f"attention_resolutions entries must be downsampling factors "
                                 f"of the levels, {tuple(factors)} for {len(widths)} levels, "
                                 f"got {tuple(self.attention_resolutions)}")
            attention.add(factors[r])
        if self.mid_attention:
            attention_widths = [widths[level] for level in sorted(attention)] + [widths[-1]]
        else:
            attention_widths = [widths[level] for level in sorted(attention)]
        bad = [w for w in attention_widths if w % heads]
        if bad:
            raise ValueError(f"num_heads={heads} must divide the width of every attention "
                             f"level, {attention_widths}; it does not divide {bad}")
        height, width = x.shape[1:3]
        factor = 2 ** (len(widths) - 1)
        if height % factor or width % factor:
            raise ValueError(f"x's height and width must be divisible by 2**(levels - 1) = "
                             f"{factor} for {len(widths)} levels (channel_mults={mults}), got "
                             f"x.shape={tuple(x.shape)} ([B, H, W, C])")
        return widths, attention

    @nn.compact
    def __call__(self, x: ArrayLike, t: ArrayLike) -> Array:
        """Predict from images ``x`` ``[B, H, W, C]`` at timesteps ``t`` ``[B]`` (or a scalar).

        Returns:
          ``[B, H, W, out_channels]`` in ``dtype`` (default float32). Each example is
          processed on its own (GroupNorm and attention never mix the batch). A constant
          feature map normalises to zero (GroupNorm's epsilon, 1e-6, keeps the division
          and its gradient finite).

        Raises:
          ValueError: ``x`` not of rank 4, ``t`` neither a scalar nor ``[B]``, ``H`` or
            ``W`` not divisible by :math:`2^{L-1}`, ``num_groups`` or ``num_heads`` not
            dividing the widths, attention resolutions that match no level.
        """
        x, t = _inputs(x, t, 4, "[B, H, W, C]: NHWC images")
        widths, attention = self._check(x)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        lin = dict(kw, precision=self.precision)
        res = dict(num_groups=self.num_groups, **lin)
        attn = dict(num_heads=self.num_heads, num_groups=self.num_groups, **lin)
        e = _TimeEmbedding(self.time_embed_dim or 4 * self.channels, self.channels,
                           self.max_period, self.flip_sin_to_cos, self.downscale_freq_shift,
                           nn.silu, name="time_embed", **lin)(t)
        e = nn.silu(e)

        h = nn.Conv(widths[0], (3, 3), padding=1, name="conv_in", **lin)(x)
        skips = [h]
        for level, w in enumerate(widths):
            for i in range(self.num_res_blocks):
                h = _ResBlock(w, name=f"down_{level}_res_{i}", **res)(h, e)
                if level in attention:
                    h = _AttentionBlock(name=f"down_{level}_attn_{i}", **attn)(h)
                skips.append(h)
            if level < len(widths) - 1:
                h = nn.Conv(w, (3, 3), strides=2, padding=1, name=f"down_{level}_downsample",
                            **lin)(h)
                skips.append(h)

        h = _ResBlock(widths[-1], name="mid_res_0", **res)(h, e)
        if self.mid_attention:
            h = _AttentionBlock(name="mid_attn", **attn)(h)
        h = _ResBlock(widths[-1], name="mid_res_1", **res)(h, e)

        for level in reversed(range(len(widths))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = _ResBlock(widths[level], name=f"up_{level}_res_{i}", **res)(h, e)
                if level in attention:
                    h = _AttentionBlock(name=f"up_{level}_attn_{i}", **attn)(h)
            if level > 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = nn.Conv(widths[level], (3, 3), padding=1, name=f"up_{level}_upsample",
                            **lin)(h)

        h = nn.silu(nn.GroupNorm(self.num_groups, name="norm_out", **kw)(h))
        return nn.Conv(self.out_channels or x.shape[-1], (3, 3), padding=1, name="conv_out",
                       **lin)(h)
