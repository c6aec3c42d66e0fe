r"""What a denoiser predicts: the noise :math:`\epsilon`, the data :math:`x_0` or the velocity.

With :math:`x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon`, any one of

.. math:: \epsilon, \qquad x_0, \qquad
   v = \sqrt{\bar\alpha_t}\, \epsilon - \sqrt{1 - \bar\alpha_t}\, x_0

determines the other two given :math:`x_t` (v-prediction: Salimans & Ho, 2022). The names
are diffusers' ``prediction_type`` values: ``"epsilon"``, ``"sample"`` (:math:`x_0`) and
``"v_prediction"``; ``"eps"``, ``"x0"`` and ``"v"`` are accepted as aliases.
"""

from __future__ import annotations

import jax

from jaxmath import _checks
from jaxmath.diffusion import _kernels as kernels
from jaxmath.diffusion._arguments import (
    PREDICTION_TYPES,
    canonical_prediction_type,
    check_timesteps,
)
from jaxmath.diffusion.schedules import NoiseSchedule

ArrayLike = jax.typing.ArrayLike

__all__ = [
    "PREDICTION_TYPES",
    "convert_prediction",
    "predict_eps",
    "predict_x0",
    "prediction_target",
    "velocity",
]


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
    prediction_type = canonical_prediction_type(prediction_type)
    x0, noise = _checks.as_floats((x0, "x0"), (noise, "noise"))
    _checks.check_same_shape(noise, x0, "noise", "x0")
    t = check_timesteps(schedule, t, x0, x_name="x0", validate=validate)
    return kernels.prediction_target(schedule, x0, noise, t, prediction_type)


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
    from_type = canonical_prediction_type(from_type, "from_type")
    to_type = canonical_prediction_type(to_type, "to_type")
    out, x_t = _checks.as_floats((model_output, "model_output"), (x_t, "x_t"))
    _checks.check_same_shape(out, x_t, "model_output", "x_t")
    t = check_timesteps(schedule, t, x_t, validate=validate)
    return kernels.convert_prediction(schedule, out, x_t, t, from_type, to_type)


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
