"""A tour of the blog post's examples: each equation of the post evaluated with jaxmath.

Run with ``make tour`` or ``python -m jaxmath.run.tour``. Every row prints jaxmath's
value beside the output the blog post printed and an independent NumPy reference
computed here, and marks where the post's printed output is wrong
(``docs/errata.md`` has the evidence for each). :func:`numpy_gradient_descent` is the
post's NumPy gradient descent, verbatim: the tests and the benchmarks compare with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import jaxmath as jm


@dataclasses.dataclass(frozen=True)
class Example:
    """One code example of the blog post: its jaxmath value, a NumPy reference, its printout."""

    name: str
    equation: str
    jaxmath: Callable[[], object]
    reference: Callable[[], object]
    post_printed: object = None  # None: the post printed no value (or a random one)


def _np_softmax(z):
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_entropy(p):
    p = np.asarray(p, float)
    nz = p > 0
    return -np.sum(p[nz] * np.log(p[nz]))


def _np_gnb_proba(X, y, x):
    """Gaussian naive Bayes posterior by the textbook formula (scikit-learn's smoothing)."""
    classes = np.unique(y)
    eps = 1e-9 * np.var(X, axis=0).max()
    logp = []
    for c in classes:
        Xc = X[y == c]
        mu, var = Xc.mean(0), Xc.var(0) + eps
        ll = -0.5 * np.sum(np.log(2 * np.pi * var) + (x - mu) ** 2 / var)
        logp.append(np.log(len(Xc) / len(X)) + ll)
    logp = np.array(logp)
    return np.exp(logp - np.logaddexp.reduce(logp))


def numpy_gradient_descent(X, y, lr=0.01, epochs=1000):
    """The blog post's NumPy gradient descent on (1/2m)||X theta - y||^2, verbatim (float64)."""
    m, n = X.shape
    theta = np.zeros(n)
    for _ in range(epochs):
        gradient = (1/m) * X.T @ (X @ theta - y)
        theta -= lr * gradient
    return theta


def _np_attention(Q, K, V):
    return _np_softmax(Q @ K.T / np.sqrt(Q.shape[-1])) @ V


def _np_backprop_step(W, b, X, y, lr=0.01):
    """The blog post's PyTorch step (Linear(2, 1) + Sigmoid + MSELoss + SGD) by hand."""
    a = 1 / (1 + np.exp(-(X @ W.T + b)))
    loss = np.mean((a - y) ** 2)
    delta = 2 * (a - y) / len(X) * a * (1 - a)
    return loss, W - lr * delta.T @ X, b - lr * delta.sum(0)


_X_GNB = np.array([[1.0, 2], [2, 3], [3, 4], [4, 5]])
_Y_GNB = np.array([0, 0, 1, 1])
_X_GD = np.array([[1.0, 1], [1, 2], [1, 3]])
_Y_GD = np.array([1.0, 2, 3])
_Q = np.array([[1.0, 0], [0, 1]])
_K = np.array([[1.0, 1], [1, 0]])
_V = np.array([[0.0, 1], [1, 0]])
_W0, _B0 = np.array([[0.3, -0.2]]), np.array([0.1])  # fixed weights for the backprop step
_X_BP, _Y_BP = np.array([[0.0, 0], [1, 1]]), np.array([[0.0], [1]])


def _gd_jaxmath():
    def loss(theta):
        return 0.5 * jnp.mean((_X_GD @ theta - _Y_GD) ** 2)

    theta, _ = jm.gradient_descent(loss, jnp.zeros(2), 0.01, 1000)
    return theta


def _backprop_jaxmath():
    loss = jm.mse(_Y_BP, jax.nn.sigmoid(_X_BP @ _W0.T + _B0))
    dW, db = jm.dense_sigmoid_mse_grads(jnp.asarray(_W0.T), jnp.asarray(_B0), _X_BP, _Y_BP)
    return loss, _W0 - 0.01 * dW.T, _B0 - 0.01 * db  # jaxmath's W is [in, out]


def _conv_jaxmath():
    image = jax.random.normal(jax.random.key(0), (1, 28, 28, 1))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 1, 1))
    return jm.conv2d(image, kernel).shape


