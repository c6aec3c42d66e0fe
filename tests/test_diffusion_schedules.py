"""Noise schedules against the published formulas (NumPy, float64) and diffusers' schedulers."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.experimental import checkify
from jax.test_util import check_grads
from scipy.special import expit

from jaxmath.diffusion.schedules import (
    SCHEDULES,
    NoiseSchedule,
    cosine_schedule,
    from_betas,
    linear_schedule,
    make_schedule,
    scaled_linear_schedule,
    sigmoid_schedule,
)
from tests.tolerances import F32_ATOL, F32_RTOL, F64_ATOL, F64_RTOL, GRAD_RTOL

T = 50  # one length for most tests: each new length compiles the schedule again

# diffusers' beta_schedule name for each jaxmath constructor.
DIFFUSERS_NAMES = {"linear": "linear", "scaled_linear": "scaled_linear",
                   "cosine": "squaredcos_cap_v2", "sigmoid": "sigmoid"}


def published_betas(name, T, beta_start=1e-4, beta_end=0.02, s=0.008, max_beta=0.999):
    """The formulas as written in the papers (and diffusers), in float64."""
    if name == "linear":  # Ho et al. (2020)
        return np.linspace(beta_start, beta_end, T)
    if name == "scaled_linear":  # latent diffusion
        return np.linspace(beta_start**0.5, beta_end**0.5, T) ** 2
    if name == "cosine":  # Nichol & Dhariwal (2021), eq. 17 and the 0.999 cap
        def f(t):
            return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
        return np.array([min(1 - f(t + 1) / f(t), max_beta) for t in range(T)])
    return expit(np.linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start  # sigmoid


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


@pytest.mark.parametrize("name", list(DIFFUSERS_NAMES))
@pytest.mark.parametrize("T_", [1, T])
def test_betas_match_the_published_formula(name, T_, x64):
    betas = np.asarray(make_schedule(name, T_).betas)
    assert betas.dtype == np.float64
    np.testing.assert_allclose(betas, published_betas(name, T_), rtol=F64_RTOL, atol=F64_ATOL)


@pytest.mark.parametrize("name", ["linear", "scaled_linear", "sigmoid"])
def test_custom_beta_range(name, x64):
    out = make_schedule(name, T, beta_start=0.00085, beta_end=0.012).betas
    np.testing.assert_allclose(out, published_betas(name, T, 0.00085, 0.012), rtol=F64_RTOL)


def test_cosine_arguments_and_float32_precision():
    with jax.enable_x64(True):
        np.testing.assert_allclose(cosine_schedule(T, s=0.02, max_beta=0.5).betas,
                                   published_betas("cosine", T, s=0.02, max_beta=0.5),
                                   rtol=F64_RTOL)
    # float32 keeps full relative precision down to beta_0 ~ 4e-5 (no cancellation).
    np.testing.assert_allclose(cosine_schedule(1000).betas, published_betas("cosine", 1000),
                               rtol=F32_RTOL)


@pytest.mark.parametrize("name", list(DIFFUSERS_NAMES))
@pytest.mark.parametrize("T_", [T, 1000])
def test_matches_diffusers(diffusers, name, T_):
    ref = diffusers.DDPMScheduler(num_train_timesteps=T_, beta_schedule=DIFFUSERS_NAMES[name])
    s = make_schedule(name, T_)
    assert s.betas.dtype == jnp.float32
    np.testing.assert_allclose(s.betas, ref.betas.numpy(), rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(s.alphas, ref.alphas.numpy(), rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(s.alpha_bars, ref.alphas_cumprod.numpy(), rtol=F32_RTOL,
                               atol=F32_ATOL)


@given(st.lists(st.floats(1e-4, 0.5), min_size=12, max_size=12))
def test_derived_arrays_match_their_definitions(betas):
    with jax.enable_x64(True):
        s = from_betas(np.array(betas))
    b = np.array(betas)
    ab = np.cumprod(1 - b)
    ab_prev = np.append(1.0, ab[:-1])
    pv = b * (1 - ab_prev) / (1 - ab)
    expected = {
        "alphas": 1 - b, "alpha_bars": ab, "log_alpha_bars": np.log(ab),
        "alpha_bars_prev": ab_prev, "sqrt_alpha_bars": np.sqrt(ab),
        "sqrt_one_minus_alpha_bars": np.sqrt(1 - ab), "posterior_variance": pv,
        "posterior_log_variance_clipped": np.log(np.append(pv[1], pv[1:])),
        "posterior_mean_coef1": b * np.sqrt(ab_prev) / (1 - ab),
        "posterior_mean_coef2": (1 - ab_prev) * np.sqrt(1 - b) / (1 - ab),
        "snr": ab / (1 - ab), "log_snr": np.log(ab / (1 - ab)),
    }
    for field, value in expected.items():
        np.testing.assert_allclose(getattr(s, field), value, rtol=F64_RTOL, atol=F64_ATOL,
                                   err_msg=field)
    assert s.num_timesteps == len(betas)
    assert np.all(np.diff(s.snr) < 0)  # the SNR decreases with t


def test_one_minus_alpha_bar_keeps_precision_near_t0():
    # 1 - alpha_bar_0 = beta_0 = 1e-4 exactly; 1 - float32(1 - 1e-4) would be off by 1.7e-4.
    s = linear_schedule(1000)
    np.testing.assert_allclose(s.sqrt_one_minus_alpha_bars[0] ** 2, 1e-4, rtol=F32_RTOL)
    np.testing.assert_allclose(s.posterior_mean_coef1[0], 1.0, rtol=F32_RTOL)
    np.testing.assert_allclose(s.posterior_mean_coef2[0], 0.0, atol=F32_ATOL)


def test_zero_terminal_snr_and_single_step():
    s = from_betas(np.array([0.1, 0.5, 1.0]))
    assert float(s.alpha_bars[-1]) == 0 and float(s.snr[-1]) == 0
    assert float(s.log_snr[-1]) == -np.inf
    for field in ("posterior_variance", "posterior_log_variance_clipped", "snr",
                  "posterior_mean_coef1", "posterior_mean_coef2", "sqrt_one_minus_alpha_bars"):
        assert np.all(np.isfinite(getattr(s, field))), field
    one = from_betas(np.array([0.3]))
    np.testing.assert_allclose(one.posterior_log_variance_clipped, np.log([0.3]), rtol=F32_RTOL)
    assert linear_schedule(1).betas.tolist() == pytest.approx([1e-4])


def test_make_schedule_names_and_alias():
    assert set(SCHEDULES) == {"linear", "scaled_linear", "cosine", "squaredcos_cap_v2",
                              "sigmoid"}
    for name, fn in [("linear", linear_schedule), ("scaled_linear", scaled_linear_schedule),
                     ("squaredcos_cap_v2", cosine_schedule), ("sigmoid", sigmoid_schedule)]:
        np.testing.assert_array_equal(make_schedule(name, T).betas, fn(T).betas)


def test_dtypes(x64):
    assert linear_schedule(T).betas.dtype == jnp.float64
    s32 = cosine_schedule(T, dtype=jnp.float32)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(s32))
    assert from_betas(np.array([0.1, 0.2], np.float32)).alpha_bars.dtype == jnp.float32
    assert from_betas(jnp.array([0.1, 0.2], jnp.bfloat16)).snr.dtype == jnp.bfloat16


def test_is_a_pytree_with_static_num_timesteps():
    s = linear_schedule(T)
    leaves, treedef = jax.tree.flatten(s)
    assert len(leaves) == 13 and all(leaf.shape == (T,) for leaf in leaves)
    assert jax.tree.unflatten(treedef, leaves).num_timesteps == T

    @jax.jit
    def last_alpha_bar(schedule):
        assert isinstance(schedule.num_timesteps, int)  # static under jit
        return schedule.alpha_bars[schedule.num_timesteps - 1]

    np.testing.assert_allclose(last_alpha_bar(s), s.alpha_bars[-1], rtol=F32_RTOL)


@pytest.mark.parametrize("fn", [linear_schedule, scaled_linear_schedule, sigmoid_schedule])
def test_jit_and_vmap_over_beta_end(fn):
    ends = jnp.array([0.01, 0.02, 0.04])
    batched = jax.vmap(lambda e: fn(T, beta_end=e))(ends)
    assert batched.num_timesteps == T and batched.betas.shape == (3, T)
    for i, e in enumerate(ends):
        ref = fn(T, beta_end=float(e))
        np.testing.assert_allclose(batched.alpha_bars[i], ref.alpha_bars, rtol=F32_RTOL)
    jitted = jax.jit(fn, static_argnums=0)(T, 1e-4, 0.02)
    np.testing.assert_allclose(jitted.snr, fn(T).snr, rtol=F32_RTOL)


def test_gradients(x64):
    # Both go through from_betas, so its derived arrays are differentiated too.
    check_grads(jax.jit(lambda e: linear_schedule(T, beta_end=e).alpha_bars), (0.02,),
                order=1, modes=("rev",), rtol=GRAD_RTOL)
    check_grads(jax.jit(lambda s: cosine_schedule(T, s=s).log_snr), (0.008,), order=1,
                modes=("rev",), rtol=GRAD_RTOL)


def _jit_bad_betas():
    return jax.jit(lambda: from_betas(jnp.ones((2, 2)) * 0.1))()


def _checkify_traced_betas():
    fn = checkify.checkify(jax.jit(lambda b: from_betas(b, validate=True).betas))
    err, _ = fn(jnp.array([0.1, 1.5]))
    err.throw()


@pytest.mark.parametrize("call, exc, match", [
    (lambda: make_schedule("quadratic", 10), ValueError,
     r"schedule name must be one of \('linear', 'scaled_linear', 'cosine'"),
    (lambda: make_schedule("linear", 10, s=0.1), TypeError, r"s"),
    (lambda: linear_schedule(0), ValueError, r"num_timesteps must be >= 1, got 0"),
    (lambda: cosine_schedule(10.0), TypeError, r"num_timesteps must be a Python int"),
    (lambda: sigmoid_schedule(True), TypeError, r"num_timesteps must be a Python int"),
    (lambda: linear_schedule(10, dtype=jnp.int32), TypeError, r"dtype must be a floating"),
    (lambda: from_betas(np.array([0.1, 1.5])), ValueError, r"betas must lie in \(0, 1\]"),
    (lambda: from_betas(np.array([0.0, 0.1])), ValueError, r"betas must lie in \(0, 1\]"),
    (lambda: from_betas(np.array([[0.1]])), ValueError, r"betas must have rank 1"),
    (lambda: from_betas(np.array([])), ValueError, r"betas must not be empty"),
    (lambda: from_betas(np.array([0.1j])), TypeError, r"betas must be real"),
    (lambda: jax.jit(lambda: from_betas(np.array([0.1, 1.5])).betas)(), ValueError,
     r"betas must lie in \(0, 1\], got values from 0.1 to 1.5"),
    (_jit_bad_betas, ValueError, r"betas must have rank 1, got shape \(2, 2\)"),
    (_checkify_traced_betas, checkify.JaxRuntimeError, r"betas must lie in \(0, 1\]"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_schedule_is_immutable():
    s = linear_schedule(T)
    assert isinstance(s, NoiseSchedule)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.betas = jnp.zeros(T)
