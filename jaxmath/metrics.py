r"""Sample-quality metrics: distances between two sets of samples.

A generative model is judged by how far its samples :math:`\{x_i\}_{i=1}^n` lie from
held-out data :math:`\{y_j\}_{j=1}^m`, as distributions. Two standard distances between
empirical distributions, both pure functions of the two point sets:

* the **sliced Wasserstein distance** (Rabin et al., 2011; Bonneel et al., 2015):
  one-dimensional Wasserstein distances of random projections, each exact by sorting
  (:func:`wasserstein_1d`, :func:`sliced_wasserstein`); in the units of the data;
* the **maximum mean discrepancy** with a Gaussian RBF kernel (Gretton et al., 2012,
  "A Kernel Two-Sample Test"): the distance between the kernel mean embeddings
  (:func:`rbf_kernel`, :func:`mmd_squared`, with :func:`median_bandwidth` for the usual
  bandwidth).

Both are estimates with sampling noise of their own: two independent draws of the same
distribution are at a distance > 0 that shrinks like :math:`1/\sqrt{n}`. A target for a
model is therefore set relative to that reference level, measured at the same sample sizes.

Every product here runs at full float32 precision on every backend (jaxmath's
classical-math policy, :mod:`jaxmath._precision`).
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxmath import _checks
from jaxmath._precision import CLASSICAL

ArrayLike = jax.typing.ArrayLike

__all__ = [
    "median_bandwidth",
    "mmd_squared",
    "rbf_kernel",
    "sliced_wasserstein",
    "wasserstein_1d",
]


# ---------------------------------------------------------------------------
# Wasserstein distances


def _order(p: object) -> float:
    """``p`` as a float >= 1 (static: it picks the cost)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"p must be a Python number >= 1 (static), got {type(p).__name__}")
    if not 1 <= p < np.inf:
        raise ValueError(f"p must be a finite number >= 1, got {p}")
    return float(p)


