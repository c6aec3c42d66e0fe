"""Tests for jaxmath.metrics against SciPy, scikit-learn, NumPy references and closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
import sklearn.metrics.pairwise
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

from jaxmath.metrics import (
    median_bandwidth,
    mmd_squared,
    rbf_kernel,
    sliced_wasserstein,
    wasserstein_1d,
)
from tests.tolerances import F32_ATOL, F32_LOOSE, F32_RTOL, F64_ATOL, F64_RTOL, GRAD_RTOL

# Monte Carlo checks against population values: the estimators' own sampling error at the
# sizes used (n = 1000 or L = 4000), several standard deviations wide.
MC_ATOL = 0.02

SIZES = [(1, 1), (1, 5), (5, 7), (10, 10), (3, 9), (37, 100)]


def _w_pp_reference(u, v, p):
    """W_p^p by repetition: each of n (m) sorted points repeated lcm/n (lcm/m) times."""
    n, m = len(u), len(v)
    lcm = math.lcm(n, m)
    a = np.repeat(np.sort(np.asarray(u, np.float64)), lcm // n)
    b = np.repeat(np.sort(np.asarray(v, np.float64)), lcm // m)
    return np.mean(np.abs(a - b) ** p)


def _mmd_reference(x, y, sigmas, unbiased):
    """Gretton et al. (2012) eqs. 3 and 5, with scikit-learn's rbf_kernel."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    sigmas = np.atleast_1d(sigmas)

    def k(a, b):
        return np.mean([sklearn.metrics.pairwise.rbf_kernel(a, b, gamma=1 / (2 * s**2))
                        for s in sigmas], axis=0)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    if unbiased:
        return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1))
                + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


def _directions(rng, num, d):
    theta = rng.normal(size=(num, d))
    return theta / np.linalg.norm(theta, axis=1, keepdims=True)


# ---------------------------------------------------------------------------
# wasserstein_1d


@pytest.mark.parametrize(("n", "m"), SIZES)
def test_wasserstein_1d_matches_scipy(rng, n, m):
    u, v = rng.normal(size=n), rng.normal(1.0, 2.0, size=m)
    got = wasserstein_1d(u.astype(np.float32), v.astype(np.float32))
    assert float(got) == pytest.approx(scipy.stats.wasserstein_distance(u, v),
                                       rel=F32_LOOSE, abs=F32_ATOL)


@pytest.mark.parametrize(("n", "m"), SIZES)
@pytest.mark.parametrize("p", [1, 1.5, 2, 3])
def test_wasserstein_1d_order_p_matches_reference(x64, rng, n, m, p):
    u, v = rng.normal(size=n), rng.exponential(size=m)
    got = wasserstein_1d(u, v, p=p)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, _w_pp_reference(u, v, p) ** (1 / p), rtol=F64_RTOL)


_w2 = jax.jit(lambda u, v: wasserstein_1d(u, v, p=2))


@given(u=hnp.arrays(np.float64, 5, elements=st.floats(-10, 10)),
       v=hnp.arrays(np.float64, 7, elements=st.floats(-10, 10)),
       shift=st.floats(-5, 5))
def test_wasserstein_1d_laws(u, v, shift):
    # one shape per argument keeps hypothesis from recompiling
    with jax.enable_x64(True):
        w = float(_w2(u, v))
        assert w >= 0
        assert w == pytest.approx(float(_w2(v, u)), rel=F64_RTOL, abs=F64_ATOL)
        # a translation moves every quantile by the shift
        assert float(_w2(u, u + shift)) == pytest.approx(abs(shift), abs=1e-9)
        # triangle inequality through a third set
        z = np.linspace(-1, 1, 7)
        assert w <= float(_w2(u, z)) + float(_w2(v, z)) + 1e-9
        assert float(_w2(u, u)) == 0.0


