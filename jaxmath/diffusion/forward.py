r"""The forward (noising) process of a diffusion model in one jump from :math:`x_0`.

DDPM (Ho et al., 2020) adds Gaussian noise in :math:`T` small steps,
:math:`q(x_t \mid x_{t-1}) = \mathcal{N}(\sqrt{\alpha_t}\, x_{t-1}, (1 - \alpha_t) I)`
with :math:`\alpha_t = 1 - \beta_t`. Composing the steps gives the closed form
(DDPM eq. 4)

.. math:: q(x_t \mid x_0) = \mathcal{N}\big(\sqrt{\bar\alpha_t}\, x_0,\;
   (1 - \bar\alpha_t) I\big), \qquad \bar\alpha_t = \prod_{s=1}^{t} \alpha_s,

so :math:`x_t` is sampled directly from :math:`x_0` with the *cumulative*
product :math:`\bar\alpha_t`. The blog post writes :math:`\alpha_t` in this equation;
that is right only for :math:`t = 1`, or in the notation of DDIM (Song et al.,
2021), whose :math:`\alpha_t` is DDPM's :math:`\bar\alpha_t`.
"""

from __future__ import annotations

import jax

from jaxmath import _checks
from jaxmath.diffusion import _kernels as kernels

ArrayLike = jax.typing.ArrayLike


def _left_aligned(alpha_bar: jax.Array, x0: jax.Array) -> jax.Array:
    """``alpha_bar`` reshaped to broadcast against ``x0`` from the leading (batch) axis."""
    ok = alpha_bar.ndim <= x0.ndim and all(
        a in (1, x) for a, x in zip(alpha_bar.shape, x0.shape, strict=False))
    if not ok:
        raise ValueError(
            f"alpha_bar must be a scalar or match the leading axes of x0 (each of size 1 or "
            f"equal; e.g. [B] for x0 [B, ...]), got alpha_bar.shape={tuple(alpha_bar.shape)} "
            f"and x0.shape={tuple(x0.shape)}")
    return alpha_bar.reshape(alpha_bar.shape + (1,) * (x0.ndim - alpha_bar.ndim))


def forward_diffuse(x0: ArrayLike, alpha_bar: ArrayLike, noise: ArrayLike, *,
                    validate: bool = False) -> jax.Array:
    r"""Sample :math:`x_t \sim q(x_t \mid x_0)` from clean data and a noise draw.

    .. math:: x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \epsilon,
       \qquad \epsilon \sim \mathcal{N}(0, I),
       \qquad \bar\alpha_t = \prod_{s \le t} \alpha_s = \prod_{s \le t} (1 - \beta_s).

    ``alpha_bar`` is the cumulative product :math:`\bar\alpha_t` (DDPM eq. 4), not
    the per-step :math:`\alpha_t` the blog post writes: for a schedule ``betas``, pass
    ``jnp.cumprod(1 - betas)[t]``. Then :math:`x_t` has mean
    :math:`\sqrt{\bar\alpha_t} x_0` and variance :math:`1 - \bar\alpha_t`.

    Args:
      x0: ``[B, ...]`` (or any shape) clean data :math:`x_0`.
      alpha_bar: :math:`\bar\alpha_t \in [0, 1]`: a scalar, or an array aligned with
        the *leading* axes of ``x0`` (each axis of size 1 or equal to x0's), e.g.
        ``[B]`` for one timestep per example of ``x0`` ``[B, C, H, W]``. It is
        padded with trailing unit axes, so ``[B]`` acts as ``[B, 1, 1, 1]``
        (NumPy's right-aligned broadcasting would pair ``B`` with ``W``).
      noise: :math:`\epsilon`, the same shape as ``x0``; draw it with
        ``jax.random.normal(key, x0.shape)``.
      validate: if True, require ``0 <= alpha_bar <= 1`` (ValueError eagerly; a
        ``checkify`` check under ``jax.jit``). Without it, values outside
        ``[0, 1]`` give NaN.

    Returns:
      :math:`x_t`, the shape of ``x0``, in the promoted floating dtype of the
      inputs. ``alpha_bar = 1`` returns ``x0``; ``alpha_bar = 0`` returns ``noise``.
      Gradients with respect to ``x0`` and ``noise`` are :math:`\sqrt{\bar\alpha_t}`
      and :math:`\sqrt{1 - \bar\alpha_t}`. The gradient with respect to
      ``alpha_bar``, :math:`x_0 / (2\sqrt{\bar\alpha_t}) - \epsilon / (2\sqrt{1 -
      \bar\alpha_t})`, is exact inside :math:`(0, 1)`; at 0 and 1 the true
      derivative is unbounded, and jaxmath evaluates the :math:`1/(2\sqrt{\cdot})`
      factor at the smallest normal float instead of 0 (about 4.6e18 in float32),
      so the gradient is huge but finite and is exactly 0 where the factor it
      multiplies (``x0`` or ``noise``) is 0: never inf or NaN.

    Raises:
      ValueError: ``noise`` not shaped like ``x0``, ``alpha_bar`` not aligned with
        the leading axes of ``x0``, or (with ``validate=True``) outside ``[0, 1]``.
      TypeError: complex or non-numeric input.

    Example:
      >>> forward_diffuse(jnp.array([1.0, 2.0]), 0.64, jnp.array([1.0, -1.0]))
      Array([1.4, 1. ], dtype=float32)
      >>> alpha_bar = jnp.cumprod(1.0 - jnp.linspace(1e-4, 0.02, 1000))  # DDPM's schedule
      >>> x0 = jnp.ones((4, 3, 8, 8))
      >>> eps = jax.random.normal(jax.random.key(0), x0.shape)
      >>> forward_diffuse(x0, alpha_bar[jnp.array([0, 10, 500, 999])], eps).shape
      (4, 3, 8, 8)
    """
    x0, alpha_bar, noise = _checks.as_floats((x0, "x0"), (alpha_bar, "alpha_bar"),
                                             (noise, "noise"))
    _checks.check_same_shape(noise, x0, "noise", "x0")
    a = _left_aligned(alpha_bar, x0)
    if validate:
        _checks.check_values(
            (alpha_bar >= 0) & (alpha_bar <= 1),
            f"alpha_bar must lie in [0, 1] (it is the cumulative product of alphas), got "
            f"shape {tuple(alpha_bar.shape)} with values outside that")
    return kernels.forward_diffuse(x0, a, noise)
