"""Tests for jaxmath.optim: gradient descent, sweeps, optax loop, backpropagation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxmath.optim import (
    dense_sigmoid_mse,
    dense_sigmoid_mse_grads,
    gradient_descent,
    gradient_descent_sweep,
    optimize,
)
from jaxmath.run.tour import numpy_gradient_descent
from tests.tolerances import F32_ATOL, F32_LOOSE, F32_RTOL, F64_ATOL, F64_RTOL

X_SEED = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
Y_SEED = np.array([1.0, 2.0, 3.0])
# Gradient descent in float32 over 1,000 steps accumulates rounding: compare with
# a float64 reference to this (absolute) tolerance.
GD_F32_ATOL = 1e-4


def gd_closed_form(X, y, lr, steps, theta0):
    r"""GD iterates on (1/2m)||X theta - y||^2, H = X^T X / m, theta* the least-squares fit:

    theta_T = theta* + (I - lr H)^T (theta0 - theta*).
    """
    m, n = X.shape
    H = X.T @ X / m
    theta_star = np.linalg.lstsq(X, y, rcond=None)[0]
    return theta_star + np.linalg.matrix_power(np.eye(n) - lr * H, steps) @ (theta0 - theta_star)


def mse_loss(theta, X, y):
    """(1/2m)||X theta - y||^2, whose gradient is the seed's (1/m) X^T (X theta - y)."""
    return 0.5 * jnp.mean((X @ theta - y) ** 2)


def seed_loss(theta):
    return mse_loss(theta, jnp.asarray(X_SEED, theta.dtype), jnp.asarray(Y_SEED, theta.dtype))


def quadratic(theta):
    return jnp.sum((theta - 1.0) ** 2)


# ---------------------------------------------------------------- gradient_descent


def test_seed_example_against_numpy_loop_and_closed_form():
    """The seed's problem: lr 0.01, 1,000 steps. Its comment says "~[0., 1.]"."""
    want = numpy_gradient_descent(X_SEED, Y_SEED)
    closed = gd_closed_form(X_SEED, Y_SEED, 0.01, 1000, np.zeros(2))
    np.testing.assert_allclose(want, closed, rtol=F64_RTOL, atol=F64_ATOL)
    theta, losses = gradient_descent(seed_loss, jnp.zeros(2), 0.01, 1000)
    np.testing.assert_allclose(theta, want, atol=GD_F32_ATOL)
    assert losses.shape == (1000,)
    # The run has not converged: theta = [0.1107, 0.9513], not the minimiser [0, 1].
    np.testing.assert_allclose(want, [0.11071521, 0.95129619], rtol=1e-6)
    assert abs(want[0] - 0.0) > 0.1


def test_seed_example_float64_matches_closed_form(x64):
    theta, _ = gradient_descent(seed_loss, jnp.zeros(2, jnp.float64), 0.01, 1000)
    assert theta.dtype == jnp.float64
    closed = gd_closed_form(X_SEED, Y_SEED, 0.01, 1000, np.zeros(2))
    np.testing.assert_allclose(theta, closed, rtol=F64_RTOL, atol=F64_ATOL)


