r"""Samplers: DDPM ancestral sampling and DDIM, one step at a time or as a ``lax.scan`` loop.

A sampler takes a pure ``model_fn(x_t, t) -> model_output`` (``t`` an int32 array
``[B]``, the output shaped like ``x_t`` and of type ``prediction_type``), the
:class:`~jaxmath.diffusion.schedules.NoiseSchedule`, a PRNG key and a shape ``[B, ...]``.
The loop is one ``jax.lax.scan``, so it is traced and compiled once whatever the number
of steps; to compile the whole sampler with the model's parameters as an argument
(rather than constants), jit a function of them::

    @jax.jit
    def sample(params, key):
        return ddim_sample(lambda x, t: model.apply(params, x, t), schedule, key, (16, 2))

Randomness: ``x_T = normal(fold_in(key, 0), shape)`` and the noise of loop step ``i`` (0
for the first, noisiest step) is ``normal(fold_in(key, i + 1), shape)``; a sampler given
``x_T`` with nothing to draw (DDIM with ``eta = 0``) does not use the key.

``clip_sample`` defaults to False here, where diffusers' schedulers default to True.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxmath import _checks
from jaxmath.diffusion import _kernels as kernels
from jaxmath.diffusion._arguments import (
    STATIC,
    canonical_prediction_type,
    check_timesteps,
    positive_scalar,
    scalar_and_value,
)
from jaxmath.diffusion.schedules import NoiseSchedule

ArrayLike = jax.typing.ArrayLike
DTypeLike = jax.typing.DTypeLike
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]

__all__ = [
    "TIMESTEP_SPACINGS",
    "VARIANCE_TYPES",
    "ddim_sample",
    "ddim_step",
    "ddim_timesteps",
    "ddpm_sample",
    "ddpm_step",
]

VARIANCE_TYPES = ("fixed_small", "fixed_large")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def _check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def _clip_range(clip_sample: bool, clip_sample_range: ArrayLike) -> jax.Array | None:
    """The clip bound :math:`r` (None for no clipping), checked."""
    if not _check_bool(clip_sample, "clip_sample"):
        return None
    return positive_scalar(clip_sample_range, "clip_sample_range")


def _eta(eta: ArrayLike, noise_given: bool) -> tuple[jax.Array, float | None]:
    r"""DDIM's :math:`\eta` and its value when known, checked to lie in [0, 1] and to come
    with noise when it is > 0."""
    eta, value = scalar_and_value(eta, "eta")
    if value is not None:
        if not 0 <= value <= 1:
            raise ValueError(f"eta must lie in [0, 1], got {value}")
        if value > 0 and not noise_given:
            raise ValueError("noise is required when eta > 0 (draw it with "
                             "jax.random.normal(key, x_t.shape))")
    return eta, value


def _noise(noise: ArrayLike | None, x_t: jax.Array) -> jax.Array | None:
    """``noise`` (or None) checked to be shaped like ``x_t``, in its dtype."""
    if noise is None:
        return None
    noise = _checks.as_float(noise, "noise")
    _checks.check_same_shape(noise, x_t, "noise", "x_t")
    return noise.astype(x_t.dtype)


def ddpm_step(schedule: NoiseSchedule, model_output: ArrayLike, x_t: ArrayLike,
              t: ArrayLike, noise: ArrayLike | None = None, *,
              prediction_type: str = "epsilon", variance_type: str = "fixed_small",
              clip_sample: bool = False, clip_sample_range: ArrayLike = 1.0,
              validate: bool = False) -> tuple[jax.Array, jax.Array]:
    r"""One ancestral step :math:`x_t \to x_{t-1}` of DDPM (Ho et al., 2020, Algorithm 2).

    .. math:: x_{t-1} = \tilde\mu_t(x_t, \hat x_0) + \sigma_t z, \qquad
       \sigma_t^2 = \tilde\beta_t\ (\texttt{"fixed\_small"}) \text{ or }
       \beta_t\ (\texttt{"fixed\_large"}), \qquad z \sim \mathcal{N}(0, I)

    with :math:`\hat x_0` from the model output (clipped to :math:`[-r, r]` with
    ``clip_sample``) and :math:`\tilde\mu_t` the posterior mean of
    :func:`~jaxmath.diffusion.process.q_posterior`. No noise is added at ``t = 0``, for
    either variance type, as in diffusers and in Ho et al.'s code (whose ``fixed_large``
    log variance at ``t = 0`` is :math:`\log\tilde\beta_1`, never used). Matches
    diffusers' ``DDPMScheduler.step`` with ``variance_type`` and ``clip_sample`` set alike.

    Args:
      schedule: the noise schedule.
      model_output: ``[B, ...]`` the model's prediction from ``x_t``.
      x_t: ``[B, ...]`` the current sample.
      t: integer timesteps in ``[0, T)``: a scalar or ``[B]``.
      noise: :math:`z`, shaped like ``x_t``; None adds no noise (the posterior mean).
      prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
      variance_type: ``"fixed_small"`` (:math:`\tilde\beta_t`, best when the data are
        concentrated) or ``"fixed_large"`` (:math:`\beta_t`, exact for
        :math:`x_0 \sim \mathcal{N}(0, I)`).
      clip_sample: clip :math:`\hat x_0` to ``[-clip_sample_range, clip_sample_range]``.
      clip_sample_range: :math:`r > 0`.
      validate: check traced ``t`` too (checkify).

    Returns:
      ``(x_prev, x0_pred)``, both shaped like ``x_t``. Differentiable in ``model_output``,
      ``x_t`` and ``noise`` (the clip passes zero gradient outside the range).

    Raises:
      ValueError: unknown ``prediction_type`` or ``variance_type``, shapes that differ,
        ``t`` outside ``[0, T)``.

    Example:
      >>> from jaxmath.diffusion.schedules import linear_schedule
      >>> s = linear_schedule(10)
      >>> x_prev, x0_pred = ddpm_step(s, jnp.zeros((1, 2)), jnp.ones((1, 2)), 0)
      >>> x0_pred
      Array([[1.00005, 1.00005]], dtype=float32)
      >>> x_prev  # at t = 0 the step returns the x0 prediction
      Array([[1.00005, 1.00005]], dtype=float32)
    """
    prediction_type = canonical_prediction_type(prediction_type)
    _checks.check_choice(variance_type, "variance_type", VARIANCE_TYPES)
    out, x_t = _checks.as_floats((model_output, "model_output"), (x_t, "x_t"))
    _checks.check_same_shape(out, x_t, "model_output", "x_t")
    t = check_timesteps(schedule, t, x_t, validate=validate)
    return kernels.ddpm_step(schedule, out, x_t, t, _noise(noise, x_t),
                             _clip_range(clip_sample, clip_sample_range), prediction_type,
                             variance_type)


def ddim_step(schedule: NoiseSchedule, model_output: ArrayLike, x_t: ArrayLike,
              t: ArrayLike, t_prev: ArrayLike, noise: ArrayLike | None = None, *,
              eta: ArrayLike = 0.0, prediction_type: str = "epsilon",
              clip_sample: bool = False, clip_sample_range: ArrayLike = 1.0,
              set_alpha_to_one: bool = True, validate: bool = False
              ) -> tuple[jax.Array, jax.Array]:
    r"""One DDIM step :math:`x_t \to x_{t'}` (Song et al., 2021, eq. 12) to any earlier ``t_prev``.

    .. math:: x_{t'} = \sqrt{\bar\alpha_{t'}}\, \hat x_0
       + \sqrt{1 - \bar\alpha_{t'} - \sigma_t^2}\; \hat\epsilon + \sigma_t z, \qquad
       \sigma_t = \eta \sqrt{\frac{1 - \bar\alpha_{t'}}{1 - \bar\alpha_t}
       \Big(1 - \frac{\bar\alpha_t}{\bar\alpha_{t'}}\Big)}

    with :math:`\hat x_0, \hat\epsilon` from the model output (:math:`\hat x_0` clipped
    with ``clip_sample``; :math:`\hat\epsilon` is not recomputed from the clipped value,
    as in diffusers' default). ``eta = 0`` is deterministic DDIM; ``eta = 1`` is DDPM's
    ``fixed_small`` ancestral step over the strided sequence. ``t_prev = -1`` is the last
    step, to :math:`\bar\alpha = 1` (``set_alpha_to_one``) or to :math:`\bar\alpha_0`.
    Equals diffusers' ``DDIMScheduler.step`` given the same previous timestep (diffusers
    always takes ``t - T // num_inference_steps``; :func:`ddim_sample` takes the next entry
    of the timestep sequence).

    Args:
      schedule: the noise schedule.
      model_output: ``[B, ...]`` the model's prediction from ``x_t``.
      x_t: ``[B, ...]`` the current sample.
      t: integer timesteps in ``[0, T)``: a scalar or ``[B]``.
      t_prev: integer previous timesteps in ``[-1, T)``, a scalar or ``[B]``; -1 means
        the final step. A ``t_prev > t`` (DDIM inversion) needs ``eta = 0``.
      noise: :math:`z`, shaped like ``x_t``; None adds none (required only for eta > 0).
      eta: :math:`\eta \in [0, 1]`.
      prediction_type: ``"epsilon"``, ``"sample"`` or ``"v_prediction"``.
      clip_sample: clip :math:`\hat x_0` to ``[-clip_sample_range, clip_sample_range]``.
      clip_sample_range: :math:`r > 0`.
      set_alpha_to_one: :math:`\bar\alpha_{-1} = 1` (True, diffusers' default) or
        :math:`\bar\alpha_0` (False, as Stable Diffusion's config).
      validate: check traced ``t`` and ``t_prev`` too (checkify).

    Returns:
      ``(x_prev, x0_pred)``, both shaped like ``x_t``. Differentiable in ``model_output``,
      ``x_t``, ``noise`` and ``eta``; the square root of :math:`1 - \bar\alpha_{t'} -
      \sigma_t^2` is floored at 0, so rounding never makes it NaN.

    Raises:
      ValueError: unknown ``prediction_type``, shapes that differ, ``t`` or ``t_prev`` out
        of range, ``eta`` outside ``[0, 1]``, or ``eta > 0`` without ``noise``.

    Example:
      >>> from jaxmath.diffusion.schedules import linear_schedule
      >>> s = linear_schedule(10)
      >>> x_prev, x0_pred = ddim_step(s, jnp.zeros((1, 2)), jnp.ones((1, 2)), 5, -1)
      >>> x_prev  # the final step lands on the x0 prediction
      Array([[1.0171, 1.0171]], dtype=float32)
    """
    prediction_type = canonical_prediction_type(prediction_type)
    out, x_t = _checks.as_floats((model_output, "model_output"), (x_t, "x_t"))
    _checks.check_same_shape(out, x_t, "model_output", "x_t")
    t = check_timesteps(schedule, t, x_t, validate=validate)
    t_prev = check_timesteps(schedule, t_prev, x_t, name="t_prev", validate=validate,
                             lowest=-1)
    eta, _ = _eta(eta, noise_given=noise is not None)
    _check_bool(set_alpha_to_one, "set_alpha_to_one")
    return kernels.ddim_step(schedule, out, x_t, t, t_prev, _noise(noise, x_t), eta,
                             _clip_range(clip_sample, clip_sample_range), prediction_type,
                             set_alpha_to_one)


def ddim_timesteps(num_train_timesteps: int, num_inference_steps: int,
                   timestep_spacing: str = "leading", steps_offset: int = 0) -> np.ndarray:
    r"""The descending timesteps a DDIM sampler visits, as diffusers' ``set_timesteps``.

    .. math::

       \texttt{leading}:\ t_i = (n - 1 - i) \lfloor T / n \rfloor + o, \qquad
       \texttt{trailing}:\ t_i = \operatorname{round}\Big(\frac{(n - i)\, T}{n}\Big) - 1,
       \qquad \texttt{linspace}:\ t_i = \operatorname{round}\Big(\frac{(n - 1 - i)(T - 1)}
       {n - 1}\Big)

    for :math:`i = 0, \dots, n - 1` (``round`` half to even, NumPy's). The step from
    :math:`t_i` goes to :math:`t_{i+1}`, and from :math:`t_{n-1}` to the final
    :math:`\bar\alpha = 1` (or :math:`\bar\alpha_0`): the *next entry*. diffusers'
    ``DDIMScheduler.step`` instead goes to :math:`t_i - \lfloor T / n \rfloor`, which is
    the next entry only for ``leading``; for ``linspace`` (T = 1000, n = 10: 999, 888,
    ..., 111, 0) it steps 999 -> 899 and 111 -> 11 -> final, skipping timestep 0's
    denoising target, and for ``trailing`` whenever ``n`` does not divide ``T``.
    ``trailing`` is computed with one exact division: diffusers' ``np.arange`` with a float
    step can round a tie the other way (T = 7, n = 6: diffusers 2, here 3) or return n + 1
    timesteps ending in -1 (T = 15, n = 13); elsewhere the values are diffusers'.
    ``leading`` and ``linspace`` are diffusers' expressions verbatim.

    Args:
      num_train_timesteps: ``T``, the schedule's number of timesteps.
      num_inference_steps: ``n``, with ``1 <= n <= T``.
      timestep_spacing: ``"leading"`` (diffusers' default; ends at :math:`o`, and usually
        starts below ``T - 1``),
        ``"trailing"`` (starts at ``T - 1``; recommended by Lin et al., 2024, Table 2) or
        ``"linspace"`` (both ends).
      steps_offset: :math:`o`, added to ``leading`` timesteps (1 in Stable Diffusion's
        config); ignored by the other spacings, as in diffusers.

    Returns:
      ``[n]`` int64 NumPy array of distinct timesteps in ``[0, T)``, descending (static:
      it sets the sampler's loop).

    Raises:
      ValueError: unknown ``timestep_spacing``, ``n`` outside ``[1, T]``, or a
        ``steps_offset`` that pushes a timestep to ``T`` or beyond.
      TypeError: non-integer counts.

    Example:
      >>> ddim_timesteps(1000, 4, "leading")
      array([750, 500, 250,   0])
      >>> ddim_timesteps(1000, 4, "trailing")
      array([999, 749, 499, 249])
      >>> ddim_timesteps(1000, 4, "linspace")
      array([999, 666, 333,   0])
    """
    T = _checks.check_int(num_train_timesteps, "num_train_timesteps", 1, static=STATIC)
    n = _checks.check_int(num_inference_steps, "num_inference_steps", 1, static=STATIC)
    offset = _checks.check_int(steps_offset, "steps_offset", 0, static=STATIC)
    _checks.check_choice(timestep_spacing, "timestep_spacing", TIMESTEP_SPACINGS)
    if n > T:
        raise ValueError(f"num_inference_steps must be <= num_train_timesteps = {T} (a model "
                         f"trained on {T} timesteps cannot take more), got {n}")
    if timestep_spacing == "leading":
        timesteps = (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + offset
    elif timestep_spacing == "trailing":
        timesteps = np.round(np.arange(n, 0, -1) * T / n).astype(np.int64) - 1
    else:
        timesteps = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    if timesteps[0] >= T:
        raise ValueError(f"steps_offset={offset} makes the first timestep {timesteps[0]}, "
                         f"outside [0, {T}); it must be <= {T - 1 - timesteps[0] + offset}")
    return timesteps


def _initial_noise(key: jax.Array, shape: Sequence[int] | None, x_T: ArrayLike | None,
                   dtype: DTypeLike | None, schedule: NoiseSchedule) -> jax.Array:
    """``x_T``: given, or standard normal of ``shape`` in ``dtype`` (default: the schedule's)."""
    if x_T is not None:
        x = _checks.as_float(x_T, "x_T")
        if shape is not None and tuple(shape) != tuple(x.shape):
            raise ValueError(f"shape must be None or x_T's shape {tuple(x.shape)}, got "
                             f"{tuple(shape)}")
    elif shape is None:
        raise ValueError("shape [B, ...] is required when x_T is not given")
    else:
        shape = tuple(_checks.check_int(d, "shape entries", 1, static=STATIC) for d in shape)
        dtype = schedule.betas.dtype if dtype is None else jnp.dtype(dtype)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        x = jax.random.normal(jax.random.fold_in(key, 0), shape, dtype)
    _checks.check_ndim(x, "x_T" if x_T is not None else "shape", min_ndim=1)
    return x


def _model_output(model_fn: ModelFn, x: jax.Array, t: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
    """``model_fn``'s output at ``x`` and the scalar timestep ``t``, checked to be shaped
    like ``x``, and ``x``, both in their promoted dtype."""
    out = model_fn(x, jnp.full((x.shape[0],), t, jnp.int32))
    if jnp.shape(out) != x.shape:
        raise ValueError(f"model_fn must return an array shaped like x_t {tuple(x.shape)}, "
                         f"got {jnp.shape(out)}")
    return _checks.as_floats((out, "model_output"), (x, "x_t"))


def ddpm_sample(model_fn: ModelFn, schedule: NoiseSchedule, key: jax.Array,
                shape: Sequence[int] | None, *, prediction_type: str = "epsilon",
                variance_type: str = "fixed_small", clip_sample: bool = False,
                clip_sample_range: ArrayLike = 1.0, x_T: ArrayLike | None = None,
                dtype: DTypeLike | None = None) -> jax.Array:
    r"""Draw samples with DDPM's ancestral sampler, :math:`T` steps from :math:`x_T \sim
    \mathcal{N}(0, I)`.

    .. math:: x_{t-1} = \tilde\mu_t\big(x_t, \hat x_0(x_t, t)\big) + \sigma_t z_t,
       \qquad t = T - 1, \dots, 0

    :func:`ddpm_step` in a ``lax.scan`` (see the module docstring for the keys). For
    fewer steps use :func:`ddim_sample`; with ``eta=1`` it is this sampler's
    ``fixed_small`` variant on a strided sequence.

    Args:
      model_fn: pure ``model_fn(x_t, t) -> model_output``; ``t`` is an int32 array ``[B]``.
      schedule: the noise schedule the model was trained with.
      key: a PRNG key.
      shape: ``[B, ...]`` the samples' shape (None if ``x_T`` is given).
      prediction_type: what ``model_fn`` predicts: ``"epsilon"``, ``"sample"`` or
        ``"v_prediction"``.
      variance_type: ``"fixed_small"`` or ``"fixed_large"`` (see :func:`ddpm_step`).
      clip_sample: clip each :math:`\hat x_0` to ``[-clip_sample_range,
        clip_sample_range]`` (for data scaled to ``[-1, 1]``; off by default).
      clip_sample_range: :math:`r > 0`.
      x_T: optional starting noise (then ``key`` only draws the step noise).
      dtype: float dtype of ``x_T`` when drawn; default the schedule's.

    Returns:
      ``[B, ...]`` samples :math:`x_0`. Differentiable through the chain (backpropagation
      through ``scan`` stores every step).

    Raises:
      ValueError: unknown option names, a ``shape`` without batch axis, or ``model_fn``
        returning the wrong shape (all at trace time).

    Example:
      >>> from jaxmath.diffusion.schedules import cosine_schedule
      >>> oracle = lambda x_t, t: jnp.zeros_like(x_t)  # "the noise is always 0"
      >>> ddpm_sample(oracle, cosine_schedule(20), jax.random.key(0), (3, 2)).shape
      (3, 2)
    """
    prediction_type = canonical_prediction_type(prediction_type)
    _checks.check_choice(variance_type, "variance_type", VARIANCE_TYPES)
    clip = _clip_range(clip_sample, clip_sample_range)
    x = _initial_noise(key, shape, x_T, dtype, schedule)
    T = schedule.num_timesteps

    def body(x: jax.Array, i: jax.Array) -> tuple[jax.Array, None]:
        t = T - 1 - i
        out, x_t = _model_output(model_fn, x, t)
        z = jax.random.normal(jax.random.fold_in(key, i + 1), x.shape, x.dtype)
        x_prev, _ = kernels.ddpm_step(schedule, out, x_t, t, z.astype(x_t.dtype), clip,
                                      prediction_type, variance_type)
        return x_prev.astype(x.dtype), None

    x, _ = jax.lax.scan(body, x, jnp.arange(T, dtype=jnp.int32))
    return x


def ddim_sample(model_fn: ModelFn, schedule: NoiseSchedule, key: jax.Array,
                shape: Sequence[int] | None, *, num_inference_steps: int = 50,
                eta: ArrayLike = 0.0, timestep_spacing: str = "leading",
                steps_offset: int = 0, set_alpha_to_one: bool = True,
                prediction_type: str = "epsilon", clip_sample: bool = False,
                clip_sample_range: ArrayLike = 1.0, x_T: ArrayLike | None = None,
                dtype: DTypeLike | None = None) -> jax.Array:
    r"""Draw samples with DDIM (Song et al., 2021) in ``num_inference_steps`` steps.

    .. math:: x_{t_{i+1}} = \sqrt{\bar\alpha_{t_{i+1}}}\, \hat x_0 +
       \sqrt{1 - \bar\alpha_{t_{i+1}} - \sigma_i^2}\; \hat\epsilon + \sigma_i z_i,
       \qquad \bar\alpha_{t_n} = 1

    over the timesteps :math:`t_0 > \dots > t_{n-1}` of :func:`ddim_timesteps`, each step
    going to the next entry of the sequence (see :func:`ddim_step` for :math:`\sigma_i`).
    With ``eta=0`` the map from ``x_T`` to the sample is deterministic: the key only
    draws ``x_T``.

    Args:
      model_fn: pure ``model_fn(x_t, t) -> model_output``; ``t`` is an int32 array ``[B]``.
      schedule: the noise schedule the model was trained with.
      key: a PRNG key.
      shape: ``[B, ...]`` the samples' shape (None if ``x_T`` is given).
      num_inference_steps: ``n``, with ``1 <= n <= T`` (static).
      eta: :math:`\eta \in [0, 1]` (may be traced).
      timestep_spacing: ``"leading"``, ``"trailing"`` or ``"linspace"``.
      steps_offset: added to ``leading`` timesteps (see :func:`ddim_timesteps`).
      set_alpha_to_one: the last step goes to :math:`\bar\alpha = 1` (True) or
        :math:`\bar\alpha_0` (False).
      prediction_type: what ``model_fn`` predicts.
      clip_sample: clip each :math:`\hat x_0` to ``[-clip_sample_range,
        clip_sample_range]``.
      clip_sample_range: :math:`r > 0`.
      x_T: optional starting noise.
      dtype: float dtype of ``x_T`` when drawn; default the schedule's.

    Returns:
      ``[B, ...]`` samples.

    Raises:
      ValueError: unknown option names, ``num_inference_steps`` outside ``[1, T]``, ``eta``
        outside ``[0, 1]``, a ``shape`` without batch axis, or ``model_fn`` returning the
        wrong shape.

    Example:
      >>> from jaxmath.diffusion.schedules import cosine_schedule
      >>> oracle = lambda x_t, t: jnp.zeros_like(x_t)
      >>> s, x_T = cosine_schedule(20), jnp.array([[0.5, -1.0]])
      >>> a = ddim_sample(oracle, s, jax.random.key(0), None, x_T=x_T, num_inference_steps=5)
      >>> b = ddim_sample(oracle, s, jax.random.key(1), None, x_T=x_T, num_inference_steps=5)
      >>> bool(jnp.array_equal(a, b))  # eta = 0: deterministic given x_T
      True
    """
    prediction_type = canonical_prediction_type(prediction_type)
    timesteps = ddim_timesteps(schedule.num_timesteps, num_inference_steps, timestep_spacing,
                               steps_offset)
    eta, value = _eta(eta, noise_given=True)  # the loop draws noise whenever eta may be > 0
    stochastic = value != 0  # a traced eta (None) may be > 0
    _check_bool(set_alpha_to_one, "set_alpha_to_one")
    clip = _clip_range(clip_sample, clip_sample_range)
    x = _initial_noise(key, shape, x_T, dtype, schedule)
    steps = (jnp.arange(len(timesteps), dtype=jnp.int32),
             jnp.asarray(timesteps, jnp.int32),
             jnp.asarray(np.append(timesteps[1:], -1), jnp.int32))

    def body(x: jax.Array, step: tuple[jax.Array, ...]) -> tuple[jax.Array, None]:
        i, t, t_prev = step
        out, x_t = _model_output(model_fn, x, t)
        z = (jax.random.normal(jax.random.fold_in(key, i + 1), x.shape, x.dtype)
             .astype(x_t.dtype) if stochastic else None)
        x_prev, _ = kernels.ddim_step(schedule, out, x_t, t, t_prev, z, eta, clip,
                                      prediction_type, set_alpha_to_one)
        return x_prev.astype(x.dtype), None

    x, _ = jax.lax.scan(body, x, steps)
    return x
