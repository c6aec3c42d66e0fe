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


# A fixed mask of SHAPE: row 1 is fully masked.
MASK = np.array([[True, True, False, True, False],
                 [False, False, False, False, False],
                 [True, True, True, True, True]])

MASKED_AND_TUPLE_AXES = [
    ("entropy_where", lambda p, q: entropy(p, where=MASK)),
    ("kl_where", lambda p, q: kl_divergence(p, q, where=MASK)),
    ("cross_entropy_where", lambda p, q: cross_entropy(p, q, where=MASK)),
    ("js_where", lambda p, q: js_divergence(p, q, where=MASK, base=2)),
    ("bce_where", lambda p, q: binary_cross_entropy(p, q, where=MASK)),
    ("entropy_axes", lambda p, q: entropy(p / 3, axis=(-1, 0))),
    ("kl_axes", lambda p, q: kl_divergence(p / 3, q / 3, axis=(0, 1))),
    ("cross_entropy_axes_where", lambda p, q: cross_entropy(p[None], q[None], axis=(2, 0),
                                                            where=MASK[None])),
    ("js_axes", lambda p, q: js_divergence(p / 3, q / 3, axis=(1, 0))),
]

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
    *MASKED_AND_TUPLE_AXES,
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
    *MASKED_AND_TUPLE_AXES,
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


# ---------------------------------------------------------------------------
# Masks (where=), tuple axes and exact zeros

MEASURES = {
    "entropy": lambda p, q, **kw: entropy(p, **kw),
    "kl": kl_divergence,
    "cross_entropy": cross_entropy,
    "js": js_divergence,
}


def _deleted_reference(name, p, q, mask, base=None):
    """The measure of each row of float64 ``p`` and ``q`` with the masked entries
    deleted, from SciPy's elementwise functions (no renormalisation)."""
    out = []
    for a_row, b_row, m_row in zip(p, q, mask, strict=True):
        a, b = a_row[m_row], b_row[m_row]
        if name == "entropy":
            terms = scipy.special.entr(a)
        elif name == "kl":
            terms = scipy.special.rel_entr(a, b)
        elif name == "cross_entropy":
            terms = -scipy.special.xlogy(a, b)
        else:
            m = (a + b) / 2
            terms = 0.5 * (scipy.special.rel_entr(a, m) + scipy.special.rel_entr(b, m))
        out.append(terms.sum())
    out = np.array(out)
    return out if base is None else out / np.log(base)


def _garbage(p, q, mask):
    """``p`` and ``q`` with every masked entry overwritten by values that would poison
    an unmasked result: inf, NaN, negative numbers and q = 0 < p pairs."""
    p, q = p.copy(), q.copy()
    junk_p = np.resize([np.inf, np.nan, 0.7, -1.0, 0.9], int((~mask).sum()))
    junk_q = np.resize([0.0, 0.5, 0.0, np.nan, -np.inf], int((~mask).sum()))
    p[~mask], q[~mask] = junk_p, junk_q
    return p, q


def _is_plus_zero(x) -> bool:
    """Every entry is +0.0, bit for bit (not -0.0, not a tiny rounding residue)."""
    x = np.asarray(x)
    return bool(np.all(x == 0) and not np.any(np.signbit(x)))


@pytest.mark.parametrize("base", [None, 2])
@pytest.mark.parametrize("name", list(MEASURES))
def test_masked_measures_equal_deleting_entries(name, base, rng):
    p, q = _dist(rng, zeros=True), _dist(rng)
    want = _deleted_reference(name, p, q, MASK, base)
    p_bad, q_bad = _garbage(p, q, MASK)
    fn = MEASURES[name]
    got = np.asarray(fn(p_bad, q_bad, base=base, where=MASK))
    np.testing.assert_allclose(got, want, rtol=F32_RTOL, atol=F32_ATOL)
    assert got[1] == 0  # the fully masked row
    jitted = jax.jit(lambda p, q, m: fn(p, q, base=base, where=m))(p_bad, q_bad, MASK)
    np.testing.assert_allclose(np.asarray(jitted), got, rtol=F32_RTOL, atol=F32_ATOL)


