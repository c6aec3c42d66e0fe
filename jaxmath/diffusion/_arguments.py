"""The argument checks the public diffusion functions share.

Each public function checks its arguments once, with these and :mod:`jaxmath._checks`,
and calls the kernels of :mod:`jaxmath.diffusion._kernels`, which check nothing.
Concrete values (timesteps, ``gamma``, ``eta``) are checked whenever they are known at
trace time; traced ones with ``validate=True`` through ``checkify``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from jaxmath import _checks

if TYPE_CHECKING:
    from jaxmath.diffusion.schedules import NoiseSchedule

ArrayLike = jax.typing.ArrayLike

#: What a denoiser may predict, by diffusers' ``prediction_type`` names.
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
ALIASES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}

#: Why a count must be a Python int, said in the TypeError of ``check_int``.
STATIC = "a static value: it fixes array shapes"


def canonical_prediction_type(name: str, arg: str = "prediction_type") -> str:
    """The canonical name of a prediction type; ValueError listing the valid ones."""
    canonical = ALIASES.get(name, name) if isinstance(name, str) else name
    if canonical not in PREDICTION_TYPES:
        raise ValueError(f"{arg} must be one of {PREDICTION_TYPES!r} (or the aliases "
                         f"{tuple(ALIASES)!r}), got {name!r}")
    return canonical


def check_timesteps(schedule: NoiseSchedule, t: ArrayLike, x: jax.Array | None, *,
                    name: str = "t", x_name: str = "x_t", validate: bool = False,
                    lowest: int = 0) -> jax.Array:
    """Integer timesteps: a scalar or ``[B]`` for ``x`` ``[B, ...]`` (if given), in
    ``[lowest, T)`` for the ``T`` timesteps of ``schedule``.

    Concrete values are always checked; traced ones only with ``validate`` (checkify).
    Unchecked traced values outside the range are clamped by the gather (JAX's rule).
    """
    values = None if _checks.is_tracer(t) else np.asarray(t)  # known at trace time
    t = jnp.asarray(t)
    _checks.check_integer(t, name)
    _checks.check_ndim(t, name, (0, 1))
    if x is not None and t.ndim == 1 and (x.ndim == 0 or t.shape[0] not in (1, x.shape[0])):
        raise ValueError(
            f"{name} must be a scalar or have shape [B] for {x_name} of shape [B, ...], got "
            f"{name}.shape={tuple(t.shape)} and {x_name}.shape={tuple(x.shape)}")
    T = schedule.num_timesteps
    message = f"{name} must lie in [{lowest}, {T}) for a schedule of {T} timesteps"
    if values is not None:
        if values.size and (values.min() < lowest or values.max() >= T):
            raise ValueError(f"{message}, got values from {values.min()} to {values.max()}")
    elif validate:
        _checks.check_values((t >= lowest) & (t < T), message)
    return t


def scalar_and_value(x: ArrayLike, name: str) -> tuple[jax.Array, float | None]:
    """A float scalar and its value when known at trace time (None for a tracer).

    The value is read from ``x`` itself: a Python float becomes a tracer once converted
    inside ``jax.jit``, but it is still known, and still checked.
    """
    arr = _checks.as_float(x, name)
    _checks.check_ndim(arr, name, 0)
    return arr, None if _checks.is_tracer(x) else float(np.asarray(x))


def positive_scalar(x: ArrayLike, name: str) -> jax.Array:
    """A float scalar; ValueError unless it is > 0 (when known at trace time)."""
    arr, value = scalar_and_value(x, name)
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return arr
