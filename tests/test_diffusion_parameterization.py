"""Prediction targets, conversions and the (min-SNR-γ) diffusion loss."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxmath.diffusion.losses import diffusion_loss, min_snr_weight
from jaxmath.diffusion.parameterization import (
    PREDICTION_TYPES,
    convert_prediction,
    predict_eps,
    predict_x0,
    prediction_target,
    velocity,
)
from jaxmath.diffusion.process import q_sample
from jaxmath.diffusion.schedules import cosine_schedule, from_betas, linear_schedule
from tests.tolerances import F32_ATOL, F32_RTOL, F64_ATOL, F64_RTOL, GRAD_RTOL

T = 50
B = 4


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


def closed_form_targets(ab, x0, eps):
    a, s = np.sqrt(ab), np.sqrt(1 - ab)
    return {"epsilon": eps, "sample": x0, "v_prediction": a * eps - s * x0}


def _batch(seed, shape=(B, 3)):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape), rng.normal(size=shape), rng.integers(0, T, shape[0])


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_targets_match_closed_form(prediction_type):
    s = cosine_schedule(T)
    x0, eps, t = _batch(0)
    ab = np.asarray(s.alpha_bars, np.float64)[t][:, None]
    expected = closed_form_targets(ab, x0, eps)[prediction_type]
    np.testing.assert_allclose(prediction_target(s, x0, eps, t, prediction_type), expected,
                               rtol=F32_RTOL, atol=F32_ATOL)


def test_velocity_matches_diffusers_get_velocity(diffusers):
    ref = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    s = from_betas(ref.betas.numpy())
    x0, eps, t = (a.astype(np.float32) if a.dtype == np.float64 else a for a in _batch(1))
    expected = ref.get_velocity(torch.tensor(x0), torch.tensor(eps), torch.tensor(t)).numpy()
    np.testing.assert_allclose(velocity(s, x0, eps, t), expected, rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_array_equal(velocity(s, x0, eps, t),
                                  prediction_target(s, x0, eps, t, "v_prediction"))


@given(st.integers(0, 2**31 - 1))
def test_every_conversion_recovers_every_target(seed):
    # From x_t = q_sample(x0, t, eps), each type's exact target converts to each other's.
    with jax.enable_x64(True):
        s = cosine_schedule(T)
        x0, eps, t = _batch(seed)
        x_t = q_sample(s, x0, t, eps)
        targets = {p: prediction_target(s, x0, eps, t, p) for p in PREDICTION_TYPES}
        for src, dst in itertools.product(PREDICTION_TYPES, repeat=2):
            out = convert_prediction(s, targets[src], x_t, t, src, dst)
            np.testing.assert_allclose(out, targets[dst], rtol=F64_RTOL, atol=F64_ATOL,
                                       err_msg=f"{src} -> {dst}")
        for p in PREDICTION_TYPES:
            np.testing.assert_allclose(predict_x0(s, targets[p], x_t, t, p), x0, rtol=F64_RTOL,
                                       atol=F64_ATOL)
            np.testing.assert_allclose(predict_eps(s, targets[p], x_t, t, p), eps, rtol=F64_RTOL,
                                       atol=F64_ATOL)


def test_aliases():
    s = linear_schedule(T)
    x0, eps, t = _batch(2)
    for alias, name in [("eps", "epsilon"), ("x0", "sample"), ("v", "v_prediction")]:
        np.testing.assert_array_equal(prediction_target(s, x0, eps, t, alias),
                                      prediction_target(s, x0, eps, t, name))


def test_conversions_jit_vmap_grads_dtypes(x64):
    s = cosine_schedule(T)
    out, x_t, t = _batch(3)
    res = convert_prediction(s, out, x_t, t, "v_prediction", "epsilon")
    assert res.dtype == jnp.float64
    jitted = jax.jit(convert_prediction, static_argnums=(4, 5))(s, out, x_t, t, "v_prediction",
                                                                "epsilon")
    np.testing.assert_allclose(jitted, res, rtol=F64_RTOL, atol=F64_ATOL)
    vmapped = jax.vmap(lambda o, x, ti: predict_x0(s, o, x, ti, "sample"))(out, x_t, t)
    np.testing.assert_allclose(vmapped, out, rtol=F64_RTOL)
    check_grads(jax.jit(lambda o, x: convert_prediction(s, o, x, t, "epsilon", "v_prediction")),
                (out, x_t), order=1, modes=("rev",), rtol=GRAD_RTOL)


def test_zero_terminal_snr_edge():
    s = from_betas(np.array([0.1, 1.0]))  # alpha_bar_1 = 0
    x = np.array([[0.3]])
    assert np.isinf(predict_x0(s, np.array([[0.2]]), x, 1, "epsilon")).all()
    np.testing.assert_allclose(predict_eps(s, np.array([[0.2]]), x, 1, "sample"), x,
                               rtol=F32_RTOL)  # x_t = eps there
    np.testing.assert_allclose(predict_x0(s, np.array([[0.2]]), x, 1, "v_prediction"),
                               [[-0.2]], rtol=F32_RTOL)


# ----- losses -----

def reference_loss_torch(out, target, weight):
    """The per-example-weighted MSE of diffusers' train_text_to_image.py, in PyTorch."""
    loss = torch.nn.functional.mse_loss(torch.tensor(out), torch.tensor(target),
                                        reduction="none")
    loss = loss.mean(dim=list(range(1, loss.ndim))) * torch.tensor(weight)
    return loss.mean().item()


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("gamma", [None, 5.0])
def test_loss_matches_torch_reference(prediction_type, gamma, x64):
    s = cosine_schedule(T)
    x0, eps, t = _batch(4, (B, 2, 3))
    out = np.random.default_rng(5).normal(size=x0.shape)
    snr_t = np.asarray(s.snr)[t]
    if gamma is None:
        weight = np.ones(B)
    else:  # Hang et al. (2023), as in diffusers' training scripts
        clipped = np.minimum(snr_t, gamma)
        weight = {"epsilon": clipped / snr_t, "sample": clipped,
                  "v_prediction": clipped / (snr_t + 1)}[prediction_type]
        np.testing.assert_allclose(min_snr_weight(s, t, gamma, prediction_type), weight,
                                   rtol=F64_RTOL)
    target = closed_form_targets(np.asarray(s.alpha_bars)[t][:, None, None], x0, eps)
    expected = reference_loss_torch(out, target[prediction_type], weight)
    loss = diffusion_loss(s, out, x0, eps, t, prediction_type, min_snr_gamma=gamma)
    assert loss.shape == () and loss.dtype == jnp.float64
    np.testing.assert_allclose(loss, expected, rtol=F64_RTOL)


