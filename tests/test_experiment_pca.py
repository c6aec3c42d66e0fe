"""experiments/pca.py: SVD and PCA of the digits, against scikit-learn and closed forms."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from experiments.pca import reconstruction_errors, sklearn_reference, truncated_reconstructions
from jaxmath.linalg import PCA
from jaxmath.run.cli import run_experiment
from tests import _experiment_runs as runs
from tests.tolerances import F32_LOOSE, F64_RTOL

CONFIG = runs.config_path("pca")
RATIO_ATOL = 1e-5  # configs/pca.py's targets
RECON_RTOL = 1e-4


def _data(rng, n=40, d=6):
    scales = np.linspace(0.2, 2.0, d)
    return (rng.normal(size=(n, d)) * scales + 3.0).astype(np.float32)


def test_quick_run_writes_its_files(tmp_path):
    summary = run_experiment(f"{CONFIG}:quick", tmp_path, verbose=False)
    runs.assert_run_files(tmp_path, "metrics.jsonl")
    for plot in ("explained_variance", "projection_2d", "reconstruction_error",
                 "reconstructions"):
        assert (tmp_path / "plots" / f"{plot}.png").is_file(), plot
    for key in ("variance_ratio_pc1", "components_for_90pct", "test_mse_k2", "test_mse_k10",
                "ratio_max_abs_diff_vs_sklearn", "recon_max_rel_diff_vs_sklearn", "target",
                "target_met"):
        assert key in summary, key
    assert json.loads((tmp_path / "summary.json").read_text())["target_met"] is True


def test_truncated_reconstructions_are_projections(rng):
    X = _data(rng)
    pca = PCA.fit(X, n_components=X.shape[1], svd_solver="full")
    recon = np.asarray(truncated_reconstructions(pca, X))
    assert recon.shape == (X.shape[1] + 1, *X.shape)
    X64 = X.astype(np.float64)
    mean = X64.mean(0)
    _, _, Vt = np.linalg.svd(X64 - mean, full_matrices=False)
    for k in range(X.shape[1] + 1):
        want = (X64 - mean) @ Vt[:k].T @ Vt[:k] + mean
        np.testing.assert_allclose(recon[k], want, atol=F32_LOOSE * np.abs(X64).max())


def test_training_error_is_the_sum_of_discarded_variances(rng):
    # On the training data, MSE(k) = (n - 1) / (n d) * sum_{i > k} lambda_i.
    X = _data(rng)
    n, d = X.shape
    pca = PCA.fit(X, n_components=d, svd_solver="full")
    errors = reconstruction_errors(X, truncated_reconstructions(pca, jnp.asarray(X)))
    lam = np.linalg.eigvalsh(np.cov(X.astype(np.float64), rowvar=False))[::-1]
    want = [(n - 1) / (n * d) * lam[k:].sum() for k in range(d + 1)]
    np.testing.assert_allclose(errors, want, rtol=F32_LOOSE, atol=F32_LOOSE * lam.sum())


def test_sklearn_reference_matches_numpy(rng):
    X, X_test = _data(rng), _data(rng, n=10)
    ratio, errors = sklearn_reference(X, X_test, "full")
    lam = np.linalg.eigvalsh(np.cov(X.astype(np.float64), rowvar=False))[::-1]
    np.testing.assert_allclose(ratio, lam / lam.sum(), rtol=F64_RTOL, atol=F64_RTOL)
    assert errors.shape == (X.shape[1] + 1,)
    centred = X_test.astype(np.float64) - X.astype(np.float64).mean(0)
    np.testing.assert_allclose(errors[0], np.mean(centred**2), rtol=F64_RTOL)
    np.testing.assert_allclose(errors[-1], 0.0, atol=F64_RTOL)
    assert np.all(np.diff(errors) <= F64_RTOL)  # more components never hurt (on average)


@pytest.mark.slow
def test_default_config_meets_its_target(tmp_path):
    summary = runs.default_run(CONFIG, tmp_path)
    assert summary["ratio_max_abs_diff_vs_sklearn"] <= RATIO_ATOL
    assert summary["recon_max_rel_diff_vs_sklearn"] <= RECON_RTOL
    assert summary["num_features"] == 64
