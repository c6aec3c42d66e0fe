"""q_sample, q_posterior and snr: closed forms, diffusers, Monte Carlo and Gaussian algebra."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from jax.experimental import checkify
from jax.test_util import check_grads

from jaxmath.diffusion.process import q_posterior, q_sample, snr
from jaxmath.diffusion.schedules import cosine_schedule, from_betas, linear_schedule
from tests.tolerances import F32_ATOL, F32_RTOL, F64_ATOL, F64_RTOL, GRAD_RTOL

T = 50
N_DRAWS = 100_000   # Monte Carlo draws for the moment checks
Z_MAX = 5.0         # allowed deviation of a Monte Carlo estimate, in standard errors


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


def test_q_sample_matches_closed_form_per_example_timesteps(rng):
    s = cosine_schedule(T)
    x0, eps = rng.normal(size=(4, 2, 3)), rng.normal(size=(4, 2, 3))
    t = np.array([0, 7, 30, T - 1])
    ab = np.asarray(s.alpha_bars, np.float64)[t][:, None, None]
    expected = np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps
    np.testing.assert_allclose(q_sample(s, x0, t, eps), expected, rtol=F32_RTOL, atol=F32_ATOL)
    # A scalar t applies to the whole batch.
    np.testing.assert_allclose(q_sample(s, x0, 7, eps), q_sample(s, x0, np.full(4, 7), eps),
                               rtol=F32_RTOL, atol=F32_ATOL)


def test_q_sample_matches_diffusers_add_noise(diffusers, rng):
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="scaled_linear")
    s = from_betas(ref.betas.numpy())
    x0 = rng.normal(size=(3, 1, 4, 4)).astype(np.float32)
    eps = rng.normal(size=x0.shape).astype(np.float32)
    t = np.array([3, 25, 49])
    expected = ref.add_noise(torch.tensor(x0), torch.tensor(eps), torch.tensor(t)).numpy()
    np.testing.assert_allclose(q_sample(s, x0, t, eps), expected, rtol=F32_RTOL, atol=F32_ATOL)


def test_q_sample_moments_are_those_of_q_xt_given_x0():
    s = linear_schedule(T)
    x0 = jnp.array([-2.0, 0.5])
    t = 30
    eps = jax.random.normal(jax.random.key(0), (N_DRAWS, 2))
    x_t = q_sample(s, jnp.broadcast_to(x0, eps.shape), t, eps)
    ab = float(s.alpha_bars[t])
    mean_se, var_se = np.sqrt((1 - ab) / N_DRAWS), (1 - ab) * np.sqrt(2 / N_DRAWS)
    assert np.all(np.abs(x_t.mean(0) - np.sqrt(ab) * x0) < Z_MAX * mean_se)
    assert np.all(np.abs(x_t.var(0) - (1 - ab)) < Z_MAX * var_se)


def test_q_sample_jit_vmap_grads_and_dtypes(rng, x64):
    s = cosine_schedule(T)
    x0, eps = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    t = np.array([1, 10, 40])
    out = q_sample(s, x0, t, eps)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(jax.jit(q_sample)(s, x0, t, eps), out, rtol=F64_RTOL)
    loop = np.stack([q_sample(s, x0[i:i + 1], t[i], eps[i:i + 1])[0] for i in range(3)])
    vmapped = jax.vmap(lambda x, ti, e: q_sample(s, x[None], ti, e[None])[0])(x0, t, eps)
    np.testing.assert_allclose(vmapped, loop, rtol=F64_RTOL, atol=F64_ATOL)
    np.testing.assert_allclose(out, loop, rtol=F64_RTOL, atol=F64_ATOL)
    check_grads(jax.jit(lambda x, e: q_sample(s, x, t, e)), (x0, eps), order=1, modes=("rev",),
                rtol=GRAD_RTOL)
    assert q_sample(cosine_schedule(T, dtype=jnp.float32), x0.astype(np.float32), t,
                    eps.astype(np.float32)).dtype == jnp.float32


def posterior_by_bayes(ab_prev, alpha, x0, x_t):
    """q(x_{t-1} | x_t, x0) as a product of the two Gaussian factors of Bayes' rule:
    q(x_{t-1} | x0) = N(sqrt(ab_prev) x0, 1 - ab_prev) and
    q(x_t | x_{t-1}) = N(sqrt(alpha) x_{t-1}, 1 - alpha), seen as a function of x_{t-1}."""
    precision = 1 / (1 - ab_prev) + alpha / (1 - alpha)
    var = 1 / precision
    mean = var * (np.sqrt(ab_prev) * x0 / (1 - ab_prev) + np.sqrt(alpha) * x_t / (1 - alpha))
    return mean, var


@given(st.integers(1, T - 1), st.floats(-3, 3), st.floats(-3, 3))
def test_q_posterior_equals_bayes_rule_on_the_gaussians(t, x0, x_t):
    with jax.enable_x64(True):
        s = cosine_schedule(T)
        mean, var, log_var = q_posterior(s, np.array([x0]), np.array([x_t]), t)
    ab, alphas = np.asarray(s.alpha_bars), np.asarray(s.alphas)
    ref_mean, ref_var = posterior_by_bayes(ab[t - 1], alphas[t], x0, x_t)
    np.testing.assert_allclose(mean, [ref_mean], rtol=F64_RTOL, atol=F64_ATOL)
    np.testing.assert_allclose(var, [ref_var], rtol=F64_RTOL)
    np.testing.assert_allclose(log_var, np.log([ref_var]), rtol=F64_RTOL)


def test_q_posterior_moments_by_monte_carlo():
    # Draw (x_{t-1}, x_t) from the forward process given x0 (NumPy), keep the x_t in a thin
    # bin, and compare the mean and variance of the matching x_{t-1} with the posterior.
    s, t, x0, x_t_bin = linear_schedule(T), 20, 1.0, 0.5
    ab_prev, alpha = float(s.alpha_bars[t - 1]), float(s.alphas[t])
    rng = np.random.default_rng(1)
    n = 400_000
    x_prev = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * rng.normal(size=n)
    x_t = np.sqrt(alpha) * x_prev + np.sqrt(1 - alpha) * rng.normal(size=n)
    sel = x_prev[np.abs(x_t - x_t_bin) < 0.01]
    mean, var, _ = q_posterior(s, np.array([[x0]]), np.array([[x_t_bin]]), t)
    mean, var = float(mean[0, 0]), float(var[0, 0])
    assert sel.size > 1000
    assert abs(sel.mean() - mean) < Z_MAX * np.sqrt(var / sel.size)
    assert abs(sel.var() / var - 1) < Z_MAX * np.sqrt(2 / sel.size) + 0.01  # + bin width


def test_q_posterior_at_t0_is_a_point_mass_at_x0(rng):
    s = linear_schedule(T)
    x0, x_t = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    mean, var, log_var = q_posterior(s, x0, x_t, 0)
    np.testing.assert_allclose(mean, x0, rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_array_equal(var, 0)
    np.testing.assert_allclose(log_var, np.log(s.posterior_variance[1]), rtol=F32_RTOL)


def test_q_posterior_shapes_jit_vmap_grads(rng, x64):
    s = cosine_schedule(T)
    x0, x_t = rng.normal(size=(3, 2, 2)), rng.normal(size=(3, 2, 2))
    t = np.array([0, 5, 49])
    mean, var, log_var = q_posterior(s, x0, x_t, t)
    assert mean.shape == var.shape == log_var.shape == (3, 2, 2)
    assert mean.dtype == jnp.float64
    for a, b in zip(jax.jit(q_posterior)(s, x0, x_t, t), (mean, var, log_var), strict=True):
        np.testing.assert_allclose(a, b, rtol=F64_RTOL, atol=F64_ATOL)
    vmapped = jax.vmap(lambda a, b, ti: q_posterior(s, a, b, ti)[0])(x0, x_t, t)
    np.testing.assert_allclose(vmapped, mean, rtol=F64_RTOL, atol=F64_ATOL)
    check_grads(jax.jit(lambda a, b: q_posterior(s, a, b, t)[0]), (x0, x_t), order=1,
                modes=("rev",), rtol=GRAD_RTOL)


def test_snr_closed_form_and_jit():
    s = from_betas(np.array([0.1, 0.5, 1.0]))
    ab = np.cumprod([0.9, 0.5, 0.0])
    np.testing.assert_allclose(snr(s, np.arange(3)), ab / (1 - ab), rtol=F32_RTOL)
    np.testing.assert_allclose(jax.jit(snr)(s, jnp.array([1])), [0.45 / 0.55], rtol=F32_RTOL)
    assert snr(s, 0).shape == ()


def _checkify_traced_t():
    s = linear_schedule(T)
    fn = checkify.checkify(jax.jit(lambda t: q_sample(s, jnp.ones(2), t, jnp.ones(2),
                                                     validate=True)))
    err, _ = fn(jnp.array(T))
    err.throw()


S = linear_schedule(T)
X = np.ones((2, 3))


@pytest.mark.parametrize("call, exc, match", [
    (lambda: q_sample(S, X, np.array([0, T]), X), ValueError,
     r"t must lie in \[0, 50\) for a schedule of 50 timesteps, got values from 0 to 50"),
    (lambda: q_sample(S, X, -1, X), ValueError, r"t must lie in \[0, 50\)"),
    (lambda: q_sample(S, X, 1.0, X), TypeError, r"t must have an integer dtype"),
    (lambda: q_sample(S, X, np.array([1, 2, 3]), X), ValueError,
     r"t must be a scalar or have shape \[B\] for x0 of shape \[B, ...\], got t.shape=\(3,\)"),
    (lambda: q_sample(S, X, np.zeros((2, 1), int), X), ValueError, r"t must have rank 0 or 1"),
    (lambda: q_sample(S, X, 0, np.ones((2, 2))), ValueError,
     r"noise and x0 must have the same shape"),
    (lambda: q_posterior(S, X, np.ones((3, 2)), 1), ValueError,
     r"x0 and x_t must have the same shape"),
    (lambda: q_posterior(S, X, X, T), ValueError, r"t must lie in \[0, 50\)"),
    (lambda: snr(S, np.array([[1]])), ValueError, r"t must have rank 0 or 1"),
    (lambda: snr(S, 50), ValueError, r"t must lie in \[0, 50\)"),
    (lambda: jax.jit(lambda t: q_sample(S, X, t, X))(jnp.array([1.0, 2.0])), TypeError,
     r"t must have an integer dtype"),
    (lambda: jax.jit(lambda x: q_sample(S, x, T, x))(X), ValueError,
     r"t must lie in \[0, 50\)"),  # a Python int is known at trace time: checked in jit
    (_checkify_traced_t, checkify.JaxRuntimeError, r"t must lie in \[0, 50\)"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
