"""The public API named in the core issue is importable as ``import jaxmath as jm``."""

import inspect

import pytest

import jaxmath as jm

CONTRACT = [
    # probability and information theory
    "bayes_theorem", "bayes_posterior", "log_bayes_posterior", "joint_probability",
    "conditional_probability", "marginal", "conditional", "entropy", "kl_divergence",
    "cross_entropy", "binary_cross_entropy", "softmax_cross_entropy", "js_divergence",
    "mutual_information",
    # naive Bayes, linear algebra
    "GaussianNB", "linear", "eig", "eigh", "svd", "PCA",
    # optimisation and losses
    "gradient_descent", "mse",
    # neural-network functions, diffusion
    "softmax", "log_softmax", "convolve", "conv2d", "attention", "forward_diffuse",
]


@pytest.mark.parametrize("name", CONTRACT)
def test_contract_name_is_exported(name):
    assert name in jm.__all__
    assert getattr(jm, name) is not None


@pytest.mark.parametrize("name", sorted(set(jm.__all__) - {
    "__version__", "datasets", "diffusion", "metrics", "nn", "sweep"}))
def test_every_public_name_is_documented_with_an_example(name):
    obj = getattr(jm, name)
    doc = inspect.getdoc(obj) or ""
    assert "Example" in doc or ">>>" in doc, f"jm.{name} has no doctest example"
    assert ".. math::" in doc or "math" in doc.lower(), f"jm.{name} states no equation"
