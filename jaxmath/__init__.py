"""jaxmath: the core equations of machine learning as fast, verified, composable JAX code.

Every function is pure and works under ``jax.jit``, ``jax.grad`` and ``jax.vmap``::

    import jaxmath as jm
    jm.kl_divergence(p, q)                 # D(p || q), finite gradients at p = 0
    jm.GaussianNB.fit(X, y).predict(X)     # naive Bayes as an immutable pytree
    jm.gradient_descent_sweep(loss, theta0, learning_rates, num_steps)  # one compiled sweep
"""

from jaxmath import diffusion, metrics, nn
from jaxmath.diffusion import (
    DiffusionModel,
    MLPDenoiser,
    NoiseSchedule,
    UNet,
    ddim_sample,
    ddpm_sample,
    diffusion_loss,
    forward_diffuse,
    make_schedule,
    q_posterior,
    q_sample,
)
from jaxmath.linalg import PCA, eig, eigh, linear, svd
from jaxmath.losses import mse, softmax_cross_entropy
from jaxmath.naive_bayes import GaussianNB
from jaxmath.nn import (
    Conv2D,
    MultiHeadAttention,
    Transformer,
    TransformerBlock,
    TransformerLM,
    attention,
    conv2d,
    convolve,
    log_softmax,
    multi_head_attention,
    softmax,
)
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
from jaxmath.run import datasets, sweep

__version__ = "0.1.0"

__all__ = [
    "PCA",
    "Conv2D",
    "DiffusionModel",
    "GaussianNB",
    "MLPDenoiser",
    "MultiHeadAttention",
    "NoiseSchedule",
    "Transformer",
    "TransformerBlock",
    "TransformerLM",
    "UNet",
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
    "datasets",
    "ddim_sample",
    "ddpm_sample",
    "dense_sigmoid_mse",
    "dense_sigmoid_mse_grads",
    "diffusion",
    "diffusion_loss",
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
    "make_schedule",
    "marginal",
    "metrics",
    "mse",
    "multi_head_attention",
    "mutual_information",
    "nn",
    "optimize",
    "q_posterior",
    "q_sample",
    "softmax",
    "softmax_cross_entropy",
    "svd",
    "sweep",
]
