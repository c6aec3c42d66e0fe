"""Named tolerances for the test suite: one place to read and to tighten them."""

F32_RTOL = 1e-5      # float32 against a float64 reference, well-conditioned values
F32_ATOL = 1e-6
F32_LOOSE = 1e-4     # float32 after reductions over ~1e3 terms or matrix factorisations
F64_RTOL = 1e-10     # float64 against a float64 reference
F64_ATOL = 1e-12
GRAD_RTOL = 1e-2     # finite differences in float32 (jax.test_util.check_grads)
SKLEARN_PROBA_ATOL = 1e-5  # GaussianNB.predict_proba against scikit-learn (issue 2)
