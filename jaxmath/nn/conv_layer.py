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
import numpy as np
from flax.linen.dtypes import promote_dtype
from jax import lax

from jaxmath import _checks
from jaxmath.nn.conv import conv2d

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]


def _kernel_size(kernel_size: int | Sequence[int]) -> tuple[int, int]:
    pair = ((kernel_size, kernel_size) if isinstance(kernel_size, int | np.integer)
            else tuple(kernel_size))
    if (len(pair) != 2 or not all(isinstance(k, int | np.integer) and not isinstance(k, bool)
                                  for k in pair)):
        raise TypeError(f"kernel_size must be an int or a pair of ints, got {kernel_size!r}")
    if min(pair) < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size!r}")
    return int(pair[0]), int(pair[1])


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
      The seed's example: one 28x28 grey image and a 3x3 kernel give 26x26.

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
        if not isinstance(self.features, int | np.integer) or isinstance(self.features, bool):
            raise TypeError(f"features must be an int, got {self.features!r}")
        if self.features < 1:
            raise ValueError(f"features must be >= 1, got {self.features}")
        kh, kw = _kernel_size(self.kernel_size)
        x = _checks.as_float(x, "x")
        _checks.check_ndim(x, "x", (3, 4))
        if not isinstance(self.groups, int | np.integer) or self.groups < 1:
            raise ValueError(f"groups must be a positive int, got {self.groups!r}")
        c_in = x.shape[-1]
        if c_in % self.groups or self.features % self.groups:
            raise ValueError(f"groups={self.groups} must divide the input channels "
                             f"(x.shape[-1]={c_in}) and features={self.features}")
        kernel = self.param("kernel", self.kernel_init,
                            (kh, kw, c_in // self.groups, self.features), self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
                if self.use_bias else None)
        x, kernel, bias = promote_dtype(x, kernel, bias, dtype=self.dtype)
        return conv2d(x, kernel, stride=self.strides, padding=self.padding,
                      dilation=self.dilation, groups=self.groups, bias=bias,
                      precision=self.precision)
