r"""Linear algebra: the linear map, eigendecompositions, the SVD and PCA.

Thin, checked wrappers over ``jax.numpy.linalg`` / ``jax.lax.linalg`` with the
equations in the docstrings, clear errors for bad shapes, and the
behaviour of their gradients spelled out; plus PCA as an immutable pytree whose
signs follow scikit-learn.

Every matrix product here (``linear``'s by default, PCA's always) runs at
``Precision.HIGHEST``: float32 on every backend, so results agree with NumPy and
scikit-learn on a GPU or TPU as on a CPU (:mod:`jaxmath._precision`). The
factorisations themselves (LAPACK on CPU, cuSOLVER on GPU) are float32 throughout.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from flax import struct

from jaxmath._checks import (
    as_float,
    as_floats,
    check_choice,
    check_int,
    check_ndim,
    check_nonempty,
)
from jaxmath._precision import CLASSICAL, check_precision

ArrayLike = jax.typing.ArrayLike

SVD_SOLVERS = ("auto", "full", "covariance_eigh", "randomized")


def _as_inexact(x: ArrayLike, name: str) -> jax.Array:
    """``x`` as a float or complex array (integers and bools become the default float)."""
    try:
        arr = jnp.asarray(x)
    except TypeError as e:
        raise TypeError(f"{name} must be array-like, got {type(x).__name__}") from e
    if not jnp.issubdtype(arr.dtype, jnp.inexact):
        arr = arr.astype(jnp.result_type(float))
    return arr


def _check_matrix(A: jax.Array, name: str, square: bool = False) -> None:
    check_ndim(A, name, min_ndim=2)
    if square and A.shape[-1] != A.shape[-2]:
        raise ValueError(f"{name} must be square, [..., n, n], got shape {tuple(A.shape)}")
    if A.shape[-1] == 0 or A.shape[-2] == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(A.shape)}")


def linear(A: ArrayLike, x: ArrayLike, b: ArrayLike | None = None, *,
           precision: jax.lax.PrecisionLike = CLASSICAL) -> jax.Array:
    r"""The linear (affine) map :math:`y = Ax + b`.

    .. math:: y = A x + b, \quad A \in \mathbb{R}^{m \times n},\ x \in \mathbb{R}^n,\
              b, y \in \mathbb{R}^m

    Args:
      A: ``[m, n]`` matrix.
      x: ``[..., n]`` vector(s); leading axes are batch axes (``y = x @ A.T + b``).
      b: optional ``[m]`` bias.
      precision: of the product, passed to ``jnp.matmul``. The default
        ``"highest"`` gives float32 accuracy on every backend (jaxmath's
        classical-math policy); ``None`` is JAX's default, faster on accelerators
        and less precise (TF32 for float32 on recent NVIDIA GPUs, about 1e-3
        relative).

    Returns:
      ``[..., m]`` outputs. Linear in ``A``, ``x`` and ``b``: gradients are
      ``dy/dx = A``, ``dy/dA = x``-outer products, ``dy/db = I`` everywhere.

    Example:
      >>> linear(jnp.array([[2, 1], [1, 3]]), jnp.array([1, 2]), jnp.array([0, 1]))
      Array([4., 8.], dtype=float32)
    """
    named = [(A, "A"), (x, "x")] + ([(b, "b")] if b is not None else [])
    arrays = as_floats(*named)
    A, x = arrays[0], arrays[1]
    check_ndim(A, "A", 2)
    check_ndim(x, "x", min_ndim=1)
    m, n = A.shape
    if x.shape[-1] != n:
        raise ValueError(
            f"x must have A.shape[1]={n} entries on its last axis, got x.shape={tuple(x.shape)} "
            f"and A.shape={tuple(A.shape)}")
    b = arrays[2] if b is not None else None
    if b is not None and b.shape != (m,):
        raise ValueError(
            f"b must have shape (A.shape[0],) = ({m},), got b.shape={tuple(b.shape)}")
    return _affine(A, x, b, check_precision(precision))


@partial(jax.jit, static_argnums=3)
def _affine(A, x, b, precision):
    y = jnp.matmul(x, A.T, precision=precision)
    return y if b is None else y + b


def eig(A: ArrayLike) -> tuple[jax.Array, jax.Array]:
    r"""Eigenvalues and right eigenvectors of general square matrices.

    .. math:: A v = \lambda v, \quad v \neq 0

    Args:
      A: ``[..., n, n]`` real or complex matrices (leading axes are batch axes).

    Returns:
      ``(w, v)``: ``[..., n]`` complex eigenvalues and ``[..., n, n]`` complex
      eigenvectors, ``A @ v[..., :, i] = w[..., i] * v[..., :, i]``. Each
      eigenvector has unit 2-norm and a real largest-magnitude component (LAPACK
      ``geev``); the eigenvalues are in LAPACK's order (not sorted). As in
      ``jnp.linalg.eig``, the output is complex even when every eigenvalue is real.
      A failed decomposition gives NaN.

    Backends (JAX 0.10): CPU (LAPACK ``geev``) and GPU: on CUDA with cuSOLVER >=
    11.7.1 (CUDA 12.6 update 2 and later) it runs on the GPU (``cusolverDnXgeev``);
    with older cuSOLVER, or on ROCm, the "hybrid" kernel copies the matrix to the
    host and runs LAPACK on the CPU (or MAGMA if ``jax_use_magma`` is on). There is
    no TPU implementation.

    Gradients: the derivative of ``w`` (first-order perturbation theory) and of
    ``v`` (under the LAPACK normalisation above) are enabled; they are valid when
    the eigenvalues are distinct and no eigenvector has two components tied for
    the largest magnitude. At a repeated eigenvalue the eigenvector gradient is
    NaN or inf (``1 / (w_j - w_i)``) and the eigenvalue itself is not
    differentiable. (``jnp.linalg.eig`` refuses all derivatives.)

    Example:
      >>> A = jnp.array([[4., 2.], [1., 3.]])
      >>> w, v = eig(A)
      >>> np.round(np.asarray(w), 4)
      array([5.+0.j, 2.+0.j], dtype=complex64)
      >>> bool(np.allclose(np.asarray(A) @ np.asarray(v), np.asarray(v * w), atol=1e-5))
      True
    """
    A = _as_inexact(A, "A")
    _check_matrix(A, "A", square=True)
    w, v = jax.lax.linalg.eig(A, compute_left_eigenvectors=False,
                              enable_eigvec_derivs=True)
    return w, v


def eigh(A: ArrayLike, lower: bool = True,
         symmetrize_input: bool = True) -> tuple[jax.Array, jax.Array]:
    r"""Eigendecomposition of symmetric (Hermitian) matrices.

    .. math:: A = V \operatorname{diag}(\lambda) V^{H}, \quad
              \lambda_1 \le \dots \le \lambda_n \in \mathbb{R}, \quad V^H V = I

    Args:
      A: ``[..., n, n]`` real symmetric or complex Hermitian matrices.
      lower: use the lower (True) or upper triangle when ``symmetrize_input`` is False.
      symmetrize_input: replace ``A`` by ``(A + A^H) / 2`` first (JAX's default),
        which also makes the gradient symmetric.

    Returns:
      ``(w, V)``: ``[..., n]`` real eigenvalues in ascending order and
      ``[..., n, n]`` orthonormal eigenvectors in the columns of ``V``.

    Gradients: ``dλ_i = v_i^H dA v_i`` is finite everywhere (at a repeated
    eigenvalue it is the derivative along the basis LAPACK happened to return).
    Eigenvector gradients carry ``1 / (λ_j - λ_i)``: with a repeated eigenvalue
    (e.g. ``A = I``) the eigenvectors are not unique and their gradient is NaN.

    Example:
      >>> w, V = eigh(jnp.array([[2., 1.], [1., 2.]]))
      >>> np.round(np.asarray(w), 5)  # float32 rounding differs by backend
      array([1., 3.], dtype=float32)
    """
    A = _as_inexact(A, "A")
    _check_matrix(A, "A", square=True)
    w, V = jnp.linalg.eigh(A, UPLO="L" if lower else "U", symmetrize_input=symmetrize_input)
    return w, V


def svd(A: ArrayLike, full_matrices: bool = True,
        compute_uv: bool = True) -> tuple[jax.Array, jax.Array, jax.Array] | jax.Array:
    r"""Singular value decomposition :math:`A = U \Sigma V^T`.

    .. math:: A = U \operatorname{diag}(S) V^{H}, \quad
              S_1 \ge \dots \ge S_k \ge 0, \quad k = \min(m, n)

    Args:
      A: ``[..., m, n]`` real or complex matrices.
      full_matrices: ``U`` is ``[..., m, m]`` and ``Vt`` ``[..., n, n]`` (True) or
        ``[..., m, k]`` and ``[..., k, n]`` (False).
      compute_uv: if False return only ``S``.

    Returns:
      ``(U, S, Vt)`` with ``[..., k]`` non-negative singular values in descending
      order, or ``S`` alone. Rank-deficient and zero matrices are fine: their
      trailing singular values are 0 and the matching singular vectors are some
      orthonormal completion (not unique).

    Gradients: ``dS_i = u_i^H dA v_i`` is finite everywhere, zero and repeated
    singular values included. ``U`` and ``Vt`` are differentiable where the
    singular values are distinct and non-zero; they blow up (``1 / (S_i^2 - S_j^2)``
    and ``1 / S_i``) or are NaN at repeated or zero singular values. JAX does not
    differentiate ``full_matrices=True`` for non-square ``A`` at all (it raises
    NotImplementedError, even for ``S``): use ``full_matrices=False`` or
    ``compute_uv=False`` under ``jax.grad``.

    Example:
      >>> U, S, Vt = svd(jnp.array([[1., 2.], [3., 4.], [5., 6.]]))
      >>> S
      Array([9.5255..., 0.5143...], dtype=float32)
      >>> U.shape, Vt.shape
      ((3, 3), (2, 2))
    """
    A = _as_inexact(A, "A")
    _check_matrix(A, "A")
    return jnp.linalg.svd(A, full_matrices=full_matrices, compute_uv=compute_uv)


# ----------------------------------------------------------------------------- PCA


def _svd_flip(Vt: jax.Array) -> jax.Array:
    """scikit-learn's ``svd_flip(u_based_decision=False)``: in each row of ``Vt`` the
    entry of largest magnitude (first one on ties) is made positive."""
    idx = jnp.argmax(jnp.abs(Vt), axis=-1)
    sign = jnp.sign(jnp.take_along_axis(Vt, idx[..., None], axis=-1))
    return Vt * jnp.where(sign == 0, 1, sign).astype(Vt.dtype)


def _auto_solver(n_samples: int, n_features: int) -> str:
    if n_features <= 1000 and n_samples >= 10 * n_features:
        return "covariance_eigh"
    return "full"


def _fit_full(Xc: jax.Array):
    _, S, Vt = jnp.linalg.svd(Xc, full_matrices=False)
    ev = S**2 / (Xc.shape[0] - 1)
    return S, Vt, ev, jnp.sum(ev)


def _fit_covariance_eigh(Xc: jax.Array):
    n = Xc.shape[0]
    C = jnp.matmul(Xc.T, Xc, precision=CLASSICAL) / (n - 1)
    w, V = jnp.linalg.eigh(C)
    ev = jnp.maximum(w[::-1], 0)
    return jnp.sqrt(ev * (n - 1)), V[:, ::-1].T, ev, jnp.sum(ev)


def _orth(M: jax.Array) -> jax.Array:
    return jnp.linalg.qr(M, mode="reduced")[0]


def _fit_randomized(Xc: jax.Array, n_components: int, key: jax.Array, n_oversamples: int,
                    n_iter: int | None):
    """Halko, Martinsson and Tropp's randomized SVD, as scikit-learn's ``_randomized_svd``."""
    n = Xc.shape[0]
    if n_iter is None:
        n_iter = 7 if n_components < 0.1 * min(Xc.shape) else 4
    transpose = Xc.shape[0] < Xc.shape[1]
    M = Xc.T if transpose else Xc
    mm = lambda a, b: jnp.matmul(a, b, precision=CLASSICAL)  # noqa: E731
    # More than min(n, d) = M.shape[1] random vectors already span everything.
    size = min(n_components + n_oversamples, M.shape[1])
    Q = jax.random.normal(key, (M.shape[1], size), M.dtype)
    Q = jax.lax.fori_loop(0, n_iter, lambda _, Q: _orth(mm(M.T, _orth(mm(M, Q)))), Q)
    Q = _orth(mm(M, Q))
    Uh, S, Vt = jnp.linalg.svd(mm(Q.T, M), full_matrices=False)
    if transpose:
        Vt = mm(Q, Uh).T
    ev = S**2 / (n - 1)
    return S, Vt, ev, jnp.sum(Xc**2) / (n - 1)


@partial(jax.jit, static_argnames=("n_components", "solver", "n_oversamples", "n_iter"))
def _fit_pca(X: jax.Array, key: jax.Array | None, *, n_components: int, solver: str,
             n_oversamples: int, n_iter: int | None) -> dict[str, jax.Array]:
    mean = jnp.mean(X, axis=0)
    Xc = X - mean
    if solver == "full":
        S, Vt, ev, total = _fit_full(Xc)
    elif solver == "covariance_eigh":
        S, Vt, ev, total = _fit_covariance_eigh(Xc)
    else:
        S, Vt, ev, total = _fit_randomized(Xc, n_components, key, n_oversamples, n_iter)
    k = n_components
    ev = ev[:k]
    ratio = jnp.where(total > 0, ev / jnp.where(total > 0, total, 1), 0)
    return dict(mean=mean, components=_svd_flip(Vt[:k]), explained_variance=ev,
                explained_variance_ratio=ratio, singular_values=S[:k])


def _last_axis(x: ArrayLike, name: str, size: int, entries: str) -> jax.Array:
    """``x`` as a float array ``[..., size]``; ValueError saying the ``entries`` wanted."""
    x = as_float(x, name)
    if x.ndim < 1 or x.shape[-1] != size:
        raise ValueError(f"{name} must have {entries} on its last axis, got shape "
                         f"{tuple(x.shape)}")
    return x


@partial(jax.jit, static_argnames="whiten")
def _transform(mean, components, explained_variance, X, *, whiten):
    Z = jnp.matmul(X - mean, components.T, precision=CLASSICAL)
    if whiten:
        # sklearn clips sqrt(variance) at the dtype's eps so rank-deficient data stay finite.
        eps = jnp.finfo(explained_variance.dtype).eps
        Z = Z / jnp.maximum(jnp.sqrt(explained_variance), eps)
    return Z


@partial(jax.jit, static_argnames="whiten")
def _inverse_transform(mean, components, explained_variance, Z, *, whiten):
    W = jnp.sqrt(explained_variance)[:, None] * components if whiten else components
    return jnp.matmul(Z, W, precision=CLASSICAL) + mean


@struct.dataclass
class PCA:
    r"""Principal component analysis (an immutable pytree), as ``sklearn.decomposition.PCA``.

    With the centred data :math:`X_c = X - \bar{x}` and its SVD
    :math:`X_c = U \Sigma V^T` (equivalently the eigendecomposition of the
    covariance :math:`C = X_c^T X_c / (n - 1) = V \Lambda V^T`):

    .. math:: z = (x - \bar{x}) V_k, \quad \lambda_i = \frac{\sigma_i^2}{n - 1}, \quad
              r_i = \frac{\lambda_i}{\sum_j \lambda_j}, \quad
              \hat{x} = z V_k^T + \bar{x}

    with :math:`V_k` the top ``k`` right singular vectors; whitening divides
    :math:`z` by :math:`\sqrt{\lambda_i}`. Signs are scikit-learn's
    (``svd_flip(u_based_decision=False)``, the convention of every solver since
    scikit-learn 1.5): the largest-magnitude entry of each component is positive.

    Attributes:
      mean: ``[d]`` per-feature mean :math:`\bar{x}`.
      components: ``[k, d]`` principal axes (orthonormal rows), by decreasing variance.
      explained_variance: ``[k]`` variances :math:`\lambda_i` (ddof = 1).
      explained_variance_ratio: ``[k]`` fractions of the total variance; 0 when the
        data have no variance at all (scikit-learn gives NaN there).
      singular_values: ``[k]`` singular values :math:`\sigma_i` of :math:`X_c`.
      whiten: static; whether :meth:`transform` whitens.
      svd_solver: static; the solver that was used ('auto' resolved).

    Example:
      >>> X = jnp.array([[2., 0.], [0., 1.], [-2., 0.], [0., -1.]])
      >>> pca = PCA.fit(X, n_components=1)
      >>> pca.components, pca.explained_variance
      (Array([[1., 0.]], dtype=float32), Array([2.6666...], dtype=float32))
      >>> pca.transform(jnp.array([[1., 5.]]))
      Array([[1.]], dtype=float32)
    """

    mean: jax.Array
    components: jax.Array
    explained_variance: jax.Array
    explained_variance_ratio: jax.Array
    singular_values: jax.Array
    whiten: bool = struct.field(pytree_node=False, default=False)
    svd_solver: str = struct.field(pytree_node=False, default="full")

    @classmethod
    def fit(cls, X: ArrayLike, n_components: int, whiten: bool = False,
            svd_solver: str = "auto", key: jax.Array | None = None,
            n_oversamples: int = 10, n_iter: int | None = None) -> PCA:
        r"""Fit the top ``n_components`` principal axes of ``X``.

        Args:
          X: ``[n, d]`` data, ``n >= 2``.
          n_components: static number of components ``k``, ``1 <= k <= min(n, d)``.
          whiten: static; scale the projections to unit variance.
          svd_solver: static, one of:

            * ``'full'``: thin SVD of the centred data (LAPACK ``gesdd``); most
              accurate, :math:`O(n d \min(n, d))`.
            * ``'covariance_eigh'``: ``eigh`` of the :math:`d \times d` covariance;
              :math:`O(n d^2)` and the fastest for tall data. Forming
              :math:`X_c^T X_c` squares the condition number: variances below
              about ``eps * λ_max`` (``eps`` ≈ 1.2e-7 in float32) are rounding
              noise and the directions of small, close variances lose digits. The
              leading components PCA keeps are usually fine; use ``'full'`` (or
              float64) for ill-conditioned data. The data are centred before the
              product (scikit-learn subtracts :math:`n\bar{x}\bar{x}^T` afterwards,
              which cancels catastrophically when the mean is large).
            * ``'randomized'``: randomized range finder with ``n_iter`` power
              iterations (QR-normalised) and ``n_oversamples`` extra vectors, as
              scikit-learn; needs ``key``; accurate when the spectrum decays.
            * ``'auto'``: ``'covariance_eigh'`` when ``d <= 1000`` and
              ``n >= 10 d`` (scikit-learn's rule), else ``'full'``. Unlike
              scikit-learn it never picks ``'randomized'``, so ``'auto'`` needs no
              key and is deterministic.
          key: PRNG key for ``'randomized'``.
          n_oversamples: static; extra random vectors for ``'randomized'``.
          n_iter: static; power iterations for ``'randomized'`` (None: 7 if
            ``k < 0.1 min(n, d)`` else 4, scikit-learn's ``'auto'``).

        Returns:
          The fitted :class:`PCA`. A zero-variance (e.g. constant) ``X`` gives zero
          variances and ratios, and some orthonormal basis as components.
          Gradients through ``fit`` (e.g. of ``explained_variance`` or of a
          transform) are those of ``svd`` / ``eigh``: finite while the kept
          variances are distinct and non-zero, NaN or inf otherwise.
        """
        X = as_float(X, "X")
        check_ndim(X, "X", 2)
        check_nonempty(X, "X", axis=1)
        n, d = X.shape
        if n < 2:
            raise ValueError(f"X must have at least 2 rows (samples), got shape {(n, d)}")
        n_components = check_int(n_components, "n_components", static="static under jax.jit")
        if not 1 <= n_components <= min(n, d):
            raise ValueError(
                f"n_components={n_components} must be between 1 and min(n_samples, "
                f"n_features)={min(n, d)} for X of shape {(n, d)}")
        check_choice(svd_solver, "svd_solver", SVD_SOLVERS)
        solver = _auto_solver(n, d) if svd_solver == "auto" else svd_solver
        if solver == "randomized" and key is None:
            raise ValueError("svd_solver='randomized' needs a PRNG key: pass key=...")
        fitted = _fit_pca(X, key, n_components=n_components, solver=solver,
                          n_oversamples=int(n_oversamples), n_iter=n_iter)
        return cls(**fitted, whiten=bool(whiten), svd_solver=solver)

    @property
    def n_components(self) -> int:
        """Static number of components ``k``."""
        return self.components.shape[-2]

    @property
    def num_features(self) -> int:
        """Static number of features ``d``."""
        return self.components.shape[-1]

    def transform(self, X: ArrayLike) -> jax.Array:
        r"""Project onto the principal axes.

        .. math:: z = (x - \bar{x}) V_k \quad (\text{whitened: } z_i / \sqrt{\lambda_i})

        Args:
          X: ``[..., d]`` data.

        Returns:
          ``[..., k]`` projections; whitened ones have unit variance on the
          training data (components with zero variance are divided by ``eps``
          instead of 0, as scikit-learn). Linear in ``X``.
        """
        X = _last_axis(X, "X", self.num_features, f"{self.num_features} features")
        return _transform(self.mean, self.components, self.explained_variance, X,
                          whiten=self.whiten)

    def inverse_transform(self, Z: ArrayLike) -> jax.Array:
        r"""Map projections back to data space: :math:`\hat{x} = z V_k^T + \bar{x}`.

        Args:
          Z: ``[..., k]`` projections (whitened ones if the model whitens).

        Returns:
          ``[..., d]`` reconstructions, the orthogonal projection of the original
          data onto the principal subspace. Linear in ``Z``.
        """
        Z = _last_axis(Z, "Z", self.n_components, f"n_components={self.n_components} entries")
        return _inverse_transform(self.mean, self.components, self.explained_variance, Z,
                                  whiten=self.whiten)
