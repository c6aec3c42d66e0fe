"""DiffusionModel: the loss against a hand computation, sampling against the samplers it
wraps, jit / grad / vmap, bad inputs, and a small model that learns a 2-D Gaussian mixture."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmath.diffusion.denoisers import MLPDenoiser, UNet
from jaxmath.diffusion.losses import diffusion_loss
from jaxmath.diffusion.model import DiffusionModel
from jaxmath.diffusion.process import q_sample
from jaxmath.diffusion.samplers import ddim_sample
from jaxmath.diffusion.schedules import cosine_schedule, linear_schedule, make_schedule
from jaxmath.run.datasets import gaussian_mixture
from tests.test_diffusion_denoisers import mlp_reference, random_variables
from tests.tolerances import F32_ATOL, F32_LOOSE, F32_RTOL, default_precision_tol

NN = default_precision_tol()  # float32 layers at JAX's default precision

T = 50
B, D, F = 6, 2, 16
X0 = np.random.default_rng(3).normal(size=(B, D)).astype(np.float32)
T0 = np.zeros(B, np.int32)
KEY = jax.random.key(7)


def make(**kwargs):
    """A small DiffusionModel (cosine schedule, T = 50) with ``kwargs`` overriding."""
    kwargs = {"schedule": "cosine", "num_timesteps": T, **kwargs}
    return DiffusionModel(MLPDenoiser(features=F, num_blocks=2), **kwargs)


@pytest.fixture(scope="module")
def variables():
    return random_variables(make(), X0, T0)


# ----- loss -----

@pytest.mark.parametrize("prediction_type, weighting", [
    ("epsilon", "none"), ("sample", "min_snr"), ("v_prediction", "min_snr")])
def test_loss_equals_hand_computation(variables, prediction_type, weighting):
    model = make(prediction_type=prediction_type, loss_weighting=weighting, min_snr_gamma=2.0)
    got = model.apply(variables, X0, KEY, method="loss")
    schedule = cosine_schedule(T)
    key_t, key_eps = jax.random.split(KEY)
    t = jax.random.randint(key_t, (B,), 0, T, jnp.int32)
    noise = jax.random.normal(key_eps, X0.shape)
    x_t = q_sample(schedule, X0, t, noise)
    out = model.apply(variables, x_t, t)
    want = diffusion_loss(schedule, out, X0, noise, t, prediction_type,
                          min_snr_gamma=2.0 if weighting == "min_snr" else None)
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=F32_RTOL, atol=F32_ATOL)


def test_loss_equals_numpy(variables):
    """Epsilon prediction with min-SNR-5, from the schedule's alpha_bar and a NumPy MLP."""
    model = make(loss_weighting="min_snr", min_snr_gamma=5.0)
    got = model.apply(variables, X0, KEY, method="loss")
    key_t, key_eps = jax.random.split(KEY)
    t = np.asarray(jax.random.randint(key_t, (B,), 0, T, jnp.int32))
    eps = np.asarray(jax.random.normal(key_eps, X0.shape), np.float64)
    alpha_bar = np.asarray(cosine_schedule(T, dtype=jnp.float32).alpha_bars, np.float64)[t]
    x_t = np.sqrt(alpha_bar)[:, None] * X0 + np.sqrt(1 - alpha_bar)[:, None] * eps
    out = mlp_reference(variables["params"]["denoiser"], x_t, t, F)
    snr = alpha_bar / (1 - alpha_bar)
    want = np.mean(np.minimum(snr, 5.0) / snr * np.mean((out - eps) ** 2, axis=1))
    np.testing.assert_allclose(got, want, **NN)