@pytest.mark.parametrize("name", list(MEASURES))
def test_masked_entries_get_zero_finite_gradients(name, rng):
    p, q = _garbage(_dist(rng, zeros=True), _dist(rng), MASK)
    fn = MEASURES[name]
    g = jax.jit(jax.grad(lambda p, q: jnp.sum(fn(p, q, where=MASK)), argnums=(0, 1)))(p, q)
    for x in map(np.asarray, g):
        assert np.all(np.isfinite(x))
        np.testing.assert_array_equal(x[~MASK], 0.0)
    np.testing.assert_array_equal(np.asarray(fn(p, q, where=np.zeros(SHAPE, bool))), 0.0)


def test_masks_broadcast_against_the_inputs(rng):
    p, q = _dist(rng), _dist(rng)
    cols = np.array([True, False, True, True, False])
    for fn in MEASURES.values():
        np.testing.assert_array_equal(np.asarray(fn(p, q, where=cols)),
                                      np.asarray(fn(p, q, where=np.broadcast_to(cols, SHAPE))))
    # One q for every row of p; the mask may have the broadcast shape.
    np.testing.assert_allclose(np.asarray(kl_divergence(p, q[0], where=MASK)),
                               _deleted_reference("kl", p, np.broadcast_to(q[0], SHAPE), MASK),
                               rtol=F32_RTOL, atol=F32_ATOL)


def test_masked_validate_checks_the_included_entries():
    p = jnp.array([[0.5, 0.5, 7.0], [jnp.nan, -1.0, 2.0]])
    m = jnp.array([[True, True, False], [False, False, False]])
    assert float(entropy(p, base=2, validate=True, where=m)[0]) == 1.0
    with pytest.raises(ValueError, match="p must hold probabilities"):
        entropy(jnp.array([0.5, 0.4, 0.1]), validate=True, where=jnp.array([True, True, False]))
    with pytest.raises(ValueError, match="y_pred must hold probabilities"):
        binary_cross_entropy(jnp.ones(2), jnp.array([0.5, 2.0]), validate=True,
                             where=jnp.array([True, True]))
    binary_cross_entropy(jnp.ones(2), jnp.array([0.5, 2.0]), validate=True,
                         where=jnp.array([True, False]))


def test_binary_cross_entropy_where(rng):
    y = (rng.random(SHAPE) < 0.5).astype(np.float64)
    y_hat = rng.uniform(0.01, 0.99, SHAPE)
    keep = MASK | (np.arange(5) == 4)  # row 1 keeps one element
    want = sklearn.metrics.log_loss(y[keep], y_hat[keep], labels=[0.0, 1.0])
    y_bad, y_hat_bad = y.copy(), y_hat.copy()
    y_bad[~keep] = np.resize([1.0, np.nan, 0.0], int((~keep).sum()))
    y_hat_bad[~keep] = np.resize([0.0, 0.5, np.inf], int((~keep).sum()))
    assert float(binary_cross_entropy(y_bad, y_hat_bad, where=keep)) == pytest.approx(
        want, rel=F32_RTOL)
    assert float(jax.jit(binary_cross_entropy)(y_bad, y_hat_bad, where=keep)) == pytest.approx(
        want, rel=F32_RTOL)
    g = jax.grad(binary_cross_entropy, argnums=(0, 1))(y_bad, y_hat_bad, where=keep)
    for x in map(np.asarray, g):
        assert np.all(np.isfinite(x))
        np.testing.assert_array_equal(x[~keep], 0.0)
    # The gradient on the included elements is that of the mean over them alone.
    g_kept = jax.grad(binary_cross_entropy, argnums=1)(y[keep], y_hat[keep])
    np.testing.assert_allclose(np.asarray(g[1])[keep], np.asarray(g_kept), rtol=F32_RTOL)
    # Nothing included: exactly 0 with zero gradient. A mask broadcasts to both inputs.
    none = np.zeros(SHAPE, bool)
    assert _is_plus_zero(binary_cross_entropy(y_bad, y_hat_bad, where=none))
    g = jax.grad(binary_cross_entropy, argnums=1)(y_bad, y_hat_bad, where=none)
    np.testing.assert_array_equal(np.asarray(g), 0.0)
    rows = np.array([[True], [False], [True]])
    assert float(binary_cross_entropy(y[0], y_hat, where=rows)) == pytest.approx(
        float(binary_cross_entropy(y[0], y_hat[[0, 2]])), rel=F32_RTOL)


