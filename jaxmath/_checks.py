"""Argument checks shared by every public function.

Shapes, dtypes and option strings are static under ``jax.jit``, so these checks
run at trace time and raise the same ``ValueError``/``TypeError`` eagerly and
inside a jitted function. Every message names the argument, what it got and
what was expected.

Value checks (is ``p`` a probability distribution?) need concrete values. They
run when a function is called with ``validate=True``: eagerly they raise
``ValueError``; on traced values they become ``jax.experimental.checkify``
checks, reported when the caller wraps the function in ``checkify.checkify``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

ArrayLike = jax.typing.ArrayLike

# Tolerance for "sums to one" in validate=True checks, per dtype width.
_SUM_TOL = {2: 1e-2, 4: 1e-4, 8: 1e-10}


def as_float(x: ArrayLike, name: str) -> jax.Array:
    """``x`` as a floating array: integers and bools become the default float dtype.

    Raises TypeError for complex input or anything that is not array-like.
    """
    try:
        arr = jnp.asarray(x)
    except TypeError as e:
        raise TypeError(f"{name} must be array-like, got {type(x).__name__}") from e
    if jnp.issubdtype(arr.dtype, jnp.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {arr.dtype}")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


def as_floats(*named: tuple[ArrayLike, str]) -> tuple[jax.Array, ...]:
    """Several arrays converted with :func:`as_float` and promoted to one dtype."""
    arrays = [as_float(x, name) for x, name in named]
    dtype = jnp.result_type(*arrays)
    return tuple(a.astype(dtype) for a in arrays)


def check_ndim(x: jax.Array, name: str, ndim: int | Sequence[int] | None = None,
               min_ndim: int | None = None) -> None:
    """Raise ValueError unless ``x.ndim`` is ``ndim`` (or one of them) / at least ``min_ndim``."""
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name} must have rank {want}, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(
            f"{name} must have rank >= {min_ndim}, got shape {tuple(x.shape)}")


def check_nonempty(x: jax.Array, name: str, axis: int | tuple[int, ...] | None = None) -> None:
    """Raise ValueError if ``x`` has no elements (or none along ``axis``, an axis or axes)."""
    if axis is None:
        size = x.size
    else:
        size = math.prod(x.shape[a] for a in ((axis,) if isinstance(axis, int) else axis))
    if size == 0:
        where = "" if axis is None else f" along axis {axis}"
        raise ValueError(f"{name} must not be empty{where}, got shape {tuple(x.shape)}")


def check_axis(x: jax.Array, axis: int, name: str) -> int:
    """Normalise ``axis`` for ``x``; ValueError if it is out of range."""
    if not isinstance(axis, int | np.integer):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not -x.ndim <= axis < max(x.ndim, 1):
        raise ValueError(
            f"axis {axis} is out of range for {name} of shape {tuple(x.shape)}")
    return int(axis) % max(x.ndim, 1)


def check_axes(x: jax.Array, axis: int | Sequence[int], name: str, arg: str = "axis",
               allow_empty: bool = False) -> tuple[int, ...]:
    """``axis`` (an int or a sequence of ints) as a tuple of normalised axes of ``x``.

    The order given is kept (it matters where axes are flattened together). Raises
    TypeError for a non-integer axis, ValueError naming the offending axes when one
    is out of range or one axis is named twice (also as ``1`` and ``-1``), and, unless
    ``allow_empty``, when no axis is named.
    """
    if isinstance(axis, int | np.integer):
        return (check_axis(x, axis, name),)
    if not isinstance(axis, Sequence) or isinstance(axis, str) or not all(
            isinstance(a, int | np.integer) for a in axis):
        raise TypeError(f"{arg} must be an int or a tuple of ints, got {axis!r}")
    given = tuple(int(a) for a in axis)
    if not given and not allow_empty:
        raise ValueError(f"{arg} must name at least one axis of {name}, got {axis!r}")
    shape = tuple(x.shape)
    bad = [a for a in given if not -x.ndim <= a < x.ndim]
    if bad:
        raise ValueError(f"{arg} {given} is out of range for {name} of shape {shape}: "
                         f"{', '.join(map(str, bad))} not in [{-x.ndim}, {x.ndim})")
    norm = tuple(a % x.ndim for a in given)
    repeated = sorted({a for a in norm if norm.count(a) > 1})
    if repeated:
        twice = "; ".join(
            " and ".join(str(g) for g, n in zip(given, norm, strict=True) if n == r)
            + f" are both axis {r}" for r in repeated)
        raise ValueError(f"{arg} must not repeat an axis, got {given} for {name} of shape "
                         f"{shape} ({twice})")
    return norm


def check_same_shape(a: jax.Array, b: jax.Array, name_a: str, name_b: str) -> None:
    """Raise ValueError unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape, got "
            f"{name_a}.shape={tuple(a.shape)} and {name_b}.shape={tuple(b.shape)}")


