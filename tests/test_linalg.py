"""linear, eig, eigh, svd and PCA against NumPy and scikit-learn, under jit/vmap/grad."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA as SkPCA

from jaxmath.linalg import PCA, eig, eigh, linear, svd
from tests.tolerances import F32_ATOL, F32_LOOSE, F32_RTOL, F64_ATOL, F64_RTOL

# float64 results of two LAPACK builds (jaxlib's and NumPy's / SciPy's), or of a
# factorisation against the matrix it came from, agree to a few thousand ulps of the
# largest entry (~1e-13 .. 1e-12 here), not to F64_RTOL: checked at these bounds.
LAPACK_TOL = 1e-10
LAPACK_RTOL = 1e-9  # PCA on digits: values up to ~180, reductions over 1797 rows
EIG_TOL = 1e-8      # eigenvalues of random non-symmetric matrices (condition numbers ~1e2)
SIGN_TOL = 1e-6     # |<v_jax, v_numpy>| = 1 for distinct eigenvalues
# randomized PCA on data of exact rank 4 plus 1e-3 noise: converged to the exact answer
RANDOMIZED_TOL = 1e-7
# 4 power iterations on digits' slowly decaying spectrum (measured over 5 seeds:
# components 3e-4 .. 4e-3 off the exact ones, variances 3e-6 .. 2e-4 relative, either library)
DIGITS_RANDOMIZED_ATOL, DIGITS_RANDOMIZED_RTOL = 5e-3, 5e-4

seeds = st.integers(0, 2**31 - 1)


def _np(arrays):
    """Outputs as NumPy arrays, so the checks below run no (compiled) JAX ops."""
    return tuple(np.asarray(a) for a in arrays) if isinstance(arrays, tuple) else np.asarray(arrays)


def _close(a, b, rtol=F64_RTOL, atol=F64_ATOL):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


def _match_eigenvalues(w, ref, atol):
    """Every reference eigenvalue has a distinct partner in ``w`` (orders differ)."""
    w, ref = list(np.asarray(w)), list(np.asarray(ref))
    for r in ref:
        i = int(np.argmin([abs(r - x) for x in w]))
        assert abs(r - w[i]) <= atol, (r, w)
        w.pop(i)


# ----------------------------------------------------------------------------- linear


def test_linear_seed_example():
    """The seed prints [4 7]; A x + b = [4, 7] + [0, 1] = [4, 8]."""
    A, x, b = np.array([[2, 1], [1, 3]]), np.array([1, 2]), np.array([0, 1])
    y = linear(A, x, b)
    np.testing.assert_array_equal(y, A @ x + b)
    np.testing.assert_array_equal(y, [4.0, 8.0])
    assert y.dtype == jnp.float32


@settings(max_examples=12)
@given(seeds, st.sampled_from([(), (2,), (2, 3)]))
def test_linear_batch_axes_match_numpy(seed, batch):
    rng = np.random.default_rng(seed)
    A, b = rng.normal(size=(3, 4)), rng.normal(size=3)
    x = rng.normal(size=(*batch, 4))
    with jax.enable_x64(True):
        _close(linear(A, x, b), x @ A.T + b)
        _close(linear(A, x), x @ A.T)


def test_linear_jit_vmap_grad(x64, rng):
    A, x, b = rng.normal(size=(3, 2)), rng.normal(size=(5, 2)), rng.normal(size=3)
    _close(jax.jit(linear)(A, x, b), linear(A, x, b))
    As = rng.normal(size=(4, 3, 2))
    batched = jax.vmap(linear, in_axes=(0, None, None))(As, x, b)
    _close(batched, np.stack([linear(a, x, b) for a in As]))
    check_grads(jax.jit(linear), (A, x, b), order=1, modes=["fwd", "rev"])
    assert linear(A, x, b).dtype == jnp.float64
    assert linear(A.astype(np.float32), x.astype(np.float32)).dtype == jnp.float32


# -------------------------------------------------------------------------------- eig


def test_eig_seed_example():
    A = np.array([[4.0, 2.0], [1.0, 3.0]])
    w, v = _np(eig(A))
    assert w.dtype == jnp.complex64 and v.dtype == jnp.complex64
    w_np, v_np = np.linalg.eig(A)
    _match_eigenvalues(w, w_np, atol=F32_LOOSE)
    _close(A @ v, v * w, atol=F32_LOOSE)
    # Same eigenvectors as NumPy up to a sign (both are LAPACK geev, unit norm).
    for i in range(2):
        j = int(np.argmin(abs(w_np - w[i])))
        assert abs(abs(np.vdot(v[:, i], v_np[:, j])) - 1) < F32_LOOSE


@settings(max_examples=12)
@given(seeds, st.sampled_from([1, 2, 4]))
def test_eig_random_matches_numpy(seed, n):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, n))
    with jax.enable_x64(True):
        w, v = _np(eig(A))
        assert w.dtype == jnp.complex128
        _match_eigenvalues(w, np.linalg.eigvals(A), atol=EIG_TOL)
        _close(A @ v, v * w[None, :], atol=LAPACK_TOL)
        _close(np.linalg.norm(v, axis=0), np.ones(n), atol=F64_ATOL)


def test_eig_complex_pair_and_batch(x64):
    R = np.array([[0.0, -1.0], [1.0, 0.0]])  # a rotation: eigenvalues ±i
    w, _ = eig(R)
    _match_eigenvalues(w, [1j, -1j], atol=F64_ATOL)
    As = np.random.default_rng(1).normal(size=(3, 2, 4, 4))
    w, v = _np(eig(As))
    assert w.shape == (3, 2, 4) and v.shape == (3, 2, 4, 4)
    _close(As @ v, v * w[..., None, :], atol=LAPACK_TOL)
    wj, _ = jax.jit(eig)(As)
    _close(wj, w, atol=F64_ATOL)
    wv, _ = jax.vmap(eig)(As[:, 0])
    _close(wv, np.stack([eig(a)[0] for a in As[:, 0]]), atol=F64_ATOL)


def test_eig_gradients(x64):
    A = np.array([[4.0, 2.0, 0.5], [1.0, 3.0, -1.0], [0.2, 0.3, 1.0]])  # distinct, real
    def f(A):
        w, v = eig(A)
        return w.real, w.imag, jnp.abs(v)  # |v| is unaffected by the eigenvector's sign
    check_grads(jax.jit(f), (A,), order=1, modes=["rev"])
    # Repeated eigenvalue: the eigenvalue gradient exists here, the eigenvector one is NaN.
    g_w = jax.grad(lambda A: jnp.sum(eig(A)[0].real ** 2))(np.eye(2))
    _close(g_w, 2 * np.eye(2))
    g_v = jax.grad(lambda A: jnp.abs(eig(A)[1])[0, 0])(np.eye(2))
    assert np.all(np.isnan(g_v))


# ------------------------------------------------------------------------------- eigh


@settings(max_examples=12)
@given(seeds, st.sampled_from([1, 2, 4]))
def test_eigh_random_matches_numpy(seed, n):
    rng = np.random.default_rng(seed)
    B = rng.normal(size=(n, n))
    A = B + B.T
    with jax.enable_x64(True):
        w, V = _np(eigh(A))
        w_np, V_np = np.linalg.eigh(A)
        _close(w, w_np, atol=LAPACK_TOL)
        _close(V * w @ V.T, A, atol=LAPACK_TOL)
        _close(V.T @ V, np.eye(n), atol=F64_ATOL)
        # Each eigenvector equals NumPy's up to sign (eigenvalues of random A are distinct).
        _close(np.abs(np.sum(V * V_np, axis=0)), np.ones(n), atol=SIGN_TOL)


def test_eigh_lower_upper_hermitian_jit_vmap(x64, rng):
    B = rng.normal(size=(4, 4)) + 1j * rng.normal(size=(4, 4))
    H = B + B.conj().T
    w, V = _np(eigh(H))
    _close(w, np.linalg.eigvalsh(H), atol=LAPACK_TOL)
    _close(V * w @ V.conj().T, H, atol=LAPACK_TOL)
    L = np.tril(H.real + H.real.T)  # only one triangle filled
    _close(eigh(L, lower=True, symmetrize_input=False)[0],
           np.linalg.eigvalsh(L, UPLO="L"), atol=LAPACK_TOL)
    _close(eigh(L.T, lower=False, symmetrize_input=False)[0],
           np.linalg.eigvalsh(L.T, UPLO="U"), atol=LAPACK_TOL)
    S = rng.normal(size=(3, 4, 4))
    S = S + np.swapaxes(S, -1, -2)
    _close(jax.jit(eigh)(S)[0], eigh(S)[0], atol=F64_ATOL)
    _close(jax.vmap(eigh)(S)[0], np.stack([np.linalg.eigvalsh(s) for s in S]), atol=LAPACK_TOL)
    assert eigh(S.astype(np.float32))[0].dtype == jnp.float32


def test_eigh_gradients(x64, rng):
    B = rng.normal(size=(4, 4))
    A = B + B.T
    def f(A):
        w, V = eigh(A)
        return w, jnp.outer(V[:, 0], V[:, 0])  # the projector is sign-free
    check_grads(jax.jit(f), (A,), order=1, modes=["fwd", "rev"])
    # dλ_i = v_i^T dA v_i, the symmetric part of v v^T
    V = np.linalg.eigh(A)[1]
    _close(jax.grad(lambda A: eigh(A)[0][-1])(A), np.outer(V[:, -1], V[:, -1]), atol=LAPACK_TOL)
    # Repeated eigenvalues (A = I): eigenvalue gradient finite, eigenvector gradient NaN.
    c = np.array([1.0, 2.0, 3.0])
    _close(jax.grad(lambda A: eigh(A)[0] @ c)(np.eye(3)), np.diag(c))
    assert np.all(np.isnan(jax.grad(lambda A: eigh(A)[1][0, 0])(np.eye(3))))


# -------------------------------------------------------------------------------- svd


@jax.jit
def _all_svds(A):
    return svd(A), svd(A, full_matrices=False), svd(A, compute_uv=False)


@settings(max_examples=12)
@given(seeds, st.sampled_from([(1, 3), (4, 2), (3, 3)]))
def test_svd_reconstructs(seed, shape):
    m, n = shape
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(m, n))
    k = min(m, n)
    with jax.enable_x64(True):
        (U, S, Vt), (Ut, St, Vtt), S_only = jax.tree.map(np.asarray, _all_svds(A))
        assert U.shape == (m, m) and S.shape == (k,) and Vt.shape == (n, n)
        _close(U[:, :k] * S @ Vt[:k], A, atol=F64_ATOL)
        _close(U.T @ U, np.eye(m), atol=F64_ATOL)
        _close(Vt @ Vt.T, np.eye(n), atol=F64_ATOL)
        _close(S, np.linalg.svd(A, compute_uv=False), atol=F64_ATOL)
        assert np.all(np.diff(S) <= 0) and np.all(S >= 0)
        assert Ut.shape == (m, k) and Vtt.shape == (k, n)
        _close(Ut * St @ Vtt, A, atol=F64_ATOL)
        _close(S_only, S, atol=F64_ATOL)


def test_svd_seed_example_float32():
    A = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    U, S, Vt = _np(svd(A))
    assert S.dtype == jnp.float32
    _close(S, np.linalg.svd(A, compute_uv=False), rtol=F32_RTOL, atol=F32_ATOL)
    _close(U[:, :2] * S @ Vt, A, atol=F32_LOOSE)


def test_svd_rank_deficient_and_zero(x64, rng):
    A = np.outer(rng.normal(size=5), rng.normal(size=3))  # rank 1
    U, S, Vt = _np(svd(A))
    _close(S[1:], np.zeros(2), atol=F64_ATOL * S[0])
    _close(U[:, :3] * S @ Vt, A, atol=F64_ATOL)
    _close(U.T @ U, np.eye(5), atol=F64_ATOL)
    U, S, Vt = _np(svd(np.zeros((3, 2))))
    np.testing.assert_array_equal(S, np.zeros(2))
    _close(U.T @ U, np.eye(3), atol=F64_ATOL)
    _close(Vt @ Vt.T, np.eye(2), atol=F64_ATOL)


def test_svd_batch_jit_vmap(x64, rng):
    As = rng.normal(size=(2, 3, 4, 2))
    U, S, Vt = _np(svd(As, full_matrices=False))
    _close(U * S[..., None, :] @ Vt, As, atol=F64_ATOL)
    _close(jax.jit(svd, static_argnames=("full_matrices", "compute_uv"))(As)[1], S, atol=F64_ATOL)
    _close(jax.vmap(lambda a: svd(a, compute_uv=False))(As[0]),
           np.stack([np.linalg.svd(a, compute_uv=False) for a in As[0]]), atol=F64_ATOL)


def test_svd_gradients(x64, rng):
    A = rng.normal(size=(4, 3))
    check_grads(jax.jit(lambda A: svd(A, compute_uv=False)), (A,), order=1, modes=["fwd"])
    def thin(A):
        U, S, Vt = svd(A, full_matrices=False)
        return S, jnp.outer(U[:, 0], Vt[0])  # sign-free
    check_grads(jax.jit(thin), (A,), order=1, modes=["rev"])
    # dS_i/dA = u_i v_i^T
    U, _, Vt = np.linalg.svd(A)
    _close(jax.grad(lambda A: svd(A, compute_uv=False)[0])(A), np.outer(U[:, 0], Vt[0]),
           atol=LAPACK_TOL)
    # Degenerate: S is differentiable at zero and rank-deficient matrices ...
    g = jax.grad(lambda A: svd(A, compute_uv=False).sum())(np.zeros((3, 2)))
    assert np.all(np.isfinite(g))
    g = jax.grad(lambda A: svd(A, compute_uv=False).sum())(np.outer([1.0, 2, 3], [1.0, 2]))
    assert np.all(np.isfinite(g))
    # ... U is not (NaN at the zero matrix), and JAX has no rule for full_matrices=True.
    g = jax.grad(lambda A: svd(A, full_matrices=False)[0].sum())(np.zeros((3, 2)))
    assert np.all(np.isnan(g))
    with pytest.raises(NotImplementedError, match="full matrices"):
        jax.grad(lambda A: svd(A)[1].sum())(A)


# -------------------------------------------------------------------------------- PCA

SOLVERS = ["full", "covariance_eigh", "randomized"]


def _digits():
    return load_digits().data  # 1797 x 64, bundled with scikit-learn


def _low_rank(seed=0, n=200, d=12, r=4):
    rng = np.random.default_rng(seed)
    scales = np.array([10.0, 6.0, 3.0, 1.5])[:r]
    X = (rng.normal(size=(n, r)) * scales) @ np.linalg.qr(rng.normal(size=(d, r)))[0].T
    return X + 1e-3 * rng.normal(size=(n, d)) + 5.0


def _check_against_sklearn(pca, sk, X, rtol, atol):
    _close(pca.mean, sk.mean_, rtol=rtol, atol=atol)
    _close(pca.components, sk.components_, rtol=rtol, atol=atol)  # signs included
    _close(pca.explained_variance, sk.explained_variance_, rtol=rtol, atol=atol)
    _close(pca.explained_variance_ratio, sk.explained_variance_ratio_, rtol=rtol, atol=atol)
    _close(pca.singular_values, sk.singular_values_, rtol=rtol, atol=atol)
    scale = np.abs(X).max()
    Z = pca.transform(X)
    _close(Z, sk.transform(X), rtol=rtol, atol=atol * scale)
    _close(pca.inverse_transform(Z), sk.inverse_transform(sk.transform(X)), rtol=rtol,
           atol=atol * scale)


@pytest.mark.parametrize("whiten", [False, True])
@pytest.mark.parametrize("solver", ["full", "covariance_eigh"])
def test_pca_matches_sklearn_on_digits(solver, whiten, x64):
    X = _digits()
    sk = SkPCA(10, svd_solver=solver, whiten=whiten).fit(X)
    pca = PCA.fit(X, 10, whiten=whiten, svd_solver=solver)
    assert pca.svd_solver == solver and pca.components.dtype == jnp.float64
    _check_against_sklearn(pca, sk, X, rtol=LAPACK_RTOL, atol=LAPACK_RTOL)
    if whiten:
        _close(np.std(pca.transform(X), axis=0, ddof=1), np.ones(10), atol=LAPACK_RTOL)


@pytest.mark.parametrize("shape, whiten", [((200, 12), False), ((12, 40), True)])  # wide: M^T
def test_pca_randomized_matches_sklearn(shape, whiten, x64):
    n, d = shape
    X = _low_rank(n=n, d=d, r=4)
    sk = SkPCA(3, svd_solver="randomized", whiten=whiten, random_state=0).fit(X)
    pca = PCA.fit(X, 3, whiten=whiten, svd_solver="randomized", key=jax.random.key(0))
    _check_against_sklearn(pca, sk, X, rtol=RANDOMIZED_TOL, atol=RANDOMIZED_TOL)
    exact = PCA.fit(X, 3, svd_solver="full")
    _close(pca.components, exact.components, atol=LAPACK_RTOL)


def test_pca_randomized_on_digits_is_close_to_exact(x64):
    X = _digits()
    exact = PCA.fit(X, 10, svd_solver="full")
    approx = PCA.fit(X, 10, svd_solver="randomized", key=jax.random.key(0))
    sk = SkPCA(10, svd_solver="randomized", random_state=0).fit(X)
    # Both randomized results sit at the same distance from the exact PCA.
    for c, ev in ((approx.components, approx.explained_variance),
                  (sk.components_, sk.explained_variance_)):
        _close(c, exact.components, atol=DIGITS_RANDOMIZED_ATOL)
        _close(ev, exact.explained_variance, rtol=DIGITS_RANDOMIZED_RTOL)


def test_pca_float32_agreement():
    """float32 fit vs scikit-learn in float64, on digits (pixel values 0..16)."""
    X = _digits()
    sk = SkPCA(10).fit(X)  # covariance_eigh, as jaxmath's 'auto'
    pca = PCA.fit(X.astype(np.float32), 10)
    assert pca.components.dtype == jnp.float32 and pca.svd_solver == sk._fit_svd_solver
    # measured: variances 2e-7 relative, components 6e-7, projections 3e-5 (|Z| <= 35);
    # scikit-learn's own float32 fit is 1.4e-6 and 6.5e-5 away.
    _close(pca.explained_variance, sk.explained_variance_, rtol=F32_RTOL)
    _close(pca.components, sk.components_, atol=F32_LOOSE)
    Z = sk.transform(X)
    _close(pca.transform(X.astype(np.float32)), Z, atol=F32_RTOL * np.abs(Z).max())


@pytest.mark.parametrize("shape, sklearn_picks", [
    ((1797, 64), "covariance_eigh"),  # tall: the same rule as scikit-learn
    ((50, 200), "full"),              # small
    ((600, 100), "randomized"),       # scikit-learn goes randomized; jaxmath stays exact
])
def test_pca_auto_solver(shape, sklearn_picks, rng):
    X = rng.normal(size=shape).astype(np.float32)
    sk = SkPCA(5).fit(X)
    assert sk._fit_svd_solver == sklearn_picks
    pca = jax.eval_shape(lambda X: PCA.fit(X, 5), X)  # the choice is static: no need to run
    assert pca.svd_solver == (sklearn_picks if sklearn_picks != "randomized" else "full")


def test_pca_degenerate_data(x64, rng):
    X = np.full((8, 3), 2.0)  # no variance at all
    pca = PCA.fit(X, 3, whiten=True, svd_solver="full")
    np.testing.assert_array_equal(pca.explained_variance, np.zeros(3))
    np.testing.assert_array_equal(pca.explained_variance_ratio, np.zeros(3))  # sklearn: NaN
    assert np.all(np.isfinite(pca.transform(X + 1.0)))
    _close(pca.components @ pca.components.T, np.eye(3), atol=F64_ATOL)
    # rank-deficient data with all components kept: sklearn's eps clip keeps whitening finite.
    X = np.outer(rng.normal(size=8), rng.normal(size=3))
    pca = PCA.fit(X, 3, whiten=True, svd_solver="full")
    sk = SkPCA(3, whiten=True, svd_solver="full").fit(X)
    _close(pca.explained_variance_ratio, sk.explained_variance_ratio_, atol=F64_ATOL)
    assert np.all(np.isfinite(pca.transform(X)))
    _close(pca.transform(X)[:, 0], sk.transform(X)[:, 0], rtol=LAPACK_RTOL)
    # n_components = min(n_samples, n_features) is allowed (shapes only: nothing to run)
    wide = jax.eval_shape(lambda X: PCA.fit(X, 3), jnp.zeros((3, 5)))
    assert wide.components.shape == (3, 5)


@pytest.mark.parametrize("solver", SOLVERS)
def test_pca_jit_and_vmap_equal_eager_and_loop(solver, rng):
    X = _low_rank(1, n=60, d=6).astype(np.float32)
    key = jax.random.key(0)
    eager = PCA.fit(X, 3, svd_solver=solver, key=key)
    if solver == "full":  # PCA.fit is jitted inside; this checks the static arguments
        fit = jax.jit(PCA.fit, static_argnames=("n_components", "whiten", "svd_solver"))
        jitted = fit(X, 3, whiten=True, svd_solver=solver, key=key)
        chex.assert_trees_all_close(jitted, eager.replace(whiten=True), rtol=F32_LOOSE,
                                    atol=F32_LOOSE)
        _close(jax.jit(lambda p, x: p.transform(x))(jitted, X), jitted.transform(X),
               rtol=F32_LOOSE, atol=F32_LOOSE)
    idx = rng.integers(0, 60, size=(2, 60))  # bootstrap resamples
    Xj = jnp.asarray(X)
    batched = jax.vmap(lambda i: PCA.fit(Xj[i], 3, svd_solver=solver, key=key))(idx)
    for b in range(2):
        ref = PCA.fit(X[idx[b]], 3, svd_solver=solver, key=key)
        chex.assert_trees_all_close(jax.tree.map(lambda a, b=b: np.asarray(a)[b], batched), ref,
                                    rtol=F32_LOOSE, atol=F32_LOOSE)


@pytest.mark.parametrize("solver", ["full", "covariance_eigh"])
def test_pca_gradients(solver, x64, rng):
    X = rng.normal(size=(10, 3)) * np.array([3.0, 2.0, 1.0])  # distinct variances
    Xt = rng.normal(size=(2, 3))
    def f(X):
        pca = PCA.fit(X, 2, whiten=True, svd_solver=solver)
        return pca.explained_variance, pca.transform(Xt), pca.inverse_transform(Xt[:, :2])
    check_grads(jax.jit(f), (X,), order=1, modes=["rev"])


# ------------------------------------------------------------------------ bad inputs

_P = PCA.fit(np.random.default_rng(0).normal(size=(10, 4)), 2)

BAD = [
    (lambda: linear(np.ones(3), np.ones(3)), ValueError, r"A must have rank 2, got shape \(3,\)"),
    (lambda: linear(np.ones((2, 3)), np.ones(4)), ValueError,
     r"x must have A.shape\[1\]=3 entries on its last axis, got x.shape=\(4,\)"),
    (lambda: linear(np.ones((2, 3)), np.ones(3), np.ones(3)), ValueError,
     r"b must have shape \(A.shape\[0\],\) = \(2,\), got b.shape=\(3,\)"),
    (lambda: linear(np.ones((2, 3)), 1.0), ValueError, r"x must have rank >= 1"),
    (lambda: linear(np.ones((2, 2)), np.ones(2) * 1j), TypeError, r"x must be real"),
    (lambda: eig(np.ones((2, 3))), ValueError, r"A must be square, \[..., n, n\], got shape"),
    (lambda: eig(np.ones(3)), ValueError, r"A must have rank >= 2, got shape \(3,\)"),
    (lambda: eigh(np.ones((3, 2))), ValueError, r"A must be square"),
    (lambda: svd(np.ones(4)), ValueError, r"A must have rank >= 2"),
    (lambda: svd(np.ones((0, 3))), ValueError, r"A must not be empty, got shape \(0, 3\)"),
    (lambda: eig("abc"), TypeError, r"A must be array-like"),
    (lambda: PCA.fit(np.ones((10, 4)), 5), ValueError,
     r"n_components=5 must be between 1 and min\(n_samples, n_features\)=4"),
    (lambda: PCA.fit(np.ones((3, 8)), 4), ValueError,
     r"n_components=4 .* min\(n_samples, n_features\)=3 for X of shape \(3, 8\)"),
    (lambda: PCA.fit(np.ones((10, 4)), 0), ValueError, r"n_components=0 must be between 1"),
    (lambda: PCA.fit(np.ones((10, 4)), 2.0), TypeError, r"n_components must be a Python int"),
    (lambda: PCA.fit(np.ones((10, 4)), 2, svd_solver="arpack"), ValueError,
     r"svd_solver must be one of"),
    (lambda: PCA.fit(np.ones((10, 4)), 2, svd_solver="randomized"), ValueError,
     r"needs a PRNG key"),
    (lambda: PCA.fit(np.ones((1, 4)), 1), ValueError, r"at least 2 rows"),
    (lambda: PCA.fit(np.ones(4), 1), ValueError, r"X must have rank 2"),
    (lambda: _P.transform(np.ones((3, 5))), ValueError,
     r"X must have 4 features on its last axis, got shape \(3, 5\)"),
    (lambda: _P.inverse_transform(np.ones((3, 3))), ValueError,
     r"Z must have n_components=2 entries"),
    (lambda: jax.jit(PCA.fit, static_argnums=1)(np.ones((10, 4)), 6), ValueError,
     r"n_components=6 must be between 1"),
    (lambda: jax.jit(linear)(np.ones((2, 3)), np.ones((5, 2))), ValueError,
     r"x must have A.shape\[1\]=3"),
    (lambda: jax.jit(PCA.fit)(np.ones((10, 4)), 2), TypeError,
     r"n_components must be a Python int \(static under jax.jit\)"),
]


@pytest.mark.parametrize("fn, exc, match", BAD)
def test_bad_inputs(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()
