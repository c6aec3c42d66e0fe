"""Tests for jaxmath.probability against SciPy, scikit-learn, PyTorch and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance
import scipy.special
import scipy.stats
import sklearn.metrics
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.experimental import checkify
from jax.test_util import check_grads

from jaxmath.probability import (
    bayes_posterior,
    bayes_theorem,
    binary_cross_entropy,
    conditional,
    conditional_probability,
    cross_entropy,
    entropy,
    joint_probability,
    js_divergence,
    kl_divergence,
    log_bayes_posterior,
    marginal,
    mutual_information,
)
from tests.tolerances import F32_ATOL, F32_LOOSE, F32_RTOL, F64_ATOL, F64_RTOL, GRAD_RTOL

SHAPE = (3, 5)  # hypothesis draws values of one fixed shape: new shapes would recompile
FD_EPS = 1e-6  # finite-difference step in float64: probabilities here can be ~1e-2

weights = hnp.arrays(np.float64, SHAPE, elements=st.floats(0, 1))


def _normalise(w: np.ndarray) -> np.ndarray:
    """Rows of ``w`` as distributions (zeros kept; an all-zero row becomes one-hot)."""
    w = w.copy()
    w[w.sum(-1) == 0, 0] = 1.0
    return w / w.sum(-1, keepdims=True)


def _dist(rng, shape=SHAPE, zeros=False):
    w = rng.random(shape)
    if zeros:
        w[rng.random(shape) < 0.3] = 0.0
    return _normalise(w)


def _f32(x):
    return np.asarray(x, np.float32)


# ---------------------------------------------------------------------------
# Bayes


def test_bayes_theorem_seed_example_and_closed_form():
    # Seed: P(D|T+) = 0.3333; the closed form 0.99*0.01 / (0.99*0.01 + 0.02*0.99) = 1/3.
    assert float(bayes_theorem(0.01, 0.99, 0.02)) == pytest.approx(1 / 3, rel=F32_RTOL)
    p_a = np.array([0.01, 0.2, 0.5])[:, None]
    sens, fpr = np.array([0.9, 0.99]), np.array([0.05, 0.3])
    want = sens * p_a / (sens * p_a + fpr * (1 - p_a))
    np.testing.assert_allclose(np.asarray(bayes_theorem(p_a, sens, fpr)), want, rtol=F32_RTOL)


def test_bayes_theorem_zero_evidence():
    out = bayes_theorem(jnp.array([1.0, 0.0]), jnp.array([0.0, 0.5]), jnp.array([0.5, 0.0]))
    np.testing.assert_array_equal(np.asarray(out), [0.0, 0.0])
    g = jax.grad(lambda a: jnp.sum(bayes_theorem(a, jnp.array([0.0, 0.5]), 0.0)))(
        jnp.array([1.0, 0.0]))
    assert np.all(np.isfinite(np.asarray(g)))
    with pytest.raises(ValueError, match=r"evidence P\(B\) must be positive"):
        bayes_theorem(1.0, 0.0, 0.5, validate=True)


def test_bayes_posterior_matches_numpy(rng):
    prior = _dist(rng)
    lik = rng.random(SHAPE)
    want = prior * lik / (prior * lik).sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(bayes_posterior(prior, lik)), want, rtol=F32_RTOL,
                               atol=F32_ATOL)
    # axis=0 and a prior shared across rows by broadcasting
    np.testing.assert_allclose(np.asarray(bayes_posterior(prior[0][:, None], lik.T, axis=0)),
                               (prior[0] * lik / (prior[0] * lik).sum(-1, keepdims=True)).T,
                               rtol=F32_RTOL, atol=F32_ATOL)


@given(weights, hnp.arrays(np.float64, SHAPE, elements=st.floats(1e-3, 1)))
def test_posterior_sums_to_one(w, lik):
    post = np.asarray(bayes_posterior(_normalise(w), lik))
    np.testing.assert_allclose(post.sum(-1), 1.0, rtol=F32_RTOL)
    assert np.all(post[_normalise(w) == 0] == 0)  # zero prior -> exactly zero posterior


def test_bayes_posterior_zero_prior_tiny_likelihood_and_zero_evidence():
    prior = jnp.array([[0.0, 0.5, 0.5], [0.0, 1.0, 0.0]])
    lik = jnp.array([[0.9, 1e-30, 3e-30], [1.0, 0.0, 1.0]])  # row 2: zero evidence
    post = np.asarray(bayes_posterior(prior, lik))
    np.testing.assert_allclose(post[0], [0.0, 0.25, 0.75], rtol=F32_RTOL)
    np.testing.assert_array_equal(post[1], 0.0)
    g = jax.grad(lambda p, l: jnp.sum(bayes_posterior(p, l) ** 2), argnums=(0, 1))(prior, lik)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in g)
    with pytest.raises(ValueError, match="evidence"):
        bayes_posterior(prior, lik, validate=True)


def test_log_bayes_posterior(rng):
    prior = _dist(rng, zeros=True)
    log_lik = rng.normal(scale=300.0, size=SHAPE)  # far below float32's exp range
    with np.errstate(divide="ignore"):
        log_prior = np.log(prior)
    got = np.asarray(log_bayes_posterior(log_prior, log_lik))
    want = scipy.special.log_softmax(log_prior + log_lik, axis=-1)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite)
    np.testing.assert_allclose(got[finite], want[finite], rtol=F32_RTOL, atol=F32_LOOSE)
    # Agrees with the linear-space posterior where that is representable.
    lik = np.exp(rng.normal(size=SHAPE))
    np.testing.assert_allclose(np.exp(np.asarray(log_bayes_posterior(log_prior, np.log(lik)))),
                               np.asarray(bayes_posterior(prior, lik)), atol=F32_ATOL)
    # Zero evidence: all -inf, no NaN, zero gradient.
    row = jnp.array([-jnp.inf, -jnp.inf])
    assert np.all(np.asarray(log_bayes_posterior(row, jnp.zeros(2))) == -np.inf)
    g = jax.grad(lambda l: jnp.sum(jnp.exp(log_bayes_posterior(row, l))))(jnp.zeros(2))
    np.testing.assert_array_equal(np.asarray(g), 0.0)


# ---------------------------------------------------------------------------
# Joint, conditional, marginal


def test_joint_and_conditional_probability():
    p_a_given_b, p_b = np.array([0.5, 0.2, 0.9]), np.array([0.4, 0.0, 1.0])
    joint = np.asarray(joint_probability(p_a_given_b, p_b))
    np.testing.assert_allclose(joint, p_a_given_b * p_b, rtol=F32_RTOL)
    cond = np.asarray(conditional_probability(joint, p_b))
    np.testing.assert_allclose(cond, [0.5, 0.0, 0.9], rtol=F32_RTOL)  # P(B) = 0 -> 0
    g = jax.grad(lambda b: jnp.sum(conditional_probability(0.0, b)))(jnp.array([0.0, 0.5]))
    assert np.all(np.isfinite(np.asarray(g)))


def test_marginal_and_conditional_tables(rng):
    joint = rng.random((3, 4, 2))
    joint /= joint.sum()
    np.testing.assert_allclose(np.asarray(marginal(joint, axis=1)), joint.sum(1), rtol=F32_RTOL)
    np.testing.assert_allclose(np.asarray(marginal(joint, axis=(0, -1))), joint.sum((0, 2)),
                               rtol=F32_RTOL)
    cond = np.asarray(conditional(joint, given_axis=0))  # P(Y, Z | X)
    np.testing.assert_allclose(cond, joint / joint.sum((1, 2), keepdims=True), rtol=F32_RTOL)
    np.testing.assert_allclose(cond.sum((1, 2)), 1.0, rtol=F32_RTOL)
    cond = np.asarray(conditional(joint, given_axis=(0, 2)))  # P(Y | X, Z)
    np.testing.assert_allclose(cond.sum(1), 1.0, rtol=F32_RTOL)
    # Chain rule: P(X, Y) = P(Y | X) P(X)
    table = joint.sum(-1)
    np.testing.assert_allclose(
        np.asarray(joint_probability(conditional(table, 0), marginal(table, 1)[:, None])),
        table, rtol=F32_RTOL)


def test_conditional_zero_marginal():
    joint = jnp.array([[0.1, 0.0], [0.9, 0.0]])
    cond = np.asarray(conditional(joint, given_axis=1))
    np.testing.assert_allclose(cond, [[0.1, 0.0], [0.9, 0.0]], rtol=F32_RTOL)
    g = jax.grad(lambda j: jnp.sum(conditional(j, 1) ** 2))(joint)
    assert np.all(np.isfinite(np.asarray(g)))


# ---------------------------------------------------------------------------
# Information measures: values


@pytest.mark.parametrize("base", [None, 2, 10])
def test_entropy_matches_scipy(base, rng):
    p = _dist(rng, zeros=True)
    np.testing.assert_allclose(np.asarray(entropy(p, base=base)),
                               scipy.stats.entropy(p, axis=-1, base=base), rtol=F32_RTOL,
                               atol=F32_ATOL)
    np.testing.assert_allclose(np.asarray(entropy(p.T, axis=0, base=base)),
                               scipy.stats.entropy(p, axis=-1, base=base), rtol=F32_RTOL,
                               atol=F32_ATOL)


def test_entropy_seed_example():
    # The seed prints 0.4698716731013394 for the biased coin; SciPy gives 0.3250829733914482.
    assert float(entropy(jnp.array([0.9, 0.1]))) == pytest.approx(
        scipy.stats.entropy([0.9, 0.1]), rel=F32_RTOL)
    assert float(entropy(jnp.array([0.5, 0.5]))) == pytest.approx(np.log(2), rel=F32_RTOL)


@pytest.mark.parametrize("base", [None, 2])
def test_kl_matches_scipy_and_torch(base, rng):
    p, q = _dist(rng, zeros=True), _dist(rng)
    want = scipy.stats.entropy(p, q, axis=-1, base=base)
    np.testing.assert_allclose(np.asarray(kl_divergence(p, q, base=base)), want,
                               rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(np.asarray(kl_divergence(p, q)),
                               scipy.special.rel_entr(p, q).sum(-1), rtol=F32_RTOL,
                               atol=F32_ATOL)
    # torch.nn.functional.kl_div(input=log q, target=p) is D(p || q)
    torch_kl = torch.nn.functional.kl_div(torch.log(torch.from_numpy(q)), torch.from_numpy(p),
                                          reduction="none").sum(-1).numpy()
    np.testing.assert_allclose(np.asarray(kl_divergence(p, q)), torch_kl, rtol=F32_RTOL,
                               atol=F32_ATOL)


def test_kl_seed_example_and_edges():
    # Seed: 0.08228287850505156 (correct; SciPy agrees).
    assert float(kl_divergence(jnp.array([0.7, 0.3]), jnp.array([0.5, 0.5]))) == pytest.approx(
        scipy.stats.entropy([0.7, 0.3], [0.5, 0.5]), rel=F32_RTOL)
    p = jnp.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    q = jnp.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
    np.testing.assert_array_equal(np.asarray(kl_divergence(p, q)), [0.0, np.inf])
    np.testing.assert_array_equal(scipy.special.rel_entr(p, q).sum(-1), [0.0, np.inf])


def test_cross_entropy(rng):
    p, q = _dist(rng, zeros=True), _dist(rng)
    want = -(scipy.special.xlogy(p, q)).sum(-1)
    np.testing.assert_allclose(np.asarray(cross_entropy(p, q)), want, rtol=F32_RTOL)
    # H(p, q) = H(p) + D(p || q)
    np.testing.assert_allclose(np.asarray(cross_entropy(p, q, base=2)),
                               scipy.stats.entropy(p, axis=-1, base=2)
                               + scipy.stats.entropy(p, q, axis=-1, base=2), rtol=F32_RTOL)
    np.testing.assert_array_equal(
        np.asarray(cross_entropy(jnp.array([[1.0, 0.0], [0.0, 1.0]]), jnp.array([1.0, 0.0]))),
        [0.0, np.inf])


def test_binary_cross_entropy_matches_sklearn_and_torch(rng):
    y = (rng.random(20) < 0.5).astype(np.float64)
    y_hat = rng.uniform(0.01, 0.99, 20)
    got = float(binary_cross_entropy(y, y_hat))
    assert got == pytest.approx(sklearn.metrics.log_loss(y, y_hat), rel=F32_RTOL)
    soft = rng.random(20)
    assert float(binary_cross_entropy(soft, y_hat)) == pytest.approx(
        torch.nn.functional.binary_cross_entropy(torch.from_numpy(y_hat),
                                                 torch.from_numpy(soft)).item(), rel=F32_RTOL)


def test_binary_cross_entropy_seed_example():
    # The seed prints 0.164252033486018; scikit-learn's log_loss gives 0.14462152754328741.
    y, y_hat = np.array([1.0, 0.0, 1.0]), np.array([0.9, 0.1, 0.8])
    assert float(binary_cross_entropy(y, y_hat)) == pytest.approx(
        sklearn.metrics.log_loss(y, y_hat), rel=F32_RTOL)


def test_binary_cross_entropy_exact_zero_and_one():
    y = jnp.array([1.0, 0.0, 1.0, 0.0])
    y_hat = jnp.array([1.0, 0.0, 0.5, 0.5])
    assert float(binary_cross_entropy(y, y_hat)) == pytest.approx(np.log(2) / 2, rel=F32_RTOL)
    # Exact limits: d/dŷ of -[y log ŷ + (1-y) log(1-ŷ)] / n is -1/n at (1, 1) and +1/n at (0, 0).
    g = np.asarray(jax.grad(binary_cross_entropy, argnums=1)(y, y_hat))
    np.testing.assert_allclose(g, np.array([-1.0, 1.0, -2.0, 2.0]) / 4, rtol=F32_RTOL)
    assert float(binary_cross_entropy(jnp.array([1.0]), jnp.array([0.0]))) == np.inf
    g = jax.grad(binary_cross_entropy, argnums=(0, 1))(jnp.array([1.0, 0.0]),
                                                       jnp.array([0.0, 1.0]))
    assert all(np.all(np.isfinite(np.asarray(x))) for x in g)


def test_js_matches_scipy(rng):
    p, q = _dist(rng, zeros=True), _dist(rng, zeros=True)
    want = scipy.spatial.distance.jensenshannon(p, q, axis=-1) ** 2  # SciPy returns the sqrt
    np.testing.assert_allclose(np.asarray(js_divergence(p, q)), want, rtol=F32_LOOSE,
                               atol=F32_ATOL)
    want2 = scipy.spatial.distance.jensenshannon(p, q, axis=-1, base=2) ** 2
    np.testing.assert_allclose(np.asarray(js_divergence(p, q, base=2)), want2, rtol=F32_LOOSE,
                               atol=F32_ATOL)


def test_mutual_information_matches_sklearn(rng):
    counts = rng.integers(0, 6, size=(4, 3))
    counts[0, 0] = 0
    joint = counts / counts.sum()
    want = sklearn.metrics.mutual_info_score(None, None, contingency=counts)
    assert float(mutual_information(joint)) == pytest.approx(want, rel=F32_RTOL, abs=F32_ATOL)
    assert float(mutual_information(joint, base=2)) == pytest.approx(want / np.log(2),
                                                                     rel=F32_RTOL, abs=F32_ATOL)
    independent = np.outer([0.2, 0.8], [0.1, 0.3, 0.6])
    assert float(mutual_information(independent)) == pytest.approx(0.0, abs=F32_ATOL)
    batch = np.stack([joint[:2, :2] / joint[:2, :2].sum(), independent[:, :2] / 0.4])
    np.testing.assert_allclose(np.asarray(mutual_information(batch)),
                               [float(mutual_information(t)) for t in batch], atol=F32_ATOL)


# ---------------------------------------------------------------------------
# Laws (hypothesis)


@given(weights, weights)
def test_kl_nonnegative_and_zero_on_equal(w, v):
    p, q = _normalise(w), _normalise(v + 1e-3)
    assert np.all(np.asarray(kl_divergence(p, q)) >= -F32_ATOL)
    np.testing.assert_allclose(np.asarray(kl_divergence(p, p)), 0.0, atol=F32_ATOL)


@given(weights)
def test_entropy_bounds(w):
    h = np.asarray(entropy(_normalise(w)))
    assert np.all(h >= -F32_ATOL) and np.all(h <= np.log(SHAPE[-1]) + F32_ATOL)
    np.testing.assert_allclose(np.asarray(entropy(_normalise(w), base=2)), h / np.log(2),
                               rtol=F32_RTOL, atol=F32_ATOL)


@given(weights, weights)
def test_js_symmetric_and_bounded(w, v):
    p, q = _normalise(w), _normalise(v)
    pq, qp = np.asarray(js_divergence(p, q)), np.asarray(js_divergence(q, p))
    np.testing.assert_allclose(pq, qp, atol=F32_ATOL)
    assert np.all(pq >= -F32_ATOL) and np.all(pq <= np.log(2) + F32_ATOL)


@given(hnp.arrays(np.float64, (4, 3), elements=st.floats(0, 1)))
def test_mutual_information_laws(w):
    w = w.copy()
    w[0, 0] += 1e-3
    joint = w / w.sum()
    mi = float(mutual_information(joint))
    h_xy = float(entropy(joint.reshape(-1)))
    assert mi >= -F32_ATOL
    assert mi == pytest.approx(float(entropy(joint.sum(1))) + float(entropy(joint.sum(0)))
                               - h_xy, abs=F32_LOOSE)
    assert mi <= min(float(entropy(joint.sum(1))), float(entropy(joint.sum(0)))) + F32_LOOSE


# ---------------------------------------------------------------------------
# Gradients: finite at 0 and 1, correct inside


BOUNDARY_P = jnp.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
BOUNDARY_Q = jnp.array([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.2, 0.3, 0.5]])

TWO_ARG = [kl_divergence, cross_entropy, js_divergence]


def test_boundary_gradients_are_finite():
    for fn in TWO_ARG:
        grad = jax.jit(jax.grad(lambda p, q, fn=fn: jnp.sum(fn(p, q)), argnums=(0, 1)))
        for p, q in [(BOUNDARY_P, BOUNDARY_Q), (BOUNDARY_P, BOUNDARY_P)]:
            g = grad(p, q)
            assert all(np.all(np.isfinite(np.asarray(x))) for x in g), fn.__name__
    for fn in [entropy, lambda p: mutual_information(p / 3.0)]:
        g = jax.jit(jax.grad(lambda p, fn=fn: jnp.sum(fn(p))))(BOUNDARY_P)
        assert np.all(np.isfinite(np.asarray(g)))


def test_entropy_gradient_convention():
    g = np.asarray(jax.grad(lambda p: entropy(p))(jnp.array([1.0, 0.0])))
    # d/dp of -p log p is -1 at p = 1 (exact) and +inf at p = 0, returned as -log(tiny).
    np.testing.assert_allclose(g, [-1.0, -np.log(np.finfo(np.float32).tiny)], rtol=F32_RTOL)
    # Through a softmax, an underflowed probability contributes 0, not 0 * inf = NaN.
    z = jnp.array([0.0, -200.0, 1.0])
    g = jax.jit(jax.grad(lambda z: entropy(jax.nn.softmax(z))))(z)
    assert np.all(np.isfinite(np.asarray(g)))
    assert float(jax.jit(jax.grad(lambda p: jnp.sum(jax.scipy.special.entr(p))))(
        jnp.array([0.0, 1.0]))[0]) == np.inf  # what the boundary convention avoids


def test_gradients_match_torch(rng):
    p = _f32(_dist(rng))
    q = _f32(_dist(rng))
    pt, qt = (torch.from_numpy(a).requires_grad_() for a in (p, q))
    (pt * (pt / qt).log()).sum().backward()
    g = jax.grad(lambda p, q: jnp.sum(kl_divergence(p, q)), argnums=(0, 1))(p, q)
    np.testing.assert_allclose(np.asarray(g[0]), pt.grad.numpy(), rtol=GRAD_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(np.asarray(g[1]), qt.grad.numpy(), rtol=GRAD_RTOL, atol=F32_ATOL)
    pt = torch.from_numpy(p).requires_grad_()
    torch.special.entr(pt).sum().backward()
    np.testing.assert_allclose(np.asarray(jax.grad(lambda p: jnp.sum(entropy(p)))(p)),
                               pt.grad.numpy(), rtol=GRAD_RTOL, atol=F32_ATOL)


CHECK_GRADS = [
    ("entropy", lambda p, q: entropy(p)),
    ("kl", kl_divergence),
    ("cross_entropy", cross_entropy),
    ("js", js_divergence),
    ("bce", binary_cross_entropy),
    ("mi", lambda p, q: mutual_information(p * q)),
    ("bayes_posterior", bayes_posterior),
    ("log_bayes_posterior", lambda p, q: log_bayes_posterior(jnp.log(p), q)),
    ("bayes_theorem", lambda p, q: bayes_theorem(p, q, 0.3)),
    ("conditional", lambda p, q: conditional(p * q, 0)),
    ("conditional_probability", lambda p, q: conditional_probability(p * q, q)),
    ("joint_probability", joint_probability),
    ("marginal", lambda p, q: marginal(p * q, 1)),
]


@pytest.mark.parametrize(("name", "fn"), CHECK_GRADS)
def test_check_grads_interior_x64(name, fn, x64, rng):
    p = jnp.asarray(_dist(rng))
    q = jnp.asarray(_dist(rng))
    assert fn(p, q).dtype == jnp.float64  # float64 in, float64 out
    check_grads(fn, (p, q), order=1, modes=["fwd", "rev"], eps=FD_EPS)


# ---------------------------------------------------------------------------
# jit, vmap, dtypes


ALL = [
    ("bayes_theorem", lambda p, q: bayes_theorem(p, q, 0.1)),
    ("bayes_posterior", bayes_posterior),
    ("log_bayes_posterior", lambda p, q: log_bayes_posterior(jnp.log(p), jnp.log(q))),
    ("joint_probability", joint_probability),
    ("conditional_probability", lambda p, q: conditional_probability(p * q, q)),
    ("marginal", lambda p, q: marginal(p, 0)),
    ("conditional", lambda p, q: conditional(p, 1)),
    ("entropy", lambda p, q: entropy(p, base=2)),
    ("kl", kl_divergence),
    ("cross_entropy", cross_entropy),
    ("bce", binary_cross_entropy),
    ("js", js_divergence),
    ("mi", lambda p, q: mutual_information(p / 3.0)),
]


@pytest.mark.parametrize(("name", "fn"), ALL)
def test_jit_and_vmap(name, fn, rng):
    p, q = _f32(_dist(rng, zeros=True)), _f32(_dist(rng))
    eager = np.asarray(fn(p, q))
    np.testing.assert_allclose(np.asarray(jax.jit(fn)(p, q)), eager, rtol=F32_RTOL,
                               atol=F32_ATOL)
    batch_p, batch_q = np.stack([p, p[::-1]]), np.stack([q, q[:, ::-1]])
    looped = np.stack([np.asarray(fn(a, b)) for a, b in zip(batch_p, batch_q, strict=True)])
    np.testing.assert_allclose(np.asarray(jax.vmap(fn)(batch_p, batch_q)), looped,
                               rtol=F32_RTOL, atol=F32_ATOL)
    assert fn(p, q).dtype == jnp.float32


def test_float64_precision(x64, rng):
    p, q = _dist(rng, zeros=True), _dist(rng)
    np.testing.assert_allclose(np.asarray(kl_divergence(p, q)), scipy.stats.entropy(p, q, axis=-1),
                               rtol=F64_RTOL, atol=F64_ATOL)
    np.testing.assert_allclose(np.asarray(entropy(p)), scipy.stats.entropy(p, axis=-1),
                               rtol=F64_RTOL, atol=F64_ATOL)


def test_half_precision_is_summed_in_float32(rng):
    p = _dist(rng, shape=(2, 300))
    out = entropy(jnp.asarray(p, jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float64), scipy.stats.entropy(p, axis=-1),
                               rtol=2e-2)


# ---------------------------------------------------------------------------
# Validation and bad inputs


def test_validate_under_jit_reports_through_checkify():
    bad = jnp.array([0.5, 0.6])
    f = checkify.checkify(jax.jit(lambda p: entropy(p, validate=True)))
    err, _ = f(bad)
    with pytest.raises(checkify.JaxRuntimeError, match="p must hold probabilities"):
        err.throw()
    err, out = f(jnp.array([0.5, 0.5]))
    err.throw()
    assert float(out) == pytest.approx(np.log(2), rel=F32_RTOL)


P3 = jnp.array([0.2, 0.3, 0.5])

BAD_INPUTS = [
    (lambda: entropy(P3, axis=1), ValueError, r"axis 1 is out of range for p of shape \(3,\)"),
    (lambda: entropy(jnp.zeros((2, 0))), ValueError, r"p must not be empty along axis 1"),
    (lambda: entropy(P3 * 1j), TypeError, "p must be real"),
    (lambda: entropy(P3, base=1), ValueError, "base must be positive and different from 1"),
    (lambda: entropy(P3, base=-2.0), ValueError, "base must be positive"),
    (lambda: entropy(P3, base="e"), TypeError, "base must be a number"),
    (lambda: entropy(jnp.array([0.5, 0.6]), validate=True), ValueError,
     r"p must hold probabilities in \[0, 1\] summing to 1"),
    (lambda: kl_divergence(P3, jnp.ones(4) / 4), ValueError,
     r"shapes do not broadcast: p.shape=\(3,\), q.shape=\(4,\)"),
    (lambda: kl_divergence(P3, jnp.array([1.2, -0.2, 0.0]), validate=True), ValueError,
     "q must hold probabilities"),
    (lambda: cross_entropy(P3, P3, axis=2), ValueError, "axis 2 is out of range"),
    (lambda: js_divergence(P3, jnp.ones((2, 2))), ValueError, "shapes do not broadcast"),
    (lambda: binary_cross_entropy(jnp.ones(3), jnp.ones(2)), ValueError,
     r"y_true.shape=\(3,\), y_pred.shape=\(2,\)"),
    (lambda: binary_cross_entropy(jnp.ones(0), jnp.ones(0)), ValueError, "must not be empty"),
    (lambda: binary_cross_entropy(jnp.ones(2), jnp.array([0.5, 2.0]), validate=True),
     ValueError, r"y_pred must hold probabilities in \[0, 1\]"),
    (lambda: mutual_information(P3), ValueError, r"joint must have rank >= 2, got shape \(3,\)"),
    (lambda: mutual_information(jnp.ones((2, 2)), validate=True), ValueError,
     "joint .flattened over its last two axes. must hold probabilities"),
    (lambda: bayes_theorem(jnp.ones(2), jnp.ones(3), 0.1), ValueError,
     r"p_a.shape=\(2,\), p_b_given_a.shape=\(3,\)"),
    (lambda: bayes_theorem(1.5, 0.5, 0.5, validate=True), ValueError, "p_a must hold"),
    (lambda: bayes_posterior(P3, jnp.ones(2)), ValueError, "prior.shape=.3,., likelihood"),
    (lambda: bayes_posterior(jnp.array([0.5, 0.6]), jnp.ones(2), validate=True), ValueError,
     "prior must hold probabilities"),
    (lambda: bayes_posterior(P3, -P3, validate=True), ValueError,
     "likelihood must be non-negative"),
    (lambda: log_bayes_posterior(P3, P3, axis=-2), ValueError, "axis -2 is out of range"),
    (lambda: conditional_probability(0.5, 0.2, validate=True), ValueError,
     r"p_ab must not exceed p_b"),
    (lambda: joint_probability(jnp.ones(2), jnp.ones(3)), ValueError, "do not broadcast"),
    (lambda: marginal(jnp.ones((2, 2)), axis=(0, 0)), ValueError, "axis must not repeat"),
    (lambda: marginal(jnp.ones((2, 2)) / 4, axis=2), ValueError, "axis 2 is out of range"),
    (lambda: conditional(jnp.ones((2, 2)) / 4, given_axis=(0, 1)), ValueError,
     "covers every axis of joint of shape .2, 2.: no variable is left"),
    (lambda: conditional(jnp.ones((2, 2)), 0, validate=True), ValueError,
     r"joint \(flattened\) must hold probabilities"),
    (lambda: jax.jit(kl_divergence)(P3, jnp.ones(4) / 4), ValueError, "shapes do not broadcast"),
    (lambda: jax.jit(lambda p: entropy(p, axis=3))(P3), ValueError, "axis 3 is out of range"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD_INPUTS)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------
# The x log y kernel on every backend: CPU and accelerator formulations.

XLOGY_X = np.array([0.0, 0.0, 0.0, 1e-30, 0.3, 1.0, 2.0, 0.5, 0.0, 0.7], np.float32)
XLOGY_Y = np.array([0.0, 0.5, 1e-38, 0.2, 0.0, 1.0, 3.0, np.nan, np.nan, np.inf], np.float32)


def test_xlogy_formulations_agree():
    """The CPU kernel (min/max) and the GPU/TPU kernel (select) give the same values,
    NaN in y propagating in both; they differ at x = 0, y = inf only (not a probability)."""
    from jaxmath.probability import _xlogy_minmax, _xlogy_select

    cpu, accel = _xlogy_minmax(XLOGY_X, XLOGY_Y), _xlogy_select(XLOGY_X, XLOGY_Y)
    want = scipy.special.xlogy(XLOGY_X.astype(np.float64), XLOGY_Y).astype(np.float32)
    np.testing.assert_array_equal(cpu, want)
    np.testing.assert_array_equal(accel, want)
    assert np.isnan(_xlogy_minmax(np.float32(0), np.float32(np.inf)))
    assert _xlogy_select(np.float32(0), np.float32(np.inf)) == 0


def _hlo_ops(fn, *args, platform):
    """Counts of the arithmetic operations of ``fn`` lowered for ``platform`` (the
    predicate plumbing -- compares, converts, ors -- varies with JAX's settings)."""
    import collections
    import re

    text = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()
    arithmetic = ("log", "multiply", "select", "reduce", "add", "subtract", "negate",
                  "minimum", "maximum", "divide")
    return collections.Counter(op for op in re.findall(r"stablehlo\.(\w+)", text)
                               if op in arithmetic)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_entropy_on_accelerators_is_the_plain_xlogy_program(platform):
    """On a GPU or TPU jm.entropy compiles to what -sum(xlogy(p, p)) does (no extra work)."""
    p = jnp.full((4, 8), 1 / 8)
    want = _hlo_ops(lambda p: -jnp.sum(jax.scipy.special.xlogy(p, p), -1), p,
                    platform=platform)
    assert _hlo_ops(entropy, p, platform=platform) == want
    assert "minimum" not in _hlo_ops(kl_divergence, p, p, platform=platform)
    assert "select" not in _hlo_ops(entropy, p, platform="cpu")  # the vectorising form