@pytest.mark.parametrize("axis", [(1, 2), (2, 1), (-1, 0), [0, 2]])
@pytest.mark.parametrize("name", list(MEASURES))
def test_tuple_axes_match_scipy_on_flattened_rows(name, axis, rng):
    shape = (2, 3, 4)
    norm = tuple(a % 3 for a in axis)
    p, q = rng.random(shape), rng.random(shape) + 0.1
    p[p < 0.3] = 0.0
    p, q = p / p.sum(norm, keepdims=True), q / q.sum(norm, keepdims=True)

    size = int(np.prod([shape[a] for a in norm]))

    def rows(x):  # the reduced axes last, flattened
        return np.moveaxis(x, norm, (-2, -1)).reshape(-1, size)

    got = np.asarray(MEASURES[name](p, q, axis=axis, validate=True))
    everything = np.ones((rows(p).shape[0], size), bool)
    want = _deleted_reference(name, rows(p), rows(q), everything)
    assert got.shape == tuple(n for i, n in enumerate(shape) if i not in norm)
    np.testing.assert_allclose(got.reshape(-1), want, rtol=F32_RTOL, atol=F32_ATOL)
    # With a mask over the reduced axes: deleting the masked entries.
    m = rng.random(shape) < 0.6
    got = np.asarray(MEASURES[name](p, q, axis=axis, where=m))
    want = _deleted_reference(name, rows(p), rows(q), rows(m))
    np.testing.assert_allclose(got.reshape(-1), want, rtol=F32_RTOL, atol=F32_ATOL)


def test_tuple_axes_validate():
    p = np.full((2, 3), 1 / 6)
    assert float(entropy(p, axis=(0, 1), validate=True)) == pytest.approx(np.log(6),
                                                                          rel=F32_RTOL)
    with pytest.raises(ValueError, match=r"summing to 1 along axis 1"):
        entropy(p, axis=1, validate=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5,), (7, 13), (64, 1000)])  # scalar and vector loops
def test_exact_zeros(dtype, shape, rng):
    """KL(p || p) and JS(p, p) are +0.0 bit for bit, the entropy of a one-hot is 0:
    eager and jitted, with zeros in the rows, in float32 and float64."""
    with jax.enable_x64(dtype == np.float64):
        p = _dist(rng, shape, zeros=True).astype(dtype)
        mask = rng.random(shape) < 0.7
        for f in (kl_divergence, js_divergence):
            for out in (f(p, p.copy()), jax.jit(f)(p, p.copy()), jax.jit(lambda a, f=f: f(a, a))(p),
                        f(p, p, base=2), f(p, p.copy(), where=mask),
                        jax.jit(lambda a, b, m, f=f: f(a, b, where=m))(p, p.copy(), mask)):
                assert out.dtype == dtype
                assert _is_plus_zero(out), (f.__name__, np.asarray(out))
        one_hot = np.eye(shape[-1], dtype=dtype)[rng.integers(0, shape[-1], shape[:-1])]
        for out in (entropy(one_hot), jax.jit(entropy)(one_hot), entropy(one_hot, base=2),
                    entropy(one_hot, where=mask)):
            np.testing.assert_array_equal(np.asarray(out), 0.0)


@given(weights, weights)
def test_exact_zeros_law(w, v):
    for dtype in (np.float32, np.float64):
        with jax.enable_x64(dtype == np.float64):
            p = _normalise(w).astype(dtype)
            assert _is_plus_zero(kl_divergence(p, p.copy()))
            assert _is_plus_zero(js_divergence(p, p.copy()))
            assert _is_plus_zero(kl_divergence(p, p.copy(), where=v > 0.5))
            one_hot = np.eye(SHAPE[-1], dtype=dtype)[np.argmax(w, -1)]
            np.testing.assert_array_equal(np.asarray(entropy(one_hot)), 0.0)


