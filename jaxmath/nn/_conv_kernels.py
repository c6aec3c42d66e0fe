"""The convolution kernels and the argument checks that ``conv2d`` and ``Conv2D`` share.

The kernels take checked arrays and options and are the only implementation:
:func:`jaxmath.nn.conv.convolve`, :func:`jaxmath.nn.conv.conv2d` and
:class:`jaxmath.nn.conv_layer.Conv2D` check their arguments once and call them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmath import _checks

PADDINGS = ("VALID", "SAME")

Padding = str | tuple[tuple[int, int], ...]


@functools.partial(jax.jit, static_argnames=("padding", "precision"))
def convolve(f: jax.Array, g: jax.Array, padding: tuple[tuple[int, int], ...],
             precision: jax.lax.PrecisionLike) -> jax.Array:
    """True convolution of checked arrays: correlation with the flipped kernel."""
    out = jax.lax.conv_general_dilated(
        f[None, None], jnp.flip(g)[None, None], window_strides=(1,) * f.ndim,
        padding=padding, precision=precision)
    return out[0, 0]


@functools.partial(jax.jit, static_argnames=("strides", "padding", "dilations", "groups",
                                             "precision"))
def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, strides: tuple[int, int],
           padding: Padding, dilations: tuple[int, int], groups: int,
           precision: jax.lax.PrecisionLike) -> jax.Array:
    """Cross-correlation of checked NHWC/HWIO arrays (unbatched [H, W, C] allowed)."""
    unbatched = x.ndim == 3
    y = jax.lax.conv_general_dilated(
        x[None] if unbatched else x, kernel, window_strides=strides, padding=padding,
        rhs_dilation=dilations, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups, precision=precision)
    if bias is not None:
        y = y + bias
    return y[0] if unbatched else y


def conv2d_options(stride: object, padding: object, dilation: object, groups: object
                   ) -> tuple[tuple[int, int], Padding, tuple[int, int], int]:
    """``(strides, padding, dilations, groups)`` checked and normalised for :func:`conv2d`."""
    groups = _checks.check_int(groups, "groups", 1)
    strides = _checks.check_int_pair(stride, "stride", 1)
    dilations = _checks.check_int_pair(dilation, "dilation", 1)
    return strides, _padding(padding), dilations, groups


def _padding(padding: object) -> Padding:
    """'SAME' (any case), or explicit ((top, bottom), (left, right)) padding ('VALID' = 0)."""
    if isinstance(padding, str):
        _checks.check_choice(padding.upper(), "padding", PADDINGS)
        return "SAME" if padding.upper() == "SAME" else ((0, 0), (0, 0))
    bad = TypeError(f"padding must be 'VALID', 'SAME', an int, a pair (pad_h, pad_w) or "
                    f"((top, bottom), (left, right)) of ints, got {padding!r}")
    if isinstance(padding, int | np.integer):
        pads = ((padding, padding), (padding, padding))
    else:
        try:
            items = tuple(padding)
        except TypeError:
            raise bad from None
        if len(items) != 2:
            raise bad
        pads = tuple((p, p) if isinstance(p, int | np.integer) else tuple(p) for p in items)
    if not all(len(p) == 2 and all(isinstance(v, int | np.integer) for v in p) for p in pads):
        raise bad
    if any(v < 0 for p in pads for v in p):
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return tuple((int(lo), int(hi)) for lo, hi in pads)


def check_groups(groups: int, c_in: int, c_out: int, outputs: str) -> None:
    """Raise ValueError unless ``groups`` divides the ``c_in`` input and ``c_out`` output
    channels; ``outputs`` names the latter in the message."""
    if c_in % groups or c_out % groups:
        raise ValueError(f"groups={groups} must divide the input channels (x.shape[-1]={c_in})"
                         f" and {outputs}")


def check_window(x_shape: Sequence[int], kernel_shape: Sequence[int], padding: Padding,
                 dilations: tuple[int, int]) -> None:
    """Raise ValueError if the (dilated) kernel spans more pixels than the padded input
    has along H or W: the output would be empty. 'SAME' padding never empties it."""
    if isinstance(padding, str):
        return
    spatial = tuple(x_shape)[-3:-1]
    for axis, size, k, d, (lo, hi) in zip("HW", spatial, kernel_shape[:2], dilations, padding,
                                          strict=True):
        if size + lo + hi < d * (k - 1) + 1:
            raise ValueError(
                f"the kernel spans {d * (k - 1) + 1} pixels along {axis} (kernel.shape="
                f"{tuple(kernel_shape)}, dilation={dilations}) but the padded input has "
                f"{size + lo + hi} (x.shape={tuple(x_shape)}, padding={padding}): the "
                f"output would be empty")