def test_wasserstein_1d_edge_cases():
    assert float(wasserstein_1d([1.0], [4.0], p=3)) == pytest.approx(3.0)
    assert float(wasserstein_1d([0.0, np.inf], [0.0, 1.0])) == np.inf
    g = jax.grad(lambda u: wasserstein_1d(u, jnp.array([1.0, 2.0]), p=2))(jnp.array([2.0, 1.0]))
    np.testing.assert_array_equal(g, 0.0)  # at distance 0 the root's gradient is 0, not inf


def test_wasserstein_1d_broadcasts_leading_axes_like_a_loop(rng):
    u, v = rng.normal(size=(4, 6)).astype(np.float32), rng.normal(size=(1, 9)).astype(np.float32)
    got = wasserstein_1d(u, v, p=2)
    assert got.shape == (4,)
    for b in range(4):
        np.testing.assert_allclose(got[b], wasserstein_1d(u[b], v[0], p=2), rtol=F32_RTOL)


def test_wasserstein_1d_jit_vmap_grad(x64, rng):
    u, v = rng.normal(size=(3, 5)), rng.normal(size=(3, 7))
    f = lambda a, b: wasserstein_1d(a, b, p=2)  # noqa: E731
    batched = jax.vmap(f)(u, v)
    np.testing.assert_allclose(batched, [f(a, b) for a, b in zip(u, v, strict=True)],
                               rtol=F64_RTOL)
    np.testing.assert_allclose(jax.jit(f)(u, v), batched, rtol=F64_RTOL)
    check_grads(jax.jit(lambda a: f(a, v[0])), (u[0],), order=1, rtol=GRAD_RTOL)
    check_grads(jax.jit(lambda b: wasserstein_1d(u[0], b, p=1.5)), (v[0],), order=1,
                rtol=GRAD_RTOL)


# ---------------------------------------------------------------------------
# sliced_wasserstein


@pytest.mark.parametrize(("n", "m", "p"), [(20, 20, 1), (20, 20, 2), (15, 40, 1), (15, 40, 2)])
def test_sliced_wasserstein_matches_projected_reference(rng, n, m, p):
    x, y = rng.normal(size=(n, 3)), rng.normal(0.5, 1.5, size=(m, 3))
    theta = _directions(rng, 16, 3)
    if p == 1:
        per = [scipy.stats.wasserstein_distance(x @ t, y @ t) for t in theta]
    else:
        per = [_w_pp_reference(x @ t, y @ t, p) for t in theta]
    want = np.mean(per) ** (1 / p)
    got = sliced_wasserstein(x.astype(np.float32), y.astype(np.float32), p=p,
                             directions=(3 * theta).astype(np.float32))  # normalised inside
    assert float(got) == pytest.approx(want, rel=F32_LOOSE)


def test_sliced_wasserstein_of_a_shift_is_exact(x64, rng):
    x, delta = rng.normal(size=(30, 4)), rng.normal(size=4)
    theta = _directions(rng, 10, 4)
    got = sliced_wasserstein(x, x + delta, directions=theta)
    np.testing.assert_allclose(got, np.sqrt(np.mean((theta @ delta) ** 2)), rtol=F64_RTOL)
    # with many random directions, ||delta|| / sqrt(d)
    many = sliced_wasserstein(x, x + delta, jax.random.key(0), num_projections=4000)
    assert float(many) == pytest.approx(np.linalg.norm(delta) / 2, abs=MC_ATOL)


def test_sliced_wasserstein_in_one_dimension_is_wasserstein_1d(rng):
    x, y = rng.normal(size=(12, 1)), rng.normal(size=(8, 1))
    got = sliced_wasserstein(x, y, jax.random.key(3), num_projections=5, p=1)
    assert float(got) == pytest.approx(scipy.stats.wasserstein_distance(x[:, 0], y[:, 0]),
                                       rel=F32_LOOSE)