def test_converges_to_least_squares(rng):
    X = rng.normal(size=(20, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=20)
    H = X.T @ X / 20
    lr = 1.0 / np.linalg.eigvalsh(H).max()
    theta, losses = gradient_descent(mse_loss, jnp.zeros(3), lr, 2000,
                                     jnp.asarray(X, jnp.float32), jnp.asarray(y, jnp.float32))
    want = np.linalg.lstsq(X, y, rcond=None)[0]
    np.testing.assert_allclose(theta, want, rtol=F32_LOOSE, atol=F32_LOOSE)
    assert np.all(np.diff(np.asarray(losses)) <= F32_ATOL)  # monotone for lr <= 1/L


def test_losses_are_taken_before_each_update():
    theta0 = jnp.array([0.5, -1.0])
    theta, losses = gradient_descent(seed_loss, theta0, 0.1, 3)
    manual, manual_losses = theta0, []
    for _ in range(3):
        manual_losses.append(seed_loss(manual))
        manual = manual - 0.1 * jax.grad(seed_loss)(manual)
    np.testing.assert_allclose(losses, manual_losses, rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(theta, manual, rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(losses[0], seed_loss(theta0), rtol=F32_RTOL)


@given(st.lists(st.floats(-2, 2), min_size=3, max_size=3),
       st.floats(1e-3, 0.3))
def test_matches_closed_form_on_random_targets(y, lr):
    y = np.asarray(y)
    theta, _ = gradient_descent(mse_loss, jnp.zeros(2), jnp.float32(lr), 50,
                                jnp.asarray(X_SEED, jnp.float32), jnp.asarray(y, jnp.float32))
    np.testing.assert_allclose(theta, gd_closed_form(X_SEED, y, lr, 50, np.zeros(2)),
                               atol=GD_F32_ATOL)


def test_pytree_params_match_a_python_loop():
    def loss(p, x, y):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2) + 0.1 * jnp.sum(p["extra"][0] ** 2)

    x = jnp.asarray(X_SEED[:, 1:], jnp.float32)
    y = jnp.asarray(Y_SEED, jnp.float32)
    p0 = {"w": jnp.array([0.3]), "b": jnp.float32(0.0), "extra": (jnp.ones((2, 2)),)}
    params, losses = gradient_descent(loss, p0, 0.05, 20, x, y)
    manual_step = jax.jit(lambda p: jax.tree.map(lambda a, b: a - 0.05 * b, p,
                                                 jax.grad(loss)(p, x, y)))
    manual = p0
    for _ in range(20):
        manual = manual_step(manual)
    assert jax.tree.structure(params) == jax.tree.structure(p0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=F32_RTOL, atol=F32_ATOL),
                 params, manual)
    assert losses.shape == (20,)


def test_integer_params_become_float():
    theta, _ = gradient_descent(quadratic, jnp.array([0, 0]), 0.1, 5)
    assert theta.dtype == jnp.float32


def test_float64_in_float64_out(x64):
    theta, losses = gradient_descent(quadratic, jnp.zeros(2, jnp.float64), 0.1, 5)
    assert theta.dtype == jnp.float64 and losses.dtype == jnp.float64
    # a float64 learning rate does not change float32 parameters' dtype
    theta32, _ = gradient_descent(quadratic, jnp.zeros(2, jnp.float32), jnp.float64(0.1), 5)
    assert theta32.dtype == jnp.float32


def test_jit_matches_eager():
    eager = gradient_descent(seed_loss, jnp.zeros(2), 0.01, 100)
    jitted = jax.jit(gradient_descent, static_argnums=(0, 3))(seed_loss, jnp.zeros(2), 0.01, 100)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=F32_RTOL, atol=F32_ATOL),
                 eager, jitted)


def test_new_learning_rates_and_data_do_not_recompile():
    from jaxmath import optim

    x, y = jnp.asarray(X_SEED, jnp.float32), jnp.asarray(Y_SEED, jnp.float32)
    gradient_descent(mse_loss, jnp.zeros(2), 0.01, 7, x, y)
    before = optim._gradient_descent._cache_size()
    for lr in (0.02, 0.03, jnp.float32(0.5)):
        gradient_descent(mse_loss, jnp.zeros(2), lr, 7, x, y + lr)
    assert optim._gradient_descent._cache_size() == before


def test_vmap_over_learning_rates_matches_loop():
    lrs = jnp.array([0.01, 0.1, 0.3])
    theta, losses = jax.vmap(lambda lr: gradient_descent(seed_loss, jnp.zeros(2), lr, 50))(lrs)
    for i, lr in enumerate(lrs):
        t, l = gradient_descent(seed_loss, jnp.zeros(2), lr, 50)
        np.testing.assert_allclose(theta[i], t, rtol=F32_RTOL, atol=F32_ATOL)
        np.testing.assert_allclose(losses[i], l, rtol=F32_RTOL, atol=F32_ATOL)


def test_diverging_learning_rate_gives_non_finite_not_an_error():
    theta, losses = gradient_descent(seed_loss, jnp.zeros(2), 5.0, 200)
    assert not np.isfinite(np.asarray(theta)).all()
    assert not np.isfinite(np.asarray(losses[-1]))


