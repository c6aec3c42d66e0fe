r"""Noise schedules: the variances :math:`\beta_t` of a diffusion model and what derives from them.

A schedule is a :class:`NoiseSchedule` pytree built by :func:`from_betas` or by a named
constructor, with timesteps indexed from 0 as in diffusers (DDPM's :math:`t = 1 \dots T`
is jaxmath's ``t = 0 ... T - 1``):

=================  =====================================================================
``linear``         :math:`\beta_t` evenly spaced from 1e-4 to 0.02 (Ho et al., 2020)
``scaled_linear``  :math:`\sqrt{\beta_t}` evenly spaced (Stable Diffusion; Rombach et al.)
``cosine``         :math:`\bar\alpha_t = \cos^2(\frac{t/T + s}{1 + s} \frac{\pi}{2})`
                   (Nichol & Dhariwal, 2021); diffusers' ``squaredcos_cap_v2``
``sigmoid``        :math:`\beta_t` on a sigmoid from ``beta_start`` to ``beta_end``
=================  =====================================================================

Each constructor equals diffusers' ``DDPMScheduler(num_train_timesteps=T,
beta_schedule=...)`` with its defaults (``beta_start=1e-4``, ``beta_end=0.02``). The
constructors are traceable in their float arguments, so a sweep over ``beta_end`` can
``jax.vmap`` over them; ``num_timesteps`` fixes shapes and is static.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmath import _checks
from jaxmath.diffusion._arguments import STATIC

ArrayLike = jax.typing.ArrayLike
DTypeLike = jax.typing.DTypeLike

__all__ = [
    "SCHEDULES",
    "NoiseSchedule",
    "cosine_schedule",
    "from_betas",
    "linear_schedule",
    "make_schedule",
    "scaled_linear_schedule",
    "sigmoid_schedule",
]


@struct.dataclass
class NoiseSchedule:
    r"""A diffusion noise schedule: :math:`\beta_t` and the arrays derived from it, each ``[T]``.

    .. math::

       \alpha_t = 1 - \beta_t, \quad \bar\alpha_t = \prod_{s \le t} \alpha_s, \quad
       \mathrm{SNR}_t = \frac{\bar\alpha_t}{1 - \bar\alpha_t}, \quad
       \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t} \beta_t, \quad
       \tilde\mu_t(x_t, x_0) = \underbrace{\frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}
       {1 - \bar\alpha_t}}_{\texttt{posterior\_mean\_coef1}} x_0 +
       \underbrace{\frac{\sqrt{\alpha_t}\,(1 - \bar\alpha_{t-1})}
       {1 - \bar\alpha_t}}_{\texttt{posterior\_mean\_coef2}} x_t

    with :math:`\bar\alpha_{-1} = 1`, so :math:`\tilde\beta_0 = 0`. From
    ``log_alpha_bars`` :math:`= \sum_{s \le t} \operatorname{log1p}(-\beta_s)`,
    :math:`\bar\alpha_t` is its ``exp`` and :math:`1 - \bar\alpha_t` its ``-expm1``, free
    of cancellation when :math:`\bar\alpha_t` is near 1 (float32 ``1 - (1 - 1e-4)`` is
    off by 1.7e-4 relative). ``posterior_log_variance_clipped`` replaces
    :math:`\log\tilde\beta_0 = -\infty` by :math:`\log\tilde\beta_1` (as Ho et al.'s
    code; :math:`\log\beta_0` if ``T = 1``).
    Build it with :func:`from_betas` or a named constructor, never field by field. It is a
    pytree: it goes through ``jax.jit``, ``jax.vmap`` (a batch of schedules) and
    ``jax.lax.scan``; ``num_timesteps`` is static.

    Example:
      >>> s = linear_schedule(1000)
      >>> s.num_timesteps, s.betas.shape
      (1000, (1000,))
      >>> float(s.alpha_bars[-1])
      4.03...e-05
    """

    betas: jax.Array
    alphas: jax.Array
    alpha_bars: jax.Array
    log_alpha_bars: jax.Array
    alpha_bars_prev: jax.Array
    sqrt_alpha_bars: jax.Array
    sqrt_one_minus_alpha_bars: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array
    snr: jax.Array
    log_snr: jax.Array
    num_timesteps: int = struct.field(pytree_node=False)


def from_betas(betas: ArrayLike, *, validate: bool = False) -> NoiseSchedule:
    r"""The :class:`NoiseSchedule` of given variances :math:`\beta_0, \dots, \beta_{T-1}`.

    .. math:: \alpha_t = 1 - \beta_t, \qquad \bar\alpha_t = \prod_{s=0}^{t} \alpha_s

    and the derived arrays listed in :class:`NoiseSchedule`.

    Args:
      betas: ``[T]`` variances in ``(0, 1]``. :math:`\beta_{T-1} = 1` gives zero terminal
        SNR (:math:`\bar\alpha_{T-1} = 0`, ``log_snr = -inf``).
      validate: also check traced ``betas`` (a ``checkify`` check). Concrete ``betas`` are
        always checked.

    Returns:
      The schedule, in the dtype of ``betas`` (integers become the default float). The
      derived arrays are differentiable in ``betas`` wherever they are finite.

    Raises:
      ValueError: ``betas`` not 1-D, empty, or (concrete) outside ``(0, 1]``.

    Example:
      >>> s = from_betas(jnp.array([0.1, 0.5]))
      >>> s.alpha_bars
      Array([0.9 , 0.45], dtype=float32)
      >>> s.posterior_variance
      Array([0.    , 0.0909], dtype=float32)
    """
    known = not _checks.is_tracer(betas)  # before conversion, which traces in jit
    values = np.asarray(betas) if known else None
    betas = _checks.as_float(betas, "betas")
    _checks.check_ndim(betas, "betas", 1)
    _checks.check_nonempty(betas, "betas")
    message = "betas must lie in (0, 1]"
    if known:
        if not np.all((values > 0) & (values <= 1)):
            raise ValueError(f"{message}, got values from {values.min()} to {values.max()}")
    elif validate:
        _checks.check_values((betas > 0) & (betas <= 1), message)
    return _derive(betas)


@jax.jit
def _derive(betas: jax.Array) -> NoiseSchedule:
    alphas = 1 - betas
    log_alpha_bars = jnp.cumsum(jnp.log1p(-betas))
    alpha_bars = jnp.exp(log_alpha_bars)
    one_minus = -jnp.expm1(log_alpha_bars)  # 1 - alpha_bar without cancellation near t = 0
    alpha_bars_prev = jnp.concatenate([jnp.ones((1,), betas.dtype), alpha_bars[:-1]])
    one_minus_prev = jnp.concatenate([jnp.zeros((1,), betas.dtype), one_minus[:-1]])
    posterior_variance = betas * one_minus_prev / one_minus
    first = posterior_variance[1:2] if betas.shape[0] > 1 else betas[:1]
    return NoiseSchedule(
        betas=betas,
        alphas=alphas,
        alpha_bars=alpha_bars,
        log_alpha_bars=log_alpha_bars,
        alpha_bars_prev=alpha_bars_prev,
        sqrt_alpha_bars=jnp.sqrt(alpha_bars),
        sqrt_one_minus_alpha_bars=jnp.sqrt(one_minus),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=jnp.log(
            jnp.concatenate([first, posterior_variance[1:]])),
        posterior_mean_coef1=betas * jnp.sqrt(alpha_bars_prev) / one_minus,
        posterior_mean_coef2=one_minus_prev * jnp.sqrt(alphas) / one_minus,
        snr=alpha_bars / one_minus,
        log_snr=log_alpha_bars - jnp.log(one_minus),
        num_timesteps=int(betas.shape[0]),
    )


def _dtype(dtype: DTypeLike | None) -> jnp.dtype:
    dtype = jnp.dtype(jnp.result_type(float) if dtype is None else dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    return dtype


def linear_schedule(num_timesteps: int, beta_start: ArrayLike = 1e-4,
                    beta_end: ArrayLike = 0.02, *, dtype: DTypeLike | None = None
                    ) -> NoiseSchedule:
    r"""DDPM's linear schedule (Ho et al., 2020): :math:`\beta_t` evenly spaced.

    .. math:: \beta_t = \beta_{\text{start}} + \frac{t}{T - 1}
       (\beta_{\text{end}} - \beta_{\text{start}}), \qquad t = 0, \dots, T - 1

    The same as diffusers' ``beta_schedule="linear"`` (``torch.linspace(beta_start,
    beta_end, T)``), which does not rescale with ``T``. improved-diffusion (Nichol &
    Dhariwal) scales both ends by ``1000 / T`` so that a short chain still reaches noise;
    pass ``beta_start=1e-4 * 1000 / T, beta_end=0.02 * 1000 / T`` for that.

    Args:
      num_timesteps: ``T >= 1`` (static).
      beta_start: :math:`\beta_0` (for ``T = 1`` the only beta).
      beta_end: :math:`\beta_{T-1}`.
      dtype: float dtype of the arrays; default float32 (float64 under ``jax_enable_x64``).

    Returns:
      The :class:`NoiseSchedule`; differentiable in ``beta_start`` and ``beta_end``.

    Example:
      >>> linear_schedule(5).betas
      Array([0.0001  , 0.005075, 0.01005 , 0.015025, 0.02    ], dtype=float32)
    """
    T = _checks.check_int(num_timesteps, "num_timesteps", 1, static=STATIC)
    return from_betas(_linear(T, _dtype(dtype), beta_start, beta_end))


# The beta formulas, compiled once per (T, dtype) rather than op by op.
_jit_T_dtype = partial(jax.jit, static_argnums=(0, 1))


@_jit_T_dtype
def _linear(T: int, dtype: jnp.dtype, beta_start: ArrayLike, beta_end: ArrayLike) -> jax.Array:
    return jnp.linspace(beta_start, beta_end, T, dtype=dtype)


def scaled_linear_schedule(num_timesteps: int, beta_start: ArrayLike = 1e-4,
                           beta_end: ArrayLike = 0.02, *, dtype: DTypeLike | None = None
                           ) -> NoiseSchedule:
    r"""Latent diffusion's schedule: :math:`\sqrt{\beta_t}` evenly spaced, then squared.

    .. math:: \beta_t = \Big(\sqrt{\beta_{\text{start}}} + \frac{t}{T - 1}
       \big(\sqrt{\beta_{\text{end}}} - \sqrt{\beta_{\text{start}}}\big)\Big)^2

    diffusers' ``"scaled_linear"``. Stable Diffusion uses ``beta_start=0.00085,
    beta_end=0.012``; the defaults here are diffusers' (1e-4 and 0.02).

    Args:
      num_timesteps: ``T >= 1`` (static).
      beta_start: :math:`\beta_0`.
      beta_end: :math:`\beta_{T-1}`.
      dtype: float dtype of the arrays; default float32 (float64 under ``jax_enable_x64``).

    Returns:
      The :class:`NoiseSchedule`; differentiable in ``beta_start`` and ``beta_end``
      (the gradient of :math:`\sqrt{\beta}` is infinite at 0, so keep them positive).

    Example:
      >>> scaled_linear_schedule(3, 0.00085, 0.012).betas
      Array([0.00085   , 0.00480937, 0.012     ], dtype=float32)
    """
    T = _checks.check_int(num_timesteps, "num_timesteps", 1, static=STATIC)
    return from_betas(_scaled_linear(T, _dtype(dtype), beta_start, beta_end))


@_jit_T_dtype
def _scaled_linear(T: int, dtype: jnp.dtype, beta_start: ArrayLike,
                   beta_end: ArrayLike) -> jax.Array:
    start, end = (jnp.sqrt(jnp.asarray(b, dtype)) for b in (beta_start, beta_end))
    return jnp.square(jnp.linspace(start, end, T, dtype=dtype))


def cosine_schedule(num_timesteps: int, s: ArrayLike = 0.008, max_beta: ArrayLike = 0.999,
                    *, dtype: DTypeLike | None = None) -> NoiseSchedule:
    r"""The cosine schedule of Nichol & Dhariwal (2021), diffusers' ``"squaredcos_cap_v2"``.

    .. math:: f(t) = \cos^2\Big(\frac{t / T + s}{1 + s} \cdot \frac{\pi}{2}\Big), \qquad
       \beta_t = \min\Big(1 - \frac{f(t + 1)}{f(t)},\ \beta_{\max}\Big),
       \qquad t = 0, \dots, T - 1

    so that :math:`\bar\alpha_t \approx f(t + 1) / f(0)` until the cap bites near
    :math:`t = T - 1`. It is evaluated without cancellation, so float32 keeps full
    relative precision where diffusers' float64 formula is rounded to float32: with
    :math:`d = \frac{\pi}{2 T (1 + s)}`, :math:`f(t) = \sin^2((T - t) d)` and
    :math:`1 - \frac{f(t+1)}{f(t)} = \frac{\sin d\, \sin((2(T - t) - 1) d)}
    {\sin^2((T - t) d)}` (a difference of squares of sines), the middle sine taken at
    whichever of :math:`x` and :math:`\pi - x = (2t + 2Ts + 1) d` is smaller.

    Args:
      num_timesteps: ``T >= 1`` (static).
      s: the offset :math:`s` that keeps :math:`\beta_0` away from 0 (0.008 in the paper).
      max_beta: the cap :math:`\beta_{\max}` that keeps :math:`\bar\alpha_{T-1} > 0`.
      dtype: float dtype of the arrays; default float32 (float64 under ``jax_enable_x64``).

    Returns:
      The :class:`NoiseSchedule`; differentiable in ``s`` and ``max_beta`` (the gradient
      with respect to ``max_beta`` is 1 where the cap is active, else 0).

    Example:
      >>> s = cosine_schedule(1000)
      >>> print(f"{float(s.betas[0]):.4e} {float(s.betas[-1]):.4f}")
      4.1284e-05 0.9990
    """
    T = _checks.check_int(num_timesteps, "num_timesteps", 1, static=STATIC)
    return from_betas(_cosine(T, _dtype(dtype), s, max_beta))


@_jit_T_dtype
def _cosine(T: int, dtype: jnp.dtype, s: ArrayLike, max_beta: ArrayLike) -> jax.Array:
    s, max_beta = jnp.asarray(s, dtype), jnp.asarray(max_beta, dtype)
    d = (math.pi / 2) / (T * (1 + s))
    t = jnp.arange(T, dtype=dtype)
    # sin(x) = sin(pi - x) for the two arguments below; the smaller is the precise one.
    sum_angle = jnp.minimum((2 * (T - t) - 1) * d, (2 * t + 2 * T * s + 1) * d)
    betas = jnp.sin(d) * jnp.sin(sum_angle) / jnp.square(jnp.sin((T - t) * d))
    return jnp.minimum(betas, max_beta)


def sigmoid_schedule(num_timesteps: int, beta_start: ArrayLike = 1e-4,
                     beta_end: ArrayLike = 0.02, *, dtype: DTypeLike | None = None
                     ) -> NoiseSchedule:
    r"""A sigmoid-shaped schedule, as diffusers' ``DDPMScheduler(beta_schedule="sigmoid")``.

    .. math:: \beta_t = \beta_{\text{start}} + (\beta_{\text{end}} - \beta_{\text{start}})\,
       \sigma\Big(-6 + \frac{12\, t}{T - 1}\Big), \qquad \sigma(u) = \frac{1}{1 + e^{-u}}

    The formula of GeoDiff (Xu et al., 2022), which uses ``beta_start=1e-7,
    beta_end=2e-3``; the defaults here are diffusers' (1e-4 and 0.02). The ends are
    :math:`\sigma(\mp 6)`, so :math:`\beta_0` is slightly above ``beta_start``.

    Args:
      num_timesteps: ``T >= 1`` (static).
      beta_start: the lower asymptote.
      beta_end: the upper asymptote.
      dtype: float dtype of the arrays; default float32 (float64 under ``jax_enable_x64``).

    Returns:
      The :class:`NoiseSchedule`; differentiable in ``beta_start`` and ``beta_end``.

    Example:
      >>> sigmoid_schedule(3).betas
      Array([0.00014921, 0.01005   , 0.0199508 ], dtype=float32)
    """
    T = _checks.check_int(num_timesteps, "num_timesteps", 1, static=STATIC)
    return from_betas(_sigmoid(T, _dtype(dtype), beta_start, beta_end))


@_jit_T_dtype
def _sigmoid(T: int, dtype: jnp.dtype, beta_start: ArrayLike, beta_end: ArrayLike) -> jax.Array:
    u = jax.nn.sigmoid(jnp.linspace(-6, 6, T, dtype=dtype))
    beta_start, beta_end = jnp.asarray(beta_start, dtype), jnp.asarray(beta_end, dtype)
    return u * (beta_end - beta_start) + beta_start


SCHEDULES = {
    "linear": linear_schedule,
    "scaled_linear": scaled_linear_schedule,
    "cosine": cosine_schedule,
    "squaredcos_cap_v2": cosine_schedule,
    "sigmoid": sigmoid_schedule,
}


def make_schedule(name: str, num_timesteps: int, **kwargs) -> NoiseSchedule:
    r"""A :class:`NoiseSchedule` by name, as in a config file.

    .. math:: \texttt{make\_schedule}(\text{name}, T, \dots) =
       \texttt{<name>\_schedule}(T, \dots)

    Args:
      name: one of ``"linear"``, ``"scaled_linear"``, ``"cosine"`` (or diffusers' name
        ``"squaredcos_cap_v2"``) and ``"sigmoid"``.
      num_timesteps: ``T >= 1`` (static).
      **kwargs: passed to the constructor (``beta_start``, ``beta_end``, ``s``,
        ``max_beta``, ``dtype``).

    Returns:
      The schedule.

    Raises:
      ValueError: unknown ``name`` (the message lists the valid ones).

    Example:
      >>> make_schedule("cosine", 10).num_timesteps
      10
    """
    _checks.check_choice(name, "schedule name", tuple(SCHEDULES))
    return SCHEDULES[name](num_timesteps, **kwargs)