def test_sliced_wasserstein_edge_cases_and_key(rng):
    x = rng.normal(size=(10, 2)).astype(np.float32)
    assert float(sliced_wasserstein(x, x, jax.random.key(0))) == 0.0
    g = jax.grad(lambda a: sliced_wasserstein(a, x, jax.random.key(0)))(x)
    np.testing.assert_array_equal(g, 0.0)  # finite (0) at distance 0
    y = rng.normal(size=(10, 2)).astype(np.float32)
    a = sliced_wasserstein(x, y, jax.random.key(0))
    assert float(a) == float(sliced_wasserstein(x, y, jax.random.key(0)))
    assert float(a) != float(sliced_wasserstein(x, y, jax.random.key(1)))
    assert np.isnan(float(sliced_wasserstein(x, y, directions=np.zeros((1, 2)))))


def test_sliced_wasserstein_jit_vmap_grad(x64, rng):
    xs, ys = rng.normal(size=(3, 8, 2)), rng.normal(size=(3, 6, 2))
    theta = _directions(rng, 7, 2)
    f = lambda a, b: sliced_wasserstein(a, b, directions=theta)  # noqa: E731
    batched = jax.vmap(f)(xs, ys)
    np.testing.assert_allclose(batched, [f(a, b) for a, b in zip(xs, ys, strict=True)],
                               rtol=F64_RTOL)
    np.testing.assert_allclose(jax.jit(f)(xs[0], ys[0]), batched[0], rtol=F64_RTOL)
    keyed = jax.jit(lambda a, b, k: sliced_wasserstein(a, b, k, num_projections=9))
    assert keyed(xs[0], ys[0], jax.random.key(0)).dtype == jnp.float64
    check_grads(jax.jit(lambda a: f(a, ys[0])), (xs[0],), order=1, rtol=GRAD_RTOL)


# ---------------------------------------------------------------------------
# rbf_kernel, mmd_squared, median_bandwidth


@pytest.mark.parametrize("bandwidth", [0.7, 2.0])
def test_rbf_kernel_matches_sklearn(rng, bandwidth):
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    want = sklearn.metrics.pairwise.rbf_kernel(x, y, gamma=1 / (2 * bandwidth**2))
    got = rbf_kernel(x.astype(np.float32), y.astype(np.float32), bandwidth)
    np.testing.assert_allclose(got, want, rtol=F32_LOOSE, atol=F32_ATOL)


def test_rbf_kernel_multi_scale_is_the_mean(x64, rng):
    x, y = rng.normal(size=(5, 2)), rng.normal(size=(3, 2))
    want = (rbf_kernel(x, y, 0.5) + rbf_kernel(x, y, 3.0)) / 2
    np.testing.assert_allclose(rbf_kernel(x, y, jnp.array([0.5, 3.0])), want, rtol=F64_RTOL)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("bandwidth", [1.0, (0.5, 1.0, 4.0)])
@pytest.mark.parametrize(("n", "m"), [(12, 12), (7, 15)])
def test_mmd_squared_matches_numpy(rng, unbiased, bandwidth, n, m):
    x, y = rng.normal(size=(n, 3)), rng.normal(0.3, 1.2, size=(m, 3))
    want = _mmd_reference(x, y, bandwidth, unbiased)
    got = mmd_squared(x.astype(np.float32), y.astype(np.float32), jnp.asarray(bandwidth),
                      unbiased=unbiased)
    assert float(got) == pytest.approx(want, rel=F32_LOOSE, abs=F32_LOOSE)


def test_mmd_squared_known_cases(x64, rng):
    x = rng.normal(size=(9, 2))
    assert float(mmd_squared(x, x)) == 0.0
    assert float(mmd_squared([[0.0]], [[2.0]], 2.0)) == pytest.approx(
        2 - 2 * np.exp(-0.5), rel=F64_RTOL)
    # far apart sets: MMD^2_b -> mean k_xx + mean k_yy (the cross term vanishes)
    assert float(mmd_squared(x, x + 1e3)) == pytest.approx(
        2 * float(jnp.mean(rbf_kernel(x, x))), rel=F64_RTOL)