def test_gradients_through_the_loop(x64):
    x, y = jnp.asarray(X_SEED), jnp.asarray(Y_SEED)

    def final_loss(theta0, lr):
        theta, _ = gradient_descent(mse_loss, theta0, lr, 5, x, y)
        return mse_loss(theta, x, y)

    check_grads(final_loss, (jnp.array([0.2, -0.3]), jnp.float64(0.05)), order=1,
                modes=("fwd", "rev"))
    # d/d lr against the closed form by central differences in float64
    eps = 1e-6
    fd = (mse_loss(jnp.asarray(gd_closed_form(X_SEED, Y_SEED, 0.05 + eps, 5, np.zeros(2))), x, y)
          - mse_loss(jnp.asarray(gd_closed_form(X_SEED, Y_SEED, 0.05 - eps, 5, np.zeros(2))),
                     x, y)) / (2 * eps)
    g = jax.grad(final_loss, argnums=1)(jnp.zeros(2), jnp.float64(0.05))
    np.testing.assert_allclose(g, fd, rtol=1e-6)


# ----------------------------------------------------------- gradient_descent_sweep


LRS = np.array([0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.35], np.float32)


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 7, 100])
def test_sweep_matches_loop(chunk_size):
    theta, losses = gradient_descent_sweep(seed_loss, jnp.zeros(2), LRS, 200,
                                           chunk_size=chunk_size)
    assert theta.shape == (len(LRS), 2) and losses.shape == (len(LRS), 200)
    for i, lr in enumerate(LRS):
        t, l = gradient_descent(seed_loss, jnp.zeros(2), lr, 200)
        np.testing.assert_allclose(theta[i], t, rtol=F32_RTOL, atol=F32_ATOL)
        np.testing.assert_allclose(losses[i], l, rtol=F32_RTOL, atol=F32_ATOL)


def test_sweep_matches_seed_numpy_loop():
    theta, _ = gradient_descent_sweep(seed_loss, jnp.zeros(2), LRS, 1000)
    for i, lr in enumerate(LRS):
        np.testing.assert_allclose(theta[i], numpy_gradient_descent(X_SEED, Y_SEED, float(lr)),
                                   atol=GD_F32_ATOL)


def test_sweep_matches_jax_vmap_of_gradient_descent():
    want = jax.vmap(lambda lr: gradient_descent(seed_loss, jnp.zeros(2), lr, 100))(LRS)
    got = gradient_descent_sweep(seed_loss, jnp.zeros(2), LRS, 100, chunk_size=4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=F32_RTOL, atol=F32_ATOL),
                 got, want)


def test_sweep_diverging_member_does_not_touch_the_others():
    lrs = jnp.array([0.1, 5.0, 0.2])
    theta, losses = gradient_descent_sweep(seed_loss, jnp.zeros(2), lrs, 300, chunk_size=3)
    assert not np.isfinite(np.asarray(losses[1, -1]))
    for i in (0, 2):
        t, l = gradient_descent(seed_loss, jnp.zeros(2), lrs[i], 300)
        assert np.isfinite(np.asarray(losses[i])).all()
        np.testing.assert_allclose(theta[i], t, rtol=F32_RTOL, atol=F32_ATOL)
        np.testing.assert_allclose(losses[i], l, rtol=F32_RTOL, atol=F32_ATOL)


def test_sweep_pytree_params_and_args():
    def loss(p, x, y):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    x = jnp.asarray(np.arange(12.0).reshape(6, 2) / 10, jnp.float32)
    y = jnp.asarray(np.linspace(-1, 1, 6), jnp.float32)
    p0 = {"w": jnp.array([0.1, -0.2]), "b": jnp.float32(0.3)}
    lrs = jnp.array([0.01, 0.1, 0.5])
    params, losses = gradient_descent_sweep(loss, p0, lrs, 30, x, y, chunk_size=2)
    assert params["w"].shape == (3, 2) and params["b"].shape == (3,)
    for i in range(3):
        want, want_l = gradient_descent(loss, p0, lrs[i], 30, x, y)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=F32_RTOL, atol=F32_ATOL),
                     jax.tree.map(lambda a: a[i], params), want)  # noqa: B023
        np.testing.assert_allclose(losses[i], want_l, rtol=F32_RTOL, atol=F32_ATOL)


