r"""What a denoiser predicts: the noise :math:`\epsilon`, the data :math:`x_0` or the velocity.

With :math:`x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon`, any one of

.. math:: \epsilon, \qquad x_0, \qquad
   v = \sqrt{\bar\alpha_t}\, \epsilon - \sqrt{1 - \bar\alpha_t}\, x_0

determines the other two given :math:`x_t` (v-prediction: Salimans & Ho, 2022). The names
are diffusers' ``prediction_type`` values: ``"epsilon"``, ``"sample"`` (:math:`x_0`) and
``"v_prediction"``; ``"eps"``, ``"x0"`` and ``"v"`` are accepted as aliases.
"""

from __future__ import annotations

from functools import partial

import jax

from jaxmath import _checks
from jaxmath.diffusion.schedules import NoiseSchedule, _aligned, _timesteps

ArrayLike = jax.typing.ArrayLike

__all__ = [
    "PREDICTION_TYPES",
    "convert_prediction",
    "predict_eps",
    "predict_x0",
    "prediction_target",
    "velocity",
]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
_ALIASES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def _prediction_type(name: str, arg: str = "prediction_type") -> str:
    """The canonical name of a prediction type; ValueError listing the valid ones."""
    canonical = _ALIASES.get(name, name) if isinstance(name, str) else name
    if canonical not in PREDICTION_TYPES:
        raise ValueError(f"{arg} must be one of {PREDICTION_TYPES!r} (or the aliases "
                         f"{tuple(_ALIASES)!r}), got {name!r}")
    return canonical


