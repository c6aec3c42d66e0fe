"""experiments/linear_regression.py: the gradient-descent sweep against least squares."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.linear_regression import classify, loss, make_problem, make_train, reference
from jaxmath.run.cli import run_experiment
from tests import _experiment_runs as runs
from tests.tolerances import F32_LOOSE, F64_RTOL

CONFIG = runs.config_path("linear_regression")
DATA = {"num_samples": 32, "num_features": 4, "min_scale": 0.5, "noise": 0.1}
PARAM_RTOL = 1e-4  # configs/linear_regression.py's target for converged runs


def test_quick_run_writes_its_files(tmp_path):
    summary = run_experiment(f"{CONFIG}:quick", tmp_path, verbose=False)
    runs.assert_run_files(tmp_path, "metrics.jsonl", "sweep.jsonl", "plots/loss_curves.png",
                          "plots/final_loss_vs_lr.png")
    for key in ("num_runs", "num_converged", "num_diverged", "num_nonfinite_final_loss",
                "eta_c_seed0", "all_below_boundary_converged", "all_above_boundary_diverged",
                "max_param_rel_error_converged", "target", "target_met"):
        assert key in summary, key
    rows = [json.loads(line) for line in (tmp_path / "sweep.jsonl").read_text().splitlines()]
    assert len(rows) == summary["num_runs"] == 16 * 2
    assert {"learning_rate", "seed", "final_loss", "status"} <= set(rows[0])
    # divergent runs are recorded, not errors: their non-finite losses are nulls
    assert sum(r["final_loss"] is None for r in rows) == summary["num_nonfinite_final_loss"] > 0
    assert summary["num_converged"] > 0
    assert json.loads((tmp_path / "summary.json").read_text())["target_met"] is True


def test_problem_hessian_and_lstsq_reference():
    # The vmapped sweep and this unbatched reference share make_problem; that the sweep's
    # converged runs match the reference's lstsq solution is checked by the runs themselves.
    ref = reference(0, DATA)
    X, y, _ = (np.asarray(a, np.float64) for a in make_problem(0, **DATA))
    np.testing.assert_array_equal(make_problem(0, **DATA)[0], X.astype(np.float32))  # seeded
    assert not np.allclose(make_problem(1, **DATA)[0], X)
    lam_max = np.linalg.eigvalsh(2 * X.T @ X / len(X))[-1]
    np.testing.assert_allclose(ref["lambda_max"], lam_max, rtol=F32_LOOSE)
    np.testing.assert_allclose(ref["eta_c"], 2 / lam_max, rtol=F32_LOOSE)
    assert ref["hessian_rel_diff"] <= F32_LOOSE
    np.testing.assert_allclose(ref["theta_star"], np.linalg.pinv(X) @ y, rtol=F64_RTOL)
    X32, y32, theta32 = (jnp.asarray(a, jnp.float32) for a in (X, y, ref["theta_star"]))
    np.testing.assert_allclose(float(loss(theta32, X32, y32)), ref["lstsq_loss"], rtol=F32_LOOSE)


def test_one_run_converges_below_and_diverges_above_the_bound():
    ref = reference(1, DATA)
    train = jax.jit(make_train(DATA, 500))
    below = train({"learning_rate": 0.9 * ref["eta_c"], "seed": 1})
    above = train({"learning_rate": 1.1 * ref["eta_c"], "seed": 1})
    np.testing.assert_allclose(below["theta"], ref["theta_star"], rtol=PARAM_RTOL)
    assert below["losses"].shape == (500,)
    assert not float(above["final_loss"]) <= float(above["losses"][0])


def test_classify():
    final = np.array([0.01, np.inf, np.nan, 5.0, 0.5])
    init = np.full(5, 1.0)
    grad = np.array([1e-7, np.inf, np.nan, 10.0, 0.1])
    diverged, converged = classify(final, init, grad, np.ones(5), grad_rtol=1e-5)
    np.testing.assert_array_equal(diverged, [False, True, True, True, False])
    np.testing.assert_array_equal(converged, [True, False, False, False, False])


@pytest.mark.slow
def test_default_config_meets_its_target(tmp_path):
    summary = runs.default_run(CONFIG, tmp_path)
    assert summary["num_learning_rates"] >= 256 and summary["num_seeds"] == 4
    assert summary["all_below_boundary_converged"] and summary["all_above_boundary_diverged"]
    assert summary["max_param_rel_error_converged"] <= PARAM_RTOL
    assert summary["num_converged"] > 0 and summary["num_diverged"] > 0
    assert abs(summary["lambda_max_max_rel_diff_vs_numpy"]) <= F32_LOOSE
