"""jaxmath.run.datasets against scikit-learn's generators and the mixture's closed-form moments."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import make_moons

from jaxmath.run.datasets import TOY_2D, eight_gaussians, gaussian_mixture, swiss_roll, two_moons
from tests.tolerances import F32_ATOL

# Monte-Carlo moments of 200,000 draws: standard error ~ 0.005 for unit-scale data.
MOMENT_ATOL = 0.03


def _sorted_rows(x):
    x = np.round(np.asarray(x, np.float64), 5)
    return x[np.lexsort(x.T[::-1])]


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_two_moons_equals_sklearn_without_noise(n):
    x, y = two_moons(jax.random.key(0), n, noise=0.0)
    xs, ys = make_moons(n, shuffle=False, noise=0.0)
    np.testing.assert_allclose(_sorted_rows(x), _sorted_rows(xs), atol=F32_ATOL * 10)
    assert int(y.sum()) == int(ys.sum()) and y.dtype == jnp.int32


def test_two_moons_labels_follow_points():
    x, y = two_moons(jax.random.key(3), 50, noise=0.0)
    outer = np.abs(np.linalg.norm(np.asarray(x), axis=1) - 1) < 1e-5
    assert np.array_equal(outer[np.asarray(y) == 0], np.ones(25, bool))


def test_swiss_roll_lies_on_the_spiral():
    x, band = swiss_roll(jax.random.key(1), 500)
    r = 5 * np.linalg.norm(np.asarray(x), axis=1)
    assert r.min() >= 1.5 * np.pi - 1e-4 and r.max() <= 4.5 * np.pi + 1e-4
    np.testing.assert_allclose(5 * np.asarray(x), np.stack([r * np.cos(r), r * np.sin(r)], 1),
                               atol=1e-4)
    assert band.min() >= 0 and band.max() <= 9


def test_gaussian_mixture_moments():
    means = jnp.array([[0.0, 0.0], [3.0, -1.0], [-2.0, 2.0]])
    stds, w = jnp.array([0.5, 1.0, 0.3]), jnp.array([0.2, 0.5, 0.3])
    x, k = gaussian_mixture(jax.random.key(0), 200_000, means, stds, w)
    m = np.asarray(w @ means)
    cov = sum(float(w[i]) * (float(stds[i]) ** 2 * np.eye(2) + np.outer(means[i], means[i]))
              for i in range(3)) - np.outer(m, m)
    np.testing.assert_allclose(np.asarray(x).mean(0), m, atol=MOMENT_ATOL)
    np.testing.assert_allclose(np.cov(np.asarray(x).T), cov, atol=MOMENT_ATOL * 3)
    np.testing.assert_allclose(np.bincount(np.asarray(k)) / 200_000, w, atol=MOMENT_ATOL / 3)


def test_eight_gaussians_centres():
    x, k = eight_gaussians(jax.random.key(2), 4000, radius=2.0, std=0.0)
    angles = 2 * np.pi * np.asarray(k) / 8
    np.testing.assert_allclose(np.asarray(x), 2 * np.stack([np.cos(angles), np.sin(angles)], 1),
                               atol=1e-5)


@pytest.mark.parametrize("name", sorted(TOY_2D))
def test_jit_vmap_and_reproducible(name):
    sampler = TOY_2D[name]
    keys = jax.random.split(jax.random.key(0), 3)
    batched = jax.jit(jax.vmap(lambda k: sampler(k, 8)[0]))(keys)
    for i in range(3):
        np.testing.assert_allclose(batched[i], sampler(keys[i], 8)[0], atol=F32_ATOL)
    np.testing.assert_array_equal(sampler(keys[0], 8)[0], sampler(keys[0], 8)[0])
    assert batched.shape == (3, 8, 2) and batched.dtype == jnp.float32


BAD = [
    (lambda: two_moons(jax.random.key(0), 0), ValueError, "n must be a positive int"),
    (lambda: two_moons(jax.random.key(0), 5.0), TypeError, "n must be a static Python int"),
    (lambda: two_moons(jax.random.key(0), 5, noise=-1.0), ValueError, "noise must be"),
    (lambda: swiss_roll(jax.random.key(0), True), TypeError, "n must be a static"),
    (lambda: eight_gaussians(jax.random.key(0), 4, std=-0.1), ValueError, "std must be"),
    (lambda: gaussian_mixture(jax.random.key(0), 4, jnp.zeros(3)), ValueError,
     "means must have rank 2"),
    (lambda: gaussian_mixture(jax.random.key(0), 4, jnp.zeros((3, 2)), jnp.ones(2)), ValueError,
     r"stds must be a scalar or shaped \[K\] = \(3,\)"),
    (lambda: gaussian_mixture(jax.random.key(0), 4, jnp.zeros((3, 2)), 1.0, jnp.ones(4)),
     ValueError, r"weights must be shaped \[K\] = \(3,\)"),
    (lambda: gaussian_mixture(jax.random.key(0), 4, jnp.zeros((3, 2), jnp.complex64)), TypeError,
     "means must be real"),
    (lambda: jax.jit(lambda k: two_moons(k, -2))(jax.random.key(0)), ValueError, "positive int"),
]


@pytest.mark.parametrize(("fn", "exc", "match"), BAD)
def test_bad_input(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()