EXAMPLES: tuple[Example, ...] = (
    Example("Bayes' theorem", "P(D|T+) = P(T+|D)P(D) / P(T+)",
            lambda: jm.bayes_theorem(0.01, 0.99, 0.02),
            lambda: 0.99 * 0.01 / (0.99 * 0.01 + 0.02 * 0.99), 0.3333),
    Example("Entropy, fair coin", "H = -sum p log p",
            lambda: jm.entropy(jnp.array([0.5, 0.5])),
            lambda: _np_entropy([0.5, 0.5]), 0.6931471805599453),
    Example("Entropy, biased coin", "H = -sum p log p",
            lambda: jm.entropy(jnp.array([0.9, 0.1])),
            lambda: _np_entropy([0.9, 0.1]), 0.4698716731013394),
    Example("Naive Bayes P(class | [2.5, 3.5])", "P(y|x) ∝ P(y) prod_i P(x_i|y)",
            lambda: jm.GaussianNB.fit(_X_GNB, _Y_GNB).predict_proba(jnp.array([[2.5, 3.5]]))[0],
            lambda: _np_gnb_proba(_X_GNB, _Y_GNB, np.array([2.5, 3.5]))),
    Example("Naive Bayes prediction", "argmax_y P(y|x)",
            lambda: jm.GaussianNB.fit(_X_GNB, _Y_GNB).predict(jnp.array([[2.5, 3.5]])),
            lambda: np.argmax(_np_gnb_proba(_X_GNB, _Y_GNB, np.array([2.5, 3.5])))[None],
            [1]),
    Example("KL divergence", "D(P||Q) = sum P log(P/Q)",
            lambda: jm.kl_divergence(jnp.array([0.7, 0.3]), jnp.array([0.5, 0.5])),
            lambda: np.sum([0.7, 0.3] * np.log(np.array([0.7, 0.3]) / 0.5)),
            0.08228287850505156),
    Example("Binary cross-entropy", "-mean(y log q + (1-y) log(1-q))",
            lambda: jm.binary_cross_entropy(jnp.array([1.0, 0, 1]), jnp.array([0.9, 0.1, 0.8])),
            lambda: -np.mean(np.log([0.9, 0.9, 0.8])), 0.164252033486018),
    Example("Linear map", "y = Ax + b",
            lambda: jm.linear(jnp.array([[2.0, 1], [1, 3]]), jnp.array([1.0, 2]),
                              jnp.array([0.0, 1])),
            lambda: np.array([[2, 1], [1, 3]]) @ np.array([1, 2]) + np.array([0, 1]), [4, 7]),
    Example("Eigenvalues of [[4,2],[1,3]]", "Av = λv",
            lambda: jnp.sort(jm.eig(jnp.array([[4.0, 2], [1, 3]]))[0].real),
            lambda: np.sort(np.linalg.eigvals(np.array([[4.0, 2], [1, 3]])).real)),
    Example("Singular values of [[1,2],[3,4],[5,6]]", "A = U Σ Vᵀ",
            lambda: jm.svd(jnp.array([[1.0, 2], [3, 4], [5, 6]]))[1],
            lambda: np.linalg.svd(np.array([[1.0, 2], [3, 4], [5, 6]]), compute_uv=False)),
    Example("Gradient descent θ after 1000 steps", "θ ← θ - η ∇L(θ)",
            _gd_jaxmath, lambda: numpy_gradient_descent(_X_GD, _Y_GD), [0.0, 1.0]),
    Example("Backprop: loss, W, b after one SGD step", "∂L/∂w = ∂L/∂a · ∂a/∂z · ∂z/∂w",
            _backprop_jaxmath, lambda: _np_backprop_step(_W0, _B0, _X_BP, _Y_BP)),
    Example("MSE", "mean((y - ŷ)²)",
            lambda: jm.mse(jnp.array([1.0, 2, 3]), jnp.array([1.1, 1.9, 3.2])),
            lambda: np.mean((np.array([1, 2, 3]) - np.array([1.1, 1.9, 3.2])) ** 2), 0.01),
    Example("Diffusion x_t, x0=1, ᾱ=0.9, ε=0.5", "x_t = √ᾱ x0 + √(1-ᾱ) ε",
            lambda: jm.forward_diffuse(jnp.array([1.0]), 0.9, jnp.array([0.5])),
            lambda: np.sqrt(0.9) * 1.0 + np.sqrt(0.1) * 0.5),
    Example("Conv2d 3x3 on 28x28: output shape", "(f * g)(t) = Σ f(τ) g(t-τ)",
            _conv_jaxmath, lambda: (1, 26, 26, 1), (1, 26, 26, 1)),
    Example("Softmax [1, 2, 3]", "σ(z)_i = e^{z_i} / Σ_j e^{z_j}",
            lambda: jm.softmax(jnp.array([1.0, 2, 3])),
            lambda: _np_softmax(np.array([1.0, 2, 3])), [0.09003057, 0.24472847, 0.66524096]),
    Example("Attention (the blog post's Q, K, V)", "softmax(QKᵀ/√d_k) V",
            lambda: jm.attention(jnp.asarray(_Q), jnp.asarray(_K), jnp.asarray(_V)),
            lambda: _np_attention(_Q, _K, _V)),
)

_TOL = 1e-4  # float32 jaxmath vs float64 NumPy, and the blog post's rounded printouts


def _flat(value) -> np.ndarray:
    leaves = jax.tree_util.tree_leaves(value)
    return np.concatenate([np.ravel(np.asarray(v, dtype=float)) for v in leaves])


def close(a, b, tol: float = _TOL) -> bool:
    """Whether two (nested) values agree to ``tol``, relative to the larger magnitude."""
    a, b = _flat(a), _flat(b)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=tol, atol=tol))


def _fmt(value) -> str:
    return np.array2string(_flat(value), precision=6, separator=", ", suppress_small=True)


def main() -> int:
    """Print every example: jaxmath, the NumPy reference, the blog post's printed output."""
    print(f"jaxmath tour on {jax.devices()[0].platform} (jax {jax.__version__})\n")
    failures = 0
    for ex in EXAMPLES:
        ours, ref = ex.jaxmath(), ex.reference()
        agree = close(ours, ref)
        failures += not agree
        print(f"{ex.name}   [{ex.equation}]")
        print(f"  jaxmath   {_fmt(ours)}")
        print(f"  reference {_fmt(ref)}   {'agrees' if agree else 'DISAGREES'}")
        if ex.post_printed is not None:
            verdict = "matches" if close(ex.post_printed, ref) else "WRONG (see docs/errata.md)"
            print(f"  blog post {_fmt(ex.post_printed)}   {verdict}")
        print()
    print(f"{len(EXAMPLES) - failures}/{len(EXAMPLES)} examples agree with the NumPy reference.")
    return int(failures > 0)


if __name__ == "__main__":
    raise SystemExit(main())
