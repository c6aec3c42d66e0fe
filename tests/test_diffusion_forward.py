"""forward_diffuse against the seed's PyTorch snippet, the closed form and Monte Carlo."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from jax.experimental import checkify
from jax.test_util import check_grads

from jaxmath.diffusion import forward_diffuse
from tests.tolerances import F32_ATOL, F32_RTOL, F64_ATOL, F64_RTOL, GRAD_RTOL

N_DRAWS = 200_000   # Monte Carlo draws for the moment checks
Z_MAX = 5.0         # allowed deviation of a Monte Carlo estimate, in standard errors


def test_seed_pytorch_snippet_with_the_same_noise():
    torch.manual_seed(0)
    x_0 = torch.tensor([1.0])
    alpha_t = 0.9
    noise = torch.randn_like(x_0)
    x_t = torch.sqrt(torch.tensor(alpha_t)) * x_0 + torch.sqrt(torch.tensor(1 - alpha_t)) * noise
    out = forward_diffuse(x_0.numpy(), alpha_t, noise.numpy())
    np.testing.assert_allclose(out, x_t.numpy(), rtol=F32_RTOL, atol=F32_ATOL)


@given(hnp.arrays(np.float64, hnp.array_shapes(max_dims=2, max_side=3),
                  elements=st.floats(-10, 10)),
       st.floats(0.0, 1.0), st.integers(0, 2**31 - 1))
def test_matches_closed_form(x0, alpha_bar, seed):
    noise = np.random.default_rng(seed).normal(size=x0.shape)
    out = forward_diffuse(x0.astype(np.float32), alpha_bar, noise.astype(np.float32))
    ref = np.sqrt(alpha_bar) * x0 + np.sqrt(1 - alpha_bar) * noise
    np.testing.assert_allclose(out, ref, rtol=F32_RTOL, atol=F32_ATOL * 10)


def test_endpoints_return_x0_and_noise(rng):
    x0, eps = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    np.testing.assert_array_equal(forward_diffuse(x0, 1.0, eps), x0.astype(np.float32))
    np.testing.assert_array_equal(forward_diffuse(x0, 0.0, eps), eps.astype(np.float32))


def test_alpha_bar_broadcasts_from_the_batch_axis(rng):
    x0, eps = rng.normal(size=(3, 2, 4, 5)), rng.normal(size=(3, 2, 4, 5))
    alpha_bar = np.array([0.1, 0.5, 0.99])
    out = forward_diffuse(x0, alpha_bar, eps)
    loop = np.stack([forward_diffuse(x0[i], alpha_bar[i], eps[i]) for i in range(3)])
    np.testing.assert_allclose(out, loop, rtol=F32_RTOL, atol=F32_ATOL)
    # The same as diffusers' alpha_bar[:, None, None, None] and as a [B, 1] prefix.
    np.testing.assert_allclose(forward_diffuse(x0, alpha_bar[:, None, None, None], eps), out,
                               rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(forward_diffuse(x0, alpha_bar[:, None], eps), out,
                               rtol=F32_RTOL, atol=F32_ATOL)
    # Per-(batch, channel) values: [B, C] aligns with the first two axes.
    per_channel = rng.uniform(size=(3, 2))
    np.testing.assert_allclose(
        forward_diffuse(x0, per_channel, eps),
        np.sqrt(per_channel)[..., None, None] * x0
        + np.sqrt(1 - per_channel)[..., None, None] * eps, rtol=F32_RTOL, atol=F32_ATOL)


def test_moments_of_x_t_are_those_of_q_xt_given_x0():
    x0 = jnp.array([-2.0, 0.0, 1.5])
    alpha_bar = jnp.array(0.3)
    eps = jax.random.normal(jax.random.key(0), (N_DRAWS, 3))
    x_t = forward_diffuse(jnp.broadcast_to(x0, eps.shape), alpha_bar, eps)
    var = 1 - alpha_bar
    mean_se = np.sqrt(var / N_DRAWS)
    var_se = var * np.sqrt(2 / N_DRAWS)
    assert np.all(np.abs(x_t.mean(0) - np.sqrt(alpha_bar) * x0) < Z_MAX * mean_se)
    assert np.all(np.abs(x_t.var(0) - var) < Z_MAX * var_se)


def test_alpha_bar_is_the_cumulative_product_of_the_steps():
    # T single steps x_t = sqrt(alpha_t) x_{t-1} + sqrt(1 - alpha_t) eps_t compose into one
    # jump with alpha_bar_T = prod(alpha_t), not alpha_T (DDPM eq. 4).
    alphas = 1.0 - jnp.linspace(1e-2, 0.2, 20)
    x0 = jnp.full((N_DRAWS // 4,), 1.0)

    def step(x, key_alpha):
        key, alpha = key_alpha
        return forward_diffuse(x, alpha, jax.random.normal(key, x.shape)), None

    keys = jax.random.split(jax.random.key(1), alphas.shape[0])
    x_T, _ = jax.lax.scan(step, x0, (keys, alphas))
    alpha_bar = jnp.prod(alphas)
    n = x0.shape[0]
    assert abs(x_T.mean() - jnp.sqrt(alpha_bar)) < Z_MAX * np.sqrt((1 - alpha_bar) / n)
    assert abs(x_T.var() - (1 - alpha_bar)) < Z_MAX * (1 - alpha_bar) * np.sqrt(2 / n)
    assert abs(x_T.mean() - jnp.sqrt(alphas[-1])) > 0.5  # the seed's alpha_t would be wrong


def test_jit_vmap_and_dtypes(rng, x64):
    x0, eps = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    alpha_bar = rng.uniform(size=4)
    out = forward_diffuse(x0, alpha_bar, eps)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(jax.jit(forward_diffuse)(x0, alpha_bar, eps), out,
                               rtol=F64_RTOL, atol=F64_ATOL)
    vmapped = jax.vmap(forward_diffuse)(x0, alpha_bar, eps)
    loop = np.stack([forward_diffuse(x0[i], alpha_bar[i], eps[i]) for i in range(4)])
    np.testing.assert_allclose(vmapped, loop, rtol=F64_RTOL, atol=F64_ATOL)
    np.testing.assert_allclose(out, loop, rtol=F64_RTOL, atol=F64_ATOL)
    assert forward_diffuse(x0.astype(np.float32), 0.5, eps.astype(np.float32)).dtype == \
        jnp.float32
    assert forward_diffuse(jnp.ones(2, jnp.bfloat16), 0.5, jnp.ones(2, jnp.bfloat16)).dtype == \
        jnp.bfloat16


def test_gradients_match_closed_form_and_torch(rng, x64):
    x0, eps = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
    alpha_bar = rng.uniform(0.05, 0.95, size=3)
    check_grads(jax.jit(forward_diffuse), (x0, alpha_bar, eps), order=1, modes=("fwd", "rev"),
                rtol=GRAD_RTOL)

    def loss(x0, ab, eps):
        return jnp.sum(forward_diffuse(x0, ab, eps) ** 2)

    grads = jax.grad(loss, argnums=(0, 1, 2))(x0, alpha_bar, eps)
    tx = torch.tensor(x0, requires_grad=True)
    ta = torch.tensor(alpha_bar, requires_grad=True)
    te = torch.tensor(eps, requires_grad=True)
    a = ta[:, None]
    ((torch.sqrt(a) * tx + torch.sqrt(1 - a) * te) ** 2).sum().backward()
    for g, t in zip(grads, (tx, ta, te), strict=True):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=F64_RTOL, atol=F64_ATOL)


def test_gradients_at_the_endpoints_are_finite():
    x0, eps = jnp.array([0.0, 1.0, -2.0]), jnp.array([0.5, 0.0, 1.0])

    jac = jax.jit(jax.jacrev(lambda a: forward_diffuse(x0, a, eps)))
    grad = jax.jit(jax.grad(lambda a: jnp.sum(forward_diffuse(x0, a, eps))))
    for ab in (0.0, 1.0):
        g = jac(jnp.array(ab))
        assert np.all(np.isfinite(g))
        assert np.all(np.isfinite(grad(jnp.array(ab))))
        # Where the factor of the unbounded term is zero, only the finite term remains
        # (never 0 * inf = NaN): -eps / 2 at alpha_bar = 0, x0 / 2 at alpha_bar = 1.
        if ab == 0.0:
            np.testing.assert_array_equal(g[x0 == 0], -eps[x0 == 0] / 2)
        else:
            np.testing.assert_array_equal(g[eps == 0], x0[eps == 0] / 2)
    # The gradient with respect to x0 and noise is sqrt(alpha_bar), sqrt(1 - alpha_bar).
    gx, ge = jax.grad(lambda x, e: jnp.sum(forward_diffuse(x, 0.0, e)), (0, 1))(x0, eps)
    np.testing.assert_array_equal(gx, 0.0)
    np.testing.assert_array_equal(ge, 1.0)
    # Just inside the interval the exact derivative is used.
    ab = 0.25
    g = jac(jnp.array(ab))
    np.testing.assert_allclose(g, x0 / (2 * np.sqrt(ab)) - eps / (2 * np.sqrt(1 - ab)),
                               rtol=F32_RTOL, atol=F32_ATOL)


def test_validate_reports_under_jit_with_checkify():
    f = checkify.checkify(jax.jit(lambda a: forward_diffuse(jnp.ones(2), a, jnp.ones(2),
                                                            validate=True)))
    err, _ = f(jnp.array(1.5))
    with pytest.raises(checkify.JaxRuntimeError, match=r"alpha_bar must lie in \[0, 1\]"):
        err.throw()
    err, out = f(jnp.array(0.5))
    err.throw()  # no error for a valid value
    np.testing.assert_allclose(out, np.sqrt(0.5) * 2, rtol=F32_RTOL)


ONES = jnp.ones((4, 2))
BAD_INPUTS = [
    (lambda: forward_diffuse(ONES, 0.5, jnp.ones((4, 3))), ValueError,
     r"noise and x0 must have the same shape.*\(4, 3\)"),
    (lambda: forward_diffuse(ONES, 0.5, jnp.ones(2)), ValueError, "same shape"),
    (lambda: forward_diffuse(ONES, jnp.ones(2) * 0.5, ONES), ValueError,
     r"leading axes of x0.*alpha_bar.shape=\(2,\)"),
    (lambda: forward_diffuse(ONES, jnp.ones((4, 2, 1)) * 0.5, ONES), ValueError,
     "leading axes of x0"),
    (lambda: forward_diffuse(ONES, jnp.full(2, 0.5), ONES), ValueError, "e.g. \\[B\\]"),
    (lambda: forward_diffuse(ONES * 1j, 0.5, ONES), TypeError, "x0 must be real"),
    (lambda: forward_diffuse(ONES, "0.5", ONES), TypeError, "alpha_bar"),
    (lambda: forward_diffuse(ONES, 1.5, ONES, validate=True), ValueError,
     r"alpha_bar must lie in \[0, 1\]"),
    (lambda: forward_diffuse(ONES, jnp.array([0.5, 0.5, -0.1, 0.5]), ONES, validate=True),
     ValueError, r"alpha_bar must lie in \[0, 1\].*\(4,\)"),
    (lambda: forward_diffuse(ONES, jnp.nan, ONES, validate=True), ValueError, "alpha_bar"),
    (lambda: jax.jit(forward_diffuse)(ONES, 0.5, jnp.ones((2, 4))), ValueError, "same shape"),
]


@pytest.mark.parametrize("call,exc,msg", BAD_INPUTS)
def test_bad_inputs(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()
