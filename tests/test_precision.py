"""The precision policy reaches the lax ops (jaxmath/_precision.py).

Classical math computes every matrix product and convolution at Precision.HIGHEST
(float32 on every backend); neural-network layers leave it to JAX's default
(``precision=None`` in the jaxpr) and pass a ``precision`` argument through to
every product, forward and backward. Checked on the traced program, so the test
says the same on a CPU as on a GPU or TPU.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from jax.extend import core as jex

import jaxmath as jm
from jaxmath import metrics
from jaxmath._precision import check_precision, context_name

HIGHEST = (lax.Precision.HIGHEST, lax.Precision.HIGHEST)
PRODUCTS = ("dot_general", "conv_general_dilated")


def _subjaxprs(value):
    if isinstance(value, jex.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jex.Jaxpr):
        yield value
    elif isinstance(value, tuple | list):
        for v in value:
            yield from _subjaxprs(v)


def _precisions(jaxpr: jex.Jaxpr) -> list:
    """The ``precision`` of every dot_general / conv in ``jaxpr`` and its sub-jaxprs."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in PRODUCTS:
            found.append(eqn.params["precision"])
        for value in eqn.params.values():
            for sub in _subjaxprs(value):
                found.extend(_precisions(sub))
    return found


def precisions(fn, *args) -> list:
    found = _precisions(jax.make_jaxpr(fn)(*args).jaxpr)
    assert found, "the traced program has no matrix product or convolution"
    return found


def assert_all(fn, *args, want):
    got = precisions(fn, *args)
    assert all(p == want for p in got), got


RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.standard_normal((12, 4)), jnp.float32)
Y = jnp.asarray(RNG.standard_normal((10, 4)), jnp.float32)
THETA = jnp.zeros(4)
TARGET = jnp.asarray(RNG.standard_normal(12), jnp.float32)


def _loss(theta):
    return jnp.mean((X @ theta - TARGET) ** 2)  # a user's loss, written with @


# ------------------------------------------------------------------ classical math

CLASSICAL = {
    "linear": lambda: jm.linear(X.T, Y[0, :1].repeat(12)),
    "convolve": lambda: jm.convolve(X[:, 0], X[:3, 1]),
    "pca_full": lambda: jm.PCA.fit(X, n_components=2, svd_solver="covariance_eigh").transform(Y),
    "pca_randomized": lambda: jm.PCA.fit(X, n_components=2, svd_solver="randomized",
                                         key=jax.random.key(0)).inverse_transform(Y[:, :2]),
    "sliced_wasserstein": lambda: metrics.sliced_wasserstein(X, Y, jax.random.key(0),
                                                                  num_projections=8),
    "wasserstein_1d": lambda: metrics.wasserstein_1d(X[:, 0], Y[:, 0]),
    "mmd_squared": lambda: metrics.mmd_squared(X, Y, 1.0),
    "dense_sigmoid_mse": lambda: jax.grad(jm.dense_sigmoid_mse)(
        jnp.ones((4, 2)), jnp.zeros(2), X, jnp.ones((12, 2))),
    "dense_sigmoid_mse_grads": lambda: jm.dense_sigmoid_mse_grads(
        jnp.ones((4, 2)), jnp.zeros(2), X, jnp.ones((12, 2))),
    "gradient_descent": lambda: jm.gradient_descent(_loss, THETA, 0.1, 3),
    "gradient_descent_sweep": lambda: jm.gradient_descent_sweep(_loss, THETA,
                                                                jnp.array([0.1, 0.2]), 3),
    "optimize": lambda: jm.optimize(_loss, THETA, optax.sgd(0.1), 3),
}


@pytest.mark.parametrize("name", sorted(CLASSICAL))
def test_classical_math_computes_every_product_at_highest(name):
    assert_all(CLASSICAL[name], want=HIGHEST)


@pytest.mark.parametrize("fn", [jm.gradient_descent, jm.optimize])
def test_optimisers_leave_the_loss_to_jax_with_precision_none(fn):
    extra = (0.1,) if fn is jm.gradient_descent else (optax.sgd(0.1),)
    assert_all(lambda: fn(_loss, THETA, *extra, 3, precision=None), want=None)
    with jax.default_matmul_precision("tensorfloat32"):  # the caller's context then applies
        got = precisions(lambda: fn(_loss, THETA, *extra, 3, precision=None))
    assert all(p == (lax.Precision.HIGH,) * 2 for p in got), got


def test_gradient_descent_at_highest_equals_the_default_run_on_cpu():
    if jax.default_backend() != "cpu":
        pytest.skip("on a CPU both precisions are float32")
    a = jm.gradient_descent(_loss, THETA, 0.1, 20)
    b = jm.gradient_descent(_loss, THETA, 0.1, 20, precision=None)
    np.testing.assert_array_equal(a[1], b[1])