@given(st.integers(0, 2**31 - 1), st.floats(0.5, 20.0))
def test_min_snr_losses_agree_across_parameterisations(seed, gamma):
    # The same x0 estimate, written as each prediction type, gives the same weighted loss:
    # min(SNR, gamma) * ||x0 - x0_hat||^2 (the point of the per-type weights).
    with jax.enable_x64(True):
        s = cosine_schedule(T)
        x0, eps, t = _batch(seed)
        x0_hat = x0 + np.random.default_rng(seed + 1).normal(size=x0.shape)
        x_t = q_sample(s, x0, t, eps)
        losses = [diffusion_loss(s, convert_prediction(s, x0_hat, x_t, t, "sample", p),
                                 x0, eps, t, p, min_snr_gamma=gamma) for p in PREDICTION_TYPES]
        expected = np.mean(np.minimum(np.asarray(s.snr)[t], gamma)
                           * np.mean((x0 - x0_hat) ** 2, axis=1))
    np.testing.assert_allclose(losses, [expected] * 3, rtol=F64_RTOL)


def test_min_snr_weight_edges():
    s = from_betas(np.array([0.1, 1.0]))  # SNR = 9, then 0 (zero terminal SNR)
    np.testing.assert_allclose(min_snr_weight(s, np.array([0, 1]), 5.0, "epsilon"),
                               [5 / 9, 1.0], rtol=F32_RTOL)
    np.testing.assert_allclose(min_snr_weight(s, np.array([0, 1]), 5.0, "v_prediction"),
                               [0.5, 0.0], rtol=F32_RTOL)
    big = min_snr_weight(linear_schedule(T), np.arange(T), 1e9, "epsilon")
    np.testing.assert_allclose(big, 1.0)  # gamma -> inf: the unweighted loss