def test_mmd_squared_between_gaussians_matches_closed_form(x64):
    # x ~ N(0, s^2 I_d), y ~ N(delta, s^2 I_d), kernel bandwidth sigma:
    # E k = c exp(-|mu - mu'|^2 / (2 (sigma^2 + 2 s^2))), c = (sigma^2 / (sigma^2 + 2 s^2))^(d/2)
    d, s, sigma, n = 2, 1.0, 1.5, 1000
    delta = np.array([1.0, -0.5])
    c = (sigma**2 / (sigma**2 + 2 * s**2)) ** (d / 2)
    want = 2 * c * (1 - np.exp(-delta @ delta / (2 * (sigma**2 + 2 * s**2))))
    kx, ky = jax.random.split(jax.random.key(0))
    x = s * jax.random.normal(kx, (n, d), jnp.float64)
    y = delta + s * jax.random.normal(ky, (n, d), jnp.float64)
    assert float(mmd_squared(x, y, sigma, unbiased=True)) == pytest.approx(want, abs=MC_ATOL)


def test_mmd_squared_jit_vmap_grad(x64, rng):
    xs, ys = rng.normal(size=(3, 6, 2)), rng.normal(size=(3, 5, 2))
    f = lambda a, b, s: mmd_squared(a, b, s, unbiased=True)  # noqa: E731
    sig = jnp.array([0.8, 1.3, 2.0])
    batched = jax.vmap(f)(xs, ys, sig)
    np.testing.assert_allclose(batched, [f(a, b, s) for a, b, s in zip(xs, ys, sig, strict=True)],
                               rtol=F64_RTOL)
    np.testing.assert_allclose(jax.jit(f)(xs[0], ys[0], sig[0]), batched[0], rtol=F64_RTOL)
    check_grads(jax.jit(lambda a, s: f(a, ys[0], s)), (xs[0], sig[0]), order=1,
                rtol=GRAD_RTOL)
    g = jax.grad(lambda a: mmd_squared(a, xs[0]))(xs[0])  # at the minimum
    np.testing.assert_allclose(g, 0.0, atol=F64_ATOL)


def test_rbf_kernel_and_median_bandwidth_jit_vmap_grad(x64, rng):
    xs, ys = rng.normal(size=(3, 5, 2)), rng.normal(size=(3, 4, 2))
    k = jax.vmap(rbf_kernel)(xs, ys)
    np.testing.assert_allclose(k, [rbf_kernel(a, b) for a, b in zip(xs, ys, strict=True)],
                               rtol=F64_RTOL)
    np.testing.assert_allclose(jax.jit(rbf_kernel)(xs[0], ys[0], 2.0),
                               rbf_kernel(xs[0], ys[0], 2.0), rtol=F64_RTOL)
    check_grads(jax.jit(lambda a, s: rbf_kernel(a, ys[0], s)), (xs[0], 1.5), order=1,
                rtol=GRAD_RTOL)
    med = jax.jit(jax.vmap(median_bandwidth))(xs, ys)
    np.testing.assert_allclose(med, [median_bandwidth(a, b) for a, b in zip(xs, ys, strict=True)],
                               rtol=F64_RTOL)


def test_median_bandwidth_matches_scipy_pdist(rng):
    x, y = rng.normal(size=(11, 3)), rng.normal(size=(6, 3))
    want = np.median(scipy.spatial.distance.pdist(np.concatenate([x, y])))
    assert float(median_bandwidth(x.astype(np.float32), y.astype(np.float32))) == pytest.approx(
        want, rel=F32_LOOSE)
    assert float(median_bandwidth(x)) == pytest.approx(
        np.median(scipy.spatial.distance.pdist(x)), rel=F32_LOOSE)


def test_float64_in_float64_out(x64, rng):
    x, y = rng.normal(size=(4, 2)), rng.normal(size=(5, 2))
    for out in (wasserstein_1d(x[:, 0], y[:, 0]), sliced_wasserstein(x, y, jax.random.key(0)),
                rbf_kernel(x, y), mmd_squared(x, y), median_bandwidth(x, y)):
        assert out.dtype == jnp.float64