def test_loss_jit_grad_vmap_and_optax(variables):
    """An ensemble of three models, one key each: one vmapped, jitted value_and_grad."""
    model = make()

    def loss(p, k):
        return model.apply(p, X0, k, method="loss")

    members = [variables] + [random_variables(model, X0, T0, seed=s) for s in (1, 2)]
    keys = jax.random.split(KEY, 3)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *members)
    value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(loss)))
    values, grads = value_and_grad(stacked, keys)
    np.testing.assert_allclose(
        values, [loss(m, k) for m, k in zip(members, keys, strict=True)], rtol=F32_LOOSE)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert all(np.all(np.any(g.reshape(3, -1) != 0, axis=1)) for g in leaves)
    # optax: Adam on one fixed batch and key per member lowers each member's loss
    opt = optax.adam(1e-2)

    @jax.jit
    def update(params, opt_state, grads):
        updates, opt_state = jax.vmap(opt.update)(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, opt_state = stacked, jax.vmap(opt.init)(stacked)
    for _ in range(10):
        params, opt_state = update(params, opt_state, value_and_grad(params, keys)[1])
    assert np.all(value_and_grad(params, keys)[0] < values)


def test_schedule_by_name_or_pytree():
    named = make(schedule="linear")
    given = make(schedule=linear_schedule(T), num_timesteps=None)
    for field in ("betas", "alpha_bars", "posterior_variance"):
        np.testing.assert_array_equal(getattr(named.noise_schedule, field),
                                      getattr(given.noise_schedule, field))
    assert named.noise_schedule.num_timesteps == T
    assert DiffusionModel(MLPDenoiser()).noise_schedule.num_timesteps == 1000
    hash(named)  # a named schedule keeps the module hashable (static arguments, nn.jit)
    v = random_variables(named, X0, T0)
    for model in (named, given):  # jax.jit(model.apply) works with either
        np.testing.assert_allclose(jax.jit(model.apply)(v, X0, T0), model.apply(v, X0, T0),
                                   rtol=F32_LOOSE, atol=F32_LOOSE)
    np.testing.assert_array_equal(named.apply(v, X0, KEY, method="loss"),
                                  given.apply(v, X0, KEY, method="loss"))


def test_named_schedule_follows_x64(x64):
    schedule = make(schedule="sigmoid").noise_schedule
    assert schedule.betas.dtype == jnp.float64
    np.testing.assert_array_equal(schedule.betas, make_schedule("sigmoid", T).betas)


def test_unet_model_shapes():
    """A UNet inside the model: loss and sampling trace with image shapes (no compile)."""
    model = DiffusionModel(UNet(channels=8, num_groups=4, num_heads=2), "cosine",
                           num_timesteps=10, prediction_type="v_prediction")
    x0 = jnp.zeros((2, 8, 8, 1))
    v = jax.eval_shape(model.init, KEY, x0, jnp.zeros(2, jnp.int32))
    assert "denoiser" in v["params"]
    assert jax.eval_shape(lambda v: model.apply(v, x0, KEY, method="loss"), v).shape == ()
    samples = jax.eval_shape(lambda v: model.apply(v, KEY, (3, 8, 8, 1), method="sample",
                                                   sampler="ddim", num_inference_steps=4), v)
    assert samples.shape == (3, 8, 8, 1) and samples.dtype == jnp.float32


# ----- sampling -----

N = 5


def test_ddpm_sampling_is_reproducible(variables):
    model = make(prediction_type="v_prediction")
    sample = jax.jit(lambda p, k: model.apply(p, k, (N, D), method="sample",
                                              variance_type="fixed_large", clip_sample=True))
    a, b, c = sample(variables, KEY), sample(variables, KEY), sample(variables, jax.random.key(8))
    assert a.shape == (N, D) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.all(np.abs(a) <= 1 + F32_ATOL)  # x0 clipped, and the last step lands on it


def test_ddim_sampling_is_ddim_sample_and_deterministic_at_eta0(variables):
    model = make()
    sample = jax.jit(lambda p, k, x_T, eta: model.apply(
        p, k, None, method="sample", sampler="ddim", num_inference_steps=10,
        timestep_spacing="trailing", x_T=x_T, eta=eta))
    x_T = jax.random.normal(jax.random.key(9), (N, D))
    d0, d1 = sample(variables, KEY, x_T, 0.0), sample(variables, jax.random.key(10), x_T, 0.0)
    np.testing.assert_allclose(d0, d1, rtol=0, atol=F32_ATOL)  # eta = 0: the key is unused
    want = ddim_sample(lambda x, t: model.apply(variables, x, t), model.noise_schedule,
                       jax.random.key(11), None, x_T=x_T, num_inference_steps=10,
                       timestep_spacing="trailing")
    np.testing.assert_allclose(d0, want, rtol=F32_LOOSE, atol=F32_LOOSE)
    e0, e1 = sample(variables, KEY, x_T, 1.0), sample(variables, jax.random.key(10), x_T, 1.0)
    assert not np.allclose(e0, e1)
    np.testing.assert_array_equal(e0, sample(variables, KEY, x_T, 1.0))


def test_bfloat16_denoiser_samples_in_float32(variables):
    model = DiffusionModel(MLPDenoiser(features=F, num_blocks=2, dtype=jnp.bfloat16), "cosine",
                           num_timesteps=T)
    out = jax.eval_shape(lambda v: model.apply(v, X0, T0), variables)
    assert out.dtype == jnp.bfloat16
    samples = jax.eval_shape(lambda v, k: model.apply(v, k, (N, D), method="sample",
                                                      sampler="ddim"), variables, KEY)
    assert samples.dtype == jnp.float32
    loss = jax.eval_shape(lambda v: model.apply(v, X0, KEY, method="loss"), variables)
    assert loss.dtype == jnp.float32


# ----- bad inputs -----

SHAPES = jax.eval_shape(make().init, KEY, X0, T0)


def _loss(model, x0=X0):
    return lambda: jax.eval_shape(lambda v: model.apply(v, x0, KEY, method="loss"), SHAPES)


def _sample(model, **kwargs):
    return lambda: jax.eval_shape(
        lambda v: model.apply(v, KEY, (N, D), method="sample", **kwargs), SHAPES)


@pytest.mark.parametrize("call, exc, match", [
    (_loss(make(schedule="quadratic")), ValueError,
     r"schedule must be one of \('linear', 'scaled_linear', 'cosine', 'squaredcos_cap_v2', "
     r"'sigmoid'\), got 'quadratic'"),
    (_loss(make(schedule=0.5)), TypeError,
     r"schedule must be a schedule name or a NoiseSchedule, got float"),
    (_loss(make(num_timesteps=0)), ValueError, r"num_timesteps must be >= 1, got 0"),
    (_loss(make(num_timesteps=10.0)), TypeError, r"num_timesteps must be a Python int"),
    (_loss(make(schedule=linear_schedule(20), num_timesteps=T)), ValueError,
     r"num_timesteps must be None or the schedule's 20 when a NoiseSchedule is given, got 50"),
    (_loss(make(prediction_type="score")), ValueError,
     r"prediction_type must be one of \('epsilon', 'sample', 'v_prediction'\)"),
    (_loss(make(loss_weighting="p2")), ValueError,
     r"loss_weighting must be one of \('none', 'min_snr'\), got 'p2'"),
    (_loss(make(loss_weighting="min_snr", min_snr_gamma=0.0)), ValueError,
     r"min_snr_gamma must be > 0, got 0.0"),
    (_loss(make(), np.float32(1.0)), ValueError, r"x0 must have rank >= 1, got shape \(\)"),
    (_sample(make(), sampler="euler"), ValueError,
     r"sampler must be one of \('ddpm', 'ddim'\), got 'euler'"),
    (_sample(make(), num_inference_steps=10), ValueError,
     r"num_inference_steps must be None or T = 50 for sampler='ddpm'"),
    (_sample(make(), sampler="ddim", num_inference_steps=51), ValueError,
     r"num_inference_steps must be <= num_train_timesteps = 50"),
    (_sample(make(), sampler="ddim", eta=1.5), ValueError, r"eta must lie in \[0, 1\], got 1.5"),
    (_sample(make(), sampler="ddim", timestep_spacing="uniform"), ValueError,
     r"timestep_spacing must be one of"),
    (_sample(make(), variance_type="learned"), ValueError, r"variance_type must be one of"),
    (lambda: jax.jit(lambda p: make(prediction_type="x_0").apply(p, X0, KEY, method="loss"))(
        random_variables(make(), X0, T0)), ValueError, r"prediction_type must be one of"),
    (lambda: jax.jit(lambda p: make().apply(p, np.ones((B, 3, 2)), T0))(
        random_variables(make(), X0, T0)), ValueError,
     r"x must have rank 2 \(\[B, d\]\), got shape \(6, 3, 2\)"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_loss_and_samplers_check_their_arrays_once(variables, monkeypatch):
    """Inside DiffusionModel.loss and the samplers' loops the library calls kernels on
    arrays it has checked: no public function runs there to check x0 or t again."""
    from jaxmath.diffusion import losses, parameterization, process, samplers

    def refuse(*args, **kwargs):
        raise AssertionError("timesteps checked again inside the library")

    for module in (losses, parameterization, process, samplers):
        monkeypatch.setattr(module, "check_timesteps", refuse)
    model = make(loss_weighting="min_snr")
    assert np.isfinite(float(model.apply(variables, X0, KEY, method="loss")))
    for sampler in ("ddpm", "ddim"):
        out = model.apply(variables, KEY, (2, D), method="sample", sampler=sampler, eta=0.5)
        assert out.shape == (2, D)


def test_is_a_linen_module_with_the_denoiser_as_child(variables):
    assert isinstance(make(), nn.Module)
    assert set(variables["params"]) == {"denoiser"}


# ----- learning a 2-D Gaussian mixture -----

MIX_MEANS = np.array([[-1.0, 0.5], [2.0, 1.5]], np.float32)
MIX_STD = 0.5
MIX_WEIGHTS = np.array([0.3, 0.7], np.float32)


def mixture_moments():
    r"""E[x] = sum_k w_k mu_k, Cov[x] = std^2 I + sum_k w_k mu_k mu_k^T - E[x] E[x]^T."""
    mean = MIX_WEIGHTS @ MIX_MEANS
    cov = (MIX_STD ** 2 * np.eye(2) + (MIX_MEANS.T * MIX_WEIGHTS) @ MIX_MEANS
           - np.outer(mean, mean))
    return mean.astype(np.float64), cov.astype(np.float64)


def moment_errors(samples):
    """Largest mean error in the data's standard deviations; relative Frobenius covariance error."""
    mean, cov = mixture_moments()
    samples = np.asarray(samples, np.float64)
    mean_error = np.max(np.abs(samples.mean(0) - mean) / np.sqrt(np.diag(cov)))
    cov_error = np.linalg.norm(np.cov(samples.T) - cov) / np.linalg.norm(cov)
    return mean_error, cov_error


def train_and_sample(features, num_blocks, num_timesteps, steps, batch, lr, num_samples,
                     seed=0):
    """Adam with cosine decay on fresh mixture batches (one compiled lax.scan), then DDPM."""
    model = DiffusionModel(MLPDenoiser(features=features, num_blocks=num_blocks), "cosine",
                           num_timesteps=num_timesteps)
    params = random_variables(model, jnp.zeros((batch, 2)), jnp.zeros(batch, jnp.int32),
                              seed=seed)
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
    means, weights = jnp.asarray(MIX_MEANS), jnp.asarray(MIX_WEIGHTS)

    @jax.jit
    def train(params, key):
        def step(carry, i):
            params, opt_state = carry
            key_i = jax.random.fold_in(key, i)
            x0, _ = gaussian_mixture(jax.random.fold_in(key_i, 0), batch, means, MIX_STD,
                                     weights)
            loss, grads = jax.value_and_grad(lambda p: model.apply(
                p, x0, jax.random.fold_in(key_i, 1), method="loss"))(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jnp.arange(steps))
        return params, losses

    params, losses = train(params, jax.random.key(seed))
    samples = jax.jit(lambda p, k: model.apply(p, k, (num_samples, 2), method="sample"))(
        params, jax.random.key(1000 + seed))
    return np.asarray(samples), np.asarray(losses)


# Quick: 64 wide, 2 blocks, T = 100, 1000 Adam steps of 256 points, 2000 DDPM samples
# (~9 s of CPU, most of it compiling). Over seeds 0-7 of this function the errors were at
# most 0.060 (mean, in the data's standard deviations) and 0.107 (covariance, relative
# Frobenius); the Monte Carlo standard error of a 2000-sample mean alone is
# 1 / sqrt(2000) = 0.022 standard deviations. A model that learned nothing (its samples the
# N(0, I) prior) is off by 1.78 and 0.66.
QUICK_MEAN_TOL = 0.15
QUICK_COV_RTOL = 0.2


@pytest.mark.slow  # ~15 s of CPU; the stronger version below is slow too
def test_learns_a_gaussian_mixture_quick():
    samples, losses = train_and_sample(64, 2, 100, 1000, 256, 3e-3, 2000)
    assert np.all(np.isfinite(samples))
    assert losses[-100:].mean() < losses[:100].mean()
    mean_error, cov_error = moment_errors(samples)
    assert mean_error < QUICK_MEAN_TOL and cov_error < QUICK_COV_RTOL, (mean_error, cov_error)
    prior_errors = moment_errors_of_prior()
    assert prior_errors[0] > QUICK_MEAN_TOL and prior_errors[1] > QUICK_COV_RTOL


def moment_errors_of_prior():
    """The errors of N(0, I) itself (exact moments): what a model that learned nothing gets."""
    mean, cov = mixture_moments()
    return (np.max(np.abs(mean) / np.sqrt(np.diag(cov))),
            np.linalg.norm(np.eye(2) - cov) / np.linalg.norm(cov))


# Slow: the same model, 5000 Adam steps of 512 points (lr 2e-3), 20000 DDPM samples (~30 s of
# CPU): the Monte Carlo error of the mean drops to 1 / sqrt(20000) = 0.007 standard
# deviations, and what is left is the model's. Over seeds 0-3 of this function the errors
# were at most 0.018 (mean) and 0.025 (covariance), and 0.036 and 0.044 over five seeds of
# another initialisation; the bounds are half the quick test's.
SLOW_MEAN_TOL = 0.075
SLOW_COV_RTOL = 0.06


@pytest.mark.slow
def test_learns_a_gaussian_mixture_slow():
    samples, losses = train_and_sample(64, 2, 100, 5000, 512, 2e-3, 20000)
    assert losses[-500:].mean() < losses[:500].mean()
    mean_error, cov_error = moment_errors(samples)
    assert mean_error < SLOW_MEAN_TOL and cov_error < SLOW_COV_RTOL, (mean_error, cov_error)