def test_loss_jit_vmap_grads(x64):
    s = cosine_schedule(T)
    x0, eps, t = _batch(6)
    out = np.random.default_rng(7).normal(size=x0.shape)

    def loss(o):
        return diffusion_loss(s, o, x0, eps, t, "v_prediction", min_snr_gamma=5.0)

    np.testing.assert_allclose(jax.jit(loss)(out), loss(out), rtol=F64_RTOL)
    check_grads(jax.jit(loss), (out,), order=1, modes=("rev",), rtol=GRAD_RTOL)
    per_example = jax.vmap(lambda o, a, e, ti: diffusion_loss(s, o[None], a[None], e[None], ti))(
        out, x0, eps, t)
    np.testing.assert_allclose(per_example.mean(), diffusion_loss(s, out, x0, eps, t),
                               rtol=F64_RTOL)
    g = jax.grad(lambda gamma: diffusion_loss(s, out, x0, eps, t, "sample",
                                              min_snr_gamma=gamma))(2.0)
    assert np.isfinite(g)


S = linear_schedule(T)
X = np.ones((2, 3))
TT = np.array([1, 2])


@pytest.mark.parametrize("call, exc, match", [
    (lambda: prediction_target(S, X, X, TT, "noise"), ValueError,
     r"prediction_type must be one of \('epsilon', 'sample', 'v_prediction'\) \(or the "
     r"aliases \('eps', 'x0', 'v'\)\), got 'noise'"),
    (lambda: convert_prediction(S, X, X, TT, "epsilon", "score"), ValueError,
     r"to_type must be one of"),
    (lambda: convert_prediction(S, X, X, TT, None, "epsilon"), ValueError,
     r"from_type must be one of"),
    (lambda: predict_x0(S, np.ones((2, 2)), X, TT), ValueError,
     r"model_output and x_t must have the same shape"),
    (lambda: velocity(S, X, X, np.array([0, 50])), ValueError, r"t must lie in \[0, 50\)"),
    (lambda: predict_eps(S, X, X, np.array([1.5, 2.0])), TypeError, r"t must have an integer"),
    (lambda: diffusion_loss(S, X, X, X, TT, min_snr_gamma=0.0), ValueError,
     r"gamma must be > 0, got 0.0"),
    (lambda: diffusion_loss(S, X, X, X, TT, min_snr_gamma=np.ones(2)), ValueError,
     r"gamma must have rank 0"),
    (lambda: diffusion_loss(S, np.ones((2, 2)), X, X, TT), ValueError,
     r"model_output and x0 must have the same shape"),
    (lambda: diffusion_loss(S, 1.0, 1.0, 1.0, 0), ValueError, r"x0 must have rank >= 1"),
    (lambda: diffusion_loss(S, X, X, X, np.array([1, 2, 3])), ValueError,
     r"t must be a scalar or have shape \[B\]"),
    (lambda: min_snr_weight(S, TT, 5.0, "x_0"), ValueError, r"prediction_type must be one of"),
    (lambda: jax.jit(lambda o: diffusion_loss(S, o, X, X, TT, min_snr_gamma=-1.0))(X),
     ValueError, r"gamma must be > 0, got -1.0"),
    (lambda: jax.jit(lambda o: diffusion_loss(S, o, X, X, TT, "velocity"))(X), ValueError,
     r"prediction_type must be one of"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