# ------------------------------------------------------------------ neural-network layers

Q = jnp.asarray(RNG.standard_normal((2, 6, 4)), jnp.float32)
Q_HEADS = Q.reshape(2, 6, 2, 2)
IMAGES = jnp.asarray(RNG.standard_normal((2, 8, 8, 3)), jnp.float32)
KERNEL = jnp.asarray(RNG.standard_normal((3, 3, 3, 4)), jnp.float32)


def _attention(implementation):
    def f(precision):
        def loss(q):
            return jnp.sum(jm.attention(q, Q, Q, is_causal=True, implementation=implementation,
                                        precision=precision))
        return jax.value_and_grad(loss)(Q)
    return f


def _module(module, *inputs, rngs=None):
    def f(precision):
        m = module.clone(precision=precision)
        variables = m.init(jax.random.key(0), *inputs)

        def loss(params):
            out = m.apply({**variables, "params": params}, *inputs, rngs=rngs)
            return jnp.sum(out.astype(jnp.float32))
        return jax.value_and_grad(loss)(variables["params"])
    return f


NEURAL = {
    "attention_xla": _attention("xla"),
    "attention_blockwise": _attention("blockwise"),
    "attention_pallas": _attention("pallas"),
    "multi_head_attention": lambda precision: jax.grad(lambda q: jnp.sum(
        jm.multi_head_attention(q, Q_HEADS, Q_HEADS, precision=precision)))(Q_HEADS),
    "conv2d": lambda precision: jax.grad(lambda k: jnp.sum(
        jm.conv2d(IMAGES, k, padding="SAME", precision=precision)))(KERNEL),
    "Conv2D": _module(jm.Conv2D(features=4, kernel_size=3), IMAGES),
    "MultiHeadAttention": _module(jm.MultiHeadAttention(num_heads=2), Q),
    "MultiHeadAttention_dropout": _module(
        jm.MultiHeadAttention(num_heads=2, dropout_rate=0.5, deterministic=False), Q,
        rngs={"dropout": jax.random.key(1)}),
    "TransformerLM": _module(jm.TransformerLM(vocab_size=5, num_layers=1, d_model=4,
                                              num_heads=2, max_len=6),
                             jnp.array([[1, 2, 3]])),
    "Transformer_features": _module(jm.Transformer(num_layers=1, d_model=4, num_heads=2,
                                                   max_len=6), Q),
    "MLPDenoiser": _module(jm.MLPDenoiser(features=8, num_blocks=1), X[:, :2],
                           jnp.arange(12)),
    "UNet": _module(jm.UNet(channels=4, channel_mults=(1, 2), num_groups=2, num_heads=2),
                    IMAGES[..., :1], jnp.array([1, 2])),
}


@pytest.mark.parametrize("name", sorted(NEURAL))
def test_neural_layers_follow_jax_default(name):
    assert_all(lambda: NEURAL[name](None), want=None)


@pytest.mark.parametrize("name", sorted(NEURAL))
def test_neural_layers_pass_precision_to_every_product(name):
    assert_all(lambda: NEURAL[name]("highest"), want=HIGHEST)


def test_flax_dense_stays_the_reference_for_the_module_attribute():
    # jaxmath's modules mean by `precision` what flax.linen.Dense means by it.
    dense = nn.Dense(3, precision="highest")
    assert_all(lambda: dense.init_with_output(jax.random.key(0), X)[0], want=HIGHEST)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("call", [
    lambda: jm.attention(Q, Q, Q, precision="float16"),
    lambda: jm.multi_head_attention(Q_HEADS, Q_HEADS, Q_HEADS, precision=3),
    lambda: jm.conv2d(IMAGES, KERNEL, precision="float64"),
    lambda: jm.linear(X, X[0], precision=("highest",)),
    lambda: jm.convolve(X[:, 0], X[:3, 1], precision="exact"),
    lambda: jm.gradient_descent(_loss, THETA, 0.1, 3, precision="fastest"),
])
def test_bad_precision_names_the_argument(call):
    with pytest.raises(ValueError, match="precision must be"):
        call()


def test_check_precision_accepts_what_jnp_matmul_accepts():
    for p in (None, "default", "high", "highest", "tensorfloat32", lax.Precision.HIGH,
              ("highest", "default"), "F32_F32_F32", lax.DotAlgorithmPreset.BF16_BF16_F32):
        jnp.matmul(X, X.T, precision=check_precision(p))
    assert check_precision(["highest", "default"]) == ("highest", "default")  # hashable
    assert context_name(lax.Precision.HIGHEST) == "highest"