def _coefs(schedule: NoiseSchedule, t: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    r""":math:`\sqrt{\bar\alpha_t}` and :math:`\sqrt{1 - \bar\alpha_t}`, aligned with ``x``."""
    return (_aligned(schedule.sqrt_alpha_bars[t], x),
            _aligned(schedule.sqrt_one_minus_alpha_bars[t], x))


def _x0_and_eps(a: jax.Array, s: jax.Array, out: jax.Array, x_t: jax.Array,
                prediction_type: str) -> tuple[jax.Array, jax.Array]:
    r""":math:`(\hat x_0, \hat\epsilon)` from a model output, with :math:`a^2 + s^2 = 1`."""
    if prediction_type == "epsilon":
        return (x_t - s * out) / a, out
    if prediction_type == "sample":
        return out, (x_t - a * out) / s
    return a * x_t - s * out, a * out + s * x_t  # v_prediction


def _target(a: jax.Array, s: jax.Array, x0: jax.Array, eps: jax.Array,
            prediction_type: str) -> jax.Array:
    """What a model of ``prediction_type`` predicts, given :math:`x_0` and :math:`\\epsilon`."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    return a * eps - s * x0  # v_prediction


def prediction_target(schedule: NoiseSchedule, x0: ArrayLike, noise: ArrayLike,
                      t: ArrayLike, prediction_type: str = "epsilon", *,
                      validate: bool = False) -> jax.Array:
    r"""The regression target of a denoiser: :math:`\epsilon`, :math:`x_0` or :math:`v`.

    .. math:: \text{target} = \begin{cases} \epsilon & \texttt{"epsilon"} \\
       x_0 & \texttt{"sample"} \\
       \sqrt{\bar\alpha_t}\, \epsilon - \sqrt{1 - \bar\alpha_t}\, x_0 &
       \texttt{"v\_prediction"} \end{cases}

    for the :math:`x_t` that :func:`~jaxmath.diffusion.process.q_sample` makes from the
    same ``x0``, ``noise`` and ``t``.

    Args:
      schedule: the noise schedule.
      x0: ``[B, ...]`` clean data.
      noise: :math:`\epsilon`, shaped like ``x0``.
      t: integer timesteps in ``[0, T)``, a scalar or ``[B]``.
      prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
      validate: check traced ``t`` too (checkify).

    Returns:
      The target, shaped like ``x0``, in the promoted dtype of ``x0`` and ``noise``; linear
      in both, so its gradients are the coefficients above.

    Example:
      >>> from jaxmath.diffusion.schedules import from_betas
      >>> s = from_betas(jnp.array([0.36]))  # sqrt(alpha_bar) = 0.8, sqrt(1 - alpha_bar) = 0.6
      >>> prediction_target(s, jnp.array([1.0]), jnp.array([2.0]), 0, "v_prediction")
      Array([1.], dtype=float32)
    """
    prediction_type = _prediction_type(prediction_type)
    x0, noise = _checks.as_floats((x0, "x0"), (noise, "noise"))
    _checks.check_same_shape(noise, x0, "noise", "x0")
    t = _timesteps(schedule, t, x0, x_name="x0", validate=validate)
    return _prediction_target(schedule, x0, noise, t, prediction_type)


@partial(jax.jit, static_argnums=4)
def _prediction_target(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array,
                       t: jax.Array, prediction_type: str) -> jax.Array:
    a, s = _coefs(schedule, t, x0)
    return _target(a, s, x0, noise, prediction_type)


def velocity(schedule: NoiseSchedule, x0: ArrayLike, noise: ArrayLike, t: ArrayLike, *,
             validate: bool = False) -> jax.Array:
    r"""The velocity :math:`v` of Salimans & Ho (2022) (diffusers' ``get_velocity``).

    .. math:: v_t = \sqrt{\bar\alpha_t}\, \epsilon - \sqrt{1 - \bar\alpha_t}\, x_0

    the derivative of :math:`x_t = \cos\phi\, x_0 + \sin\phi\, \epsilon` with respect to the
    angle :math:`\phi`. Same as ``prediction_target(..., "v_prediction")``.

    Args:
      schedule: the noise schedule.
      x0: ``[B, ...]`` clean data.
      noise: :math:`\epsilon`, shaped like ``x0``.
      t: integer timesteps in ``[0, T)``, a scalar or ``[B]``.
      validate: check traced ``t`` too (checkify).

    Returns:
      :math:`v`, shaped like ``x0``; linear in ``x0`` and ``noise``.

    Example:
      >>> from jaxmath.diffusion.schedules import from_betas
      >>> velocity(from_betas(jnp.array([0.36])), jnp.array([1.0]), jnp.array([2.0]), 0)
      Array([1.], dtype=float32)
    """
    return prediction_target(schedule, x0, noise, t, "v_prediction", validate=validate)


def convert_prediction(schedule: NoiseSchedule, model_output: ArrayLike, x_t: ArrayLike,
                       t: ArrayLike, from_type: str, to_type: str, *,
                       validate: bool = False) -> jax.Array:
    r"""Re-express a model output of one prediction type as another, given :math:`x_t`.

    .. math:: \hat x_0 = \frac{x_t - \sqrt{1 - \bar\alpha_t}\, \hat\epsilon}
       {\sqrt{\bar\alpha_t}}, \qquad
       \hat\epsilon = \frac{x_t - \sqrt{\bar\alpha_t}\, \hat x_0}{\sqrt{1 - \bar\alpha_t}},
       \qquad \hat x_0 = \sqrt{\bar\alpha_t}\, x_t - \sqrt{1 - \bar\alpha_t}\, \hat v,
       \qquad \hat\epsilon = \sqrt{\bar\alpha_t}\, \hat v + \sqrt{1 - \bar\alpha_t}\, x_t

    then the target of ``to_type`` from :math:`(\hat x_0, \hat\epsilon)`.

    Args:
      schedule: the noise schedule.
      model_output: ``[B, ...]`` a prediction of type ``from_type``.
      x_t: ``[B, ...]`` the noisy input it was made from.
      t: integer timesteps in ``[0, T)``, a scalar or ``[B]``.
      from_type: prediction type of ``model_output`` (see :data:`PREDICTION_TYPES`).
      to_type: the prediction type wanted.
      validate: check traced ``t`` too (checkify).

    Returns:
      The prediction of type ``to_type``, shaped like ``x_t``; linear in ``model_output``
      and ``x_t``. :math:`\epsilon \to x_0` divides by :math:`\sqrt{\bar\alpha_t}`, so it is
      inf at a zero-terminal-SNR step (:math:`\bar\alpha_t = 0`), where :math:`\epsilon`
      carries no information about :math:`x_0`; the other conversions stay finite
      (:math:`\bar\alpha_t < 1` always, as :math:`\beta_0 > 0`).

    Raises:
      ValueError: unknown prediction type, ``model_output`` not shaped like ``x_t``, or
        ``t`` not a scalar or ``[B]`` in ``[0, T)``.

    Example:
      >>> from jaxmath.diffusion.schedules import from_betas
      >>> s = from_betas(jnp.array([0.36]))
      >>> convert_prediction(s, jnp.array([2.0]), jnp.array([2.0]), 0, "epsilon", "sample")
      Array([1.], dtype=float32)
    """
    from_type, to_type = _prediction_type(from_type, "from_type"), _prediction_type(
        to_type, "to_type")
    out, x_t = _checks.as_floats((model_output, "model_output"), (x_t, "x_t"))
    _checks.check_same_shape(out, x_t, "model_output", "x_t")
    t = _timesteps(schedule, t, x_t, validate=validate)
    return _convert(schedule, out, x_t, t, from_type, to_type)


@partial(jax.jit, static_argnums=(4, 5))
def _convert(schedule: NoiseSchedule, out: jax.Array, x_t: jax.Array, t: jax.Array,
             from_type: str, to_type: str) -> jax.Array:
    a, s = _coefs(schedule, t, x_t)
    x0, eps = _x0_and_eps(a, s, out, x_t, from_type)
    return _target(a, s, x0, eps, to_type)


def predict_x0(schedule: NoiseSchedule, model_output: ArrayLike, x_t: ArrayLike,
               t: ArrayLike, prediction_type: str = "epsilon", *,
               validate: bool = False) -> jax.Array:
    r"""The clean data :math:`\hat x_0` implied by a model output (DDPM eq. 15 for epsilon).

    .. math:: \hat x_0 = \frac{x_t - \sqrt{1 - \bar\alpha_t}\, \hat\epsilon}
       {\sqrt{\bar\alpha_t}}

    for ``"epsilon"``; see :func:`convert_prediction` for the others.

    Args:
      schedule: the noise schedule.
      model_output: ``[B, ...]`` prediction of type ``prediction_type``.
      x_t: ``[B, ...]`` the noisy input.
      t: integer timesteps in ``[0, T)``, a scalar or ``[B]``.
      prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
      validate: check traced ``t`` too (checkify).

    Returns:
      :math:`\hat x_0`, shaped like ``x_t``; see :func:`convert_prediction` for the edge
      cases.

    Example:
      >>> from jaxmath.diffusion.schedules import from_betas
      >>> predict_x0(from_betas(jnp.array([0.36])), jnp.array([2.0]), jnp.array([2.0]), 0)
      Array([1.], dtype=float32)
    """
    return convert_prediction(schedule, model_output, x_t, t, prediction_type, "sample",
                              validate=validate)


def predict_eps(schedule: NoiseSchedule, model_output: ArrayLike, x_t: ArrayLike,
                t: ArrayLike, prediction_type: str = "epsilon", *,
                validate: bool = False) -> jax.Array:
    r"""The noise :math:`\hat\epsilon` implied by a model output.

    .. math:: \hat\epsilon = \frac{x_t - \sqrt{\bar\alpha_t}\, \hat x_0}
       {\sqrt{1 - \bar\alpha_t}}

    for ``"sample"``; see :func:`convert_prediction` for the others.

    Args:
      schedule: the noise schedule.
      model_output: ``[B, ...]`` prediction of type ``prediction_type``.
      x_t: ``[B, ...]`` the noisy input.
      t: integer timesteps in ``[0, T)``, a scalar or ``[B]``.
      prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
      validate: check traced ``t`` too (checkify).

    Returns:
      :math:`\hat\epsilon`, shaped like ``x_t``; finite for every prediction type.

    Example:
      >>> from jaxmath.diffusion.schedules import from_betas
      >>> s = from_betas(jnp.array([0.36]))
      >>> predict_eps(s, jnp.array([1.0]), jnp.array([2.0]), 0, "sample")
      Array([2.], dtype=float32)
    """
    return convert_prediction(schedule, model_output, x_t, t, prediction_type, "epsilon",
                              validate=validate)
