r"""The forward process of a :class:`~jaxmath.diffusion.schedules.NoiseSchedule` and its posterior.

For a schedule :math:`\beta_0, \dots, \beta_{T-1}` (timesteps from 0, as in diffusers),

.. math::

   q(x_t \mid x_0) = \mathcal{N}\big(\sqrt{\bar\alpha_t}\, x_0,\ (1 - \bar\alpha_t) I\big),
   \qquad
   q(x_{t-1} \mid x_t, x_0) = \mathcal{N}\big(\tilde\mu_t(x_t, x_0),\ \tilde\beta_t I\big)

(DDPM eqs. 4, 6 and 7). Timesteps ``t`` are integers, a scalar or one per example
(``[B]`` for data ``[B, ...]``). Concrete ``t`` outside ``[0, T)`` raise ValueError;
traced ``t`` are checked with ``validate=True`` through ``checkify``.
"""

from __future__ import annotations

import jax

from jaxmath import _checks
from jaxmath.diffusion import _kernels as kernels
from jaxmath.diffusion._arguments import check_timesteps
from jaxmath.diffusion.schedules import NoiseSchedule

ArrayLike = jax.typing.ArrayLike

__all__ = ["q_posterior", "q_sample", "snr"]


def q_sample(schedule: NoiseSchedule, x0: ArrayLike, t: ArrayLike, noise: ArrayLike, *,
             validate: bool = False) -> jax.Array:
    r"""Sample :math:`x_t \sim q(x_t \mid x_0)` in one jump (diffusers' ``add_noise``).

    .. math:: x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon,
       \qquad \epsilon \sim \mathcal{N}(0, I)

    :func:`~jaxmath.diffusion.forward.forward_diffuse` with :math:`\bar\alpha_t` read
    from the schedule.

    Args:
      schedule: the noise schedule.
      x0: ``[B, ...]`` clean data.
      t: integer timesteps in ``[0, T)``: a scalar or ``[B]``, one per example.
      noise: :math:`\epsilon`, shaped like ``x0``.
      validate: check traced ``t`` too (checkify).

    Returns:
      :math:`x_t`, shaped like ``x0``, in the promoted dtype of ``x0`` and ``noise`` (the
      schedule is cast to it). Gradients: :math:`\sqrt{\bar\alpha_t}` with respect to
      ``x0``, :math:`\sqrt{1 - \bar\alpha_t}` with respect to ``noise``.

    Raises:
      ValueError: ``noise`` not shaped like ``x0``, ``t`` not a scalar or ``[B]``, or
        ``t`` outside ``[0, T)``.
      TypeError: ``t`` not integer.

    Example:
      >>> from jaxmath.diffusion.schedules import from_betas, linear_schedule
      >>> s = linear_schedule(1000)
      >>> x0, eps = jnp.ones((2, 3)), jnp.zeros((2, 3))
      >>> q_sample(s, x0, jnp.array([0, 999]), eps)[:, 0]
      Array([0.99995   , 0.00635...], dtype=float32)
    """
    x0, noise = _checks.as_floats((x0, "x0"), (noise, "noise"))
    _checks.check_same_shape(noise, x0, "noise", "x0")
    t = check_timesteps(schedule, t, x0, x_name="x0", validate=validate)
    return kernels.q_sample(schedule, x0, t, noise)


def q_posterior(schedule: NoiseSchedule, x0: ArrayLike, x_t: ArrayLike, t: ArrayLike, *,
                validate: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Mean, variance and log variance of the posterior :math:`q(x_{t-1} \mid x_t, x_0)`.

    .. math:: \tilde\mu_t = \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1 - \bar\alpha_t}\, x_0
       + \frac{\sqrt{\alpha_t}\,(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t}\, x_t, \qquad
       \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}\, \beta_t

    (DDPM eq. 7) with :math:`\bar\alpha_{-1} = 1`.

    Args:
      schedule: the noise schedule.
      x0: ``[B, ...]`` clean data (or a prediction of it).
      x_t: ``[B, ...]`` noisy data, shaped like ``x0``.
      t: integer timesteps in ``[0, T)``: a scalar or ``[B]``.
      validate: check traced ``t`` too (checkify).

    Returns:
      ``(mean, variance, log_variance)``, each shaped like ``x_t``. At ``t = 0`` the
      posterior is a point mass: mean ``x0``, variance 0, and the log variance is
      ``schedule.posterior_log_variance_clipped`` (:math:`\log\tilde\beta_1`, finite).
      The mean is linear in ``x0`` and ``x_t``, so its gradients are the two coefficients.

    Raises:
      ValueError: ``x0`` and ``x_t`` of different shapes, ``t`` not a scalar or ``[B]``, or
        outside ``[0, T)``.
      TypeError: ``t`` not integer.

    Example:
      >>> from jaxmath.diffusion.schedules import from_betas
      >>> s = from_betas(jnp.array([0.1, 0.5]))
      >>> mean, var, log_var = q_posterior(s, jnp.array([2.0]), jnp.array([1.0]), 1)
      >>> mean, var
      (Array([1.8534], dtype=float32), Array([0.0909], dtype=float32))
    """
    x0, x_t = _checks.as_floats((x0, "x0"), (x_t, "x_t"))
    _checks.check_same_shape(x0, x_t, "x0", "x_t")
    t = check_timesteps(schedule, t, x_t, validate=validate)
    return kernels.q_posterior(schedule, x0, x_t, t)


def snr(schedule: NoiseSchedule, t: ArrayLike, *, validate: bool = False) -> jax.Array:
    r"""The signal-to-noise ratio of :math:`x_t`.

    .. math:: \mathrm{SNR}(t) = \frac{\bar\alpha_t}{1 - \bar\alpha_t}

    Args:
      schedule: the noise schedule.
      t: integer timesteps in ``[0, T)``, a scalar or ``[B]``.
      validate: check traced ``t`` too (checkify).

    Returns:
      The SNR, shaped like ``t``, in the schedule's dtype: decreasing in ``t``, 0 at a
      zero-terminal-SNR end (:math:`\bar\alpha = 0`). ``schedule.log_snr`` holds its log.

    Example:
      >>> from jaxmath.diffusion.schedules import from_betas
      >>> snr(from_betas(jnp.array([0.5, 0.5])), jnp.array([0, 1]))
      Array([1.        , 0.33333334], dtype=float32)
    """
    t = check_timesteps(schedule, t, None, validate=validate)
    return schedule.snr[t]