def test_sweep_under_jit_and_grad(x64):
    x, y = jnp.asarray(X_SEED), jnp.asarray(Y_SEED)

    def mean_final_loss(lrs):
        theta, _ = gradient_descent_sweep(mse_loss, jnp.zeros(2), lrs, 5, x, y, chunk_size=2)
        return jnp.mean(jax.vmap(mse_loss, in_axes=(0, None, None))(theta, x, y))

    def closed_form(lrs):
        return np.mean([mse_loss(gd_closed_form(X_SEED, Y_SEED, lr, 5, np.zeros(2)), X_SEED,
                                 Y_SEED) for lr in lrs])

    lrs = np.array([0.01, 0.05, 0.1])
    np.testing.assert_allclose(jax.jit(mean_final_loss)(lrs), closed_form(lrs), rtol=F64_RTOL)
    eps = 1e-6
    fd = [(closed_form(lrs + eps * e) - closed_form(lrs - eps * e)) / (2 * eps)
          for e in np.eye(3)]
    np.testing.assert_allclose(jax.jit(jax.grad(mean_final_loss))(lrs), fd, rtol=1e-6)


def test_sweep_float64(x64):
    theta, losses = gradient_descent_sweep(seed_loss, jnp.zeros(2, jnp.float64),
                                           jnp.array([0.01, 0.02]), 1000)
    assert theta.dtype == jnp.float64 and losses.dtype == jnp.float64
    np.testing.assert_allclose(theta[1], gd_closed_form(X_SEED, Y_SEED, 0.02, 1000, np.zeros(2)),
                               rtol=F64_RTOL, atol=F64_ATOL)


# ------------------------------------------------------------------------- optimize


def test_optimize_with_sgd_equals_gradient_descent():
    x, y = jnp.asarray(X_SEED, jnp.float32), jnp.asarray(Y_SEED, jnp.float32)
    got = optimize(mse_loss, jnp.zeros(2), optax.sgd(0.05), 300, x, y)
    want = gradient_descent(mse_loss, jnp.zeros(2), 0.05, 300, x, y)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=F32_RTOL, atol=F32_ATOL),
                 got, want)


def test_optimize_adam_matches_a_manual_optax_loop():
    p0 = {"a": jnp.array([1.0, -1.0]), "b": jnp.float32(2.0)}

    def loss(p):
        return jnp.sum(p["a"] ** 2) + (p["b"] - 3.0) ** 2

    opt = optax.adam(0.1)
    params, losses = optimize(loss, p0, opt, 25)
    @jax.jit
    def manual_step(p, state):
        updates, state = opt.update(jax.grad(loss)(p), state, p)
        return optax.apply_updates(p, updates), state

    manual, state = p0, opt.init(p0)
    for _ in range(25):
        manual, state = manual_step(manual, state)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=F32_RTOL, atol=F32_ATOL),
                 params, manual)
    np.testing.assert_allclose(losses[0], loss(p0), rtol=F32_RTOL)


def test_optimize_vmap_over_traced_learning_rates():
    lrs = jnp.array([0.01, 0.1])
    theta, _ = jax.vmap(lambda lr: optimize(seed_loss, jnp.zeros(2), optax.sgd(lr), 50))(lrs)
    want, _ = gradient_descent_sweep(seed_loss, jnp.zeros(2), lrs, 50)
    np.testing.assert_allclose(theta, want, rtol=F32_RTOL, atol=F32_ATOL)


# --------------------------------------------------------------------- backpropagation


def torch_seed_step(W, b, X, y, lr=0.01):
    """The seed's PyTorch snippet, with the given initial weights (W is [in, out])."""
    model = torch.nn.Sequential(torch.nn.Linear(W.shape[0], W.shape[1]), torch.nn.Sigmoid())
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(np.asarray(W).T))
        model[0].bias.copy_(torch.tensor(np.asarray(b)))
    loss_fn = torch.nn.MSELoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    Xt = torch.tensor(np.asarray(X), dtype=torch.float32)
    yt = torch.tensor(np.asarray(y), dtype=torch.float32)
    optimizer.zero_grad()
    loss = loss_fn(model(Xt), yt)
    loss.backward()
    grads = (model[0].weight.grad.numpy().T.copy(), model[0].bias.grad.numpy().copy())
    optimizer.step()
    updated = (model[0].weight.detach().numpy().T.copy(), model[0].bias.detach().numpy().copy())
    return loss.item(), grads, updated


