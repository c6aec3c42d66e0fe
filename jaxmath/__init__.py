"""jaxmath: the core equations of machine learning as fast, verified, composable JAX code.

Every function is pure and works under ``jax.jit``, ``jax.grad`` and ``jax.vmap``::

    import jaxmath as jm
    jm.kl_divergence(p, q)                 # D(p || q), finite gradients at p = 0
    jm.GaussianNB.fit(X, y).predict(X)     # naive Bayes as an immutable pytree
    jm.gradient_descent_sweep(loss, theta0, learning_rates, num_steps)  # one compiled sweep
"""

from jaxmath import diffusion, nn
from jaxmath.diffusion import forward_diffuse
from jaxmath.linalg import PCA, eig, eigh, linear, svd
from jaxmath.losses import mse, softmax_cross_entropy
from jaxmath.naive_bayes import GaussianNB
from jaxmath.nn import attention, conv2d, convolve, log_softmax, softmax
from jaxmath.optim import (
    dense_sigmoid_mse,
    dense_sigmoid_mse_grads,
    gradient_descent,
    gradient_descent_sweep,
    optimize,
)
from jaxmath.probability import (
    bayes_posterior,
    bayes_theorem,
    binary_cross_entropy,
    conditional,
    conditional_probability,
    cross_entropy,
    entropy,
    joint_probability,
    js_divergence,
    kl_divergence,
    log_bayes_posterior,
    marginal,
    mutual_information,
)

__version__ = "0.1.0"

__all__ = [
    "PCA",
    "GaussianNB",
    "__version__",
    "attention",
    "bayes_posterior",
    "bayes_theorem",
    "binary_cross_entropy",
    "conditional",
    "conditional_probability",
    "conv2d",
    "convolve",
    "cross_entropy",
    "dense_sigmoid_mse",
    "dense_sigmoid_mse_grads",
    "diffusion",
    "eig",
    "eigh",
    "entropy",
    "forward_diffuse",
    "gradient_descent",
    "gradient_descent_sweep",
    "joint_probability",
    "js_divergence",
    "kl_divergence",
    "linear",
    "log_bayes_posterior",
    "log_softmax",
    "marginal",
    "mse",
    "mutual_information",
    "nn",
    "optimize",
    "softmax",
    "softmax_cross_entropy",
    "svd",
]