def broadcast_shapes(*named: tuple[jax.Array | tuple[int, ...], str],
                     what: str = "shapes") -> tuple[int, ...]:
    """The broadcast shape of named arrays or shapes; ValueError naming them all if none.

    Each entry is ``(array, name)``, listed as ``name.shape=...``, or ``(shape, name)``
    for a shape no array holds (part of one, or a result's), listed as ``name=...``.
    ``what`` is the subject of the message: "``what`` do not broadcast: ...".
    """
    shapes = [(tuple(x) if isinstance(x, tuple) else tuple(x.shape),
               name if isinstance(x, tuple) else f"{name}.shape") for x, name in named]
    try:
        return tuple(np.broadcast_shapes(*(shape for shape, _ in shapes)))
    except ValueError:
        listed = ", ".join(f"{name}={shape}" for shape, name in shapes)
        raise ValueError(f"{what} do not broadcast: {listed}") from None


def check_choice(value: object, name: str, choices: Iterable[object]) -> None:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices!r}, got {value!r}")


def check_int(value: object, name: str, minimum: int | None = None, *,
              static: str | None = None) -> int:
    """``value`` as a Python int (bools refused); TypeError / ValueError naming ``name``.

    ``minimum``: the smallest value allowed. ``static``: why the value must be a Python
    int rather than an array (e.g. ``"a static value: it fixes array shapes"``), said in
    the TypeError.

    Example:
      >>> check_int(3, "num_steps", 1)
      3
      >>> check_int(0, "num_steps", 1)
      Traceback (most recent call last):
      ...
      ValueError: num_steps must be >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "an int" if static is None else f"a Python int ({static})"
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_int_pair(value: object, name: str, minimum: int | None = None) -> tuple[int, int]:
    """An int or a pair of ints (bools refused), each >= ``minimum``, as a pair.

    Example:
      >>> check_int_pair(3, "kernel_size", 1), check_int_pair((1, 2), "stride", 1)
      ((3, 3), (1, 2))
    """
    def is_int(v: object) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    try:
        pair = (value, value) if is_int(value) else tuple(value)
    except TypeError:  # not iterable
        pair = ()
    if len(pair) != 2 or not all(map(is_int, pair)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if minimum is not None and min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(pair[0]), int(pair[1])


def is_tracer(x: object) -> bool:
    """Whether ``x`` is traced (its value unknown until the program runs)."""
    return isinstance(x, jax.core.Tracer)


def check_bool_mask(mask: ArrayLike, name: str = "mask", hint: str = "") -> jax.Array:
    """``mask`` as a boolean array (True = include / attend); TypeError otherwise."""
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(f"{name} must be boolean (True = attend), got dtype {mask.dtype}{hint}")
    return mask


def check_integer(x: jax.Array, name: str) -> None:
    """Raise TypeError unless ``x`` has an integer dtype."""
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must have an integer dtype, got {x.dtype}")


def check_values(ok: jax.Array, message: str) -> None:
    """Require ``all(ok)``: ValueError eagerly, a checkify check under tracing."""
    if not is_tracer(ok):
        if not bool(jnp.all(ok)):
            raise ValueError(message)
    else:
        # Under jit without checkify.checkify around it, JAX refuses to stage this check
        # with a ValueError of its own ("... without functionalizing it through checkify").
        checkify.check(jnp.all(ok), message)


def check_distribution(p: jax.Array, name: str, axis: int | tuple[int, ...] = -1,
                       where: jax.Array | None = None) -> None:
    """Require entries in [0, 1] that sum to 1 along ``axis`` (an axis or axes; see the
    module docstring). With a mask ``where`` only the included entries are checked and
    they must sum to 1 on every row that has one; a row with none is not checked."""
    tol = _SUM_TOL[jnp.dtype(p.dtype).itemsize]
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    n = math.prod(p.shape[a] for a in axes)
    if where is None:
        ok = (jnp.all((p >= 0) & (p <= 1))
              & jnp.all(jnp.abs(jnp.sum(p, axis=axis) - 1) <= tol * n))
    else:
        where = jnp.broadcast_to(where, p.shape)
        p = jnp.where(where, p, 0)
        counted = jnp.any(where, axis=axis)
        ok = (jnp.all((p >= 0) & (p <= 1))
              & jnp.all(~counted | (jnp.abs(jnp.sum(p, axis=axis) - 1) <= tol * n)))
    check_values(ok, f"{name} must hold probabilities in [0, 1] summing to 1 along "
                     f"axis {axis}; got shape {tuple(p.shape)} with values outside that")


def check_probability(p: jax.Array, name: str, where: jax.Array | None = None) -> None:
    """Require every entry of ``p`` (every one ``where`` includes) to lie in [0, 1]."""
    inside = (p >= 0) & (p <= 1)
    if where is not None:
        inside = inside | ~where
    check_values(jnp.all(inside),
                 f"{name} must hold probabilities in [0, 1]; got shape "
                 f"{tuple(p.shape)} with values outside that")


def check_mask(where: ArrayLike | None, shape: tuple[int, ...], target: str,
               rows: tuple[int, ...] | None = None) -> jax.Array | None:
    """``where`` checked as a boolean mask of the entries of an array of ``shape`` that
    count (True = include, jax.nn's rule); None stays None.

    The mask must broadcast to ``shape`` (NumPy's right-aligned rule) without enlarging
    it. With ``rows`` (the axes a function reduces), a mask that does not may instead
    broadcast to ``shape`` without those axes -- one flag per reduced row -- and is
    returned with size-1 axes inserted at ``rows``, so that it broadcasts to ``shape``;
    a mask that fits both readings is read the first way. Raises TypeError for a
    non-boolean mask and ValueError naming the shapes when it fits no reading.
    """
    if where is None:
        return None
    try:
        mask = jnp.asarray(where)
    except TypeError as e:
        raise TypeError(f"where must be a boolean mask, got {type(where).__name__}") from e
    if mask.dtype != jnp.bool_:
        raise TypeError(f"where must be a boolean mask (True = include), got dtype {mask.dtype}")
    shape, wshape = tuple(shape), tuple(mask.shape)
    try:
        fits = tuple(np.broadcast_shapes(shape, wshape)) == shape
    except ValueError:
        fits = False
        if rows is None:
            raise ValueError(f"shapes do not broadcast: {target}.shape={shape}, "
                             f"where.shape={wshape}") from None
    if fits:
        return mask
    if rows is None:
        raise ValueError(f"where must broadcast to the shape of {target} {shape}, got "
                         f"where.shape={wshape}")
    row_shape = tuple(n for i, n in enumerate(shape) if i not in rows)
    try:
        fits_rows = tuple(np.broadcast_shapes(row_shape, wshape)) == row_shape
    except ValueError:
        fits_rows = False
    if not fits_rows:
        raise ValueError(
            f"where.shape={wshape} fits neither reading of a mask: it must broadcast to "
            f"{target}.shape={shape} (a mask of entries) or to {row_shape}, the shape "
            f"without the reduced axes {tuple(rows)} (a mask of rows)")
    mask = mask.reshape((1,) * (len(row_shape) - mask.ndim) + wshape)
    return jnp.expand_dims(mask, tuple(sorted(rows)))
