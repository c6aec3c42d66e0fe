r"""The diffusion kernels: the one implementation of every equation of :mod:`jaxmath.diffusion`.

The public functions check their arguments once (:mod:`jaxmath.diffusion._arguments`)
and call these; library code that already holds checked arrays calls them directly, so
no array is checked twice. A kernel takes float arrays of one dtype, integer timesteps
``t`` (a scalar or ``[B]`` for data ``[B, ...]``) in range, and canonical option names;
it checks nothing.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from jaxmath.diffusion.schedules import NoiseSchedule


@jax.custom_jvp
def sqrt(a: jax.Array) -> jax.Array:
    """``sqrt(a)`` whose derivative at ``a = 0`` is large but finite (never inf or NaN)."""
    return jnp.sqrt(a)


@sqrt.defjvp
def _sqrt_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    # d sqrt(a) / da = 1 / (2 sqrt(a)), evaluated no closer to 0 than the smallest
    # normal number, so that 0 * (1 / 0) = NaN cannot appear in a chain rule.
    slope = 0.5 * jax.lax.rsqrt(jnp.maximum(a, jnp.finfo(a.dtype).tiny))
    return jnp.sqrt(a), da * slope


def aligned(coef: jax.Array, x: jax.Array) -> jax.Array:
    """A per-example coefficient (scalar or ``[B]``) in ``x``'s dtype, shaped to broadcast."""
    return coef.astype(x.dtype).reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


# ---------------------------------------------------------------- forward process


@jax.jit
def forward_diffuse(x0: jax.Array, alpha_bar: jax.Array, noise: jax.Array) -> jax.Array:
    r""":math:`\sqrt{\bar\alpha}\, x_0 + \sqrt{1 - \bar\alpha}\, \epsilon`, ``alpha_bar``
    already shaped to broadcast against ``x0``."""
    return sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * noise


@jax.jit
def q_sample(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array,
             noise: jax.Array) -> jax.Array:
    r""":math:`x_t` from :math:`x_0` in one jump, :math:`\bar\alpha_t` read from the schedule."""
    return forward_diffuse(x0, aligned(schedule.alpha_bars[t], x0), noise)