@given(weights, weights, hnp.arrays(np.bool_, SHAPE))
def test_masking_an_entry_equals_deleting_it(w, v, mask):
    p, q = _normalise(w), _normalise(v + 1e-3)
    for name, fn in MEASURES.items():
        np.testing.assert_allclose(np.asarray(fn(p, q, where=mask)),
                                   _deleted_reference(name, p, q, mask),
                                   rtol=F32_RTOL, atol=F32_LOOSE, err_msg=name)


garbage = hnp.arrays(np.float32, (2, SHAPE[-1]), elements=st.floats(width=32))  # inf, NaN too


MASKED_GRADS = {name: jax.jit(jax.grad(lambda p, q, m, fn=fn: jnp.sum(fn(p, q, where=m)),
                                       argnums=(0, 1))) for name, fn in MEASURES.items()}


@given(weights, garbage, garbage)
def test_fully_masked_rows_give_zero_with_zero_gradient(w, junk_p, junk_q):
    p, q = _normalise(w), _normalise(w[::-1] + 0.1)
    p[1:], q[1:] = junk_p, junk_q
    mask = np.zeros(SHAPE, bool)
    mask[0] = True
    for name, fn in MEASURES.items():
        out = np.asarray(fn(p, q, where=mask))
        np.testing.assert_array_equal(out[1:], 0.0, err_msg=name)
        assert np.isfinite(out[0]), name
        for x in map(np.asarray, MASKED_GRADS[name](p, q, mask)):
            assert np.all(np.isfinite(x)), name
            np.testing.assert_array_equal(x[1:], 0.0, err_msg=name)
    assert _is_plus_zero(binary_cross_entropy(p, q, where=np.zeros(SHAPE, bool)))


def test_masked_kernels_match_unmasked_ones_without_a_mask(rng):
    """An all-True mask changes nothing but the program (a select per input)."""
    p, q = _f32(_dist(rng, zeros=True)), _f32(_dist(rng))
    everything = np.ones(SHAPE, bool)
    for fn in MEASURES.values():
        np.testing.assert_allclose(np.asarray(fn(p, q, where=everything)),
                                   np.asarray(fn(p, q)), rtol=F32_RTOL, atol=F32_ATOL)


