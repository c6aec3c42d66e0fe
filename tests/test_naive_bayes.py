"""GaussianNB against scikit-learn, under jit/vmap/grad/scan, and its edge cases."""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads
from sklearn.datasets import load_iris, load_wine, make_blobs
from sklearn.naive_bayes import GaussianNB as SkGaussianNB

from jaxmath.naive_bayes import GaussianNB
from tests.tolerances import F32_LOOSE, F64_ATOL, F64_RTOL, SKLEARN_PROBA_ATOL

# float64 against float64 computed in another order (scikit-learn's per-class loops,
# a merge of batches, repeated rows): agreement to ~1e-13, checked at 1e-9.
ORDER_RTOL = 1e-9


def _blobs(seed=0, n=120, d=3, c=3):  # one shape for most tests: fewer compilations
    X, y = make_blobs(n_samples=n, n_features=d, centers=c, cluster_std=2.0, random_state=seed)
    return X + 10.0, y  # an offset, so centring matters


DATASETS = {
    "iris": lambda: load_iris(return_X_y=True),
    "wine": lambda: load_wine(return_X_y=True),
    "blobs": _blobs,
}


def _sk_proba(sk, X):
    with warnings.catch_warnings():  # log(0) prior for classes without samples
        warnings.simplefilter("ignore", RuntimeWarning)
        return sk.predict_proba(X), sk.predict_joint_log_proba(X)


def _close(a, b, atol=F64_ATOL, rtol=F64_RTOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=rtol)


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_fit_matches_sklearn(name, x64):
    X, y = DATASETS[name]()
    sk = SkGaussianNB().fit(X, y)
    model = GaussianNB.fit(X, y)
    for leaf in jax.tree.leaves(model):  # float64 in, float64 out
        assert leaf.dtype == jnp.float64
    assert model.predict_proba(X).dtype == jnp.float64 and model.predict(X).dtype == jnp.int32
    _close(model.mean, sk.theta_, rtol=ORDER_RTOL)
    _close(model.smoothed_var, sk.var_, rtol=ORDER_RTOL)
    _close(model.class_count, sk.class_count_)
    _close(model.class_prior, sk.class_prior_)
    _close(model.epsilon, sk.epsilon_, rtol=ORDER_RTOL)
    p, jll = _sk_proba(sk, X)
    _close(model.joint_log_likelihood(X), jll, rtol=ORDER_RTOL)
    _close(model.predict_proba(X), p, atol=SKLEARN_PROBA_ATOL, rtol=0)
    _close(model.predict_log_proba(X), sk.predict_log_proba(X), rtol=ORDER_RTOL, atol=ORDER_RTOL)
    np.testing.assert_array_equal(model.predict(X), sk.predict(X))


def test_float32_agreement():
    """float32 fit and predict vs scikit-learn in float64 (measured: ~3e-6 on wine)."""
    X, y = DATASETS["wine"]()
    p_ref = SkGaussianNB().fit(X, y).predict_proba(X)
    model = GaussianNB.fit(X.astype(np.float32), y)
    assert model.mean.dtype == jnp.float32
    p = model.predict_proba(X.astype(np.float32))
    assert p.dtype == jnp.float32
    _close(p, p_ref, atol=SKLEARN_PROBA_ATOL, rtol=0)


def test_priors_and_sample_weight_match_sklearn(x64, rng):
    X, y = _blobs(1)
    priors = np.array([0.2, 0.3, 0.5])
    w = rng.uniform(0.1, 3.0, size=len(y))
    sk = SkGaussianNB(priors=priors).fit(X, y, sample_weight=w)
    model = GaussianNB.fit(X, y, priors=priors, sample_weight=w)
    _close(model.class_prior, priors)
    _close(model.mean, sk.theta_, rtol=ORDER_RTOL)
    # scikit-learn takes epsilon from the unweighted variance, jaxmath from the weighted one.
    _close(model.var, sk.var_ - sk.epsilon_, rtol=ORDER_RTOL, atol=F64_ATOL)
    _close(model.predict_proba(X), _sk_proba(sk, X)[0], atol=SKLEARN_PROBA_ATOL, rtol=0)


def test_integer_weights_equal_repeated_rows(x64, rng):
    X, y = _blobs(2)
    counts = rng.integers(0, 4, size=len(y))
    weighted = GaussianNB.fit(X, y, sample_weight=counts)
    repeated = GaussianNB.fit(np.repeat(X, counts, 0), np.repeat(y, counts))
    chex.assert_trees_all_close(weighted, repeated, rtol=ORDER_RTOL, atol=F64_ATOL)