def test_float32_by_default(rng):
    x, y = rng.normal(size=(4, 2)).astype(np.float32), rng.integers(0, 3, size=(5, 2))
    assert mmd_squared(x, y).dtype == jnp.float32
    assert sliced_wasserstein(x, y, jax.random.key(0)).dtype == jnp.float32


# ---------------------------------------------------------------------------
# Bad inputs

X = jnp.zeros((4, 2))
KEY = jax.random.key(0)

BAD_INPUTS = [
    (lambda: wasserstein_1d(jnp.ones(3), jnp.ones(3), p=0.5), ValueError,
     "p must be a finite number >= 1, got 0.5"),
    (lambda: wasserstein_1d(jnp.ones(3), jnp.ones(3), p=jnp.array(2.0)), TypeError,
     "p must be a Python number"),
    (lambda: wasserstein_1d(jnp.ones(()), jnp.ones(3)), ValueError,
     r"u must have rank >= 1, got shape \(\)"),
    (lambda: wasserstein_1d(jnp.ones(3), jnp.ones(0)), ValueError,
     r"v must not be empty along axis -1"),
    (lambda: wasserstein_1d(jnp.ones((2, 3)), jnp.ones((3, 4))), ValueError,
     r"shapes do not broadcast: u\[\.\.\., 0\]\.shape=\(2,\), v\[\.\.\., 0\]\.shape=\(3,\)"),
    (lambda: wasserstein_1d(jnp.ones(3) * 1j, jnp.ones(3)), TypeError, "u must be real"),
    (lambda: sliced_wasserstein(X, jnp.zeros((4, 3)), KEY), ValueError,
     r"same dimension d >= 1, got x.shape=\(4, 2\) and y.shape=\(4, 3\)"),
    (lambda: sliced_wasserstein(jnp.zeros(4), X, KEY), ValueError,
     r"x must have rank 2, got shape \(4,\)"),
    (lambda: sliced_wasserstein(X, jnp.zeros((0, 2)), KEY), ValueError,
     r"y must not be empty along axis 0"),
    (lambda: sliced_wasserstein(X, X), ValueError, "needs a PRNG key or explicit directions"),
    (lambda: sliced_wasserstein(X, X, KEY, num_projections=0), ValueError,
     "num_projections must be >= 1, got 0"),
    (lambda: sliced_wasserstein(X, X, KEY, num_projections=2.0), TypeError,
     "num_projections must be a Python int"),
    (lambda: sliced_wasserstein(X, X, directions=jnp.ones((3, 5))), ValueError,
     r"directions must be shaped \[L, d\] with L >= 1 and d = 2.*\(3, 5\)"),
    (lambda: mmd_squared(X, X, 0.0), ValueError, r"bandwidth must be finite and > 0"),
    (lambda: mmd_squared(X, X, jnp.array([1.0, -1.0])), ValueError,
     r"bandwidth must be finite and > 0, got \[ 1. -1.\]"),
    (lambda: mmd_squared(X, X, jnp.ones((2, 2))), ValueError,
     r"bandwidth must have rank 0 or 1, got shape \(2, 2\)"),
    (lambda: mmd_squared(X[:1], X, unbiased=True), ValueError,
     r"unbiased estimate needs at least 2 samples.*x.shape=\(1, 2\)"),
    (lambda: rbf_kernel(X, jnp.zeros((3, 1))), ValueError, "must have the same dimension"),
    (lambda: median_bandwidth(X[:1]), ValueError, "needs at least 2 points, got 1"),
    (lambda: jax.jit(lambda a, b: mmd_squared(a, b))(X, jnp.zeros((3, 5))), ValueError,
     "must have the same dimension d"),
    (lambda: jax.jit(lambda a: sliced_wasserstein(a, X, directions=jnp.ones((2, 3))))(X),
     ValueError, "directions must be shaped"),
    (lambda: jax.jit(lambda a: mmd_squared(a, X, -2.0))(X), ValueError,
     "bandwidth must be finite and > 0"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD_INPUTS)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