BAD_MASKS_AND_AXES = [
    (lambda: entropy(P3, where=jnp.ones(3)), TypeError,
     "where must be a boolean mask .True = include., got dtype float32"),
    (lambda: js_divergence(P3, P3, where=[1, 0, 1]), TypeError, "got dtype int32"),
    (lambda: entropy(P3, where=jnp.ones(4, bool)), ValueError,
     r"shapes do not broadcast: p.shape=\(3,\), where.shape=\(4,\)"),
    (lambda: entropy(P3, where=jnp.ones((2, 3), bool)), ValueError,
     r"where must broadcast to the shape of p \(3,\), got where.shape=\(2, 3\)"),
    (lambda: kl_divergence(P3, jnp.ones((2, 3)) / 3, where=jnp.ones(2, bool)), ValueError,
     r"broadcast\(p, q\).shape=\(2, 3\), where.shape=\(2,\)"),
    (lambda: cross_entropy(P3, P3, where=jnp.ones((3, 1), bool)), ValueError,
     r"where must broadcast to the shape of p \(3,\)"),
    (lambda: binary_cross_entropy(jnp.ones(3), P3, where=jnp.ones(2, bool)), ValueError,
     r"y_true.shape=\(3,\), where.shape=\(2,\)"),
    (lambda: binary_cross_entropy(jnp.ones(3), P3, where=jnp.ones(3)), TypeError,
     "where must be a boolean mask"),
    (lambda: entropy(jnp.ones((2, 3)) / 6, axis=(0, 0)), ValueError,
     r"axis must not repeat an axis, got \(0, 0\) for p of shape \(2, 3\) "
     r"\(0 and 0 are both axis 0\)"),
    (lambda: kl_divergence(jnp.ones((2, 3)) / 6, jnp.ones((2, 3)) / 6, axis=(1, -1)),
     ValueError, r"1 and -1 are both axis 1"),
    (lambda: kl_divergence(jnp.ones((2, 3)) / 6, jnp.ones((2, 3)) / 6, axis=(0, 2, -3)),
     ValueError, r"axis \(0, 2, -3\) is out of range for p of shape \(2, 3\): 2, -3 not in "
                 r"\[-2, 2\)"),
    (lambda: cross_entropy(P3, P3, axis=()), ValueError,
     r"axis must name at least one axis of p, got \(\)"),
    (lambda: js_divergence(P3, P3, axis=(0, 1.0)), TypeError,
     r"axis must be an int or a tuple of ints, got \(0, 1.0\)"),
    (lambda: entropy(P3, axis="0"), TypeError, "axis must be an int or a tuple of ints"),
    (lambda: entropy(jnp.zeros((2, 0, 3)), axis=(2, 1)), ValueError,
     r"p must not be empty along axis \(2, 1\)"),
    (lambda: jax.jit(lambda p: entropy(p, axis=(0, -1)))(P3), ValueError, "must not repeat"),
    (lambda: jax.jit(lambda p, m: kl_divergence(p, p, where=m))(P3, jnp.ones(2, bool)),
     ValueError, "shapes do not broadcast"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD_MASKS_AND_AXES)
def test_bad_masks_and_axes(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_rel_entr_formulations_agree():
    """The CPU and GPU/TPU kernels of x log(x / y) agree with scipy.special.rel_entr on
    every input a measure takes, NaN in y propagating; like _xlogy they differ at
    x = 0, y = inf only."""
    from jaxmath.probability import _rel_entr_minmax, _rel_entr_select

    want = scipy.special.rel_entr(XLOGY_X.astype(np.float64), XLOGY_Y).astype(np.float32)
    want[-1] = -np.inf  # rel_entr is inf for y = inf (a convention); x log(x / inf) -> -inf
    for kernel in (_rel_entr_minmax, _rel_entr_select):
        got = np.asarray(kernel(XLOGY_X, XLOGY_Y))
        np.testing.assert_allclose(got, want, rtol=F32_RTOL, atol=0)
        assert np.all(np.asarray(kernel(XLOGY_X, XLOGY_X)) == 0)  # exactly 0 where x == y
    assert np.isnan(_rel_entr_minmax(np.float32(0), np.float32(np.inf)))
    assert _rel_entr_select(np.float32(0), np.float32(np.inf)) == 0


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_kl_on_accelerators_is_the_plain_select_program(platform):
    """On a GPU or TPU KL compiles to sum(where(p != 0, p (log p - log q), 0)): two logs
    and one product per term, no extra work; on CPU it keeps the vectorising min/max form.
    Without where= no mask is compiled in: a single select (the x = 0 test) per term."""
    p = jnp.full((4, 8), 1 / 8)
    want = _hlo_ops(lambda p, q: jnp.sum(jnp.where((p != 0) | jnp.isnan(q),
                                                   p * (jnp.log(p) - jnp.log(q)), 0), -1),
                    p, p, platform=platform)
    assert _hlo_ops(kl_divergence, p, p, platform=platform) == want
    for fn in (kl_divergence, js_divergence, cross_entropy):
        assert "select" not in _hlo_ops(fn, p, p, platform="cpu"), fn.__name__
    assert _hlo_ops(entropy, p, platform=platform)["select"] == 1


@pytest.mark.parametrize("name", list(MEASURES))
def test_vmap_over_masks_equals_loop(name, rng):
    fn = MEASURES[name]
    ps = np.stack([_f32(_dist(rng, zeros=True)) for _ in range(3)])
    qs = np.stack([_f32(_dist(rng)) for _ in range(3)])
    ms = rng.random((3, *SHAPE)) < 0.6
    got = jax.vmap(lambda p, q, m: fn(p, q, where=m, axis=(0, 1)))(ps, qs, ms)
    want = [np.asarray(fn(p, q, where=m, axis=(0, 1))) for p, q, m in zip(ps, qs, ms,
                                                                          strict=True)]
    np.testing.assert_allclose(np.asarray(got), np.stack(want), rtol=F32_RTOL, atol=F32_ATOL)
