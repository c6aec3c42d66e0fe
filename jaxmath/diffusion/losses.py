r"""The denoising loss: mean squared error on the chosen target, optionally min-SNR-γ weighted.

DDPM's simple loss (Ho et al., 2020, eq. 14) regresses the noise,
:math:`\mathbb{E}_{t, x_0, \epsilon} \|\epsilon - \hat\epsilon(x_t, t)\|^2`; the same loss
on :math:`x_0` or :math:`v` weights the timesteps differently, because for a fixed
:math:`x_t` the three errors are proportional:

.. math:: \|\epsilon - \hat\epsilon\|^2 = \mathrm{SNR}_t\, \|x_0 - \hat x_0\|^2, \qquad
   \|v - \hat v\|^2 = (\mathrm{SNR}_t + 1)\, \|x_0 - \hat x_0\|^2.

Min-SNR-γ (Hang et al., 2023, "Efficient Diffusion Training via Min-SNR Weighting
Strategy", eq. 11) weights every step as :math:`\min(\mathrm{SNR}_t, \gamma)\,
\|x_0 - \hat x_0\|^2`, whatever the model predicts.
"""

from __future__ import annotations

import jax

from jaxmath import _checks
from jaxmath.diffusion import _kernels as kernels
from jaxmath.diffusion._arguments import (
    canonical_prediction_type,
    check_timesteps,
    positive_scalar,
)
from jaxmath.diffusion.schedules import NoiseSchedule

ArrayLike = jax.typing.ArrayLike

__all__ = ["diffusion_loss", "min_snr_weight"]


def min_snr_weight(schedule: NoiseSchedule, t: ArrayLike, gamma: ArrayLike = 5.0,
                   prediction_type: str = "epsilon", *, validate: bool = False) -> jax.Array:
    r"""Min-SNR-γ loss weights (Hang et al., 2023) for the loss on ``prediction_type``.

    .. math:: w_t = \begin{cases} \min(\mathrm{SNR}_t, \gamma) / \mathrm{SNR}_t
       = \min(1, \gamma / \mathrm{SNR}_t) & \texttt{"epsilon"} \\
       \min(\mathrm{SNR}_t, \gamma) & \texttt{"sample"} \\
       \min(\mathrm{SNR}_t, \gamma) / (\mathrm{SNR}_t + 1) & \texttt{"v\_prediction"}
       \end{cases}

    so that :math:`w_t \|\text{target} - \text{prediction}\|^2 = \min(\mathrm{SNR}_t,
    \gamma) \|x_0 - \hat x_0\|^2` for every type (the formulas of diffusers'
    ``train_text_to_image.py``).

    Args:
      schedule: the noise schedule.
      t: integer timesteps in ``[0, T)``, a scalar or ``[B]``.
      gamma: :math:`\gamma > 0`; the paper uses 5.
      prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
      validate: check traced ``t`` too (checkify).

    Returns:
      The weights, shaped like ``t``. At zero terminal SNR (:math:`\mathrm{SNR} = 0`) the
      epsilon weight is its limit 1, not 0/0. The gradient with respect to ``gamma`` is
      1/SNR, 1 or 1/(SNR + 1) (epsilon, sample, v) where SNR > gamma, else 0.

    Example:
      >>> from jaxmath.diffusion.schedules import from_betas
      >>> s = from_betas(jnp.array([0.1, 0.5, 0.9]))  # SNR = 9, 0.818..., 0.0473...
      >>> print(np.round(min_snr_weight(s, jnp.array([0, 1, 2]), 5.0, "epsilon"), 4))
      [0.5556 1.     1.    ]
      >>> print(np.round(min_snr_weight(s, jnp.array([0, 1, 2]), 5.0, "sample"), 4))
      [5.     0.8182 0.0471]
    """
    prediction_type = canonical_prediction_type(prediction_type)
    t = check_timesteps(schedule, t, None, validate=validate)
    return kernels.min_snr_weight(schedule, t, positive_scalar(gamma, "gamma"), prediction_type)


def diffusion_loss(schedule: NoiseSchedule, model_output: ArrayLike, x0: ArrayLike,
                   noise: ArrayLike, t: ArrayLike, prediction_type: str = "epsilon", *,
                   min_snr_gamma: ArrayLike | None = None,
                   validate: bool = False) -> jax.Array:
    r"""The denoising loss: mean squared error on the target of ``prediction_type``.

    .. math:: \mathcal{L} = \frac{1}{B} \sum_{b=1}^{B} w_{t_b}\, \frac{1}{D}
       \big\|\text{target}_b - \text{model\_output}_b\big\|^2

    with the target of :func:`~jaxmath.diffusion.parameterization.prediction_target`
    (:math:`\epsilon`, :math:`x_0` or :math:`v` for the :math:`x_t` that ``q_sample`` makes
    from ``x0``, ``noise`` and ``t``), :math:`D` the number of elements of one example, and
    :math:`w = 1` (DDPM's :math:`L_\text{simple}`) or, with ``min_snr_gamma``, the
    :func:`min_snr_weight` of Hang et al. (2023). As in diffusers, the weights multiply
    the per-example errors and the mean is over the batch (not divided by the weights' sum).

    Args:
      schedule: the noise schedule.
      model_output: ``[B, ...]`` the model's prediction from :math:`x_t`.
      x0: ``[B, ...]`` clean data.
      noise: ``[B, ...]`` the noise :math:`\epsilon` that made :math:`x_t`.
      t: integer timesteps in ``[0, T)``: ``[B]`` (or a scalar for all).
      prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
      min_snr_gamma: :math:`\gamma` for min-SNR-γ weighting; None for none.
      validate: check traced ``t`` too (checkify).

    Returns:
      A scalar in the promoted dtype of the inputs. The gradient with respect to
      ``model_output`` is :math:`2 w_{t_b} (\text{model\_output} - \text{target}) / (B D)`.

    Raises:
      ValueError: shapes differ, ``x0`` has no batch axis, unknown ``prediction_type``,
        ``t`` outside ``[0, T)``, or ``min_snr_gamma <= 0``.

    Example:
      >>> from jaxmath.diffusion.schedules import from_betas
      >>> s = from_betas(jnp.array([0.1, 0.5]))
      >>> x0, eps = jnp.ones((2, 3)), jnp.zeros((2, 3))
      >>> float(diffusion_loss(s, jnp.ones((2, 3)), x0, eps, jnp.array([0, 1])))
      1.0
    """
    out, x0, noise = _checks.as_floats((model_output, "model_output"), (x0, "x0"),
                                       (noise, "noise"))
    _checks.check_same_shape(out, x0, "model_output", "x0")
    _checks.check_same_shape(noise, x0, "noise", "x0")
    _checks.check_ndim(x0, "x0", min_ndim=1)
    _checks.check_nonempty(x0, "x0")
    prediction_type = canonical_prediction_type(prediction_type)
    t = check_timesteps(schedule, t, x0, x_name="x0", validate=validate)
    gamma = None if min_snr_gamma is None else positive_scalar(min_snr_gamma, "gamma")
    return kernels.diffusion_loss(schedule, out, x0, noise, t, gamma, prediction_type)