def test_seed_example_is_an_exact_tie():
    """The seed says [1]; the point is equidistant from both class means."""
    X = np.array([[1, 2], [2, 3], [3, 4], [4, 5]], float)
    y = np.array([0, 0, 1, 1])
    x = np.array([[2.5, 3.5]])
    sk = SkGaussianNB().fit(X, y)
    model = GaussianNB.fit(X, y)
    jll = model.joint_log_likelihood(x)
    assert jll[0, 0] == jll[0, 1]  # exactly equal, also in float32
    _close(sk.predict_proba(x), [[0.5, 0.5]])
    _close(model.predict_proba(x), sk.predict_proba(x), atol=SKLEARN_PROBA_ATOL, rtol=0)
    np.testing.assert_array_equal(sk.predict(x), [0])  # argmax takes the first of a tie
    np.testing.assert_array_equal(model.predict(x), [0])


# ---------------------------------------------------------------------- partial_fit


def _chunks(n, k, seed=0):
    perm = np.random.default_rng(seed).permutation(n)
    return np.array_split(perm, k)


@pytest.mark.parametrize("name", ["iris", "blobs"])
def test_partial_fit_equals_fit_and_sklearn(name, x64):
    X, y = DATASETS[name]()
    C = int(y.max()) + 1
    sk, model = SkGaussianNB(), GaussianNB.init(C, X.shape[1], dtype=jnp.float64)
    for idx in _chunks(len(y), 5):
        sk.partial_fit(X[idx], y[idx], classes=np.arange(C))
        model = model.partial_fit(X[idx], y[idx])
    full = GaussianNB.fit(X, y)
    chex.assert_trees_all_close(model, full, rtol=ORDER_RTOL, atol=F64_ATOL)
    _close(model.predict_proba(X), _sk_proba(sk, X)[0], atol=SKLEARN_PROBA_ATOL, rtol=0)
    _close(model.predict_proba(X), SkGaussianNB().fit(X, y).predict_proba(X),
           atol=SKLEARN_PROBA_ATOL, rtol=0)


def test_partial_fit_epsilon_uses_all_data(x64):
    """scikit-learn recomputes epsilon from the latest batch only; jaxmath from all data.

    On wine (feature variances from 0.015 to 1e5, so epsilon ~ 1e-4 is 1 % of the
    smallest) scikit-learn's chunked fit departs from its own full fit by more than
    the tolerance; jaxmath's chunked fit equals the full fit of both libraries.
    """
    X, y = DATASETS["wine"]()
    sk, model = SkGaussianNB(), GaussianNB.init(3, X.shape[1], dtype=jnp.float64)
    for idx in _chunks(len(y), 5):
        sk.partial_fit(X[idx], y[idx], classes=np.arange(3))
        model = model.partial_fit(X[idx], y[idx])
    _close(model.epsilon, 1e-9 * np.var(X, axis=0).max(), rtol=ORDER_RTOL)
    assert abs(sk.epsilon_ / (1e-9 * np.var(X, axis=0).max()) - 1) > 0.1  # latest batch only
    p_full = SkGaussianNB().fit(X, y).predict_proba(X)
    assert np.abs(sk.predict_proba(X) - p_full).max() > SKLEARN_PROBA_ATOL
    _close(model.predict_proba(X), p_full, atol=SKLEARN_PROBA_ATOL, rtol=0)


def test_class_absent_from_batch_keeps_its_stats(x64):
    X, y = _blobs(3)
    model = GaussianNB.fit(X[:60], y[:60], num_classes=3)
    sk = SkGaussianNB().partial_fit(X[:60], y[:60], classes=np.arange(3))
    keep = y[60:] != 2
    updated = model.partial_fit(X[60:][keep], y[60:][keep])
    sk.partial_fit(X[60:][keep], y[60:][keep])
    np.testing.assert_array_equal(updated.mean[2], model.mean[2])  # bit for bit
    np.testing.assert_array_equal(updated.var[2], model.var[2])
    np.testing.assert_array_equal(updated.class_count[2], model.class_count[2])
    assert np.all(np.isfinite(updated.var)) and np.all(np.isfinite(updated.mean))
    _close(updated.predict_proba(X), _sk_proba(sk, X)[0], atol=SKLEARN_PROBA_ATOL, rtol=0)
    # An empty batch changes nothing but the (recomputed, equal) epsilon.
    same = updated.partial_fit(np.zeros((0, 3)), np.zeros((0,), int))
    chex.assert_trees_all_close(same, updated, rtol=F64_RTOL)


def test_streaming_with_scan_equals_fit(x64):
    X, y = _blobs(4)
    Xb, yb = X.reshape(3, 40, 3), y.reshape(3, 40)

    @jax.jit
    def stream(Xb, yb):
        def step(model, batch):
            return model.partial_fit(*batch), None
        return jax.lax.scan(step, GaussianNB.init(3, 3, dtype=jnp.float64), (Xb, yb))[0]

    chex.assert_trees_all_close(stream(Xb, yb), GaussianNB.fit(X, y), rtol=ORDER_RTOL,
                                atol=F64_ATOL)


