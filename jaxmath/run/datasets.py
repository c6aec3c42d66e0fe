r"""Toy datasets as keyed, jit-able samplers: the 2-D benchmarks of classification and diffusion.

Every sampler takes a PRNG ``key`` and a static sample count ``n`` and returns
``(x [n, d] float32, labels [n] int32)``, so a fresh dataset per training step is
``sampler(jax.random.fold_in(key, step), n)`` inside a jitted step.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxmath._checks import as_float, check_ndim

ArrayLike = jax.typing.ArrayLike


def _count(n: object, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise TypeError(f"{name} must be a static Python int (it fixes the shape), "
                        f"got {type(n).__name__}")
    if n <= 0:
        raise ValueError(f"{name} must be a positive int, got {n}")
    return int(n)


def _noise_level(noise: float, name: str = "noise") -> float:
    if not isinstance(noise, int | float) or isinstance(noise, bool) or not noise >= 0:
        raise ValueError(f"{name} must be a Python float >= 0, got {noise!r}")
    return float(noise)


def gaussian_mixture(key: jax.Array, n: int, means: ArrayLike, stds: ArrayLike = 1.0,
                     weights: ArrayLike | None = None) -> tuple[jax.Array, jax.Array]:
    r"""Sample an isotropic Gaussian mixture.

    .. math:: k \sim \mathrm{Cat}(w), \qquad x \mid k \sim \mathcal{N}(\mu_k, \sigma_k^2 I)

    Its moments, used to check samplers: :math:`\mathbb{E}[x] = \sum_k w_k \mu_k` and
    :math:`\mathrm{Cov}[x] = \sum_k w_k (\sigma_k^2 I + \mu_k \mu_k^\top) - \mathbb{E}[x]
    \mathbb{E}[x]^\top`.

    Args:
      key: a PRNG key.
      n: number of samples (static).
      means: ``[K, d]`` component means.
      stds: ``[K]`` or scalar component standard deviations, > 0.
      weights: ``[K]`` mixture weights (normalised here); default uniform.

    Returns:
      ``(x [n, d], component [n] int32)``.

    Example:
      >>> x, k = gaussian_mixture(jax.random.key(0), 4, jnp.array([[0.0, 0.0], [5.0, 5.0]]))
      >>> x.shape, k.shape
      ((4, 2), (4,))
    """
    n = _count(n)
    means = as_float(means, "means")
    check_ndim(means, "means", 2)
    K, d = means.shape
    stds = as_float(stds, "stds").astype(means.dtype)
    if stds.ndim == 0:
        stds = jnp.broadcast_to(stds, (K,))
    if stds.shape != (K,):
        raise ValueError(f"stds must be a scalar or shaped [K] = ({K},) like means' first axis, "
                         f"got shape {tuple(stds.shape)}")
    logits = jnp.zeros((K,), means.dtype) if weights is None else jnp.log(
        as_float(weights, "weights").astype(means.dtype))
    if logits.shape != (K,):
        raise ValueError(f"weights must be shaped [K] = ({K},), got {tuple(logits.shape)}")
    key_k, key_x = jax.random.split(key)
    k = jax.random.categorical(key_k, logits, shape=(n,)).astype(jnp.int32)
    z = jax.random.normal(key_x, (n, d), means.dtype)
    return means[k] + stds[k, None] * z, k


def eight_gaussians(key: jax.Array, n: int, radius: float = 2.0,
                    std: float = 0.1) -> tuple[jax.Array, jax.Array]:
    r"""Eight Gaussians on a circle: :math:`\mu_k = r(\cos\frac{2\pi k}{8}, \sin\frac{2\pi k}{8})`.

    Args:
      key: a PRNG key.
      n: number of samples (static).
      radius: :math:`r`, the circle's radius.
      std: each component's standard deviation.

    Returns:
      ``(x [n, 2], component [n] int32)``.

    Example:
      >>> eight_gaussians(jax.random.key(0), 16)[0].shape
      (16, 2)
    """
    angles = 2 * math.pi * np.arange(8) / 8
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return gaussian_mixture(key, n, jnp.asarray(means, jnp.float32),
                            _noise_level(std, "std"))


def two_moons(key: jax.Array, n: int, noise: float = 0.1) -> tuple[jax.Array, jax.Array]:
    r"""Two interleaving half circles, scikit-learn's ``make_moons``.

    .. math:: \text{outer: } (\cos\theta, \sin\theta), \quad
       \text{inner: } (1 - \cos\theta, \tfrac12 - \sin\theta), \qquad \theta \in [0, \pi]

    ``n // 2`` points on the outer moon (label 0) and the rest on the inner (label 1),
    at evenly spaced :math:`\theta` as in scikit-learn, plus :math:`\mathcal{N}(0,
    \text{noise}^2)` and a random order.

    Args:
      key: a PRNG key (order and noise).
      n: number of samples (static).
      noise: standard deviation of the added Gaussian noise.

    Returns:
      ``(x [n, 2], label [n] int32)``.

    Example:
      >>> x, y = two_moons(jax.random.key(0), 6, noise=0.0)
      >>> int(y.sum())
      3
    """
    n, noise = _count(n), _noise_level(noise)
    n_out = n // 2
    th_out, th_in = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n - n_out)
    x = np.concatenate([np.stack([np.cos(th_out), np.sin(th_out)], 1),
                        np.stack([1 - np.cos(th_in), 0.5 - np.sin(th_in)], 1)])
    y = np.concatenate([np.zeros(n_out, np.int32), np.ones(n - n_out, np.int32)])
    key_perm, key_noise = jax.random.split(key)
    x = jnp.asarray(x, jnp.float32) + noise * jax.random.normal(key_noise, (n, 2))
    perm = jax.random.permutation(key_perm, n)
    return x[perm], jnp.asarray(y)[perm]


def swiss_roll(key: jax.Array, n: int, noise: float = 0.0) -> tuple[jax.Array, jax.Array]:
    r"""The 2-D Swiss roll: :math:`x = (r\cos r, r\sin r)/5`, :math:`r = \tfrac{3\pi}{2}(1 + 2u)`.

    :math:`u \sim U(0, 1)`, so :math:`r \in [1.5\pi, 4.5\pi]` (scikit-learn's
    ``make_swiss_roll`` without its height axis), scaled by 1/5 to unit-order
    coordinates, plus :math:`\mathcal{N}(0, \text{noise}^2)`.

    Args:
      key: a PRNG key.
      n: number of samples (static).
      noise: standard deviation of the added Gaussian noise (after scaling).

    Returns:
      ``(x [n, 2], position [n] int32)`` where ``position`` bins :math:`u` into 10 bands
      (a label for colouring plots).

    Example:
      >>> swiss_roll(jax.random.key(0), 5)[0].shape
      (5, 2)
    """
    n, noise = _count(n), _noise_level(noise)
    key_u, key_noise = jax.random.split(key)
    u = jax.random.uniform(key_u, (n,))
    r = 1.5 * jnp.pi * (1 + 2 * u)
    x = jnp.stack([r * jnp.cos(r), r * jnp.sin(r)], axis=1) / 5
    x = x + noise * jax.random.normal(key_noise, (n, 2))
    return x, jnp.minimum((u * 10).astype(jnp.int32), 9)


TOY_2D = {"two_moons": two_moons, "swiss_roll": swiss_roll, "eight_gaussians": eight_gaussians}
