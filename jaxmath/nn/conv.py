r"""Convolution: the signal-processing operation and the CNN layer's cross-correlation.

Two functions, two conventions:

* :func:`convolve` is the convolution of the equation,
  :math:`(f * g)(t) = \int f(\tau)\, g(t - \tau)\, d\tau`, discretised. It flips
  the kernel and matches :func:`numpy.convolve` and :func:`scipy.signal.convolve`.
* :func:`conv2d` is what CNN layers (``torch.nn.Conv2d``, ``flax.linen.Conv``)
  call convolution: a cross-correlation, the kernel *not* flipped, with strides,
  padding, dilation, groups and channels.

They agree when the kernel is flipped: ``convolve(f, g, 'valid')`` of a 2-D
image equals ``conv2d`` of it with the kernel ``g[::-1, ::-1]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from jaxmath import _checks
from jaxmath._precision import CLASSICAL, check_precision
from jaxmath.nn import _conv_kernels as kernels

ArrayLike = jax.typing.ArrayLike

_MODES = ("full", "same", "valid")


def _valid_swap(f_shape: tuple[int, ...], g_shape: tuple[int, ...]) -> bool:
    """For mode 'valid': whether to swap f and g (g at least as large in every axis)."""
    if all(a >= b for a, b in zip(f_shape, g_shape, strict=True)):
        return False
    if all(a <= b for a, b in zip(f_shape, g_shape, strict=True)):
        return True
    raise ValueError(
        f"mode 'valid' needs one input at least as large as the other in every axis, "
        f"got f.shape={f_shape} and g.shape={g_shape}")


def convolve(f: ArrayLike, g: ArrayLike, mode: str = "full", *,
             precision: jax.lax.PrecisionLike = CLASSICAL) -> jax.Array:
    r"""Discrete N-dimensional convolution :math:`f * g` (the kernel is flipped).

    .. math:: (f * g)[n] = \sum_{k} f[k]\, g[n - k],

    the discrete form of :math:`(f * g)(t) = \int f(\tau) g(t - \tau)\, d\tau`,
    summed over every index :math:`k` where both factors are defined (zero
    outside). Every axis of ``f`` is convolved with the same axis of ``g``; use
    ``jax.vmap`` for a batch. This is true convolution, as in signal processing:
    CNN layers compute a cross-correlation instead (see :func:`conv2d`); the two
    are equal for a flipped kernel.

    Args:
      f: ``[n_1, ..., n_D]`` signal, ``D >= 1``; integers are converted to float.
      g: ``[m_1, ..., m_D]`` kernel with the same rank as ``f``.
      mode: the output size, as in :func:`scipy.signal.convolve`:
        ``'full'`` (default): every overlap, shape ``n + m - 1``;
        ``'same'``: shape of ``f``, the centre of ``'full'`` (starting at index
        ``(m - 1) // 2``);
        ``'valid'``: only full overlaps, shape ``|n - m| + 1``. Either input may
        be the larger one (convolution commutes), but it must be at least as
        large in every axis.
      precision: passed to :func:`jax.lax.conv_general_dilated`. The default
        ``"highest"`` is float32 on every backend, so results match NumPy and
        SciPy on a GPU or TPU too (jaxmath's classical-math policy); ``None`` is
        the backend's default (TF32 for float32 on recent NVIDIA GPUs, one
        bfloat16 pass on TPUs).

    Returns:
      The convolution, in the promoted floating dtype of ``f`` and ``g``. It
      equals :func:`scipy.signal.convolve` in every mode and, in 1-D,
      :func:`numpy.convolve` except for one case: ``'same'`` with ``g`` longer
      than ``f``, where NumPy returns ``len(g)`` values and jaxmath (with SciPy)
      returns ``len(f)``. The function is bilinear, so gradients are exact and
      finite: the gradient with respect to ``f`` is a correlation with ``g``.

    Raises:
      ValueError: unknown mode, ranks that differ or are 0, empty inputs, or
        ``'valid'`` with neither input at least as large as the other in every axis.
      TypeError: complex or non-numeric input.

    Example:
      >>> convolve(jnp.array([1.0, 2.0, 3.0]), jnp.array([0.0, 1.0, 0.5]))
      Array([0. , 1. , 2.5, 4. , 1.5], dtype=float32)
      >>> convolve(jnp.array([1.0, 2.0, 3.0]), jnp.array([0.0, 1.0, 0.5]), mode='same')
      Array([1. , 2.5, 4. ], dtype=float32)
    """
    _checks.check_choice(mode, "mode", _MODES)
    f, g = _checks.as_floats((f, "f"), (g, "g"))
    _checks.check_ndim(f, "f", min_ndim=1)
    if g.ndim != f.ndim:
        raise ValueError(f"f and g must have the same rank, got f.shape={tuple(f.shape)} "
                         f"and g.shape={tuple(g.shape)}")
    _checks.check_nonempty(f, "f")
    _checks.check_nonempty(g, "g")
    if mode == "valid" and _valid_swap(tuple(f.shape), tuple(g.shape)):
        f, g = g, f
    if mode == "full":
        padding = tuple((m - 1, m - 1) for m in g.shape)
    elif mode == "same":
        # The centre of 'full' starts at index (m - 1) // 2 (scipy's convention).
        padding = tuple((m - 1 - (m - 1) // 2, (m - 1) // 2) for m in g.shape)
    else:
        padding = ((0, 0),) * g.ndim
    return kernels.convolve(f, g, padding, check_precision(precision))


def conv2d(x: ArrayLike, kernel: ArrayLike, stride: int | Sequence[int] = 1,
           padding: str | int | Sequence = "VALID", dilation: int | Sequence[int] = 1,
           groups: int = 1, bias: ArrayLike | None = None, *,
           precision: jax.lax.PrecisionLike = None) -> jax.Array:
    r"""2-D convolution as CNN layers define it: a cross-correlation (kernel not flipped).

    .. math:: y[n, i, j, o] = b_o + \sum_{u, v} \sum_{c=1}^{C_{in}/G}
       x[n,\; s_h i + d_h u - p_t,\; s_w j + d_w v - p_l,\; g(o)\tfrac{C_{in}}{G} + c]
       \; k[u, v, c, o],

    with strides :math:`s`, dilations :math:`d`, top/left padding :math:`p`
    (zeros), :math:`G` groups and :math:`g(o) = \lfloor o G / C_{out} \rfloor`
    the group of output channel :math:`o`. This is ``torch.nn.functional.conv2d``
    and ``flax.linen.Conv`` in channels-last layout. It is *not* the convolution
    :math:`(f * g)(t) = \int f(\tau) g(t - \tau) d\tau` of :func:`convolve`, which
    flips the kernel: the two agree when the kernel is flipped in both spatial
    axes (``kernel[::-1, ::-1]``).

    Args:
      x: ``[N, H, W, C_in]`` images (NHWC), or one image ``[H, W, C_in]``.
        PyTorch's NCHW input is ``x.transpose(0, 2, 3, 1)``.
      kernel: ``[kh, kw, C_in / groups, C_out]`` weights (HWIO). PyTorch's OIHW
        weight is ``w.transpose(2, 3, 1, 0)``.
      stride: step between windows, an int or ``(s_h, s_w)``, each >= 1.
      padding: ``'VALID'`` (no padding; default), ``'SAME'`` (output size
        ``ceil(H / s_h)``, extra padding at the bottom/right, as in TensorFlow and
        ``jax.lax``), an int ``p`` (``p`` zeros on every side, PyTorch's
        ``padding=p``), a pair ``(p_h, p_w)``, or ``((top, bottom), (left, right))``.
        Strings are case-insensitive.
      dilation: spacing between kernel taps, an int or ``(d_h, d_w)``, each >= 1.
      groups: number of channel groups; must divide ``C_in`` and ``C_out``.
      bias: optional ``[C_out]`` bias added to every output position.
      precision: passed to :func:`jax.lax.conv_general_dilated`. ``None``
        (default) is JAX's default, as for a CNN layer: float32 on CPU, TF32 for
        float32 inputs on recent NVIDIA GPUs (about 1e-3 relative error), one
        bfloat16 pass on TPUs; ``"highest"`` gives float32 on every backend.

    Returns:
      ``[N, H_out, W_out, C_out]`` (``[H_out, W_out, C_out]`` for an unbatched
      image) in the promoted floating dtype of the inputs, with
      ``H_out = floor((H + p_t + p_b - d_h (kh - 1) - 1) / s_h) + 1``. The map is
      bilinear in ``(x, kernel)``, so gradients are exact and finite everywhere.

    Raises:
      ValueError: wrong ranks, ``C_in`` not equal to ``kernel``'s input channels
        times ``groups``, ``groups`` not dividing the channels, a bias that is not
        ``[C_out]``, unknown or negative padding, stride or dilation < 1, or a
        (dilated) kernel larger than the padded input, which would give an
        empty output.
      TypeError: complex input, or stride/dilation/padding/groups of the wrong type.

    Example:
      A 3x3 box filter over a 4x4 ramp, the blog post's shape rule ``28 -> 26`` in small:

      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> conv2d(x, jnp.ones((3, 3, 1, 1)))[..., 0]
      Array([[[45., 54.],
              [81., 90.]]], dtype=float32)
    """
    strides, pads, dilations, groups = kernels.conv2d_options(stride, padding, dilation, groups)
    named = [(x, "x"), (kernel, "kernel")] + ([] if bias is None else [(bias, "bias")])
    arrays = _checks.as_floats(*named)
    x, kernel = arrays[:2]
    _checks.check_ndim(x, "x", (3, 4))
    _checks.check_ndim(kernel, "kernel", 4)
    c_in_g, c_out = kernel.shape[2:]
    c_in = x.shape[-1]
    kernels.check_groups(groups, c_in, c_out, f"the output channels (kernel.shape[-1]={c_out})")
    if c_in_g * groups != c_in:
        raise ValueError(
            f"kernel must have x.shape[-1] / groups = {c_in // groups} input channels (HWIO "
            f"layout), got x.shape={tuple(x.shape)} and kernel.shape={tuple(kernel.shape)}")
    _checks.check_nonempty(kernel, "kernel")
    _checks.check_nonempty(x, "x")
    kernels.check_window(x.shape, kernel.shape, pads, dilations)
    if bias is not None and arrays[2].shape != (c_out,):
        raise ValueError(f"bias must have shape (C_out,) = ({c_out},), got shape "
                         f"{tuple(arrays[2].shape)}")
    b = None if bias is None else arrays[2]
    return kernels.conv2d(x, kernel, b, strides, pads, dilations, groups,
                          check_precision(precision))
