r"""A diffusion model as one Flax (Linen) module: a denoiser, its noise schedule, loss and samplers.

:class:`DiffusionModel` wraps any denoiser ``(x_t, t) -> prediction`` (such as
:class:`~jaxmath.diffusion.denoisers.MLPDenoiser` or
:class:`~jaxmath.diffusion.denoisers.UNet`) with the schedule it is trained on. Its
methods are DDPM's training objective and the samplers of
:mod:`jaxmath.diffusion.samplers`, all pure functions of the parameters through
``apply``::

    model = DiffusionModel(MLPDenoiser(), "cosine", num_timesteps=1000)
    params = model.init(key, x0, jnp.zeros(len(x0), jnp.int32))
    loss, grads = jax.value_and_grad(
        lambda p: model.apply(p, x0, key, method="loss"))(params)
    samples = model.apply(params, key, (512, 2), method="sample", sampler="ddim")

How the schedule is held: as a *name* (``"linear"``, ``"cosine"``, ... with
``num_timesteps``), the schedule is rebuilt from those static attributes when a method
needs it (in the default float dtype, float64 under ``jax_enable_x64``), so the module
stays hashable (usable as a static argument and with Flax's lifted
transforms) and fits a config file. A custom :class:`~jaxmath.diffusion.schedules.NoiseSchedule`
(``from_betas``, non-default ``beta_end``) can be passed instead; its arrays become
constants of every traced ``apply``, which works with ``jax.jit`` and optax alike, but the
module is then not hashable.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxmath import _checks
from jaxmath.diffusion import _kernels as kernels
from jaxmath.diffusion._arguments import STATIC, canonical_prediction_type, positive_scalar
from jaxmath.diffusion.samplers import ddim_sample, ddpm_sample
from jaxmath.diffusion.schedules import SCHEDULES, NoiseSchedule

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
DTypeLike = jax.typing.DTypeLike

__all__ = ["LOSS_WEIGHTINGS", "SAMPLERS", "DiffusionModel"]

LOSS_WEIGHTINGS = ("none", "min_snr")
SAMPLERS = ("ddpm", "ddim")
DEFAULT_NUM_TIMESTEPS = 1000


class DiffusionModel(nn.Module):
    r"""A denoiser and its noise schedule, with DDPM's training loss and DDPM/DDIM sampling.

    Training (Ho et al., 2020, Algorithm 1, with any parameterisation and optional
    min-SNR-γ weighting, Hang et al., 2023):

    .. math:: \mathcal{L}(\theta) = \frac{1}{B} \sum_b w_{t_b}\,
       \frac{1}{D} \big\| y_b - f_\theta(\sqrt{\bar\alpha_{t_b}}\, x_{0,b}
       + \sqrt{1 - \bar\alpha_{t_b}}\, \epsilon_b,\ t_b) \big\|^2, \qquad
       t_b \sim \mathcal{U}\{0, \dots, T - 1\}, \quad \epsilon_b \sim \mathcal{N}(0, I)

    with target :math:`y` = :math:`\epsilon`, :math:`x_0` or :math:`v`
    (``prediction_type``) and :math:`w = 1` or :math:`w_t` =
    :func:`~jaxmath.diffusion.losses.min_snr_weight`. Sampling runs
    :func:`~jaxmath.diffusion.samplers.ddpm_sample` or
    :func:`~jaxmath.diffusion.samplers.ddim_sample` with this module's denoiser as
    ``model_fn``.

    Attributes:
      denoiser: a Linen module ``(x_t [B, ...], t [B] int32) -> [B, ...]``; its
        parameters live under ``params['denoiser']``.
      schedule: a schedule name (see
        :func:`~jaxmath.diffusion.schedules.make_schedule`; diffusers' default betas) or a
        :class:`~jaxmath.diffusion.schedules.NoiseSchedule` (see the module docstring).
      num_timesteps: ``T`` of a named schedule (default 1000); for a NoiseSchedule, None
        or its ``num_timesteps``.
      prediction_type: what the denoiser predicts: ``"epsilon"``, ``"sample"`` or
        ``"v_prediction"``.
      loss_weighting: ``"none"`` (DDPM's :math:`L_\text{simple}`) or ``"min_snr"``.
      min_snr_gamma: :math:`\gamma > 0` of min-SNR-γ (5 in the paper).

    Example:
      >>> from jaxmath.diffusion.denoisers import MLPDenoiser
      >>> model = DiffusionModel(MLPDenoiser(features=16, num_blocks=1), "cosine",
      ...                        num_timesteps=20)
      >>> x0, t = jnp.zeros((8, 2)), jnp.zeros(8, jnp.int32)
      >>> variables = model.init(jax.random.key(0), x0, t)
      >>> loss = model.apply(variables, x0, jax.random.key(1), method="loss")
      >>> samples = model.apply(variables, jax.random.key(2), (3, 2), method="sample",
      ...                       sampler="ddim", num_inference_steps=5)
      >>> loss.shape, samples.shape
      ((), (3, 2))
    """

    denoiser: nn.Module
    schedule: str | NoiseSchedule = "linear"
    num_timesteps: int | None = None
    prediction_type: str = "epsilon"
    loss_weighting: str = "none"
    min_snr_gamma: float = 5.0

    @property
    def noise_schedule(self) -> NoiseSchedule:
        """The NoiseSchedule given, or ``make_schedule(name, T)`` for a named schedule.

        A named schedule is rebuilt at each access, in the default float dtype; inside
        ``jit`` it is traced once into the program (a few operations on ``[T]`` arrays).

        Raises:
          ValueError: unknown schedule name, or ``num_timesteps`` that disagrees with a
            given NoiseSchedule.
        """
        if isinstance(self.schedule, NoiseSchedule):
            T = self.schedule.num_timesteps
            if self.num_timesteps is not None and self.num_timesteps != T:
                raise ValueError(f"num_timesteps must be None or the schedule's {T} when a "
                                 f"NoiseSchedule is given, got {self.num_timesteps}")
            return self.schedule
        if not isinstance(self.schedule, str):
            raise TypeError(f"schedule must be a schedule name or a NoiseSchedule, got "
                            f"{type(self.schedule).__name__}")
        T = DEFAULT_NUM_TIMESTEPS if self.num_timesteps is None else self.num_timesteps
        T = _checks.check_int(T, "num_timesteps", 1, static=STATIC)
        _checks.check_choice(self.schedule, "schedule", tuple(SCHEDULES))
        return SCHEDULES[self.schedule](T)

    def _options(self) -> tuple[str, ArrayLike | None]:
        """The canonical prediction type and the min-SNR γ (None for no weighting), checked."""
        prediction_type = canonical_prediction_type(self.prediction_type)
        _checks.check_choice(self.loss_weighting, "loss_weighting", LOSS_WEIGHTINGS)
        if self.loss_weighting == "none":
            return prediction_type, None
        return prediction_type, positive_scalar(self.min_snr_gamma, "min_snr_gamma")

    def __call__(self, x_t: ArrayLike, t: ArrayLike) -> Array:
        """The denoiser's prediction ``[B, ...]`` from ``x_t`` ``[B, ...]`` at timesteps ``t``."""
        return self.denoiser(x_t, t)

    def loss(self, x0: ArrayLike, key: Array) -> Array:
        r"""The training loss on a batch ``x0`` ``[B, ...]``; ``t`` and the noise come from ``key``.

        ``key`` is split in two: ``t = randint(k_t, [B], 0, T)`` and
        ``noise = normal(k_eps, x0.shape, x0.dtype)``; then
        :func:`~jaxmath.diffusion.process.q_sample`, the denoiser and
        :func:`~jaxmath.diffusion.losses.diffusion_loss`. For a new draw every step,
        pass ``jax.random.fold_in(key, step)``.

        Returns:
          The scalar loss in the promoted dtype of ``x0`` and the denoiser's output; its
          gradient with respect to the parameters is finite wherever the denoiser's is.

        Raises:
          ValueError: ``x0`` without a batch axis or empty, bad names or ``min_snr_gamma``,
            or the denoiser's own shape errors.
        """
        prediction_type, gamma = self._options()
        schedule = self.noise_schedule
        x0 = _checks.as_float(x0, "x0")
        _checks.check_ndim(x0, "x0", min_ndim=1)
        _checks.check_nonempty(x0, "x0")
        key_t, key_eps = jax.random.split(key)
        t = jax.random.randint(key_t, x0.shape[:1], 0, schedule.num_timesteps, jnp.int32)
        noise = jax.random.normal(key_eps, x0.shape, x0.dtype)
        x_t = kernels.q_sample(schedule, x0, t, noise)
        # The arrays are checked once, here: x0 above, the denoiser's output below.
        out, x0, noise = _checks.as_floats((self(x_t, t), "model_output"), (x0, "x0"),
                                           (noise, "noise"))
        _checks.check_same_shape(out, x0, "model_output", "x0")
        return kernels.diffusion_loss(schedule, out, x0, noise, t, gamma, prediction_type)

    def sample(self, key: Array, shape: Sequence[int] | None = None, *, sampler: str = "ddpm",
               num_inference_steps: int | None = None, eta: ArrayLike = 0.0,
               timestep_spacing: str = "leading", steps_offset: int = 0,
               variance_type: str = "fixed_small", clip_sample: bool = False,
               clip_sample_range: ArrayLike = 1.0, x_T: ArrayLike | None = None,
               dtype: DTypeLike | None = None) -> Array:
        r"""Draw samples ``[B, ...]`` with DDPM (all ``T`` steps) or DDIM (fewer).

        The denoiser, with this module's parameters, is the samplers' ``model_fn``; the
        loop is one ``lax.scan``. To compile it with the parameters as an argument::

            sample = jax.jit(lambda p, k: model.apply(p, k, (64, 2), method="sample"))

        Args:
          key: a PRNG key (see :mod:`jaxmath.diffusion.samplers` for how it is used).
          shape: ``[B, ...]`` the samples' shape (static), or None with ``x_T``.
          sampler: ``"ddpm"`` (ancestral, ``variance_type``) or ``"ddim"``
            (``num_inference_steps``, ``eta``, ``timestep_spacing``, ``steps_offset``).
          num_inference_steps: DDIM's number of steps, default ``min(50, T)``; DDPM takes
            exactly ``T`` (None or ``T`` accepted).
          eta: DDIM's :math:`\eta \in [0, 1]` (0: deterministic given ``x_T``).
          timestep_spacing: ``"leading"``, ``"trailing"`` or ``"linspace"`` (DDIM).
          steps_offset: added to ``leading`` timesteps (DDIM).
          variance_type: ``"fixed_small"`` or ``"fixed_large"`` (DDPM).
          clip_sample: clip each :math:`\hat x_0` to ``[-clip_sample_range,
            clip_sample_range]``.
          clip_sample_range: :math:`r > 0`.
          x_T: optional starting noise ``[B, ...]``.
          dtype: float dtype of the drawn ``x_T`` (default the schedule's).

        Returns:
          ``[B, ...]`` samples. The same key gives the same samples.

        Raises:
          ValueError: unknown ``sampler`` or option names, ``num_inference_steps`` outside
            ``[1, T]`` (or not ``T`` for DDPM), ``eta`` outside ``[0, 1]``, a bad shape.
        """
        _checks.check_choice(sampler, "sampler", SAMPLERS)
        prediction_type, _ = self._options()
        schedule = self.noise_schedule
        T = schedule.num_timesteps

        def model_fn(x: Array, t: Array) -> Array:
            return self(x, t)

        common = dict(prediction_type=prediction_type, clip_sample=clip_sample,
                      clip_sample_range=clip_sample_range, x_T=x_T, dtype=dtype)
        if sampler == "ddpm":
            if num_inference_steps not in (None, T):
                raise ValueError(f"num_inference_steps must be None or T = {T} for "
                                 f"sampler='ddpm' (it takes every step); use sampler='ddim' "
                                 f"(eta=1 for ancestral noise) for {num_inference_steps}")
            return ddpm_sample(model_fn, schedule, key, shape, variance_type=variance_type,
                               **common)
        steps = min(50, T) if num_inference_steps is None else num_inference_steps
        return ddim_sample(model_fn, schedule, key, shape, num_inference_steps=steps, eta=eta,
                           timestep_spacing=timestep_spacing, steps_offset=steps_offset,
                           **common)