def test_backprop_matches_torch_on_the_seed_snippet():
    torch.manual_seed(0)
    layer = torch.nn.Linear(2, 1)  # torch's own initial weights, copied in
    W = jnp.asarray(layer.weight.detach().numpy().T)
    b = jnp.asarray(layer.bias.detach().numpy())
    X = jnp.array([[0.0, 0.0], [1.0, 1.0]])
    y = jnp.array([[0.0], [1.0]])
    t_loss, (t_dW, t_db), (t_W1, t_b1) = torch_seed_step(W, b, X, y)
    dW, db = dense_sigmoid_mse_grads(W, b, X, y)
    np.testing.assert_allclose(dense_sigmoid_mse(W, b, X, y), t_loss, rtol=F32_RTOL)
    np.testing.assert_allclose(dW, t_dW, rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(db, t_db, rtol=F32_RTOL, atol=F32_ATOL)
    # one SGD step, lr 0.01, as optimizer.step() does
    np.testing.assert_allclose(W - 0.01 * dW, t_W1, rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(b - 0.01 * db, t_b1, rtol=F32_RTOL, atol=F32_ATOL)
    # and the same step through the general path
    (W1, b1), _ = gradient_descent(lambda p: dense_sigmoid_mse(*p, X, y), (W, b), 0.01, 1)
    np.testing.assert_allclose(W1, t_W1, rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(b1, t_b1, rtol=F32_RTOL, atol=F32_ATOL)


@given(st.integers(0, 2**31 - 1))
def test_backprop_matches_jax_grad_and_torch_random(seed):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(3, 2)).astype(np.float32)
    b = rng.normal(size=2).astype(np.float32)
    X = rng.normal(size=(4, 3)).astype(np.float32)
    y = rng.uniform(size=(4, 2)).astype(np.float32)
    dW, db = dense_sigmoid_mse_grads(W, b, X, y)
    jW, jb = jax.grad(dense_sigmoid_mse, argnums=(0, 1))(W, b, X, y)
    np.testing.assert_allclose(dW, jW, rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(db, jb, rtol=F32_RTOL, atol=F32_ATOL)
    _, (t_dW, t_db), _ = torch_seed_step(W, b, X, y)
    np.testing.assert_allclose(dW, t_dW, rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(db, t_db, rtol=F32_RTOL, atol=F32_ATOL)


def test_backprop_saturated_sigmoid_has_finite_vanishing_gradient():
    W = jnp.array([[1e4], [1e4]])
    X = jnp.array([[1.0, 1.0], [-1.0, -1.0]])
    y = jnp.array([[0.0], [1.0]])
    dW, db = dense_sigmoid_mse_grads(W, jnp.zeros(1), X, y)
    assert np.isfinite(np.asarray(dW)).all() and np.isfinite(np.asarray(db)).all()
    np.testing.assert_allclose(dW, 0.0, atol=F32_ATOL)
    np.testing.assert_allclose(dense_sigmoid_mse(W, jnp.zeros(1), X, y), 1.0, rtol=F32_RTOL)


def test_backprop_jit_vmap_and_check_grads(x64, rng):
    W = jnp.asarray(rng.normal(size=(5, 3, 2)))
    b = jnp.asarray(rng.normal(size=2))
    X = jnp.asarray(rng.normal(size=(4, 3)))
    y = jnp.asarray(rng.uniform(size=(4, 2)))
    dW, db = jax.jit(jax.vmap(dense_sigmoid_mse_grads, in_axes=(0, None, None, None)))(W, b, X, y)
    jitted = jax.jit(dense_sigmoid_mse_grads)
    for i in range(5):
        lW, lb = jitted(W[i], b, X, y)
        assert lW.dtype == jnp.float64
        np.testing.assert_allclose(dW[i], lW, rtol=F64_RTOL, atol=F64_ATOL)
        np.testing.assert_allclose(db[i], lb, rtol=F64_RTOL, atol=F64_ATOL)
    check_grads(dense_sigmoid_mse, (W[0], b, X, y), order=1, modes=("rev",))
    # the chain-rule gradient is itself differentiable: its Jacobian is the Hessian
    jac = jax.jit(jax.jacrev(lambda w: dense_sigmoid_mse_grads(w, b, X, y)[0]))(W[0])
    hess = jax.jit(jax.hessian(dense_sigmoid_mse))(W[0], b, X, y)
    np.testing.assert_allclose(jac, hess, rtol=F64_RTOL, atol=F64_ATOL)


# --------------------------------------------------------------------------- bad input


def _vector_loss(theta):
    return theta * 2.0


def _tuple_loss(theta):
    return jnp.sum(theta), theta


def _int_loss(theta):
    return jnp.array(1)


def _jit_scalar_lr_check():
    jax.jit(lambda lr: gradient_descent(quadratic, jnp.zeros(2), lr, 3))(jnp.ones(2))


def _jit_dense_check():
    jax.jit(dense_sigmoid_mse_grads)(jnp.zeros((2, 1)), jnp.zeros(2), jnp.zeros((3, 2)),
                                     jnp.zeros((3, 1)))


Z2 = jnp.zeros(2)
BAD_INPUTS = [
    (lambda: gradient_descent(quadratic, Z2, 0.1, 0), ValueError, r"num_steps must be >= 1"),
    (lambda: gradient_descent(quadratic, Z2, 0.1, 2.5), TypeError,
     r"num_steps must be a Python int"),
    (lambda: gradient_descent(quadratic, Z2, 0.1, True), TypeError, r"num_steps .* got bool"),
    (lambda: gradient_descent(quadratic, Z2, jnp.ones(2), 3), ValueError,
     r"learning_rate must be a scalar, got shape \(2,\)"),
    (_jit_scalar_lr_check, ValueError, r"learning_rate must be a scalar"),
    (lambda: gradient_descent(quadratic, Z2, 0.1, 3, unroll=0), ValueError, r"unroll"),
    (lambda: gradient_descent("loss", Z2, 0.1, 3), TypeError, r"loss_fn must be callable"),
    (lambda: gradient_descent(_vector_loss, Z2, 0.1, 3), ValueError,
     r"loss_fn must return a scalar, got shape \(2,\)"),
    (lambda: gradient_descent(_tuple_loss, Z2, 0.1, 3), TypeError, r"single scalar array"),
    (lambda: gradient_descent(_int_loss, Z2, 0.1, 3), TypeError, r"real floating scalar"),
    (lambda: gradient_descent(quadratic, {}, 0.1, 3), ValueError, r"params must contain"),
    (lambda: gradient_descent(quadratic, {"w": jnp.zeros(2, jnp.complex64)}, 0.1, 3), TypeError,
     r"params\['w'\] must be real"),
    (lambda: gradient_descent_sweep(quadratic, Z2, 0.1, 3), ValueError,
     r"learning_rates must have rank 1.*got shape \(\)"),
    (lambda: gradient_descent_sweep(quadratic, Z2, jnp.ones((2, 2)), 3), ValueError,
     r"learning_rates must have rank 1.*\(2, 2\)"),
    (lambda: gradient_descent_sweep(quadratic, Z2, jnp.ones(0), 3), ValueError,
     r"learning_rates must not be empty"),
    (lambda: gradient_descent_sweep(quadratic, Z2, jnp.ones(3), 3, chunk_size=0), ValueError,
     r"chunk_size must be >= 1"),
    (lambda: gradient_descent_sweep(quadratic, Z2, jnp.ones(3), -1), ValueError,
     r"num_steps must be >= 1"),
    (lambda: optimize(quadratic, Z2, optax.sgd, 3), TypeError,
     r"optimizer must be an optax.GradientTransformation"),
    (lambda: optimize(_vector_loss, Z2, optax.sgd(0.1), 3), ValueError, r"loss_fn must return"),
    (lambda: dense_sigmoid_mse_grads(jnp.zeros(2), jnp.zeros(1), jnp.zeros((2, 2)),
                                     jnp.zeros((2, 1))), ValueError, r"W must have rank 2"),
    (_jit_dense_check, ValueError, r"b must have shape \(1,\).*got shape \(2,\)"),
    (lambda: dense_sigmoid_mse(jnp.zeros((2, 1)), jnp.zeros(1), jnp.zeros((3, 3)),
                               jnp.zeros((3, 1))), ValueError, r"X must have shape \[n, 2\]"),
    (lambda: dense_sigmoid_mse(jnp.zeros((2, 1)), jnp.zeros(1), jnp.zeros((3, 2)),
                               jnp.zeros((2, 1))), ValueError, r"y must have shape \(3, 1\)"),
    (lambda: dense_sigmoid_mse(jnp.zeros((2, 1)), jnp.zeros(1), jnp.zeros((0, 2)),
                               jnp.zeros((0, 1))), ValueError, r"X must not be empty"),
]


@pytest.mark.parametrize(("call", "error", "match"), BAD_INPUTS)
def test_bad_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call()
