"""PCA fit + transform, 20,000 x 256 float32, 16 components, vs scikit-learn's default.

scikit-learn's ``svd_solver='auto'`` is the peer; the solver it resolves to is
recorded (1.5+ picks 'covariance_eigh' for this tall shape). The other solvers
are timed for the record (not jaxmath's 'full', a thin SVD of the whole data that
takes seconds on CPU). The data have a decaying spectrum
(rank-32 signal plus noise), where the randomized solvers are accurate too.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.decomposition import PCA as SkPCA

from benchmarks._harness import Impl, check_close, measure, summarise

N, D, K = 20_000, 256, 16
GOAL = 1.5


def _data():
    rng = np.random.default_rng(0)
    latent = rng.standard_normal((N, 32)) * np.geomspace(10.0, 0.5, 32)
    mix = np.linalg.qr(rng.standard_normal((D, 32)))[0].T
    return (latent @ mix + 0.1 * rng.standard_normal((N, D)) + 3.0).astype(np.float32)


def bench(quick: bool = False) -> dict:
    from jaxmath.linalg import PCA

    X = _data()
    X_j = jnp.asarray(X)
    key = jax.random.key(0)

    def jaxmath_pca(solver):
        @jax.jit
        def fit_transform(X, key):
            kwargs = {"key": key} if solver == "randomized" else {}
            return PCA.fit(X, K, svd_solver=solver, **kwargs).transform(X)
        return functools.partial(fit_transform, X_j, key)

    def sklearn_pca(solver):
        def run():
            return SkPCA(K, svd_solver=solver, random_state=0).fit(X).transform(X)
        return run

    impls = [
        Impl("jaxmath PCA.fit + transform (svd_solver='auto', jit)", jaxmath_pca("auto"),
             role="jaxmath"),
        Impl("sklearn PCA(16).fit + transform (svd_solver='auto')", sklearn_pca("auto")),
        Impl("jaxmath svd_solver='randomized' (jit)", jaxmath_pca("randomized"), role="info"),
        Impl("sklearn svd_solver='randomized'", sklearn_pca("randomized"), role="info"),
    ]
    want = SkPCA(K, svd_solver="full").fit(X.astype(np.float64)).transform(X.astype(np.float64))
    scale = float(np.abs(want).max())
    timings, outputs = measure(impls, 3 if quick else 10)
    diffs = {k: check_close(f"pca/{k}", v, want, rtol=0, atol=1e-3 * scale)
             for k, v in outputs.items()}
    sk_solver = SkPCA(K).fit(X)._fit_svd_solver
    return summarise("pca", f"PCA fit + transform on {N:,} x {D} float32, {K} components",
                     impls, timings, GOAL, f">= {GOAL:g}x faster than scikit-learn's default",
                     extra={"shape": [N, D], "n_components": K, "dtype": "float32",
                            "sklearn_auto_solver": sk_solver,
                            "max_abs_diff_vs_float64_full": diffs})


BENCHMARKS = {"pca": bench}
