"""Gaussian naive Bayes fit + predict_proba, 100,000 x 64 float32, 10 classes, vs scikit-learn."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.naive_bayes import GaussianNB as SkGaussianNB

from benchmarks._harness import Impl, check_close, measure, summarise

N, D, C = 100_000, 64, 10
GOAL = 5.0
# float32 log-likelihoods summed over 64 features, against scikit-learn in float64.
PROBA_ATOL = 1e-3


def _data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, C, N)
    centres = rng.normal(scale=0.3, size=(C, D))
    scales = rng.uniform(0.5, 2.0, size=(C, D))
    X = (centres[y] + scales[y] * rng.standard_normal((N, D))).astype(np.float32)
    return X, y


def bench(quick: bool = False) -> dict:
    from jaxmath.naive_bayes import GaussianNB

    X, y = _data()
    X_j, y_j = jnp.asarray(X), jnp.asarray(y, jnp.int32)

    @jax.jit
    def fit_predict(X, y):
        return GaussianNB.fit(X, y, num_classes=C).predict_proba(X)

    def sklearn_fit_predict():
        return SkGaussianNB().fit(X, y).predict_proba(X)

    impls = [
        Impl("jaxmath GaussianNB.fit + predict_proba (jit)",
             functools.partial(fit_predict, X_j, y_j), role="jaxmath"),
        Impl("sklearn GaussianNB().fit + predict_proba", sklearn_fit_predict),
    ]
    want = SkGaussianNB().fit(X.astype(np.float64), y).predict_proba(X.astype(np.float64))
    timings, outputs = measure(impls, 3 if quick else 10)
    diffs = {k: check_close(f"gaussian_nb/{k}", v, want, rtol=0, atol=PROBA_ATOL)
             for k, v in outputs.items()}
    return summarise("gaussian_nb", f"GaussianNB fit + predict_proba on {N:,} x {D} float32, "
                     f"{C} classes", impls, timings, GOAL,
                     f">= {GOAL:g}x faster than scikit-learn",
                     extra={"shape": [N, D], "num_classes": C, "dtype": "float32",
                            "max_abs_diff_vs_float64": diffs})


BENCHMARKS = {"gaussian_nb": bench}
