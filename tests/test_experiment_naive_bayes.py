"""experiments/naive_bayes.py: GaussianNB on scikit-learn's datasets, against scikit-learn."""

import json

import ml_collections
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from experiments.naive_bayes import confusion_matrix, evaluate
from jaxmath.run.cli import run_experiment
from tests import _experiment_runs as runs

CONFIG = runs.config_path("naive_bayes")
TARGET_GAP_POINTS = 0.5  # the target: within 0.5 accuracy points of scikit-learn


def test_quick_run_writes_its_files(tmp_path):
    summary = run_experiment(f"{CONFIG}:quick", tmp_path, verbose=False)
    runs.assert_run_files(tmp_path, "metrics.jsonl", "plots/confusion_matrices.png")
    for key in ("iris_accuracy", "iris_sklearn_accuracy", "iris_max_gap_points",
                "iris_agreement", "wine_accuracy", "max_gap_points", "target", "target_met"):
        assert key in summary, key
    assert "digits_accuracy" not in summary  # quick: iris and wine only
    assert json.loads((tmp_path / "summary.json").read_text())["target_met"] is True


@pytest.mark.parametrize("num_classes", [2, 5])
def test_confusion_matrix_matches_sklearn(rng, num_classes):
    y_true = rng.integers(0, num_classes, 50)
    y_pred = rng.integers(0, num_classes - 1, 50)  # the last class is never predicted
    got = np.asarray(confusion_matrix(y_true, y_pred, num_classes))
    want = sk_confusion_matrix(y_true, y_pred, labels=range(num_classes))
    np.testing.assert_array_equal(got, want)
    assert got.sum() == 50


def test_evaluate_agrees_with_sklearn_on_iris():
    config = ml_collections.ConfigDict({"test_fraction": 0.25, "var_smoothing": 1e-9})
    result = evaluate("iris", 0, config)
    assert result["agreement"] == 1.0
    assert result["accuracy"] == result["sklearn_accuracy"]
    assert result["confusion"].shape == (3, 3)
    assert result["confusion"].sum() == result["num_test"]
    assert np.trace(result["confusion"]) / result["num_test"] == result["accuracy"]


@pytest.mark.slow
def test_default_config_meets_its_target(tmp_path):
    summary = runs.default_run(CONFIG, tmp_path)
    for name in ("iris", "wine", "breast_cancer", "digits"):
        assert summary[f"{name}_max_gap_points"] <= TARGET_GAP_POINTS, name
