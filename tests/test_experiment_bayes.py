"""experiments/bayes.py: the disease-test posterior grid, its helpers and its run."""

import json
from fractions import Fraction

import jax
import numpy as np
import pytest

from experiments.bayes import axis_values, closed_form, numpy_grid, posterior_grid
from jaxmath.run.cli import run_experiment
from tests import _experiment_runs as runs
from tests.tolerances import F32_ATOL, F32_RTOL, F64_RTOL

CONFIG = runs.config_path("bayes")
GRID_ATOL = 1e-6  # configs/bayes.py's tolerance: float32 posteriors against float64
SUMMARY_KEYS = {"posterior_at_example", "closed_form_at_example", "example_abs_error",
                "grid_points", "max_abs_error_vs_numpy", "target", "target_met"}


def test_quick_run_writes_its_files(tmp_path):
    summary = run_experiment(f"{CONFIG}:quick", tmp_path, verbose=False)
    runs.assert_run_files(tmp_path, "metrics.jsonl", "plots/posterior_heatmap.png")
    assert SUMMARY_KEYS <= set(summary)
    assert json.loads((tmp_path / "summary.json").read_text())["target_met"] is True
    assert summary["target_met"] is True
    assert summary["grid_points"] == 17 * 9 * 17  # 16 x 8 x 16, plus the example's values
    assert "posterior_heatmap.png" in (tmp_path / "report.md").read_text()


def test_closed_form_by_natural_frequencies():
    # Of 10,000 people, 100 are ill and 99 of them test positive; of the 9,900 healthy,
    # 2 % = 198 test positive: P(ill | positive) = 99 / (99 + 198) = 1/3.
    assert closed_form(0.01, 0.99, 0.02) == Fraction(99, 99 + 198) == Fraction(1, 3)
    assert closed_form(0.5, 0.8, 0.2) == Fraction(4, 5)


def test_axis_values_add_the_example_once():
    axis = axis_values({"logspace": (-2.0, 0.0, 3)}, 0.05)
    np.testing.assert_allclose(axis, [0.01, 0.05, 0.1, 1.0])
    np.testing.assert_array_equal(axis_values({"linspace": (0.0, 1.0, 3)}, 0.5), [0, 0.5, 1])
    with pytest.raises(ValueError, match="logspace"):
        axis_values({"geomspace": (1.0, 2.0, 3)}, 1.0)


def test_posterior_grid_matches_numpy_and_a_loop(rng):
    p, s, f = (np.sort(rng.uniform(0.001, 1.0, n)) for n in (5, 4, 3))
    got = np.asarray(posterior_grid(p, s, f))
    assert got.shape == (5, 4, 3)
    np.testing.assert_allclose(got, numpy_grid(p, s, f), rtol=F32_RTOL, atol=F32_ATOL)
    loop = [[[s_ * p_ / (s_ * p_ + f_ * (1 - p_)) for f_ in f] for s_ in s] for p_ in p]
    np.testing.assert_allclose(numpy_grid(p, s, f), loop, rtol=F64_RTOL)


def test_posterior_grid_float64(x64):
    p, s, f = np.array([0.01, 0.2]), np.array([0.99]), np.array([0.02, 0.5])
    got = posterior_grid(p, s, f)
    assert got.dtype == jax.numpy.float64
    np.testing.assert_allclose(got, numpy_grid(p, s, f), rtol=F64_RTOL)


@pytest.mark.slow
def test_default_config_meets_its_target(tmp_path):
    summary = runs.default_run(CONFIG, tmp_path)
    assert summary["grid_points"] >= 1_000_000
    assert summary["max_abs_error_vs_numpy"] <= GRID_ATOL
    assert abs(summary["posterior_at_example"] - 1 / 3) <= GRID_ATOL
