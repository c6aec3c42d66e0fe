"""DDPM and DDIM: against diffusers' schedulers (float64), oracle denoisers and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads

from jaxmath.diffusion.samplers import (
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    ddpm_sample,
    ddpm_step,
)
from jaxmath.diffusion.schedules import cosine_schedule, from_betas, linear_schedule
from tests.tolerances import F32_ATOL, F32_LOOSE, F64_ATOL, F64_RTOL, GRAD_RTOL

T = 50
Z_MAX = 5.0  # allowed deviation of a Monte Carlo estimate, in standard errors
DIFFUSERS_MIN_STD = 1e-10  # sqrt of the 1e-20 floor of DDPMScheduler's variance


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


def float64_scheduler(cls, **kwargs):
    """A diffusers scheduler whose arithmetic runs in float64 (its betas stay float32)."""
    sched = cls(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", **kwargs)
    sched.alphas_cumprod = torch.cumprod(1 - sched.betas.double(), 0)
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = (torch.tensor(1.0, dtype=torch.float64)
                                     if sched.config.set_alpha_to_one
                                     else sched.alphas_cumprod[0])
    return sched, from_betas(sched.betas.numpy().astype(np.float64))


def model_jax(x, t):
    return jnp.tanh(0.5 * x) * (1 + 0.01 * t.reshape((-1,) + (1,) * (x.ndim - 1)))


def model_torch(x, t):
    return torch.tanh(0.5 * x) * (1 + 0.01 * int(t))


# ----- timesteps -----

@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
@pytest.mark.parametrize("T_, n", [(50, 10), (50, 7), (1000, 50), (1000, 3), (100, 30),
                                   (10, 10), (1, 1)])
def test_timesteps_match_diffusers(diffusers, spacing, T_, n):
    ref = diffusers.DDIMScheduler(num_train_timesteps=T_, timestep_spacing=spacing)
    ref.set_timesteps(n)
    np.testing.assert_array_equal(ddim_timesteps(T_, n, spacing), ref.timesteps.numpy())


def test_leading_steps_offset_matches_diffusers(diffusers):
    ref = diffusers.DDIMScheduler(num_train_timesteps=1000, steps_offset=1)
    ref.set_timesteps(50)
    np.testing.assert_array_equal(ddim_timesteps(1000, 50, "leading", 1), ref.timesteps.numpy())


def test_trailing_where_diffusers_float_arange_goes_wrong(diffusers):
    ref = diffusers.DDIMScheduler(num_train_timesteps=15, timestep_spacing="trailing")
    ref.set_timesteps(13)
    assert len(ref.timesteps) == 14 and int(ref.timesteps[-1]) == -1  # diffusers: n + 1
    ours = ddim_timesteps(15, 13, "trailing")
    assert len(ours) == 13 and ours[-1] == 0
    # round((n - i) T / n) - 1 exactly: T = 7, n = 6, i = 3 is round(3.5) - 1 = 3.
    assert ddim_timesteps(7, 6, "trailing").tolist() == [6, 5, 4, 3, 1, 0]


@pytest.mark.parametrize("T_, n", [(50, 7), (1000, 10), (37, 37), (100, 1)])
@pytest.mark.parametrize("spacing", ["leading", "linspace", "trailing"])
def test_timesteps_are_distinct_descending_and_in_range(T_, n, spacing):
    ts = ddim_timesteps(T_, n, spacing)
    assert len(ts) == n and ts.dtype == np.int64
    assert np.all(np.diff(ts) < 0) and ts[0] < T_ and ts[-1] >= 0


# ----- single steps against diffusers (float64) -----

@pytest.mark.parametrize("variance_type, prediction_type, clip_sample", [
    ("fixed_small", "epsilon", False), ("fixed_large", "epsilon", True),
    ("fixed_small", "sample", True), ("fixed_large", "sample", False),
    ("fixed_small", "v_prediction", True), ("fixed_large", "v_prediction", False)])
def test_ddpm_step_matches_diffusers(diffusers, x64, variance_type, prediction_type,
                                     clip_sample):
    ref, s = float64_scheduler(diffusers.DDPMScheduler, variance_type=variance_type,
                               prediction_type=prediction_type, clip_sample=clip_sample,
                               clip_sample_range=0.8)
    rng = np.random.default_rng(0)
    x, out = 2 * rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    for t in [0, 1, 17, T - 1]:
        expected = ref.step(torch.tensor(out), t, torch.tensor(x),
                            generator=torch.Generator().manual_seed(t))
        # diffusers draws torch.randn(shape, generator) for the noise: draw it again.
        z = torch.randn((2, 3), generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        x_prev, x0 = ddpm_step(s, out, x, t, z.numpy(), prediction_type=prediction_type,
                               variance_type=variance_type, clip_sample=clip_sample,
                               clip_sample_range=0.8)
        np.testing.assert_allclose(x_prev, expected.prev_sample.numpy(), rtol=F64_RTOL,
                                   atol=F64_ATOL)
        np.testing.assert_allclose(x0, expected.pred_original_sample.numpy(), rtol=F64_RTOL)
        if t > 0:  # the step's variance: diffusers' _get_variance is beta~_t or beta_t
            var = (s.posterior_variance if variance_type == "fixed_small" else s.betas)[t]
            np.testing.assert_allclose(var, ref._get_variance(t).item(), rtol=F64_RTOL)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("prediction_type, clip_sample, set_alpha_to_one", [
    ("epsilon", False, True), ("sample", True, False), ("v_prediction", False, False)])
def test_ddim_step_matches_diffusers(diffusers, x64, eta, prediction_type, clip_sample,
                                     set_alpha_to_one):
    ref, s = float64_scheduler(diffusers.DDIMScheduler, prediction_type=prediction_type,
                               clip_sample=clip_sample, set_alpha_to_one=set_alpha_to_one)
    ref.set_timesteps(10)  # leading: diffusers' previous timestep t - 5 is the right one
    rng = np.random.default_rng(1)
    x, out = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    for t, t_prev in zip(ddim_timesteps(T, 10), np.append(ddim_timesteps(T, 10)[1:], -1),
                         strict=True):
        z = rng.normal(size=(2, 3))
        expected = ref.step(torch.tensor(out), int(t), torch.tensor(x), eta=eta,
                            variance_noise=torch.tensor(z))
        x_prev, x0 = ddim_step(s, out, x, int(t), int(t_prev), z, eta=eta,
                               prediction_type=prediction_type, clip_sample=clip_sample,
                               set_alpha_to_one=set_alpha_to_one)
        np.testing.assert_allclose(x_prev, expected.prev_sample.numpy(), rtol=F64_RTOL,
                                   atol=F64_ATOL)
        np.testing.assert_allclose(x0, expected.pred_original_sample.numpy(), rtol=F64_RTOL,
                                   atol=F64_ATOL)


@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
def test_ddim_eta1_is_diffusers_strided_ddpm(diffusers, x64, spacing):
    # DDPMScheduler.set_timesteps steps to the next entry of the sequence (the right
    # previous timestep); DDIM with eta = 1 is the same ancestral step.
    ref, s = float64_scheduler(diffusers.DDPMScheduler, timestep_spacing=spacing,
                               clip_sample=False)
    ref.set_timesteps(7)
    ts = ddim_timesteps(T, 7, spacing)
    np.testing.assert_array_equal(ts, ref.timesteps.numpy())
    rng = np.random.default_rng(2)
    x, out = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    for i, t in enumerate(ts):
        t_prev = int(ts[i + 1]) if i + 1 < len(ts) else -1
        expected = ref.step(torch.tensor(out), int(t), torch.tensor(x),
                            generator=torch.Generator().manual_seed(i)).prev_sample.numpy()
        z = torch.randn((2, 3), generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        x_prev, _ = ddim_step(s, out, x, int(t), t_prev, z.numpy(), eta=1.0)
        # diffusers floors the variance at 1e-20, so it adds 1e-10 * z at the trailing
        # sequence's last step (t > 0, to alpha_bar = 1), where DDIM's sigma is 0.
        np.testing.assert_allclose(x_prev, expected, rtol=F64_RTOL,
                                   atol=F64_ATOL + DIFFUSERS_MIN_STD * np.abs(z.numpy()).max())


# ----- whole samplers -----

@pytest.mark.parametrize("spacing, prediction_type, clip_sample, n", [
    ("leading", "epsilon", False, 10), ("leading", "v_prediction", True, 7),
    ("trailing", "sample", False, 10), ("trailing", "epsilon", True, 25)])
def test_ddim_sample_matches_diffusers_loop(diffusers, x64, spacing, prediction_type,
                                            clip_sample, n):
    # leading, and trailing with n dividing T, are where diffusers' previous timestep is right.
    ref, s = float64_scheduler(diffusers.DDIMScheduler, timestep_spacing=spacing,
                               prediction_type=prediction_type, clip_sample=clip_sample)
    ref.set_timesteps(n)
    x_T = np.random.default_rng(3).normal(size=(3, 2))
    x = torch.tensor(x_T)
    for t in ref.timesteps:
        x = ref.step(model_torch(x, t), int(t), x, eta=0.0).prev_sample
    out = ddim_sample(model_jax, s, jax.random.key(0), None, x_T=x_T, num_inference_steps=n,
                      timestep_spacing=spacing, prediction_type=prediction_type,
                      clip_sample=clip_sample)
    np.testing.assert_allclose(out, x.numpy(), rtol=F64_RTOL, atol=F64_ATOL)


def test_linspace_previous_timestep_is_the_next_entry_not_diffusers(diffusers):
    ts = ddim_timesteps(T, 10, "linspace")  # 49, 44, ..., 5, 0
    diffusers_prev = ts - T // 10  # what diffusers' DDIMScheduler.step uses
    assert not np.array_equal(diffusers_prev[:-1], ts[1:])
    # ddim_sample equals a loop of ddim_step over consecutive entries, then -1.
    s, x_T = cosine_schedule(T), np.random.default_rng(4).normal(size=(2, 2))
    step = jax.jit(lambda x, t, t_prev: ddim_step(s, model_jax(x, jnp.full(2, t)), x, t,
                                                  t_prev)[0])
    x = jnp.asarray(x_T, jnp.float32)
    for t, t_prev in zip(ts, np.append(ts[1:], -1), strict=True):
        x = step(x, t, t_prev)
    out = ddim_sample(model_jax, s, jax.random.key(0), None, x_T=x_T, num_inference_steps=10,
                      timestep_spacing="linspace")
    np.testing.assert_allclose(out, x, rtol=F32_LOOSE, atol=F32_ATOL)


def gaussian_oracle(s):
    """The exact epsilon-predictor for data x0 ~ N(0, I): E[eps | x_t] = sqrt(1 - ab_t) x_t."""
    return lambda x, t: s.sqrt_one_minus_alpha_bars[t][:, None] * x


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_ddim_with_gaussian_oracle_is_the_closed_form_product(spacing, x64):
    # For N(0, I) data and the exact denoiser each DDIM (eta = 0) step multiplies x by
    # sqrt(ab_prev ab_t) + sqrt((1 - ab_prev)(1 - ab_t)): the product pins the pairs
    # (t, t_prev) that the sampler visits.
    s = cosine_schedule(T)
    ab = np.asarray(s.alpha_bars)
    ts = ddim_timesteps(T, 8, spacing)
    ab_prev = np.append(ab[ts[1:]], 1.0)
    factor = np.prod(np.sqrt(ab_prev * ab[ts]) + np.sqrt((1 - ab_prev) * (1 - ab[ts])))
    x_T = np.random.default_rng(5).normal(size=(4, 1))
    out = ddim_sample(gaussian_oracle(s), s, jax.random.key(0), None, x_T=x_T,
                      num_inference_steps=8, timestep_spacing=spacing)
    np.testing.assert_allclose(out, factor * x_T, rtol=F64_RTOL)


@pytest.mark.parametrize("variance_type", ["fixed_large", "fixed_small"])
def test_ddpm_with_gaussian_oracle_has_the_predicted_variance(variance_type):
    # For N(0, 1) data and the exact denoiser, x_{t-1} = sqrt(alpha_t) x_t + sigma_t z, so
    # Var(x_{t-1}) = alpha_t Var(x_t) + sigma_t^2 (no noise at t = 0). fixed_large keeps
    # the variance 1 until the last step: the reverse chain is then exact.
    s = cosine_schedule(T)
    var_steps = np.asarray(s.betas if variance_type == "fixed_large" else s.posterior_variance,
                           np.float64)
    v = 1.0
    for t in range(T - 1, -1, -1):
        v = float(s.alphas[t]) * v + (var_steps[t] if t > 0 else 0.0)
    n = 20_000
    x = ddpm_sample(gaussian_oracle(s), s, jax.random.key(6), (n, 1),
                    variance_type=variance_type)
    assert abs(float(x.mean())) < Z_MAX * np.sqrt(v / n)
    assert abs(float(x.var()) - v) < Z_MAX * v * np.sqrt(2 / n)
    if variance_type == "fixed_large":
        np.testing.assert_allclose(v, 1 - float(s.betas[0]), rtol=F32_LOOSE)


X0 = np.array([[0.3, -0.7], [0.9, 0.1], [-0.5, 0.5]])


def point_mass_oracle(s, prediction_type):
    """The exact denoiser when each row's data distribution is a point mass at X0's row."""
    def model_fn(x_t, t):
        a = s.sqrt_alpha_bars[t][:, None]
        sd = s.sqrt_one_minus_alpha_bars[t][:, None]
        eps = (x_t - a * X0) / sd
        return {"epsilon": eps, "sample": jnp.broadcast_to(X0, x_t.shape),
                "v_prediction": a * eps - sd * X0}[prediction_type]
    return model_fn


@pytest.mark.parametrize("prediction_type, variance_type", [
    ("epsilon", "fixed_small"), ("sample", "fixed_large"), ("v_prediction", "fixed_small")])
def test_ddpm_with_point_mass_oracle_recovers_x0(prediction_type, variance_type):
    s = cosine_schedule(T)
    oracle = point_mass_oracle(s, prediction_type)
    x = ddpm_sample(oracle, s, jax.random.key(7), X0.shape, prediction_type=prediction_type,
                    variance_type=variance_type)
    np.testing.assert_allclose(x, X0, atol=F32_LOOSE)
    # The last step alone maps any x_0-level input to x0.
    x_1 = jnp.asarray(np.random.default_rng(8).normal(size=X0.shape), jnp.float32)
    t0 = jnp.zeros(3, jnp.int32)
    x_prev, _ = jax.jit(lambda x: ddpm_step(s, oracle(x, t0), x, t0, jnp.ones_like(x),
                                            prediction_type=prediction_type,
                                            variance_type=variance_type))(x_1)
    np.testing.assert_allclose(x_prev, X0, atol=F32_LOOSE)


@pytest.mark.parametrize("spacing, prediction_type, eta", [
    ("leading", "epsilon", 0.0), ("trailing", "v_prediction", 0.0), ("linspace", "sample", 0.0),
    ("trailing", "epsilon", 0.7), ("linspace", "v_prediction", 1.0)])
def test_ddim_with_point_mass_oracle_recovers_x0(spacing, prediction_type, eta):
    s = cosine_schedule(T)
    x = ddim_sample(point_mass_oracle(s, prediction_type), s, jax.random.key(9), X0.shape,
                    num_inference_steps=6, eta=eta, timestep_spacing=spacing,
                    prediction_type=prediction_type)
    np.testing.assert_allclose(x, X0, atol=F32_LOOSE)


def test_ddpm_sample_equals_the_documented_loop():
    s, key, shape = cosine_schedule(T), jax.random.key(10), (2, 3)

    @jax.jit
    def step(x, i):
        t = T - 1 - i
        return ddpm_step(s, model_jax(x, jnp.full(2, t)), x, t,
                         jax.random.normal(jax.random.fold_in(key, i + 1), shape))[0]

    x = jax.random.normal(jax.random.fold_in(key, 0), shape)
    for i in range(T):
        x = step(x, i)
    jitted = jax.jit(lambda k: ddpm_sample(model_jax, s, k, shape))(key)
    np.testing.assert_allclose(jitted, x, rtol=F32_LOOSE, atol=F32_ATOL)


def test_determinism_and_reproducibility():
    s = cosine_schedule(T)
    x_T = np.random.default_rng(11).normal(size=(2, 2))

    @jax.jit  # compiled once; eta is traced
    def run(key, eta):
        return ddim_sample(model_jax, s, key, None, x_T=x_T, num_inference_steps=5, eta=eta)

    k1, k2 = jax.random.key(1), jax.random.key(2)
    np.testing.assert_array_equal(run(k1, 0.0), run(k2, 0.0))  # eta = 0 ignores the key
    assert not np.allclose(run(k1, 0.5), run(k2, 0.5))
    np.testing.assert_array_equal(run(k1, 0.5), run(k1, 0.5))
    ddpm = jax.jit(lambda key: ddpm_sample(model_jax, s, key, (2, 2)))
    a = ddpm(k1)
    np.testing.assert_array_equal(a, ddpm(k1))
    assert not np.allclose(a, ddpm(k2))


def test_model_fn_sees_int32_batch_timesteps_and_dtypes(x64):
    seen = []

    def model_fn(x, t):
        seen.append((t.shape, t.dtype))
        return jnp.zeros_like(x)

    s = cosine_schedule(T)  # float64 under x64
    out = ddim_sample(model_fn, s, jax.random.key(0), (3, 2, 2), num_inference_steps=4)
    assert out.shape == (3, 2, 2) and out.dtype == jnp.float64
    assert seen == [((3,), jnp.int32)]  # traced once by lax.scan
    assert ddpm_sample(model_fn, s, jax.random.key(0), (3, 1), dtype=jnp.float32).dtype == \
        jnp.float32


def test_jit_and_vmap_over_keys_and_eta():
    s = cosine_schedule(T)
    keys = jax.random.split(jax.random.key(12), 3)

    def sample(key, eta):
        return ddim_sample(model_jax, s, key, (2, 2), num_inference_steps=5, eta=eta)

    vmapped = jax.vmap(sample, in_axes=(0, None))(keys, 0.4)
    jitted = jax.jit(sample)  # a traced eta
    loop = np.stack([jitted(k, 0.4) for k in keys])
    np.testing.assert_allclose(vmapped, loop, rtol=F32_LOOSE, atol=F32_ATOL)


def test_gradients(x64):
    s = cosine_schedule(T)
    rng = np.random.default_rng(13)
    out, x, z = rng.normal(size=(2, 3)), rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    t = np.array([3, 30])
    check_grads(jax.jit(lambda o, xt: ddpm_step(s, o, xt, t, z, prediction_type="v_prediction")[0]),
                (out, x), order=1, modes=("rev",), rtol=GRAD_RTOL)
    check_grads(jax.jit(lambda o, xt, e: ddim_step(s, o, xt, t, t - 3, z, eta=e)[0]),
                (out, x, 0.5), order=1, modes=("rev",), rtol=GRAD_RTOL)

    def sample(scale):  # gradient through a short sampler with respect to a model parameter
        return ddim_sample(lambda xt, tt: scale * xt, s, jax.random.key(0), None,
                           x_T=x, num_inference_steps=3).sum()

    check_grads(jax.jit(sample), (0.3,), order=1, modes=("rev",), rtol=GRAD_RTOL)


S = linear_schedule(T)
X = np.ones((2, 3))
KEY = jax.random.key(0)


def zeros_model(x, t):
    return jnp.zeros_like(x)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: ddim_timesteps(T, 51), ValueError,
     r"num_inference_steps must be <= num_train_timesteps = 50 .*got 51"),
    (lambda: ddim_timesteps(T, 0), ValueError, r"num_inference_steps must be >= 1, got 0"),
    (lambda: ddim_timesteps(T, 5.0), TypeError, r"num_inference_steps must be a Python int"),
    (lambda: ddim_timesteps(T, 5, "uniform"), ValueError,
     r"timestep_spacing must be one of \('leading', 'trailing', 'linspace'\), got 'uniform'"),
    (lambda: ddim_timesteps(T, 50, "leading", steps_offset=1), ValueError,
     r"steps_offset=1 makes the first timestep 50, outside \[0, 50\)"),
    (lambda: ddim_timesteps(T, 5, steps_offset=-1), ValueError, r"steps_offset must be >= 0"),
    (lambda: ddpm_step(S, X, X, 1, variance_type="learned"), ValueError,
     r"variance_type must be one of \('fixed_small', 'fixed_large'\), got 'learned'"),
    (lambda: ddpm_step(S, X, X, 1, prediction_type="score"), ValueError,
     r"prediction_type must be one of \('epsilon', 'sample', 'v_prediction'\)"),
    (lambda: ddpm_step(S, X, X, 50), ValueError, r"t must lie in \[0, 50\)"),
    (lambda: ddpm_step(S, X, X, 1, np.ones(3)), ValueError,
     r"noise and x_t must have the same shape"),
    (lambda: ddpm_step(S, X, X, 1, clip_sample=True, clip_sample_range=0.0), ValueError,
     r"clip_sample_range must be > 0"),
    (lambda: ddpm_step(S, X, X, 1, clip_sample=1), TypeError, r"clip_sample must be a bool"),
    (lambda: ddim_step(S, X, X, 10, -2), ValueError, r"t_prev must lie in \[-1, 50\)"),
    (lambda: ddim_step(S, X, X, 10, 5, X, eta=1.5), ValueError,
     r"eta must lie in \[0, 1\], got 1.5"),
    (lambda: ddim_step(S, X, X, 10, 5, eta=0.5), ValueError,
     r"noise is required when eta > 0"),
    (lambda: ddim_sample(zeros_model, S, KEY, (2, 3), num_inference_steps=100), ValueError,
     r"num_inference_steps must be <= num_train_timesteps = 50"),
    (lambda: ddim_sample(zeros_model, S, KEY, (2, 3), timestep_spacing="cosine"), ValueError,
     r"timestep_spacing must be one of"),
    (lambda: ddim_sample(zeros_model, S, KEY, (2, 3), eta=-0.1), ValueError,
     r"eta must lie in \[0, 1\]"),
    (lambda: ddpm_sample(zeros_model, S, KEY, ()), ValueError, r"shape must have rank >= 1"),
    (lambda: ddpm_sample(zeros_model, S, KEY, None), ValueError,
     r"shape \[B, ...\] is required when x_T is not given"),
    (lambda: ddpm_sample(zeros_model, S, KEY, (3, 3), x_T=X), ValueError,
     r"shape must be None or x_T's shape \(2, 3\), got \(3, 3\)"),
    (lambda: ddpm_sample(lambda x, t: x[:, :1], S, KEY, (2, 3)), ValueError,
     r"model_fn must return an array shaped like x_t \(2, 3\), got \(2, 1\)"),
    (lambda: ddpm_sample(zeros_model, S, KEY, (2, 3), variance_type="fixed"), ValueError,
     r"variance_type must be one of"),
    (lambda: jax.jit(lambda x: ddim_step(S, x, x, 10, 5, x, eta=1.5))(X), ValueError,
     r"eta must lie in \[0, 1\], got 1.5"),  # a Python constant is still checked in jit
    (lambda: jax.jit(lambda k: ddim_sample(zeros_model, S, k, (2, 3),
                                           num_inference_steps=51))(KEY), ValueError,
     r"num_inference_steps must be <= num_train_timesteps = 50"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