@given(st.integers(0, 2**31 - 1))
def test_partial_fit_order_does_not_matter(seed):
    """Two batches (split by 0/1 weights, so the shapes stay fixed) merge in either order."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        X, y = rng.normal(size=(40, 3)) * 3 + 5, rng.integers(0, 3, 40)
        first = (rng.uniform(size=40) < rng.uniform()).astype(float)
        a = GaussianNB.init(3, 3, dtype=jnp.float64)
        ab = a.partial_fit(X, y, first).partial_fit(X, y, 1 - first)
        ba = a.partial_fit(X, y, 1 - first).partial_fit(X, y, first)
        chex.assert_trees_all_close(ab, ba, rtol=ORDER_RTOL, atol=F64_ATOL)
        chex.assert_trees_all_close(ab, GaussianNB.fit(X, y, 3), rtol=ORDER_RTOL, atol=F64_ATOL)
        _close(jnp.sum(ab.predict_proba(X), -1), np.ones(40))


# ------------------------------------------------------------------------ edge cases


def test_class_without_samples(x64):
    X, y = _blobs(5)
    model = GaussianNB.fit(X, y, num_classes=4)  # label 3 never occurs
    sk = SkGaussianNB().partial_fit(X, y, classes=np.arange(4))
    assert model.class_count[3] == 0 and model.class_prior[3] == 0
    Xt = np.concatenate([X, np.zeros((1, 3))])  # the empty class's mean is 0
    p, logp = model.predict_proba(Xt), model.predict_log_proba(Xt)
    assert not np.any(np.isnan(p)) and not np.any(np.isnan(logp))
    np.testing.assert_array_equal(p[:, 3], 0)
    assert np.all(np.isneginf(logp[:, 3]))
    assert not np.any(model.predict(Xt) == 3)
    _close(p, _sk_proba(sk, Xt)[0], atol=SKLEARN_PROBA_ATOL, rtol=0)
    # Gradients stay finite with a -inf log prior.
    g = jax.grad(lambda x: model.predict_log_proba(x)[:, :3].sum())(jnp.asarray(X[:5]))
    assert np.all(np.isfinite(g))


def test_constant_feature_matches_sklearn(x64):
    X, y = _blobs(6)
    Xc = np.concatenate([X, np.full((120, 1), 7.0), y[:, None] * 2.0], axis=1)
    sk = SkGaussianNB().fit(Xc, y)
    model = GaussianNB.fit(Xc, y)
    Xt = Xc + np.array([0, 0, 0, 0.5, 0.1])  # off the constants too
    for x in (Xc, Xt):
        p = model.predict_proba(x)
        assert np.all(np.isfinite(p))
        _close(p, sk.predict_proba(x), atol=SKLEARN_PROBA_ATOL, rtol=0)
    # float32: the direct squared deviations keep the near-zero variances exact.
    m32 = GaussianNB.fit(Xc.astype(np.float32), y)
    np.testing.assert_array_equal(m32.predict(Xt.astype(np.float32)), sk.predict(Xt))


def test_all_features_constant_gives_the_prior(x64):
    X, y = np.ones((6, 2)), np.array([0, 0, 1, 1, 1, 1])
    model = GaussianNB.fit(X, y)
    assert model.epsilon == 1e-9  # scikit-learn's epsilon would be 0 (then 0/0)
    _close(model.predict_proba(X), np.tile([1 / 3, 2 / 3], (6, 1)))
    assert np.all(np.isfinite(model.predict_proba(X + 1.0)))


# -------------------------------------------------------------------- transformations


def test_jit_matches_eager():
    X, y = DATASETS["iris"]()
    X = X.astype(np.float32)
    fit = jax.jit(GaussianNB.fit, static_argnames="num_classes")
    eager, jitted = GaussianNB.fit(X, y), fit(X, y, num_classes=3)
    chex.assert_trees_all_close(jitted, eager, rtol=F32_LOOSE)
    predict = jax.jit(lambda m, x: (m.predict_proba(x), m.predict(x)))
    p, labels = predict(jitted, X)
    _close(p, eager.predict_proba(X), atol=SKLEARN_PROBA_ATOL, rtol=0)
    np.testing.assert_array_equal(labels, eager.predict(X))
    with jax.enable_x64(True):  # a float64 batch is cast to the model's dtype (scan carries)
        assert eager.partial_fit(X[:10].astype(np.float64), y[:10]).mean.dtype == jnp.float32
    # var_smoothing is a leaf: a sweep over it is one compiled program.
    sweep = jax.jit(jax.vmap(lambda s: fit(X, y, 3, var_smoothing=s).epsilon))
    _close(sweep(jnp.array([1e-9, 1e-3])), [eager.epsilon, eager.epsilon * 1e6], rtol=F32_LOOSE)


def test_vmap_over_bootstrap_equals_loop(x64, rng):
    X, y = map(jnp.asarray, DATASETS["iris"]())
    idx = rng.integers(0, len(y), size=(2, len(y)))
    counts = np.stack([np.bincount(i, minlength=len(y)) for i in idx]).astype(float)
    by_weight = jax.vmap(lambda w: GaussianNB.fit(X, y, 3, sample_weight=w))(counts)
    by_index = jax.vmap(lambda i: GaussianNB.fit(X[i], y[i], 3))(idx)
    for b in range(2):
        ref = GaussianNB.fit(X[idx[b]], y[idx[b]], 3)
        for batched in (by_weight, by_index):
            chex.assert_trees_all_close(jax.tree.map(lambda a, b=b: np.asarray(a)[b], batched),
                                        ref, rtol=ORDER_RTOL, atol=F64_ATOL)
    probas = jax.vmap(lambda m: m.predict_proba(X))(by_index)
    _close(probas[1], GaussianNB.fit(X[idx[1]], y[idx[1]]).predict_proba(X), atol=F64_ATOL)


def test_gradients_match_finite_differences(x64):
    X, y = _blobs(8, n=30)
    Xt = jnp.asarray(X[:4] + 0.3)
    model = GaussianNB.fit(X, y)
    check_grads(jax.jit(model.predict_log_proba), (Xt,), order=1, modes=["rev"])
    fit_then_predict = jax.jit(lambda x, w: GaussianNB.fit(x, y, 3, sample_weight=w)
                               .predict_log_proba(Xt))
    check_grads(fit_then_predict, (jnp.asarray(X), jnp.ones(len(y))), order=1, modes=["rev"])


# ------------------------------------------------------------------------ bad inputs

_X, _Y = np.arange(12.0).reshape(6, 2), np.array([0, 1, 0, 1, 0, 1])
_M = GaussianNB.fit(np.array([[1.0, 2], [2, 3], [3, 4], [4, 5]]), np.array([0, 0, 1, 1]))

BAD = [
    (lambda: GaussianNB.fit(_X[0], _Y), ValueError, r"X must have rank 2, got shape \(2,\)"),
    (lambda: GaussianNB.fit(np.zeros((0, 2)), _Y[:0]), ValueError, r"X must not be empty"),
    (lambda: GaussianNB.fit(_X, _Y.astype(float)), TypeError, r"y must have an integer dtype"),
    (lambda: GaussianNB.fit(_X, _Y[:5]), ValueError, r"one label per row of X: X has 6 rows"),
    (lambda: GaussianNB.fit(_X, _Y + 1, num_classes=2), ValueError,
     r"labels in \[0, num_classes=2\), got labels in \[1, 2\]"),
    (lambda: GaussianNB.fit(_X, _Y - 1, num_classes=2), ValueError,
     r"labels in \[0, num_classes=2\), got labels in \[-1, 0\]"),
    (lambda: GaussianNB.fit(_X, _Y, num_classes=2.0), TypeError,
     r"num_classes must be a Python int"),
    (lambda: GaussianNB.fit(_X, _Y, priors=[0.5, 0.3, 0.2]), ValueError,
     r"priors must have shape \(2,\)"),
    (lambda: GaussianNB.fit(_X, _Y, priors=[0.5, 0.6]), ValueError,
     r"priors must be >= 0 and sum to 1"),
    (lambda: GaussianNB.fit(_X, _Y, sample_weight=-np.ones(6)), ValueError,
     r"sample_weight must hold finite weights >= 0"),
    (lambda: GaussianNB.fit(_X, _Y, sample_weight=np.ones(5)), ValueError,
     r"sample_weight must have shape \(6,\)"),
    (lambda: GaussianNB.fit(_X, _Y, var_smoothing=-1.0), ValueError,
     r"var_smoothing must be >= 0"),
    (lambda: _M.predict(np.zeros((3, 5))), ValueError, r"X must have 2 features .* \(3, 5\)"),
    (lambda: _M.partial_fit(np.zeros((3, 5)), _Y[:3]), ValueError, r"X must have 2 features"),
    (lambda: GaussianNB.init(0, 2), ValueError, r"num_classes must be >= 1, got 0"),
    (lambda: jax.jit(lambda X, y: GaussianNB.fit(X, y))(_X, _Y), ValueError,
     r"num_classes must be given when y is traced"),
    (lambda: jax.jit(lambda X, y, c: GaussianNB.fit(X, y, c))(_X, _Y, 2), TypeError,
     r"num_classes must be a Python int \(a static value"),
    (lambda: jax.jit(lambda m, X: m.predict_proba(X))(_M, np.zeros((3, 4))), ValueError,
     r"X must have 2 features"),
]


@pytest.mark.parametrize("fn, exc, match", BAD)
def test_bad_inputs(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()