@functools.lru_cache(maxsize=64)
def _quantile_coupling(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The monotone coupling of ``n`` and ``m`` equally weighted sorted points.

    Returns ``(i, j, w)`` such that :math:`W_p^p = \\sum_k w_k |u_{(i_k)} - v_{(j_k)}|^p`.
    The quantile functions are constant between the breakpoints :math:`a/n` and
    :math:`b/m`; in units of :math:`1/(nm)` these are the integers :math:`am` and
    :math:`bn`, so the pieces, their widths and the sorted indices on each piece are
    exact integer arithmetic (computed once per shape, at trace time).
    """
    if n == m:
        i = j = np.arange(n)
        w = np.full(n, 1.0 / n)
    else:
        s = np.unique(np.concatenate([np.arange(1, n + 1, dtype=np.int64) * m,
                                      np.arange(1, m + 1, dtype=np.int64) * n]))
        prev = np.concatenate([[0], s[:-1]])
        mid2 = s + prev  # twice the piece's midpoint, in units of 1/(nm)
        i, j, w = mid2 // (2 * m), mid2 // (2 * n), (s - prev) / (n * m)
    out = i.astype(np.int32), j.astype(np.int32), w
    for a in out:
        a.flags.writeable = False  # cached: shared by every call with these sizes
    return out


def _wasserstein_pp(u_sorted: jax.Array, v_sorted: jax.Array, p: float) -> jax.Array:
    """:math:`W_p^p` of sorted samples along the last axis (leading axes broadcast)."""
    i, j, w = _quantile_coupling(u_sorted.shape[-1], v_sorted.shape[-1])
    d = jnp.abs(u_sorted[..., i] - v_sorted[..., j])
    cost = d if p == 1 else d**p
    return jnp.matmul(cost, jnp.asarray(w, cost.dtype), precision=CLASSICAL)


def _root(x: jax.Array, p: float) -> jax.Array:
    """:math:`x^{1/p}` whose gradient at ``x = 0`` is 0 rather than inf (a subgradient)."""
    if p == 1:
        return x
    positive = x > 0
    return jnp.where(positive, jnp.where(positive, x, 1) ** (1 / p), x)  # keeps 0 and NaN


def wasserstein_1d(u: ArrayLike, v: ArrayLike, p: float = 1.0) -> jax.Array:
    r"""The p-Wasserstein distance between two 1-D empirical distributions.

    .. math:: W_p(\mu, \nu) = \Big(\int_0^1 \big|F_\mu^{-1}(q) - F_\nu^{-1}(q)\big|^p
       \, dq\Big)^{1/p}, \qquad \mu = \frac1n \sum_{i=1}^n \delta_{u_i},\;
       \nu = \frac1m \sum_{j=1}^m \delta_{v_j}

    In one dimension the optimal transport plan is monotone, so the integral is exact
    from the sorted samples: for ``n == m`` it is
    :math:`\big(\frac1n \sum_i |u_{(i)} - v_{(i)}|^p\big)^{1/p}`; otherwise the quantile
    functions are matched on the pieces between the breakpoints :math:`a/n` and
    :math:`b/m` (``n + m - 1`` pieces at most). For ``p = 1`` this is
    ``scipy.stats.wasserstein_distance``.

    Args:
      u: ``[..., n]`` samples of the first distribution along the last axis.
      v: ``[..., m]`` samples of the second; leading axes broadcast with ``u``'s.
      p: the order, a Python number >= 1 (static).

    Returns:
      ``[...]`` distances, in the units of the samples. Identical sets give exactly 0.
      Gradients are those of the sorted differences (ties between samples pick one
      order, a subgradient); at a distance of 0 the gradient is 0 rather than the
      infinite derivative of the root. Infinite samples give inf or NaN, like the
      integral.

    Example:
      >>> float(wasserstein_1d(jnp.array([0.0, 1.0, 3.0]), jnp.array([5.0, 6.0, 8.0])))
      5.0
      >>> float(wasserstein_1d(jnp.array([0.0, 1.0]), jnp.array([0.0, 0.5, 1.0])))
      0.1666...
    """
    p = _order(p)
    u, v = _checks.as_floats((u, "u"), (v, "v"))
    _checks.check_ndim(u, "u", min_ndim=1)
    _checks.check_ndim(v, "v", min_ndim=1)
    _checks.check_nonempty(u, "u", axis=-1)
    _checks.check_nonempty(v, "v", axis=-1)
    u_lead, v_lead = u[..., 0], v[..., 0]  # the leading axes, checked to broadcast
    _checks.broadcast_shapes((u_lead, "u[..., 0]"), (v_lead, "v[..., 0]"))
    return _wasserstein_1d(u, v, p)


@functools.partial(jax.jit, static_argnums=2)
def _wasserstein_1d(u: jax.Array, v: jax.Array, p: float) -> jax.Array:
    return _root(_wasserstein_pp(jnp.sort(u, axis=-1), jnp.sort(v, axis=-1), p), p)


def _point_sets(x: ArrayLike, y: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """``x [n, d]`` and ``y [m, d]`` as float arrays of one dtype, checked."""
    x, y = _checks.as_floats((x, "x"), (y, "y"))
    _checks.check_ndim(x, "x", 2)
    _checks.check_ndim(y, "y", 2)
    _checks.check_nonempty(x, "x", axis=0)
    _checks.check_nonempty(y, "y", axis=0)
    if x.shape[1] != y.shape[1] or x.shape[1] == 0:
        raise ValueError(f"x [n, d] and y [m, d] must have the same dimension d >= 1, got "
                         f"x.shape={tuple(x.shape)} and y.shape={tuple(y.shape)}")
    return x, y


def sliced_wasserstein(x: ArrayLike, y: ArrayLike, key: jax.Array | None = None, *,
                       num_projections: int = 128, p: float = 2.0,
                       directions: ArrayLike | None = None) -> jax.Array:
    r"""The sliced p-Wasserstein distance between two point sets, by Monte Carlo.

    .. math:: SW_p(\mu, \nu) = \Big(\int_{S^{d-1}} W_p^p(\theta_\# \mu, \theta_\# \nu)
       \, d\sigma(\theta)\Big)^{1/p} \approx \Big(\frac1L \sum_{l=1}^L
       W_p^p\big(\{\theta_l^\top x_i\}, \{\theta_l^\top y_j\}\big)\Big)^{1/p}

    with :math:`\theta_l` uniform on the unit sphere (normalised Gaussian draws) and each
    1-D distance exact by sorting (:func:`wasserstein_1d`). :math:`SW_p` is a metric on
    distributions, at most :math:`W_p`, and costs :math:`O(L (n + m) \log(n + m))`. A
    shift by :math:`\Delta` gives :math:`SW_2 = \|\Delta\| / \sqrt{d}` as
    :math:`L \to \infty` (the projections see :math:`(\theta^\top \Delta)^2`, of mean
    :math:`\|\Delta\|^2 / d`).

    Args:
      x: ``[n, d]`` samples of the first distribution.
      y: ``[m, d]`` samples of the second (same ``d``; ``m`` may differ from ``n``).
      key: a PRNG key for the directions (unused when ``directions`` is given).
      num_projections: :math:`L`, the number of random directions (static).
      p: the order, a Python number >= 1 (static).
      directions: optional ``[L, d]`` directions, normalised here to unit length; fix
        them to compare several sample sets on the same slices.

    Returns:
      A scalar, in the units of the data; identical sets give exactly 0. Gradients with
      respect to ``x`` and ``y`` flow through the sorted projections (ties pick one
      order); at 0 the gradient is 0 rather than the root's infinite derivative. A zero
      row in ``directions`` has no direction and gives NaN.

    Example:
      >>> x = jax.random.normal(jax.random.key(0), (256, 2))
      >>> float(sliced_wasserstein(x, x + jnp.array([3.0, 4.0]), jax.random.key(1),
      ...                          num_projections=2000))  # ||shift|| / sqrt(2) = 3.54
      3.5...
    """
    p = _order(p)
    x, y = _point_sets(x, y)
    d = x.shape[1]
    if directions is None:
        if key is None:
            raise ValueError("sliced_wasserstein needs a PRNG key or explicit directions")
        num_projections = _checks.check_int(num_projections, "num_projections", 1,
                                            static="static")
        theta = jax.random.normal(key, (num_projections, d), x.dtype)
    else:
        theta = _checks.as_float(directions, "directions").astype(x.dtype)
        if theta.ndim != 2 or theta.shape[1] != d or theta.shape[0] == 0:
            raise ValueError(f"directions must be shaped [L, d] with L >= 1 and d = {d} "
                             f"(the samples' dimension), got shape {tuple(theta.shape)}")
    return _sliced_wasserstein(x, y, theta, p)


@functools.partial(jax.jit, static_argnums=3)
def _sliced_wasserstein(x: jax.Array, y: jax.Array, theta: jax.Array, p: float) -> jax.Array:
    theta = theta / jnp.linalg.norm(theta, axis=1, keepdims=True)
    x_proj = jnp.sort(jnp.matmul(theta, x.T, precision=CLASSICAL), axis=1)  # [L, n]
    y_proj = jnp.sort(jnp.matmul(theta, y.T, precision=CLASSICAL), axis=1)  # [L, m]
    return _root(jnp.mean(_wasserstein_pp(x_proj, y_proj, p)), p)


# ---------------------------------------------------------------------------
# Maximum mean discrepancy


def _bandwidths(bandwidth: ArrayLike, dtype: jnp.dtype) -> jax.Array:
    """``bandwidth`` as a ``[K]`` array of the data's dtype; values > 0 checked when known."""
    sigma = _checks.as_float(bandwidth, "bandwidth")
    _checks.check_ndim(sigma, "bandwidth", (0, 1))
    _checks.check_nonempty(sigma, "bandwidth")
    if not _checks.is_tracer(bandwidth):
        value = np.asarray(bandwidth, dtype=float)
        if not np.all((value > 0) & np.isfinite(value)):
            raise ValueError(f"bandwidth must be finite and > 0, got {value}")
    return jnp.atleast_1d(sigma).astype(dtype)


def _sq_dists(x: jax.Array, y: jax.Array) -> jax.Array:
    """``[n, m]`` squared distances by :math:`\\|x\\|^2 + \\|y\\|^2 - 2 x^\\top y`, >= 0."""
    xx = jnp.sum(x * x, axis=1)[:, None]
    yy = jnp.sum(y * y, axis=1)[None, :]
    return jnp.maximum(xx + yy - 2 * jnp.matmul(x, y.T, precision=CLASSICAL), 0)


@jax.jit
def _gram(x: jax.Array, y: jax.Array, sigma: jax.Array) -> jax.Array:
    d2 = _sq_dists(x, y)
    return jnp.mean(jnp.exp(-d2[..., None] / (2 * sigma**2)), axis=-1)


def rbf_kernel(x: ArrayLike, y: ArrayLike, bandwidth: ArrayLike = 1.0) -> jax.Array:
    r"""The Gaussian RBF kernel matrix, optionally averaged over several bandwidths.

    .. math:: k(x, y) = \frac1K \sum_{k=1}^K \exp\Big(-\frac{\|x - y\|^2}{2\sigma_k^2}\Big)

    The squared distances are computed as :math:`\|x\|^2 + \|y\|^2 - 2x^\top y` (one
    matrix product, no ``[n, m, d]`` intermediate) and clamped at 0 against rounding.
    With one bandwidth this is scikit-learn's ``rbf_kernel`` with
    :math:`\gamma = 1 / (2\sigma^2)`.

    Args:
      x: ``[n, d]`` points.
      y: ``[m, d]`` points.
      bandwidth: :math:`\sigma > 0`, a scalar or ``[K]`` bandwidths (a multi-scale kernel).

    Returns:
      ``[n, m]`` kernel values in ``(0, 1]``; 1 on coincident points (where the gradient
      with respect to the points is 0).

    Example:
      >>> rbf_kernel(jnp.array([[0.0, 0.0]]), jnp.array([[0.0, 0.0], [1.0, 1.0]]))
      Array([[1.       , 0.3678...]], dtype=float32)
    """
    x, y = _point_sets(x, y)
    return _gram(x, y, _bandwidths(bandwidth, x.dtype))


def mmd_squared(x: ArrayLike, y: ArrayLike, bandwidth: ArrayLike = 1.0, *,
                unbiased: bool = False) -> jax.Array:
    r"""The squared maximum mean discrepancy with a Gaussian RBF kernel.

    .. math:: \mathrm{MMD}^2(P, Q) = \mathbb{E}\,k(x, x') + \mathbb{E}\,k(y, y')
       - 2\,\mathbb{E}\,k(x, y), \qquad x, x' \sim P, \; y, y' \sim Q

    estimated from ``x [n, d]`` and ``y [m, d]`` by (Gretton et al., 2012, eqs. 3 and 5)

    .. math:: \widehat{\mathrm{MMD}}{}^2_b = \frac{1}{n^2} \sum_{i,i'} k(x_i, x_{i'})
       + \frac{1}{m^2} \sum_{j,j'} k(y_j, y_{j'}) - \frac{2}{nm} \sum_{i,j} k(x_i, y_j)

    (biased, the squared distance of the empirical embeddings, >= 0) or, with
    ``unbiased=True``, the U-statistic that drops the diagonal terms (sums over
    :math:`i \ne i'` divided by :math:`n(n-1)`, likewise for ``y``), whose mean is exactly
    :math:`\mathrm{MMD}^2` and which can be negative. The RBF kernel is characteristic:
    :math:`\mathrm{MMD} = 0` only for :math:`P = Q`.

    Args:
      x: ``[n, d]`` samples of P.
      y: ``[m, d]`` samples of Q (same ``d``).
      bandwidth: :math:`\sigma > 0`, a scalar or ``[K]`` bandwidths averaged as in
        :func:`rbf_kernel`; :func:`median_bandwidth` is the usual choice.
      unbiased: the U-statistic instead of the V-statistic (needs ``n, m >= 2``).

    Returns:
      A scalar. The biased estimate of a set against itself is exactly 0 and lies in
      ``[0, 2]``; the unbiased one lies in ``[-2, 2]``. Differentiable in ``x``, ``y``
      and ``bandwidth`` (0 gradient through coincident points).

    Example:
      >>> x, y = jnp.array([[0.0], [1.0]]), jnp.array([[0.0], [1.0]])
      >>> float(mmd_squared(x, y))
      0.0
      >>> float(mmd_squared(jnp.array([[0.0]]), jnp.array([[1.0]])))  # 2 - 2 exp(-1/2)
      0.7869...
    """
    x, y = _point_sets(x, y)
    sigma = _bandwidths(bandwidth, x.dtype)
    n, m = x.shape[0], y.shape[0]
    if unbiased and min(n, m) < 2:
        raise ValueError(f"the unbiased estimate needs at least 2 samples in x and y, got "
                         f"x.shape={tuple(x.shape)} and y.shape={tuple(y.shape)}")
    return _mmd_squared(x, y, sigma, bool(unbiased))


@functools.partial(jax.jit, static_argnums=3)
def _mmd_squared(x: jax.Array, y: jax.Array, sigma: jax.Array, unbiased: bool) -> jax.Array:
    n, m = x.shape[0], y.shape[0]
    k_xx, k_yy = _gram(x, x, sigma), _gram(y, y, sigma)
    k_xy = jnp.mean(_gram(x, y, sigma))
    if not unbiased:  # a squared norm: clamped at 0 against rounding
        return jnp.maximum(jnp.mean(k_xx) + jnp.mean(k_yy) - 2 * k_xy, 0)
    off_xx = (jnp.sum(k_xx) - jnp.trace(k_xx)) / (n * (n - 1))
    off_yy = (jnp.sum(k_yy) - jnp.trace(k_yy)) / (m * (m - 1))
    return off_xx + off_yy - 2 * k_xy


def median_bandwidth(x: ArrayLike, y: ArrayLike | None = None) -> jax.Array:
    r"""The median heuristic for the RBF bandwidth: the median pairwise distance.

    .. math:: \sigma = \operatorname{median}\big\{\|z_a - z_b\| : a < b\big\}

    over the pooled points :math:`z` of ``x`` and ``y`` (Gretton et al., 2012, sec. 8),
    so that typical kernel values :math:`\exp(-\|z_a - z_b\|^2 / 2\sigma^2)` are neither
    all near 0 nor all near 1. Compute it once, on reference data, and pass the same
    value to every :func:`mmd_squared` that is compared.

    Args:
      x: ``[n, d]`` points.
      y: optional ``[m, d]`` points, pooled with ``x``.

    Returns:
      A scalar >= 0 (0 when more than half the pairs coincide, which is not a usable
      bandwidth). It uses all :math:`N(N-1)/2` pairs of the :math:`N` pooled points;
      subsample large sets first. Not meant to be differentiated (the median's gradient
      picks one pair).

    Example:
      >>> float(median_bandwidth(jnp.array([[0.0], [1.0], [3.0]])))  # distances 1, 2, 3
      2.0
    """
    x, y_ = _point_sets(x, x if y is None else y)
    z = x if y is None else jnp.concatenate([x, y_])
    if z.shape[0] < 2:
        raise ValueError(f"median_bandwidth needs at least 2 points, got {z.shape[0]}")
    return _median_distance(z)


@jax.jit
def _median_distance(z: jax.Array) -> jax.Array:
    a, b = np.triu_indices(z.shape[0], k=1)
    return jnp.median(jnp.sqrt(_sq_dists(z, z)[a, b]))
