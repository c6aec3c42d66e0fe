r"""Gaussian naive Bayes as an immutable pytree: ``fit`` -> model -> ``predict``.

Bayes' rule with the naive assumption that the features are independent given
the class, and a Gaussian likelihood per class and feature:

.. math::

   P(c \mid x) = \frac{\pi_c \prod_{j=1}^{d} \mathcal{N}(x_j; \mu_{cj}, \sigma^2_{cj})}
                      {\sum_{k} \pi_k \prod_{j=1}^{d} \mathcal{N}(x_j; \mu_{kj}, \sigma^2_{kj})},
   \qquad \sigma^2_{cj} = s^2_{cj} + \varepsilon,
   \qquad \varepsilon = \texttt{var\_smoothing} \cdot \max_j \operatorname{Var}(x_j)

with :math:`\pi_c` the class prior, :math:`\mu_{cj}` and :math:`s^2_{cj}` the
(weighted) mean and biased variance of feature ``j`` in class ``c``. Everything
is computed in log space and normalised with ``logsumexp``.

The model is a ``flax.struct.dataclass``: ``fit`` and ``partial_fit`` return new
models, every array is a pytree leaf, so a model goes through ``jax.jit``,
``jax.vmap`` (say over bootstrap resamples) and ``jax.lax.scan`` (streaming).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxmath._checks import (
    as_float,
    check_int,
    check_integer,
    check_ndim,
    check_nonempty,
    is_tracer,
)

ArrayLike = jax.typing.ArrayLike

_LOG_2PI = math.log(2 * math.pi)


# Why a count must be a Python int, said in the TypeError of check_int.
_STATIC = "a static value: it fixes array shapes; under jax.jit mark it static"


def _num_classes(y: jax.Array, num_classes: int | None) -> int:
    """The static number of classes: given, or ``max(y) + 1`` read from a concrete ``y``."""
    if num_classes is None:
        if is_tracer(y):
            raise ValueError(
                "num_classes must be given when y is traced (inside jax.jit, jax.vmap or "
                "another transformation); pass num_classes=<int> as a static argument")
        num_classes = max(int(np.max(np.asarray(y))) + 1, 1) if y.size else 1
    return check_int(num_classes, "num_classes", 1, static=_STATIC)


def _check_labels(y: ArrayLike, n: int) -> jax.Array:
    """``[n]`` integer labels, one per row of ``X``."""
    y = jnp.asarray(y)
    check_integer(y, "y")
    check_ndim(y, "y", 1)
    if y.shape[0] != n:
        raise ValueError(
            f"y must have one label per row of X: X has {n} rows, y has shape {tuple(y.shape)}")
    return y


def _check_label_range(y: jax.Array, num_classes: int) -> None:
    """Raise ValueError if concrete labels fall outside ``[0, num_classes)``."""
    if not is_tracer(y) and y.size:
        yn = np.asarray(y)
        lo, hi = int(yn.min()), int(yn.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"y must hold labels in [0, num_classes={num_classes}), got labels in "
                f"[{lo}, {hi}]")


def _vector(x: ArrayLike, name: str, n: int, entries: str
            ) -> tuple[jax.Array, np.ndarray | None]:
    """``x`` as a float ``[n]`` array, and its float64 values when known (None if traced)."""
    v = as_float(x, name)
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) ({entries}), got shape "
                         f"{tuple(v.shape)}")
    return v, None if is_tracer(v) else np.asarray(v, np.float64)


def _check_weights(sample_weight: ArrayLike | None, n: int) -> jax.Array | None:
    if sample_weight is None:
        return None
    w, values = _vector(sample_weight, "sample_weight", n, "one weight per row of X")
    if values is not None and not np.all(np.isfinite(values) & (values >= 0)):
        raise ValueError("sample_weight must hold finite weights >= 0")
    return w


def _check_priors(priors: ArrayLike, num_classes: int, dtype) -> jax.Array:
    p, values = _vector(priors, "priors", num_classes, "one per class")
    if values is not None and not (np.all(values >= 0) and abs(values.sum() - 1.0) <= 1e-5):
        raise ValueError(f"priors must be >= 0 and sum to 1, got {values}")
    return _as_dtype(p, dtype)


def _as_dtype(x: jax.Array, dtype) -> jax.Array:
    """``x.astype(dtype)``; on concrete values through NumPy (no XLA compilation)."""
    if is_tracer(x) or x.dtype == dtype:
        return x.astype(dtype)
    return jnp.asarray(np.asarray(x).astype(dtype))


def _check_x(X: ArrayLike, num_features: int | None = None, min_ndim: int = 2) -> jax.Array:
    X = as_float(X, "X")
    if min_ndim == 2:
        check_ndim(X, "X", 2)
    else:
        check_ndim(X, "X", min_ndim=1)
    if num_features is not None and X.shape[-1] != num_features:
        raise ValueError(
            f"X must have {num_features} features (as the model was fitted with) on its last "
            f"axis, got shape {tuple(X.shape)}")
    return X


def _batch_stats(X: jax.Array, y: jax.Array, w: jax.Array, num_classes: int):
    """Per-class total weight, mean and biased variance of one batch (zeros for empty classes).

    Two passes (mean, then squared deviations from it) so float32 keeps its digits.
    Labels outside [0, num_classes) are dropped by ``segment_sum``.
    """
    n = jax.ops.segment_sum(w, y, num_segments=num_classes)
    safe_n = jnp.where(n > 0, n, 1)[:, None]
    mean = jax.ops.segment_sum(X * w[:, None], y, num_segments=num_classes) / safe_n
    d = X - mean[jnp.clip(y, 0, num_classes - 1)]
    var = jax.ops.segment_sum(w[:, None] * d * d, y, num_segments=num_classes) / safe_n
    return n, mean, var


def _merge(n_a, mean_a, var_a, n_b, mean_b, var_b):
    r"""Chan, Golub and LeVeque's pairwise merge of counts, means and biased variances.

    .. math:: \mu = \mu_a + f\delta, \quad s^2 = (1 - f) s^2_a + f s^2_b + f (1 - f) \delta^2,
              \quad f = n_b / (n_a + n_b), \quad \delta = \mu_b - \mu_a

    A convex combination of non-negative terms: no cancellation, exact when either
    side is empty (f = 0 keeps ``a`` unchanged bit for bit, f = 1 gives ``b``).
    """
    n = n_a + n_b
    f = (n_b / jnp.where(n > 0, n, 1))[:, None]
    delta = mean_b - mean_a
    mean = mean_a + f * delta
    var = (1 - f) * var_a + f * var_b + f * (1 - f) * delta * delta
    return n, mean, var


def _epsilon(n, mean, var, var_smoothing):
    """``var_smoothing`` times the largest feature variance of all data seen.

    The pooled variance comes from the class statistics (law of total variance), so
    it covers every batch merged so far. If every feature is constant it falls back
    to 1, so the smoothed variances stay positive and predictions finite.
    """
    total = jnp.sum(n)
    p = (n / jnp.where(total > 0, total, 1))[:, None]
    mu = jnp.sum(p * mean, axis=0)
    pooled = jnp.sum(p * (var + (mean - mu) ** 2), axis=0)
    scale = jnp.max(pooled)
    return var_smoothing * jnp.where(scale > 0, scale, 1)


def _empirical_prior(n):
    total = jnp.sum(n)
    return jnp.where(total > 0, n / jnp.where(total > 0, total, 1), 1 / n.shape[-1])


@jax.jit
def _partial_fit(model: GaussianNB, X: jax.Array, y: jax.Array,
                 w: jax.Array | None) -> GaussianNB:
    X = X.astype(model.mean.dtype)
    w = jnp.ones(X.shape[:1], X.dtype) if w is None else w.astype(X.dtype)
    batch = _batch_stats(X, y, w, model.num_classes)
    n, mean, var = _merge(model.class_count, model.mean, model.var, *batch)
    prior = _empirical_prior(n) if model.fit_prior else model.class_prior
    return model.replace(class_count=n, mean=mean, var=var, class_prior=prior,
                         epsilon=_epsilon(n, mean, var, model.var_smoothing))


@jax.jit
def _smooth(var, epsilon):
    return var + jnp.expand_dims(epsilon, (-1, -2))


@jax.jit
def _posterior(class_prior, mean, var, epsilon, X):
    """Joint log-likelihood, log posterior, posterior and labels: one compiled program."""
    smoothed_var = _smooth(var, epsilon)
    log_norm = jnp.sum(jnp.log(smoothed_var), axis=-1) + mean.shape[-1] * _LOG_2PI
    maha = jnp.sum((X[..., None, :] - mean) ** 2 * (1 / smoothed_var), axis=-1)
    jll = jnp.log(class_prior) - 0.5 * (log_norm + maha)
    log_proba = jll - jax.nn.logsumexp(jll, axis=-1, keepdims=True)
    return jll, log_proba, jnp.exp(log_proba), jnp.argmax(jll, axis=-1).astype(jnp.int32)


@struct.dataclass
class GaussianNB:
    r"""A fitted Gaussian naive Bayes classifier (an immutable pytree).

    .. math::

       \log P(c \mid x) = \log \pi_c - \frac{1}{2} \sum_{j=1}^{d}
           \Big[\log(2\pi\sigma^2_{cj}) + \frac{(x_j - \mu_{cj})^2}{\sigma^2_{cj}}\Big]
           - \operatorname{logsumexp}_k(\cdots)

    Build one with :meth:`fit` (or :meth:`init` and :meth:`partial_fit` for
    streaming). Labels are the integers ``0 .. num_classes - 1`` (encode other
    labels with ``np.unique(labels, return_inverse=True)``).

    Attributes:
      class_count: ``[C]`` total sample weight seen per class.
      mean: ``[C, d]`` per-class feature means.
      var: ``[C, d]`` per-class biased feature variances, without smoothing
        (scikit-learn's ``var_`` is :attr:`smoothed_var`).
      class_prior: ``[C]`` class priors: the empirical class frequencies, or the
        fixed ``priors`` given to :meth:`fit`.
      epsilon: ``[]`` the variance added to every ``var``: ``var_smoothing`` times
        the largest feature variance of all data seen (all batches, weighted).
      var_smoothing: ``[]`` the smoothing fraction (a leaf: it can be vmapped).
      fit_prior: static; True when ``class_prior`` follows the class counts.

    Edge cases: a class with no samples has ``class_count`` 0, mean 0 and variance
    0 (+ epsilon); with empirical priors its prior is 0, so its joint log-likelihood
    and log-probability are -inf, its probability is 0 and it is never predicted
    (no NaN). A constant feature has variance 0 and ``epsilon`` keeps it finite; if
    every feature is constant, epsilon is ``var_smoothing`` (scikit-learn would
    divide by zero). Ties in ``predict`` go to the lowest label, as ``np.argmax``.

    Example:
      >>> X = jnp.array([[1., 2.], [2., 3.], [3., 4.], [4., 5.]])
      >>> model = GaussianNB.fit(X, jnp.array([0, 0, 1, 1]))
      >>> model.predict_proba(jnp.array([[2.5, 3.5]]))  # exactly between the classes
      Array([[0.5, 0.5]], dtype=float32)
      >>> model.predict(jnp.array([[2.5, 3.5], [3.2, 4.1]]))  # a tie goes to label 0
      Array([0, 1], dtype=int32)
    """

    class_count: jax.Array
    mean: jax.Array
    var: jax.Array
    class_prior: jax.Array
    epsilon: jax.Array
    var_smoothing: jax.Array
    fit_prior: bool = struct.field(pytree_node=False, default=True)

    # ----------------------------------------------------------------- building
    @classmethod
    def init(cls, num_classes: int, num_features: int, var_smoothing: ArrayLike = 1e-9,
             priors: ArrayLike | None = None, dtype=None) -> GaussianNB:
        """A model that has seen no data, to grow with :meth:`partial_fit`.

        Args:
          num_classes: static number of classes ``C``.
          num_features: static number of features ``d``.
          var_smoothing: ``>= 0``, the fraction of the largest feature variance
            added to every variance.
          priors: optional ``[C]`` fixed class priors (>= 0, summing to 1); by
            default the priors are the empirical class frequencies.
          dtype: float dtype of the statistics (default: the default float dtype).

        Returns:
          A model with zero counts, means and variances and a uniform prior (or
          ``priors``); ``init(...).partial_fit(X, y)`` equals ``fit(X, y)``.
        """
        num_classes = check_int(num_classes, "num_classes", 1, static=_STATIC)
        num_features = check_int(num_features, "num_features", 1, static=_STATIC)
        dtype = jnp.dtype(dtype) if dtype is not None else jnp.result_type(float)
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"dtype must be a float dtype, got {dtype}")
        s = as_float(var_smoothing, "var_smoothing")
        if s.ndim != 0:
            raise ValueError(f"var_smoothing must be a scalar, got shape {tuple(s.shape)}")
        if not is_tracer(s) and not float(np.asarray(s)) >= 0:
            raise ValueError(f"var_smoothing must be >= 0, got {float(np.asarray(s))}")
        zeros = jnp.asarray(np.zeros((num_classes, num_features), dtype))
        counts = jnp.asarray(np.zeros((num_classes,), dtype))
        if priors is None:
            prior = jnp.asarray(np.full((num_classes,), 1 / num_classes, dtype))
        else:
            prior = _check_priors(priors, num_classes, dtype)
        return cls(class_count=counts, mean=zeros, var=zeros, class_prior=prior,
                   epsilon=jnp.asarray(np.zeros((), dtype)), var_smoothing=_as_dtype(s, dtype),
                   fit_prior=priors is None)

    @classmethod
    def fit(cls, X: ArrayLike, y: ArrayLike, num_classes: int | None = None,
            var_smoothing: ArrayLike = 1e-9, priors: ArrayLike | None = None,
            sample_weight: ArrayLike | None = None) -> GaussianNB:
        r"""Fit the per-class means, variances and priors to ``(X, y)``.

        .. math:: \mu_{cj} = \frac{\sum_{i: y_i = c} w_i x_{ij}}{n_c}, \quad
                  s^2_{cj} = \frac{\sum_{i: y_i = c} w_i (x_{ij} - \mu_{cj})^2}{n_c}, \quad
                  n_c = \sum_{i: y_i = c} w_i, \quad \pi_c = \frac{n_c}{\sum_k n_k}

        Args:
          X: ``[n, d]`` features (integers are converted to the default float dtype).
          y: ``[n]`` integer labels in ``[0, num_classes)``.
          num_classes: static number of classes. If None it is ``max(y) + 1``, which
            needs a concrete ``y``: under ``jax.jit`` or ``jax.vmap`` pass it (and
            mark it static for jit).
          var_smoothing: ``>= 0``; epsilon = var_smoothing * max feature variance.
          priors: optional ``[C]`` fixed class priors; default: empirical.
          sample_weight: optional ``[n]`` non-negative weights (frequency weights:
            a bootstrap resample is ``sample_weight=counts``).

        Returns:
          The fitted :class:`GaussianNB`. Classes absent from ``y`` get count 0 (see
          the class docstring). Labels out of range raise ValueError when ``y`` is
          concrete; under jit (where they cannot be seen) they are ignored. The
          statistics are differentiable in ``X`` and ``sample_weight``.
          Unlike scikit-learn, epsilon uses the weighted feature variance, so rows
          with weight 0 have no influence at all.
        """
        X = _check_x(X)
        check_nonempty(X, "X", axis=0)
        check_nonempty(X, "X", axis=1)
        y = _check_labels(y, X.shape[0])
        num_classes = _num_classes(y, num_classes)
        model = cls.init(num_classes, X.shape[1], var_smoothing, priors, X.dtype)
        _check_label_range(y, num_classes)
        return _partial_fit(model, X, y, _check_weights(sample_weight, X.shape[0]))

    def partial_fit(self, X: ArrayLike, y: ArrayLike,
                    sample_weight: ArrayLike | None = None) -> GaussianNB:
        r"""The model updated with one more batch (streaming, order independent).

        Each class's statistics are merged with the batch's by the parallel
        algorithm of Chan, Golub and LeVeque (scikit-learn's
        ``_update_mean_variance``), written as a convex combination:

        .. math:: n = n_a + n_b, \quad f = n_b / n, \quad \delta = \mu_b - \mu_a, \quad
                  \mu = \mu_a + f \delta, \quad
                  s^2 = (1 - f) s^2_a + f s^2_b + f (1 - f) \delta^2

        Args:
          X: ``[n, d]`` features, cast to the model's dtype (so the model can be the
            carry of ``jax.lax.scan``); ``n`` may be 0.
          y: ``[n]`` integer labels in ``[0, num_classes)``.
          sample_weight: optional ``[n]`` non-negative weights.

        Returns:
          The updated model. A class absent from the batch keeps its statistics
          exactly (f = 0). ``epsilon`` is recomputed from all data seen, so fitting
          in chunks equals one :meth:`fit` on all the data up to rounding.
          scikit-learn instead takes epsilon from the latest batch alone (and adds
          and removes different epsilons), a difference of the order of
          ``var_smoothing`` in the variances.
        """
        X = _check_x(X, self.num_features)
        y = _check_labels(y, X.shape[0])
        _check_label_range(y, self.num_classes)
        return _partial_fit(self, X, y, _check_weights(sample_weight, X.shape[0]))

    # ------------------------------------------------------------- attributes
    @property
    def num_classes(self) -> int:
        """Static number of classes ``C``."""
        return self.mean.shape[-2]

    @property
    def num_features(self) -> int:
        """Static number of features ``d``."""
        return self.mean.shape[-1]

    @property
    def smoothed_var(self) -> jax.Array:
        """``[C, d]`` the variances used for prediction, ``var + epsilon`` (sklearn's ``var_``)."""
        return _smooth(self.var, self.epsilon)

    # ------------------------------------------------------------- prediction
    def _posterior(self, X: ArrayLike):
        X = _check_x(X, self.num_features, min_ndim=1)
        return _posterior(self.class_prior, self.mean, self.var, self.epsilon, X)

    def joint_log_likelihood(self, X: ArrayLike) -> jax.Array:
        r"""Unnormalised log posterior, the numerator of Bayes' rule in log space.

        .. math:: \log \pi_c + \sum_j \log \mathcal{N}(x_j; \mu_{cj}, \sigma^2_{cj})

        Args:
          X: ``[..., d]`` features.

        Returns:
          ``[..., C]`` joint log-likelihoods; -inf for classes with prior 0. The
          squared deviations are formed directly (no expanded quadratic form), so a
          feature whose variance is tiny next to its spread keeps its accuracy in
          float32. Gradients with respect to ``X`` are finite.
        """
        return self._posterior(X)[0]

    def predict_log_proba(self, X: ArrayLike) -> jax.Array:
        r"""Log posterior :math:`\log P(c \mid x)`, normalised with ``logsumexp``.

        Args:
          X: ``[..., d]`` features.

        Returns:
          ``[..., C]`` log-probabilities; -inf for classes with prior 0. Finite
          gradients with respect to ``X`` for every finite ``X``.
        """
        return self._posterior(X)[1]

    def predict_proba(self, X: ArrayLike) -> jax.Array:
        """Posterior :math:`P(c \\mid x)`, ``[..., C]``, rows summing to 1 (0 for empty classes)."""
        return self._posterior(X)[2]

    def predict(self, X: ArrayLike) -> jax.Array:
        """Most probable class, ``[...]`` int32 labels; ties go to the lowest label."""
        return self._posterior(X)[3]
