r"""jaxmath's precision policy for matrix products and convolutions.

On a CPU a float32 matrix product is computed in float32. On accelerators JAX's
default (``precision=None``) trades accuracy for speed: NVIDIA GPUs from Ampere
on round float32 operands to TF32 (a 10-bit mantissa, unit roundoff
:math:`2^{-11} \approx 4.9 \cdot 10^{-4}`) and TPUs use one bfloat16 pass (8 bits,
:math:`2^{-9} \approx 2 \cdot 10^{-3}`). jaxmath splits its functions in two:

* **Classical math** -- the measures, losses, ``linear``, ``convolve``,
  ``eig``/``eigh``/``svd``, ``PCA``, ``GaussianNB``, the sample-quality metrics,
  the hand-written backpropagation and the gradient-descent drivers -- computes
  every product at ``Precision.HIGHEST``: float32 accuracy on every backend, so
  results agree with NumPy, SciPy and scikit-learn to float32 tolerances on a
  GPU or TPU too. Functions with a ``precision`` argument default to
  :data:`CLASSICAL`; ``gradient_descent``, ``gradient_descent_sweep`` and
  ``optimize`` trace the caller's loss under
  ``jax.default_matmul_precision(precision)``, also ``"highest"`` by default.
* **Neural-network layers** -- ``attention``, ``multi_head_attention``,
  ``conv2d`` and the Flax modules (``MultiHeadAttention``, the Transformers,
  ``Conv2D``, the denoisers) -- follow JAX's default for speed and take a
  ``precision`` argument or attribute, as ``jnp.matmul`` and ``flax.linen.Dense``
  do: ``precision="highest"`` gives float32 products on every backend.

On an NVIDIA H200 at the default precision, float32 attention, conv2d and
multi-head attention differed from float64 references by up to about
:math:`10^{-3}` of the output's scale; at ``"highest"`` by float32 rounding only.
"""

from __future__ import annotations

import contextlib

import jax
from jax import lax

#: The precision of every matrix product and convolution of jaxmath's classical math.
CLASSICAL = "highest"

# The names that jax.default_matmul_precision accepts (besides None).
_CONTEXT_NAMES = ("default", "high", "highest", "bfloat16", "tensorfloat32", "float32")
_MESSAGE = ("None, 'default', 'high', 'highest' (also 'bfloat16', 'tensorfloat32', "
            "'float32'), a jax.lax.Precision, a pair of them or a jax.lax.DotAlgorithmPreset")


def _is_precision(p: object) -> bool:
    if isinstance(p, lax.Precision):
        return True
    if not isinstance(p, str):
        return False
    try:
        lax.Precision(p)
    except ValueError:
        return False
    return True


def check_precision(precision: lax.PrecisionLike, name: str = "precision") -> lax.PrecisionLike:
    """``precision`` unchanged if ``jnp.matmul`` accepts it; ValueError naming ``name`` if not.

    Accepted: None (JAX's default), a :class:`jax.lax.Precision` or its name, a
    pair of them (one per operand), a :class:`jax.lax.DotAlgorithmPreset` or its name.
    Lists become tuples, so the result can be a static argument of ``jax.jit``.
    """
    if precision is None or isinstance(precision, lax.DotAlgorithmPreset | lax.DotAlgorithm):
        return precision
    if isinstance(precision, tuple | list) and len(precision) == 2 and all(
            _is_precision(p) for p in precision):
        return tuple(precision)
    if _is_precision(precision):
        return precision
    if isinstance(precision, str) and precision in lax.DotAlgorithmPreset.__members__:
        return precision
    raise ValueError(f"{name} must be {_MESSAGE}; got {precision!r}")


def context_name(precision: str | lax.Precision | None, name: str = "precision") -> str | None:
    """``precision`` as a name for ``jax.default_matmul_precision`` (None: leave JAX's)."""
    if isinstance(precision, lax.Precision):
        precision = precision.name.lower()
    if precision is None or (isinstance(precision, str) and precision in _CONTEXT_NAMES):
        return precision
    raise ValueError(f"{name} must be None or one of {_CONTEXT_NAMES} (or a jax.lax.Precision), "
                     f"got {precision!r}")


def matmul_context(name: str | None):
    """``jax.default_matmul_precision(name)``, or a no-op context for None."""
    if name is None:
        return contextlib.nullcontext()
    return jax.default_matmul_precision(name)
