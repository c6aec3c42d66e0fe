r"""Probability and information theory: Bayes' rule, probability tables, entropies.

Every information measure here is built on two private primitives, :func:`_xlogy`
(:math:`x \log y` with :math:`0 \log y = 0`) and :func:`_rel_entr` (the relative-entropy
term :math:`x \log(x / y)`, computed as :math:`x (\log x - \log y)`), whose derivatives
are defined so that gradients stay finite at probabilities exactly 0 and 1:

* :math:`\partial_x (x \log y) = \log \max(y, \text{tiny})`: exact for every
  positive normal ``y``; at ``y = 0``, where the true value is :math:`-\infty`,
  it is :math:`\log(\text{tiny})` (about -87.3 in float32, -708.4 in float64),
  finite and of the correct sign.
* :math:`\partial_y (x \log y) = x / \max(y, \text{tiny})`: exactly 0 where
  ``x = 0`` (the term vanishes identically there) and large but finite where
  ``y = 0 < x``.

So, for example, the entropy gradient at p = 0 is :math:`-\log(\text{tiny})`
instead of :math:`+\infty`, and a zero probability that reaches the loss
through a softmax multiplies it by 0 instead of producing ``0 * inf = NaN``.
This differs from ``jax.scipy.special.xlogy``/``entr`` and ``torch.xlogy``,
whose gradients are NaN or infinite at 0. ("tiny" is the smallest positive
normal number of the dtype; on CPU, XLA's log already treats subnormal
numbers as 0.) :func:`_rel_entr` has exactly the derivative of
``_xlogy(x, x) - _xlogy(x, y)``.

Exact zeros. ``kl_divergence(p, p)`` and ``js_divergence(p, p)`` are exactly +0.0, in
every dtype and under ``jax.jit``: each term is :math:`x (\log x - \log y)` with two
bitwise-equal logs (for JS, :math:`M = (P + P) / 2 = P` exactly). Written as
:math:`x \log x - x \log y`, XLA:CPU's LLVM backend contracts the products into
``fma(x, log x, -round(x log y))``, which leaves the rounding error of one product
(about 1e-8 per row in float32, 1e-17 in float64) instead of 0. The entropy of a
one-hot row is exactly 0 too (:math:`1 \log 1 = 0 \log 0 = 0`).

Masks. The measures take ``where=``, a boolean mask of the entries that count (True =
include, the rule of ``jax.nn`` and ``optax.losses``), broadcastable to the inputs. An
excluded entry is treated as deleted: it is replaced by 0 before any arithmetic, so it
adds nothing to the value and its gradient is exactly 0, even where it holds inf or
NaN; a row with no included entry gives 0. Without ``where`` none of this is compiled.

Functions with ``validate=True`` check that their inputs are probabilities
(see :mod:`jaxmath._checks`): eagerly a ValueError, under ``jax.jit`` a
``checkify`` check that the caller reports with ``jax.experimental.checkify``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmath import _checks
from jaxmath.nn import _softmax_kernels

ArrayLike = jax.typing.ArrayLike

__all__ = [
    "bayes_posterior",
    "bayes_theorem",
    "binary_cross_entropy",
    "conditional",
    "conditional_probability",
    "cross_entropy",
    "entropy",
    "joint_probability",
    "js_divergence",
    "kl_divergence",
    "log_bayes_posterior",
    "marginal",
    "mutual_information",
]


# ---------------------------------------------------------------------------
# The one numerical primitive.


@jax.custom_jvp
def _xlogy(x: jax.Array, y: jax.Array) -> jax.Array:
    """``x * log(y)`` with ``0 * log(y) = 0`` for every finite ``y >= 0`` (0 included).

    Two formulations, chosen when the program is lowered for its backend
    (``lax.platform_dependent``), equal on every input a measure takes:

    * CPU (:func:`_xlogy_minmax`): where x = 0, ``y`` is raised to at least ``tiny``
      so the log is finite; where x >= tiny it is untouched (``tiny - min(x, tiny) =
      0``), so y = 0 < x still gives -inf. Written with min/max rather than a select:
      a compare or select inside the fused elementwise-and-sum loop stops XLA:CPU from
      vectorising it, which made entropy and KL 4-6x slower on 10,000 x 1,000 inputs.
    * GPU and TPU (:func:`_xlogy_select`): ``where(x != 0 or y is NaN, x log y, 0)``,
      the program of ``jax.scipy.special.xlogy``, which XLA fuses into the reduction
      there at memory bandwidth (on an H200 the min/max form ran at 0.85x of it).

    They differ only at ``x = 0, y = +inf`` (not a probability): NaN on the CPU, 0
    on an accelerator.
    """
    return lax.platform_dependent(x, y, cpu=_xlogy_minmax, default=_xlogy_select)


def _xlogy_minmax(x: jax.Array, y: jax.Array) -> jax.Array:
    tiny = jnp.finfo(x.dtype).tiny
    return x * jnp.log(jnp.maximum(y, tiny - jnp.minimum(x, tiny)))


def _xlogy_select(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.where((x != 0) | jnp.isnan(y), x * jnp.log(y), jnp.zeros_like(x))


@_xlogy.defjvp
def _xlogy_jvp(primals, tangents):
    x, y = primals
    dx, dy = tangents
    y_safe = jnp.maximum(y, jnp.finfo(y.dtype).tiny)
    return _xlogy(x, y), dx * jnp.log(y_safe) + dy * (x / y_safe)


@jax.custom_jvp
def _rel_entr(x: jax.Array, y: jax.Array) -> jax.Array:
    """``x * (log(x) - log(y))``: ``x log(x / y)`` with ``0 log(0 / y) = 0`` for finite
    ``y >= 0`` and ``+inf`` where ``y = 0 < x``; exactly 0 where ``x == y``.

    The same two formulations as :func:`_xlogy`, chosen per backend: on CPU both logs
    take the guard ``max(., tiny - min(x, tiny))`` (no compare or select, so the loop
    vectorises); on GPU and TPU a select on ``x != 0 or y is NaN``. One product per
    term, so no fused multiply-add can leave a rounding error where the logs cancel.
    """
    return lax.platform_dependent(x, y, cpu=_rel_entr_minmax, default=_rel_entr_select)


def _rel_entr_minmax(x: jax.Array, y: jax.Array) -> jax.Array:
    tiny = jnp.finfo(x.dtype).tiny
    floor = tiny - jnp.minimum(x, tiny)
    return x * (jnp.log(jnp.maximum(x, floor)) - jnp.log(jnp.maximum(y, floor)))


def _rel_entr_select(x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.where((x != 0) | jnp.isnan(y), x * (jnp.log(x) - jnp.log(y)),
                     jnp.zeros_like(x))


@_rel_entr.defjvp
def _rel_entr_jvp(primals, tangents):
    x, y = primals
    dx, dy = tangents
    tiny = jnp.finfo(x.dtype).tiny
    x_safe, y_safe = jnp.maximum(x, tiny), jnp.maximum(y, tiny)
    # The derivative of _xlogy(x, x) - _xlogy(x, y): at x = 0 it is log(tiny / y).
    return (_rel_entr(x, y),
            dx * (jnp.log(x_safe) + x / x_safe - jnp.log(y_safe)) - dy * (x / y_safe))


# ---------------------------------------------------------------------------
# Shared argument handling (outside jit) and arithmetic helpers (inside jit).


def _dists(named: Sequence[tuple[ArrayLike, str]], axis: int | Sequence[int],
           validate: bool, where: ArrayLike | None = None, base: float | None = None):
    """Inputs as one float dtype, checked to broadcast; the normalised axis (an int, or a
    tuple where a tuple was given) and the checked mask (or None); ``base`` checked."""
    arrays = _checks.as_floats(*named)
    names = [name for _, name in named]
    shape = _checks.broadcast_shapes(*zip(arrays, names, strict=True))
    probe = jax.ShapeDtypeStruct(shape, arrays[0].dtype)
    axes = _checks.check_axes(probe, axis, names[0])
    axis = axes[0] if isinstance(axis, int | np.integer) else axes
    _checks.check_nonempty(probe, names[0], axis)
    target = names[0] if tuple(arrays[0].shape) == shape else f"broadcast({', '.join(names)})"
    mask = _checks.check_mask(where, shape, target)
    if validate:
        for a, name in zip(arrays, names, strict=True):
            _checks.check_distribution(jnp.broadcast_to(a, shape), name, axis, where=mask)
    _check_base(base)
    return arrays, axis, mask


def _probabilities(named: Sequence[tuple[ArrayLike, str]], validate: bool
                   ) -> tuple[jax.Array, ...]:
    """Inputs as one float dtype, checked to broadcast, and (``validate``) to lie in [0, 1]."""
    arrays = _checks.as_floats(*named)
    named = [(a, name) for a, (_, name) in zip(arrays, named, strict=True)]
    _checks.broadcast_shapes(*named)
    if validate:
        for a, name in named:
            _checks.check_probability(a, name)
    return arrays


def _deleted(mask: jax.Array | None, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """The arrays with the entries ``mask`` excludes replaced by 0 (a select, so inf or NaN
    there reaches neither the value nor the gradient); unchanged without a mask."""
    if mask is None:
        return arrays
    return tuple(jnp.where(mask, a, jnp.zeros((), a.dtype)) for a in arrays)


def _check_base(base: float | None) -> None:
    if base is None:
        return
    if not isinstance(base, int | float | np.integer | np.floating):
        raise TypeError(f"base must be a number or None, got {type(base).__name__}")
    if not (base > 0 and base != 1):
        raise ValueError(f"base must be positive and different from 1, got {base!r}")


def _upcast(x: jax.Array) -> jax.Array:
    """float32 at least: half-precision inputs are summed in float32."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _in_base(nats: jax.Array, base: float | None, dtype) -> jax.Array:
    """Convert nats to ``base`` units and cast to the output dtype."""
    if base is not None:
        nats = nats / np.log(base)
    return nats.astype(dtype)


