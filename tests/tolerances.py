"""Named tolerances for the test suite: one place to read and to tighten them."""

import jax

F32_RTOL = 1e-5      # float32 against a float64 reference, well-conditioned values
F32_ATOL = 1e-6
F32_LOOSE = 1e-4     # float32 after reductions over ~1e3 terms or matrix factorisations
F64_RTOL = 1e-10     # float64 against a float64 reference
F64_ATOL = 1e-12
GRAD_RTOL = 1e-2     # finite differences in float32 (jax.test_util.check_grads)
SKLEARN_PROBA_ATOL = 1e-5  # GaussianNB.predict_proba against scikit-learn (issue 2)

# Neural-network layers compute float32 products at JAX's default precision
# (jaxmath/_precision.py): float32 on a CPU, TF32 on NVIDIA GPUs (operands rounded to
# 10 mantissa bits, unit roundoff 2^-11 = 4.9e-4), one bfloat16 pass on TPUs (2^-9 =
# 2.0e-3). The tolerance for such an output against a float64 reference, for values
# of order 1 (rtol and atol alike): on an NVIDIA H200 the largest deviation in the
# suite was 2.8e-3 (a two-layer Transformer decoded token by token) and conv2d's
# 72-term sums were off by 5e-4 relative.
DEFAULT_PRECISION_TOL = {"cpu": F32_LOOSE, "gpu": 5e-3, "tpu": 3e-2}


def default_precision_tol(backend: str | None = None) -> dict[str, float]:
    """``rtol`` and ``atol`` for a float32 layer output at JAX's default matmul precision."""
    tol = DEFAULT_PRECISION_TOL[backend or jax.default_backend()]
    return {"rtol": tol, "atol": tol}
