r"""A 2-D convolution layer (Flax Linen) over :func:`jaxmath.nn.conv.conv2d`.

.. math:: y[n, i, j, o] = b_o + \sum_{u, v, c} x[n, s_h i + d_h u - p_t,
   s_w j + d_w v - p_l, c]\; k[u, v, c, o]

(a cross-correlation, as ``torch.nn.Conv2d`` and ``flax.linen.Conv``), in
channels-last layout: ``x`` is NHWC and the kernel HWIO. Parameters are named and
shaped as ``flax.linen.Conv``'s (``kernel`` ``[kh, kw, C_in / groups, features]``,
``bias`` ``[features]``), so the two load each other's parameters; a PyTorch
``Conv2d`` weight ``[O, I, kh, kw]`` becomes ``weight.transpose(2, 3, 1, 0)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype
from jax import lax

from jaxmath import _checks
from jaxmath._precision import check_precision
from jaxmath.nn import _conv_kernels as kernels

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]


class Conv2D(nn.Module):
    r"""2-D convolution layer: :func:`~jaxmath.nn.conv.conv2d` with a learned kernel and bias.

    Attributes:
      features: output channels ``C_out``.
      kernel_size: ``kh`` (square) or ``(kh, kw)``.
      strides: int or ``(s_h, s_w)``.
      padding: ``'VALID'`` (default, as ``torch.nn.Conv2d``: 28x28 with a 3x3 kernel
        gives 26x26), ``'SAME'``, an int, ``(p_h, p_w)`` or ``((top, bottom),
        (left, right))``, as in :func:`~jaxmath.nn.conv.conv2d`. Note that
        ``flax.linen.Conv`` defaults to ``'SAME'``.
      dilation: int or ``(d_h, d_w)``.
      groups: channel groups; must divide ``C_in`` and ``features``.
      use_bias: add a learned ``[features]`` bias.
      dtype: computation dtype (default: inferred from input and params).
      param_dtype: parameter dtype.
      precision: of the convolution; ``None`` (default) is JAX's default (TF32
        for float32 on recent NVIDIA GPUs), ``"highest"`` float32 on every backend.
      kernel_init, bias_init: flax's defaults (LeCun normal, zeros); PyTorch
        initialises differently (Kaiming uniform).

    Example:
      The blog post's example: one 28x28 grey image and a 3x3 kernel give 26x26.

      >>> conv = Conv2D(features=1, kernel_size=3)
      >>> image = jnp.zeros((1, 28, 28, 1))
      >>> conv.apply(conv.init(jax.random.key(0), image), image).shape
      (1, 26, 26, 1)
    """

    features: int
    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str | int | Sequence = "VALID"
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    precision: lax.PrecisionLike = None
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """``[N, H, W, C_in]`` (or ``[H, W, C_in]``) to ``[N, H_out, W_out, features]``.

        Raises:
          ValueError: a bad rank, ``groups`` not dividing the channels, a kernel larger
            than the padded input, and the other errors of
            :func:`~jaxmath.nn.conv.conv2d`.
          TypeError: non-int ``features``/``kernel_size``/``groups``, complex input.
        """
        features = _checks.check_int(self.features, "features", 1)
        kh, kw = _checks.check_int_pair(self.kernel_size, "kernel_size", 1)
        strides, padding, dilations, groups = kernels.conv2d_options(
            self.strides, self.padding, self.dilation, self.groups)
        precision = check_precision(self.precision)
        x = _checks.as_float(x, "x")
        _checks.check_ndim(x, "x", (3, 4))
        c_in = x.shape[-1]
        kernels.check_groups(groups, c_in, features, f"features={features}")
        _checks.check_nonempty(x, "x")
        kernel_shape = (kh, kw, c_in // groups, features)
        kernels.check_window(x.shape, kernel_shape, padding, dilations)
        kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
        bias = (self.param("bias", self.bias_init, (features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        return kernels.conv2d(x, kernel, bias, strides, padding, dilations, groups, precision)