def _measure(nats):
    """The jitted kernel of an information measure from ``nats(*arrays, axis=axis)``, its
    value in nats: called as ``kernel(arrays, axis, base, mask)``, it upcasts the arrays
    (float32 at least), deletes the entries ``mask`` excludes, and returns the value in
    ``base`` units and the dtype of the first array."""
    def kernel(arrays: tuple[jax.Array, ...], axis: int | tuple[int, ...], base: float | None,
               mask: jax.Array | None = None) -> jax.Array:
        deleted = _deleted(mask, *(_upcast(a) for a in arrays))
        return _in_base(nats(*deleted, axis=axis), base, arrays[0].dtype)

    kernel.__name__, kernel.__qualname__, kernel.__doc__ = (
        nats.__name__, nats.__qualname__, nats.__doc__)
    return partial(jax.jit, static_argnames=("axis", "base"))(kernel)


@jax.jit
def _safe_divide(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a / b`` where ``b != 0`` and 0 where ``b == 0``, with finite gradients."""
    nonzero = b != 0
    return jnp.where(nonzero, a / jnp.where(nonzero, b, 1), 0)


# ---------------------------------------------------------------------------
# Bayes' rule.


def bayes_theorem(p_a: ArrayLike, p_b_given_a: ArrayLike, p_b_given_not_a: ArrayLike,
                  validate: bool = False) -> jax.Array:
    r"""Posterior P(A | B) of a binary hypothesis A after observing B.

    .. math:: P(A|B) = \frac{P(B|A) P(A)}{P(B|A) P(A) + P(B|\neg A) (1 - P(A))}

    Args:
      p_a: prior P(A); any shape.
      p_b_given_a: likelihood P(B | A) (a test's sensitivity), broadcastable with ``p_a``.
      p_b_given_not_a: P(B | not A) (a test's false-positive rate), broadcastable.
      validate: check that all three lie in [0, 1] and that P(B) > 0.

    Returns:
      P(A | B) with the broadcast shape of the inputs. Where the evidence P(B) is 0
      (B is impossible under the given numbers) the posterior is undefined; it is
      returned as 0, with finite gradients, and ``validate=True`` raises instead.

    Example:
      >>> float(bayes_theorem(0.01, 0.99, 0.02))  # a positive test, 1% prevalence
      0.3333...
    """
    p_a, p_ba, p_bna = _probabilities(
        [(p_a, "p_a"), (p_b_given_a, "p_b_given_a"), (p_b_given_not_a, "p_b_given_not_a")],
        validate)
    if validate:
        _checks.check_values(p_ba * p_a + p_bna * (1 - p_a) > 0,
                             "the evidence P(B) must be positive, got P(B) = 0")
    return _bayes_theorem(p_a, p_ba, p_bna)


@jax.jit
def _bayes_theorem(p_a: jax.Array, p_ba: jax.Array, p_bna: jax.Array) -> jax.Array:
    joint = p_ba * p_a
    return _safe_divide(joint, joint + p_bna * (1 - p_a))


def bayes_posterior(prior: ArrayLike, likelihood: ArrayLike, axis: int = -1,
                    validate: bool = False) -> jax.Array:
    r"""Normalised posterior over discrete hypotheses.

    .. math:: P(H_i | B) = \frac{P(B | H_i) P(H_i)}{\sum_j P(B | H_j) P(H_j)}

    Args:
      prior: ``[..., n]`` prior probabilities P(H_i) along ``axis``.
      likelihood: ``[..., n]`` likelihoods P(B | H_i) (or densities), broadcastable
        with ``prior``.
      axis: the axis that holds the hypotheses.
      validate: check that ``prior`` is a distribution, ``likelihood`` is
        non-negative and the evidence is positive.

    Returns:
      The posterior, with the broadcast shape, summing to 1 along ``axis``.
      Hypotheses with zero prior (or zero likelihood) have posterior exactly 0.
      Terms are rescaled by the largest one first, so tiny likelihoods (products
      down to about 1e-38 in float32) are fine; below that use
      :func:`log_bayes_posterior`. Where the evidence
      :math:`\sum_j P(B|H_j)P(H_j)` is 0 the posterior is all zeros (as
      :func:`log_bayes_posterior` gives all ``-inf``), with finite gradients;
      ``validate=True`` raises ValueError instead.

    Example:
      >>> post = bayes_posterior(jnp.array([0.5, 0.3, 0.2]), jnp.array([0.1, 0.5, 0.0]))
      >>> print(post.tolist())
      [0.25, 0.75, 0.0]
    """
    (prior, likelihood), axis, _ = _dists(
        [(prior, "prior"), (likelihood, "likelihood")], axis, validate=False)
    if validate:
        prior_b = jnp.broadcast_to(prior, jnp.broadcast_shapes(prior.shape, likelihood.shape))
        _checks.check_distribution(prior_b, "prior", axis)
        _checks.check_values(likelihood >= 0, "likelihood must be non-negative")
        _checks.check_values(jnp.any(prior * likelihood > 0, axis=axis),
                             "the evidence sum(prior * likelihood) must be positive, got 0 "
                             "for some rows")
    return _bayes_posterior(prior, likelihood, axis)


@partial(jax.jit, static_argnames="axis")
def _bayes_posterior(prior: jax.Array, likelihood: jax.Array, axis: int) -> jax.Array:
    joint = _upcast(prior) * _upcast(likelihood)
    # Dividing by the largest term first keeps the evidence and its gradient
    # (1 / evidence^2) in range when all terms are tiny; the posterior is invariant.
    scale = jnp.max(joint, axis=axis, keepdims=True)
    joint = joint / jax.lax.stop_gradient(jnp.where(scale > 0, scale, 1))
    evidence = jnp.sum(joint, axis=axis, keepdims=True)
    return _safe_divide(joint, evidence).astype(prior.dtype)


def log_bayes_posterior(log_prior: ArrayLike, log_likelihood: ArrayLike,
                        axis: int = -1) -> jax.Array:
    r"""Log posterior over discrete hypotheses, computed in log space.

    .. math:: \log P(H_i | B) = \log P(H_i) + \log P(B|H_i)
       - \operatorname{logsumexp}_j \left(\log P(H_j) + \log P(B|H_j)\right)

    Args:
      log_prior: ``[..., n]`` log prior probabilities along ``axis``.
      log_likelihood: ``[..., n]`` log likelihoods, broadcastable with ``log_prior``.
      axis: the axis that holds the hypotheses.

    Returns:
      The log posterior, with the broadcast shape. Hypotheses with log prior
      ``-inf`` stay at ``-inf``; a row whose terms are all ``-inf`` (zero evidence)
      is all ``-inf`` with zero gradient, never NaN. Safe for log likelihoods far
      below the float range of :func:`bayes_posterior` (e.g. -1e4).

    Example:
      >>> log_post = log_bayes_posterior(jnp.log(jnp.array([0.5, 0.5])),
      ...                                jnp.array([-1000.0, -1001.0]))
      >>> print(log_post.tolist())
      [-0.3133, -1.3133]
    """
    (log_prior, log_likelihood), axis, _ = _dists(
        [(log_prior, "log_prior"), (log_likelihood, "log_likelihood")], axis, validate=False)
    return _log_bayes_posterior(log_prior, log_likelihood, axis)


@partial(jax.jit, static_argnames="axis")
def _log_bayes_posterior(log_prior: jax.Array, log_likelihood: jax.Array,
                         axis: int) -> jax.Array:
    return _softmax_kernels.log_softmax(log_prior + log_likelihood, axis)


# ---------------------------------------------------------------------------
# Joint, conditional and marginal probabilities.


def joint_probability(p_a_given_b: ArrayLike, p_b: ArrayLike,
                      validate: bool = False) -> jax.Array:
    r"""Joint probability from a conditional and a marginal.

    .. math:: P(A, B) = P(A | B) P(B)

    Args:
      p_a_given_b: P(A | B), any shape.
      p_b: P(B), broadcastable with ``p_a_given_b``.
      validate: check that both lie in [0, 1].

    Returns:
      P(A, B) with the broadcast shape.

    Example:
      >>> float(joint_probability(0.5, 0.4))
      0.2
    """
    p_a_given_b, p_b = _probabilities([(p_a_given_b, "p_a_given_b"), (p_b, "p_b")], validate)
    return p_a_given_b * p_b


def conditional_probability(p_ab: ArrayLike, p_b: ArrayLike,
                            validate: bool = False) -> jax.Array:
    r"""Conditional probability from a joint and a marginal.

    .. math:: P(A | B) = \frac{P(A, B)}{P(B)}

    Args:
      p_ab: P(A, B), any shape.
      p_b: P(B), broadcastable with ``p_ab``.
      validate: check that both lie in [0, 1] and that P(A, B) <= P(B).

    Returns:
      P(A | B) with the broadcast shape. Where P(B) = 0 the conditional is
      undefined and returned as 0, with finite gradients.

    Example:
      >>> float(conditional_probability(0.2, 0.4))
      0.5
    """
    p_ab, p_b = _probabilities([(p_ab, "p_ab"), (p_b, "p_b")], validate)
    if validate:
        _checks.check_values(p_ab <= p_b, "p_ab must not exceed p_b: P(A, B) <= P(B)")
    return _safe_divide(p_ab, p_b)


def _axes(joint: jax.Array, axis: int | Sequence[int], name: str) -> tuple[int, ...]:
    """Normalised, distinct axes of ``joint`` (none is allowed: nothing is summed out)."""
    return _checks.check_axes(joint, axis, "joint", arg=name, allow_empty=True)


def _table(joint: ArrayLike, validate: bool) -> jax.Array:
    """A checked probability table: entries in [0, 1] summing to 1 when validated."""
    joint = _checks.as_float(joint, "joint")
    _checks.check_nonempty(joint, "joint")
    if validate:
        _checks.check_distribution(joint.reshape(-1), "joint (flattened)")
    return joint


def marginal(joint: ArrayLike, axis: int | Sequence[int], validate: bool = False) -> jax.Array:
    r"""Marginal distribution of a probability table: sum out the variables on ``axis``.

    .. math:: P(X) = \sum_y P(X, Y = y)

    Args:
      joint: probability table, one axis per variable (e.g. ``[n_x, n_y]``).
      axis: the axis (or axes) of the variables to sum out.
      validate: check that ``joint`` holds probabilities summing to 1.

    Returns:
      The table without ``axis``.

    Example:
      >>> print(marginal(jnp.array([[0.1, 0.2], [0.3, 0.4]]), axis=1).tolist())  # P(X)
      [0.3, 0.7]
    """
    joint = _table(joint, validate)
    return jnp.sum(joint, axis=_axes(joint, axis, "axis"))


def conditional(joint: ArrayLike, given_axis: int | Sequence[int],
                validate: bool = False) -> jax.Array:
    r"""Conditional distribution table of the other variables given those on ``given_axis``.

    .. math:: P(X | Y = y) = \frac{P(X, Y = y)}{\sum_x P(X = x, Y = y)}

    Args:
      joint: probability table, one axis per variable (e.g. ``[n_x, n_y]``).
      given_axis: the axis (or axes) of the conditioning variables.
      validate: check that ``joint`` holds probabilities summing to 1.

    Returns:
      A table of the shape of ``joint`` that sums to 1 over the axes other than
      ``given_axis``, for each value of the given variables. Where the given
      value has probability 0 the conditional is undefined and returned as 0
      (all zeros for that value), with finite gradients.

    Example:
      >>> print(conditional(jnp.array([[0.1, 0.2], [0.3, 0.0]]), given_axis=1).tolist())
      [[0.25, 1.0], [0.75, 0.0]]
    """
    joint = _table(joint, validate)
    given = _axes(joint, given_axis, "given_axis")
    others = tuple(a for a in range(joint.ndim) if a not in given)
    if not others:
        raise ValueError(f"given_axis {given_axis!r} covers every axis of joint of shape "
                         f"{tuple(joint.shape)}: no variable is left to condition")
    return _conditional(joint, others)


@partial(jax.jit, static_argnames="others")
def _conditional(joint: jax.Array, others: tuple[int, ...]) -> jax.Array:
    return _safe_divide(joint, jnp.sum(joint, axis=others, keepdims=True))


# ---------------------------------------------------------------------------
# Information measures.


def entropy(p: ArrayLike, axis: int | Sequence[int] = -1, base: float | None = None,
            validate: bool = False, where: ArrayLike | None = None) -> jax.Array:
    r"""Shannon entropy of discrete distributions.

    .. math:: H(P) = -\sum_{x \in W} P(x) \log P(x), \qquad 0 \log 0 = 0

    where :math:`W` is the set of outcomes that ``where`` includes (all by default).

    Args:
      p: ``[..., n]`` probabilities along ``axis`` (not renormalised, unlike
        ``scipy.stats.entropy``).
      axis: the axis that holds the outcomes, or a tuple of axes that hold them
        together (e.g. ``(-2, -1)`` for distributions over a grid).
      base: logarithm base; None for nats, 2 for bits.
      validate: check that ``p`` is a distribution along ``axis`` (its included
        entries, with ``where``).
      where: optional boolean mask broadcastable to ``p.shape``; True = the outcome
        counts. An excluded entry is treated as deleted, whatever it holds (inf or
        NaN included).

    Returns:
      ``[...]`` entropies, ``p.shape`` without ``axis``. Zero probabilities contribute
      0; a one-hot row, and a row with no included entry, give exactly 0. The
      gradient :math:`-(\log p + 1)` is finite everywhere: at p = 0, where it is
      mathematically :math:`+\infty`, it is :math:`-\log(\text{tiny})` (see the
      module docstring); at p = 1 it is -1; at an excluded entry it is exactly 0.

    Example:
      >>> float(entropy(jnp.array([0.9, 0.1])))
      0.3250...
      >>> float(entropy(jnp.array([0.5, 0.5]), base=2))
      1.0
      >>> float(entropy(jnp.array([0.5, 0.5, jnp.nan]), base=2,
      ...               where=jnp.array([True, True, False])))
      1.0
    """
    arrays, axis, mask = _dists([(p, "p")], axis, validate, where, base)
    return _entropy(arrays, axis, base, mask)


@_measure
def _entropy(p: jax.Array, *, axis: int | tuple[int, ...]) -> jax.Array:
    return -jnp.sum(_xlogy(p, p), axis=axis)


def kl_divergence(p: ArrayLike, q: ArrayLike, axis: int | Sequence[int] = -1,
                  base: float | None = None, validate: bool = False,
                  where: ArrayLike | None = None) -> jax.Array:
    r"""Kullback-Leibler divergence D_KL(p || q) of discrete distributions.

    .. math:: D_{KL}(P \| Q) = \sum_{x \in W} P(x) \log \frac{P(x)}{Q(x)}

    where :math:`W` is the set of outcomes that ``where`` includes (all by default).

    Args:
      p: ``[..., n]`` probabilities of P along ``axis``.
      q: ``[..., n]`` probabilities of Q, broadcastable with ``p``.
      axis: the axis that holds the outcomes, or a tuple of axes that hold them together.
      base: logarithm base; None for nats, 2 for bits.
      validate: check that ``p`` and ``q`` are distributions along ``axis`` (their
        included entries, with ``where``).
      where: optional boolean mask broadcastable to the broadcast shape of ``p`` and
        ``q``; True = the outcome counts. An excluded entry is treated as deleted,
        whatever ``p`` and ``q`` hold there (also a pair q = 0 < p, or inf or NaN).

    Returns:
      ``[...]`` divergences, the broadcast shape without ``axis``. Terms with p = 0
      contribute 0; a term with q = 0 < p makes the result +inf. ``kl_divergence(p, p)``
      is exactly 0 (+0.0), as is a row with no included entry. Gradients are finite
      everywhere, including p = 0 (:math:`\log(\text{tiny}/q)` instead of
      :math:`-\infty`) and q = 0 (:math:`-p/\text{tiny}` instead of :math:`-\infty`),
      and exactly 0 at excluded entries.

    Example:
      >>> float(kl_divergence(jnp.array([0.7, 0.3]), jnp.array([0.5, 0.5])))
      0.0822...
      >>> p = jnp.array([0.2, 0.3, 0.5])
      >>> float(kl_divergence(p, p))
      0.0
    """
    arrays, axis, mask = _dists([(p, "p"), (q, "q")], axis, validate, where, base)
    return _kl_divergence(arrays, axis, base, mask)


@_measure
def _kl_divergence(p: jax.Array, q: jax.Array, *, axis: int | tuple[int, ...]) -> jax.Array:
    return jnp.sum(_rel_entr(p, q), axis=axis)


def cross_entropy(p: ArrayLike, q: ArrayLike, axis: int | Sequence[int] = -1,
                  base: float | None = None, validate: bool = False,
                  where: ArrayLike | None = None) -> jax.Array:
    r"""Cross-entropy H(p, q) of discrete distributions.

    .. math:: H(P, Q) = -\sum_{x \in W} P(x) \log Q(x) = H(P) + D_{KL}(P \| Q)

    where :math:`W` is the set of outcomes that ``where`` includes (all by default).

    Args:
      p: ``[..., n]`` true probabilities along ``axis``.
      q: ``[..., n]`` predicted probabilities, broadcastable with ``p``.
      axis: the axis that holds the outcomes, or a tuple of axes that hold them together.
      base: logarithm base; None for nats, 2 for bits.
      validate: check that ``p`` and ``q`` are distributions along ``axis`` (their
        included entries, with ``where``).
      where: optional boolean mask broadcastable to the broadcast shape of ``p`` and
        ``q``; True = the outcome counts. An excluded entry is treated as deleted,
        whatever ``p`` and ``q`` hold there.

    Returns:
      ``[...]`` cross-entropies, the broadcast shape without ``axis``. Terms with p = 0
      contribute 0 (also where q = 0); q = 0 < p gives +inf; a row with no included
      entry gives 0. Gradients are finite everywhere: with respect to p it is
      :math:`-\log \max(q, \text{tiny})`, with respect to q it is
      :math:`-p / \max(q, \text{tiny})`, exactly 0 where p = 0 and at excluded entries.
      For logits use :func:`jaxmath.losses.softmax_cross_entropy`.

    Example:
      >>> float(cross_entropy(jnp.array([1.0, 0.0]), jnp.array([0.8, 0.2])))
      0.2231...
    """
    arrays, axis, mask = _dists([(p, "p"), (q, "q")], axis, validate, where, base)
    return _cross_entropy(arrays, axis, base, mask)


@_measure
def _cross_entropy(p: jax.Array, q: jax.Array, *, axis: int | tuple[int, ...]) -> jax.Array:
    return -jnp.sum(_xlogy(p, q), axis=axis)


def binary_cross_entropy(y_true: ArrayLike, y_pred: ArrayLike, validate: bool = False,
                         where: ArrayLike | None = None) -> jax.Array:
    r"""Binary cross-entropy, averaged over all (included) elements.

    .. math:: \mathrm{BCE} = -\frac{1}{|W|} \sum_{i \in W}
       \left[y_i \log \hat y_i + (1 - y_i) \log(1 - \hat y_i)\right]

    where :math:`W` is the set of elements that ``where`` includes (all by default).

    Args:
      y_true: targets in [0, 1] (labels 0/1 or soft targets), any shape.
      y_pred: predicted probabilities in [0, 1], broadcastable with ``y_true``.
      validate: check that both lie in [0, 1] (where included, with ``where``).
      where: optional boolean mask broadcastable to the broadcast shape of ``y_true``
        and ``y_pred``; True = the element counts. An excluded element is treated as
        deleted, whatever it holds (also a prediction of exactly 0 against y = 1).

    Returns:
      A scalar, the mean over the included broadcast elements; 0, with zero gradient,
      when ``where`` includes none. Predictions of exactly 0
      or 1 are handled without clipping: where they agree with the target the
      term is 0 and its gradient is the exact limit (e.g. -1 for y = 1 at
      :math:`\hat y = 1`); where a hard target is predicted impossible
      (:math:`y = 1, \hat y = 0`) the loss is +inf, as it truly is, and the
      gradient stays finite. Excluded elements get gradient exactly 0.
      (``torch.nn.functional.binary_cross_entropy``
      clamps the log at -100 instead.) For logits use an ``optax`` sigmoid loss.

    Example:
      >>> float(binary_cross_entropy(jnp.array([1.0, 0.0, 1.0]), jnp.array([0.9, 0.1, 0.8])))
      0.1446...
    """
    y, y_hat = _checks.as_floats((y_true, "y_true"), (y_pred, "y_pred"))
    shape = _checks.broadcast_shapes((y, "y_true"), (y_hat, "y_pred"))
    if math.prod(shape) == 0:
        raise ValueError(f"y_true and y_pred must not be empty, got y_true.shape="
                         f"{tuple(y.shape)} and y_pred.shape={tuple(y_hat.shape)}")
    target = "y_true" if tuple(y.shape) == shape else "broadcast(y_true, y_pred)"
    mask = _checks.check_mask(where, shape, target)
    if validate:
        _checks.check_probability(y, "y_true", where=mask)
        _checks.check_probability(y_hat, "y_pred", where=mask)
    return _binary_cross_entropy(y, y_hat, mask)


@jax.jit
def _binary_cross_entropy(y: jax.Array, y_hat: jax.Array,
                          mask: jax.Array | None = None) -> jax.Array:
    y_, y_hat_ = _upcast(y), _upcast(y_hat)
    shape = jnp.broadcast_shapes(y.shape, y_hat.shape)
    if mask is None:
        terms = _xlogy(y_, y_hat_) + _xlogy(1 - y_, 1 - y_hat_)
        return (-jnp.mean(jnp.broadcast_to(terms, shape))).astype(y.dtype)
    keep = jnp.broadcast_to(mask, shape)
    y_, y_hat_ = _deleted(keep, y_, y_hat_)  # y = y_hat = 0: both terms are exactly 0
    total = jnp.sum(_xlogy(y_, y_hat_) + _xlogy(1 - y_, 1 - y_hat_))
    count = jnp.sum(keep, dtype=total.dtype)
    out = jnp.where(count > 0, -total / jnp.maximum(count, 1), 0)
    return out.astype(y.dtype)


def js_divergence(p: ArrayLike, q: ArrayLike, axis: int | Sequence[int] = -1,
                  base: float | None = None, validate: bool = False,
                  where: ArrayLike | None = None) -> jax.Array:
    r"""Jensen-Shannon divergence of discrete distributions (not its square root).

    .. math:: \mathrm{JS}(P, Q) = \tfrac12 \sum_{x \in W} \left[P(x) \log \frac{P(x)}{M(x)}
       + Q(x) \log \frac{Q(x)}{M(x)}\right], \qquad M = \tfrac12 (P + Q)

    where :math:`W` is the set of outcomes that ``where`` includes (all by default);
    with every outcome included, :math:`\tfrac12 D_{KL}(P \| M) + \tfrac12 D_{KL}(Q \| M)`.

    Args:
      p: ``[..., n]`` probabilities of P along ``axis``.
      q: ``[..., n]`` probabilities of Q, broadcastable with ``p``.
      axis: the axis that holds the outcomes, or a tuple of axes that hold them together.
      base: logarithm base; None for nats (then JS <= log 2), 2 for bits (JS <= 1).
      validate: check that ``p`` and ``q`` are distributions along ``axis`` (their
        included entries, with ``where``).
      where: optional boolean mask broadcastable to the broadcast shape of ``p`` and
        ``q``; True = the outcome counts. An excluded entry is treated as deleted,
        whatever ``p`` and ``q`` hold there.

    Returns:
      ``[...]`` divergences, the broadcast shape without ``axis``: symmetric, finite,
      between 0 and log 2. ``js_divergence(p, p)`` is exactly 0 (+0.0) (M = P exactly),
      as is a row with no included entry.
      ``scipy.spatial.distance.jensenshannon`` returns the square root of this.
      Gradients are finite, with the convention of the module docstring at 0, and
      exactly 0 at excluded entries.

    Example:
      >>> float(js_divergence(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0])))  # log 2
      0.6931...
    """
    arrays, axis, mask = _dists([(p, "p"), (q, "q")], axis, validate, where, base)
    return _js_divergence(arrays, axis, base, mask)


@_measure
def _js_divergence(p: jax.Array, q: jax.Array, *, axis: int | tuple[int, ...]) -> jax.Array:
    m = 0.5 * (p + q)  # exactly p where q == p: p + p and the halving are exact
    return 0.5 * jnp.sum(_rel_entr(p, m) + _rel_entr(q, m), axis=axis)


def mutual_information(joint: ArrayLike, base: float | None = None,
                       validate: bool = False) -> jax.Array:
    r"""Mutual information I(X; Y) of a joint probability table.

    .. math:: I(X; Y) = \sum_{x, y} P(x, y) \log \frac{P(x, y)}{P(x) P(y)}
       = H(X) + H(Y) - H(X, Y)

    Args:
      joint: ``[..., n_x, n_y]`` joint probabilities P(x, y); leading axes are a batch.
      base: logarithm base; None for nats, 2 for bits.
      validate: check that each table holds probabilities summing to 1.

    Returns:
      ``[...]`` mutual information, >= 0 (up to rounding). Cells with P(x, y) = 0
      contribute 0. Gradients are finite, with the convention of the module
      docstring at 0. (``sklearn.metrics.mutual_info_score`` gives the same in
      nats from a contingency table of counts.)

    Example:
      >>> float(mutual_information(jnp.array([[0.5, 0.0], [0.0, 0.5]])))  # log 2
      0.6931...
    """
    joint = _checks.as_float(joint, "joint")
    _checks.check_ndim(joint, "joint", min_ndim=2)
    _checks.check_nonempty(joint, "joint")
    if validate:
        flat = joint.reshape(*joint.shape[:-2], -1)
        _checks.check_distribution(flat, "joint (flattened over its last two axes)")
    _check_base(base)
    return _mutual_information(joint, base)


@partial(jax.jit, static_argnames="base")
def _mutual_information(joint: jax.Array, base: float | None) -> jax.Array:
    x = _upcast(joint)
    p_x = jnp.sum(x, axis=-1, keepdims=True)
    p_y = jnp.sum(x, axis=-2, keepdims=True)
    # log P(x) and log P(y) separately: the product P(x) P(y) can underflow to 0.
    terms = _xlogy(x, x) - _xlogy(x, p_x) - _xlogy(x, p_y)
    return _in_base(jnp.sum(terms, axis=(-2, -1)), base, joint.dtype)