@jax.jit
def q_posterior(schedule: NoiseSchedule, x0: jax.Array, x_t: jax.Array,
                t: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Mean, variance and log variance of :math:`q(x_{t-1} \mid x_t, x_0)`."""
    mean = (aligned(schedule.posterior_mean_coef1[t], x_t) * x0
            + aligned(schedule.posterior_mean_coef2[t], x_t) * x_t)
    variance = jnp.broadcast_to(aligned(schedule.posterior_variance[t], x_t), x_t.shape)
    log_variance = jnp.broadcast_to(
        aligned(schedule.posterior_log_variance_clipped[t], x_t), x_t.shape)
    return mean, variance, log_variance


# ---------------------------------------------------------------- parameterisation


def coefs(schedule: NoiseSchedule, t: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    r""":math:`\sqrt{\bar\alpha_t}` and :math:`\sqrt{1 - \bar\alpha_t}`, aligned with ``x``."""
    return (aligned(schedule.sqrt_alpha_bars[t], x),
            aligned(schedule.sqrt_one_minus_alpha_bars[t], x))


def x0_and_eps(a: jax.Array, s: jax.Array, out: jax.Array, x_t: jax.Array,
               prediction_type: str) -> tuple[jax.Array, jax.Array]:
    r""":math:`(\hat x_0, \hat\epsilon)` from a model output, with :math:`a^2 + s^2 = 1`."""
    if prediction_type == "epsilon":
        return (x_t - s * out) / a, out
    if prediction_type == "sample":
        return out, (x_t - a * out) / s
    return a * x_t - s * out, a * out + s * x_t  # v_prediction


def target(a: jax.Array, s: jax.Array, x0: jax.Array, eps: jax.Array,
           prediction_type: str) -> jax.Array:
    r"""What a model of ``prediction_type`` predicts, given :math:`x_0` and :math:`\epsilon`."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "sample":
        return x0
    return a * eps - s * x0  # v_prediction


@partial(jax.jit, static_argnums=4)
def prediction_target(schedule: NoiseSchedule, x0: jax.Array, noise: jax.Array,
                      t: jax.Array, prediction_type: str) -> jax.Array:
    r"""The regression target (:math:`\epsilon`, :math:`x_0` or :math:`v`) at ``t``."""
    a, s = coefs(schedule, t, x0)
    return target(a, s, x0, noise, prediction_type)


@partial(jax.jit, static_argnums=(4, 5))
def convert_prediction(schedule: NoiseSchedule, out: jax.Array, x_t: jax.Array,
                       t: jax.Array, from_type: str, to_type: str) -> jax.Array:
    """A model output of ``from_type`` re-expressed as ``to_type``, given ``x_t``."""
    a, s = coefs(schedule, t, x_t)
    x0, eps = x0_and_eps(a, s, out, x_t, from_type)
    return target(a, s, x0, eps, to_type)


# ---------------------------------------------------------------- losses


@partial(jax.jit, static_argnums=3)
def min_snr_weight(schedule: NoiseSchedule, t: jax.Array, gamma: jax.Array,
                   prediction_type: str) -> jax.Array:
    r"""Min-SNR-γ weights :math:`\min(\mathrm{SNR}_t, \gamma)` over the loss's own factor."""
    snr_t = schedule.snr[t]
    gamma = gamma.astype(snr_t.dtype)
    if prediction_type == "epsilon":
        return jnp.minimum(1, gamma / snr_t)
    clipped = jnp.minimum(snr_t, gamma)
    return clipped if prediction_type == "sample" else clipped / (snr_t + 1)


@partial(jax.jit, static_argnums=6)
def diffusion_loss(schedule: NoiseSchedule, out: jax.Array, x0: jax.Array,
                   noise: jax.Array, t: jax.Array, gamma: jax.Array | None,
                   prediction_type: str) -> jax.Array:
    """The batch mean of the (min-SNR-γ weighted) per-example mean squared errors."""
    y = prediction_target(schedule, x0, noise, t, prediction_type)
    per_example = jnp.mean(jnp.square(out - y).reshape(x0.shape[0], -1), axis=1)
    if gamma is not None:
        weight = min_snr_weight(schedule, t, gamma, prediction_type)
        per_example = per_example * weight.astype(per_example.dtype)
    return jnp.mean(per_example)


# ---------------------------------------------------------------- sampler steps


def _clip(x0: jax.Array, r: jax.Array | None) -> jax.Array:
    return x0 if r is None else jnp.clip(x0, -r.astype(x0.dtype), r.astype(x0.dtype))


def _plus_noise(x: jax.Array, std: jax.Array, noise: jax.Array | None) -> jax.Array:
    return x if noise is None else x + std * noise


@partial(jax.jit, static_argnums=(6, 7))
def ddpm_step(schedule: NoiseSchedule, out: jax.Array, x_t: jax.Array, t: jax.Array,
              noise: jax.Array | None, clip: jax.Array | None, prediction_type: str,
              variance_type: str) -> tuple[jax.Array, jax.Array]:
    r"""One ancestral step :math:`x_t \to x_{t-1}`: ``(x_prev, x0_pred)``."""
    x0 = _clip(x0_and_eps(*coefs(schedule, t, x_t), out, x_t, prediction_type)[0], clip)
    mean, _, _ = q_posterior(schedule, x0, x_t, t)
    variances = schedule.posterior_variance if variance_type == "fixed_small" else schedule.betas
    std = aligned(jnp.where(t > 0, jnp.sqrt(variances[t]), 0), x_t)
    return _plus_noise(mean, std, noise), x0


@partial(jax.jit, static_argnums=(8, 9))
def ddim_step(schedule: NoiseSchedule, out: jax.Array, x_t: jax.Array, t: jax.Array,
              t_prev: jax.Array, noise: jax.Array | None, eta: jax.Array,
              clip: jax.Array | None, prediction_type: str,
              set_alpha_to_one: bool) -> tuple[jax.Array, jax.Array]:
    r"""One DDIM step :math:`x_t \to x_{t'}`: ``(x_prev, x0_pred)``."""
    # Everything from log(alpha_bar): 1 - alpha_bar and 1 - alpha_bar_t / alpha_bar_prev
    # through expm1, free of cancellation for small steps. Index 0 holds the final value.
    final = jnp.zeros((1,), schedule.log_alpha_bars.dtype) if set_alpha_to_one else (
        schedule.log_alpha_bars[:1])
    log_ab = jnp.concatenate([final, schedule.log_alpha_bars])
    log_ab_t, log_ab_prev = log_ab[t + 1], log_ab[t_prev + 1]
    variance = jnp.maximum(jnp.expm1(log_ab_prev) / jnp.expm1(log_ab_t)
                           * -jnp.expm1(log_ab_t - log_ab_prev), 0)
    sigma = aligned(eta * jnp.sqrt(variance), x_t)
    x0, eps = x0_and_eps(*coefs(schedule, t, x_t), out, x_t, prediction_type)
    x0 = _clip(x0, clip)
    a_prev = aligned(jnp.exp(0.5 * log_ab_prev), x_t)
    direction = jnp.sqrt(jnp.maximum(aligned(-jnp.expm1(log_ab_prev), x_t)
                                     - jnp.square(sigma), 0)) * eps
    return _plus_noise(a_prev * x0 + direction, sigma, noise), x0
