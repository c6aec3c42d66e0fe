"""Tests for jaxmath.losses against NumPy, scikit-learn, PyTorch and optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sklearn.metrics
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.experimental import checkify
from jax.test_util import check_grads

import jaxmath.losses
import jaxmath.probability
from jaxmath.losses import mse, softmax_cross_entropy
from tests.tolerances import F32_ATOL, F32_LOOSE, F32_RTOL, F64_ATOL, F64_RTOL, GRAD_RTOL

B, K = 4, 5  # batch and classes: one fixed shape keeps hypothesis from recompiling
BF16_RTOL = 2e-2  # bfloat16 inputs keep 8 bits of mantissa


def _logits(rng, shape=(B, K), scale=3.0):
    return (rng.normal(size=shape) * scale).astype(np.float32)


def _targets(rng, shape=(B, K), drop_last=False):
    t = rng.random(shape)
    t[rng.random(shape) < 0.3] = 0.0
    t[:, 0] += 1e-3
    if drop_last:  # no mass on the last class, which the "ce_where" case masks out
        t[:, -1] = 0.0
    return (t / t.sum(-1, keepdims=True)).astype(np.float32)


def _torch_ce(logits, labels, axis=-1, label_smoothing=0.0):
    logits_t = torch.from_numpy(np.moveaxis(logits, axis, -1).reshape(-1, logits.shape[axis]))
    labels = np.asarray(labels)
    if np.issubdtype(labels.dtype, np.integer):
        labels_t = torch.from_numpy(labels.reshape(-1).astype(np.int64))
    else:
        labels_t = torch.from_numpy(np.moveaxis(labels, axis, -1).reshape(logits_t.shape))
    out = torch.nn.functional.cross_entropy(logits_t, labels_t, reduction="none",
                                            label_smoothing=label_smoothing)
    batch = np.moveaxis(logits, axis, -1).shape[:-1]
    return out.numpy().reshape(batch)


# ---------------------------------------------------------------------------
# mse


def test_mse_seed_example():
    # The seed prints MSE: 0.01; NumPy and scikit-learn give 0.02.
    y, y_hat = np.array([1.0, 2.0, 3.0]), np.array([1.1, 1.9, 3.2])
    assert float(mse(y, y_hat)) == pytest.approx(
        sklearn.metrics.mean_squared_error(y, y_hat), rel=F32_RTOL)


def test_mse_matches_references(rng):
    y, y_hat = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    assert float(mse(y, y_hat)) == pytest.approx(
        torch.nn.functional.mse_loss(torch.from_numpy(y_hat), torch.from_numpy(y)).item(),
        rel=F32_RTOL)
    w = rng.random(6)
    assert float(mse(y[:, 0], y_hat[:, 0], weights=w)) == pytest.approx(
        sklearn.metrics.mean_squared_error(y[:, 0], y_hat[:, 0], sample_weight=w), rel=F32_RTOL)
    w2 = rng.random(3)  # broadcast over rows
    want = np.average((y - y_hat) ** 2, weights=np.broadcast_to(w2, y.shape))
    assert float(mse(y, y_hat, weights=w2)) == pytest.approx(want, rel=F32_RTOL)
    mask = rng.random((6, 3)) < 0.5
    mask[0, 0] = True
    assert float(mse(y, y_hat, where=mask)) == pytest.approx(((y - y_hat)[mask] ** 2).mean(),
                                                             rel=F32_RTOL)
    want = np.average(((y - y_hat) ** 2)[mask], weights=np.broadcast_to(w2, y.shape)[mask])
    assert float(mse(y, y_hat, weights=w2, where=mask)) == pytest.approx(want, rel=F32_RTOL)


@given(hnp.arrays(np.float32, (B, K), elements=st.floats(-100, 100, width=32)),
       hnp.arrays(np.float32, (B, K), elements=st.floats(-100, 100, width=32)))
def test_mse_law(y, y_hat):
    got = float(mse(y, y_hat))
    want = np.mean((y.astype(np.float64) - y_hat) ** 2)
    assert got >= 0 and got == pytest.approx(want, rel=F32_LOOSE, abs=F32_ATOL)


def test_mse_empty_selection_and_masked_garbage():
    y = jnp.array([1.0, jnp.nan, jnp.inf])
    y_hat = jnp.array([2.0, 0.0, 0.0])
    mask = jnp.array([True, False, False])
    assert float(mse(y, y_hat, where=mask)) == 1.0
    g = jax.grad(lambda p: mse(y, p, where=mask))(y_hat)
    np.testing.assert_array_equal(np.asarray(g), [2.0, 0.0, 0.0])
    none = jnp.zeros(3, bool)
    assert float(mse(y, y_hat, where=none)) == 0.0
    np.testing.assert_array_equal(np.asarray(jax.grad(lambda p: mse(y, p, where=none))(y_hat)),
                                  0.0)
    assert float(mse(y[:1], y_hat[:1], weights=jnp.zeros(1))) == 0.0


# ---------------------------------------------------------------------------
# softmax_cross_entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_integer_labels_match_torch_and_optax(smoothing, rng):
    logits = _logits(rng)
    labels = rng.integers(0, K, B)
    got = np.asarray(softmax_cross_entropy(logits, labels, label_smoothing=smoothing))
    np.testing.assert_allclose(got, _torch_ce(logits, labels, label_smoothing=smoothing),
                               rtol=F32_RTOL, atol=F32_ATOL)
    if smoothing == 0.0:
        np.testing.assert_allclose(
            got, optax.losses.softmax_cross_entropy_with_integer_labels(logits, labels),
            rtol=F32_RTOL, atol=F32_ATOL)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_probability_targets_match_torch_and_optax(smoothing, rng):
    logits, targets = _logits(rng), _targets(rng)
    got = np.asarray(softmax_cross_entropy(logits, targets, label_smoothing=smoothing))
    np.testing.assert_allclose(got, _torch_ce(logits, targets, label_smoothing=smoothing),
                               rtol=F32_RTOL, atol=F32_ATOL)
    smoothed = optax.smooth_labels(targets, smoothing)
    np.testing.assert_allclose(got, optax.losses.softmax_cross_entropy(logits, smoothed),
                               rtol=F32_RTOL, atol=F32_ATOL)


def test_axis_and_leading_batch_dims(rng):
    logits = _logits(rng, shape=(2, K, 3))
    labels = rng.integers(0, K, (2, 3))
    got = np.asarray(softmax_cross_entropy(logits, labels, axis=1))
    np.testing.assert_allclose(got, _torch_ce(logits, labels.reshape(-1), axis=1).reshape(2, 3),
                               rtol=F32_RTOL, atol=F32_ATOL)
    one_hot = np.moveaxis(np.eye(K, dtype=np.float32)[labels], -1, 1)
    np.testing.assert_allclose(np.asarray(softmax_cross_entropy(logits, one_hot, axis=1)), got,
                               rtol=F32_RTOL, atol=F32_ATOL)


def test_where_masks_classes_like_optax(rng):
    logits, targets = _logits(rng), _targets(rng)
    mask = np.ones((B, K), bool)
    mask[:, -1] = False
    targets[:, -1] = 0.0
    targets /= targets.sum(-1, keepdims=True)
    got = np.asarray(softmax_cross_entropy(logits, targets, where=mask))
    np.testing.assert_allclose(got, optax.losses.softmax_cross_entropy(logits, targets,
                                                                       where=mask),
                               rtol=F32_RTOL, atol=F32_ATOL)
    # Same as dropping the class; smoothing spreads over the K - 1 included classes.
    np.testing.assert_allclose(
        np.asarray(softmax_cross_entropy(logits, targets, label_smoothing=0.1, where=mask)),
        _torch_ce(logits[:, :-1], targets[:, :-1], label_smoothing=0.1),
        rtol=F32_RTOL, atol=F32_ATOL)


def test_extreme_and_infinite_logits():
    logits = jnp.array([[1e4, -1e4, 0.0], [-jnp.inf, 0.0, 1.0], [-jnp.inf, 0.0, 1.0]])
    targets = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.5, 0.5, 0.0]])
    loss = np.asarray(softmax_cross_entropy(logits, targets))
    np.testing.assert_allclose(loss[:2], [0.0, _torch_ce(np.array([[0.0, 1.0]], np.float32),
                                                         np.array([[0.5, 0.5]], np.float32))[0]],
                               atol=F32_ATOL)
    assert loss[2] == np.inf
    g = jax.grad(lambda z: jnp.sum(softmax_cross_entropy(z, targets[:2])))(logits[:2])
    assert np.all(np.isfinite(np.asarray(g)))
    assert float(softmax_cross_entropy(jnp.array([1e4, -1e4]), jnp.array(1))) == \
        pytest.approx(2e4, rel=F32_RTOL)


def test_gradient_matches_torch(rng):
    logits, targets = _logits(rng), _targets(rng)
    g = jax.grad(lambda z: jnp.mean(softmax_cross_entropy(z, targets, label_smoothing=0.1)))(
        logits)
    zt = torch.from_numpy(logits).requires_grad_()
    torch.nn.functional.cross_entropy(zt, torch.from_numpy(targets),
                                      label_smoothing=0.1).backward()
    np.testing.assert_allclose(np.asarray(g), zt.grad.numpy(), rtol=GRAD_RTOL, atol=F32_ATOL)


def test_out_of_range_labels_under_jit(rng):
    logits = _logits(rng)
    labels = jnp.array([0, K, 1, -1])
    loss = np.asarray(jax.jit(softmax_cross_entropy)(logits, labels))
    assert np.all(np.isnan(loss[[1, 3]])) and np.all(np.isfinite(loss[[0, 2]]))
    checked = checkify.checkify(jax.jit(
        lambda z, y: softmax_cross_entropy(z, y, validate=True)))
    err, _ = checked(logits, labels)
    with pytest.raises(checkify.JaxRuntimeError, match=r"integer labels must lie in \[0, 5\)"):
        err.throw()
    err, _ = checked(logits, jnp.array([0, 1, 2, 3]))
    err.throw()


def test_label_smoothing_can_be_vmapped(rng):
    logits, labels = _logits(rng), rng.integers(0, K, B)
    eps = jnp.array([0.0, 0.1, 0.3])
    got = jax.vmap(lambda e: softmax_cross_entropy(logits, labels, label_smoothing=e))(eps)
    for row, e in zip(np.asarray(got), [0.0, 0.1, 0.3], strict=True):
        np.testing.assert_allclose(row, _torch_ce(logits, labels, label_smoothing=e),
                                   rtol=F32_RTOL, atol=F32_ATOL)


def test_cross_entropies_are_reexported():
    assert jaxmath.losses.cross_entropy is jaxmath.probability.cross_entropy
    assert jaxmath.losses.binary_cross_entropy is jaxmath.probability.binary_cross_entropy
    assert set(jaxmath.losses.__all__) >= {"mse", "softmax_cross_entropy", "cross_entropy",
                                           "binary_cross_entropy"}


# ---------------------------------------------------------------------------
# jit, vmap, gradients, dtypes for both losses


def _ce_int(z, y):
    return softmax_cross_entropy(z, jnp.argmax(y, -1), label_smoothing=0.1)


# A class mask of [B, K]; row 3 keeps no class.
ENTRY_MASK = np.array([[True, True, False, True, False],
                       [True, True, True, False, True],
                       [True, False, True, True, False],
                       [False, False, False, False, False]])

LOSSES = [
    ("mse", mse),
    ("mse_weights", lambda a, b: mse(a, b, weights=jnp.abs(a) + 1.0)),
    ("mse_where", lambda a, b: mse(a, b, where=a > 0)),
    ("ce_probs", softmax_cross_entropy),
    ("ce_int", _ce_int),
    ("ce_where", lambda z, y: softmax_cross_entropy(z, y, where=jnp.arange(K) < K - 1)),
    ("ce_where_examples", lambda z, y: softmax_cross_entropy(z, y, label_smoothing=0.1,
                                                             where=jnp.arange(B) != 1)),
    ("ce_int_where", lambda z, y: softmax_cross_entropy(
        z, jnp.argmax(y, -1), label_smoothing=0.1, where=ENTRY_MASK)),
    ("ce_axes", lambda z, y: softmax_cross_entropy(z[:, None], y[:, None], axis=(2, 1))),
    ("ce_int_axes_where", lambda z, y: softmax_cross_entropy(
        z[:, None], jnp.argmax(y, -1), axis=(2, 1), where=jnp.arange(B) != 2)),
]


@pytest.mark.parametrize(("name", "fn"), LOSSES)
def test_jit_and_vmap(name, fn, rng):
    a, b = _logits(rng), _targets(rng, drop_last=True)
    eager = np.asarray(fn(a, b))
    assert fn(a, b).dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(jax.jit(fn)(a, b)), eager, rtol=F32_RTOL,
                               atol=F32_ATOL)
    batch_a, batch_b = np.stack([a, -a]), np.stack([b, b[::-1]])
    looped = np.stack([np.asarray(fn(x, y)) for x, y in zip(batch_a, batch_b, strict=True)])
    np.testing.assert_allclose(np.asarray(jax.vmap(fn)(batch_a, batch_b)), looped,
                               rtol=F32_RTOL, atol=F32_ATOL)


@pytest.mark.parametrize(("name", "fn"), LOSSES)
def test_check_grads_x64(name, fn, x64, rng):
    a = jnp.asarray(_logits(rng), jnp.float64)
    b = jnp.asarray(_targets(rng, drop_last=True), jnp.float64)
    assert fn(a, b).dtype == jnp.float64  # float64 in, float64 out
    check_grads(lambda a: fn(a, b), (a,), order=1, modes=["fwd", "rev"])


@pytest.mark.parametrize(("name", "fn"), [LOSSES[0], LOSSES[3]])
def test_half_precision(name, fn, rng):
    a, b = _logits(rng), _targets(rng, drop_last=True)
    half = fn(jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16))
    assert half.dtype == jnp.bfloat16  # computed in float32 inside, returned as bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float32), np.asarray(fn(a, b)),
                               rtol=BF16_RTOL)


def test_float64_precision(x64, rng):
    logits, labels = rng.normal(size=(B, K)), rng.integers(0, K, B)
    want = _torch_ce(logits, labels)
    np.testing.assert_allclose(np.asarray(softmax_cross_entropy(logits, labels)), want,
                               rtol=F64_RTOL, atol=F64_ATOL)
    y, y_hat = rng.normal(size=7), rng.normal(size=7)
    assert float(mse(y, y_hat)) == pytest.approx(np.mean((y - y_hat) ** 2), rel=F64_RTOL)


# ---------------------------------------------------------------------------
# Bad inputs


Z = jnp.zeros((B, K))

BAD_INPUTS = [
    (lambda: mse(jnp.ones(3), jnp.ones((3, 1))), ValueError,
     r"y_true and y_pred must have the same shape.*\(3,\).*\(3, 1\)"),
    (lambda: mse(jnp.ones(0), jnp.ones(0)), ValueError, "y_true must not be empty"),
    (lambda: mse(jnp.ones(3), jnp.ones(3) * 1j), TypeError, "y_pred must be real"),
    (lambda: mse(jnp.ones((2, 3)), jnp.ones((2, 3)), weights=jnp.ones(2)), ValueError,
     r"shapes do not broadcast: y_true.shape=\(2, 3\), weights.shape=\(2,\)"),
    (lambda: mse(jnp.ones(3), jnp.ones(3), weights=jnp.ones((2, 3))), ValueError,
     r"weights must broadcast to the shape of y_true \(3,\)"),
    (lambda: mse(jnp.ones(3), jnp.ones(3), where=jnp.ones(3)), TypeError,
     "where must be a boolean mask"),
    (lambda: mse(jnp.ones(3), jnp.ones(3), where=jnp.ones(4, bool)), ValueError,
     "shapes do not broadcast"),
    (lambda: softmax_cross_entropy(Z, jnp.array([0, 1, 2, K])), ValueError,
     r"integer labels must lie in \[0, 5\).*got values from 0 to 5"),
    (lambda: softmax_cross_entropy(Z, jnp.array([0, -1, 2, 3])), ValueError,
     r"integer labels must lie in \[0, 5\)"),
    (lambda: softmax_cross_entropy(Z, jnp.zeros(3, int)), ValueError,
     r"integer labels must have the shape of logits without axis 1, i.e. \(4,\)"),
    (lambda: softmax_cross_entropy(Z, jnp.zeros((B, K + 1))), ValueError,
     r"labels and logits must have the same shape"),
    (lambda: softmax_cross_entropy(Z, jnp.zeros((B, K), bool)), TypeError,
     "labels must be integer class indices or floating target probabilities, got dtype bool"),
    (lambda: softmax_cross_entropy(Z, jnp.zeros(B, int), label_smoothing=1.5), ValueError,
     r"label_smoothing must be in \[0, 1\]"),
    (lambda: softmax_cross_entropy(Z, jnp.zeros(B, int), label_smoothing=jnp.ones(2)),
     ValueError, "label_smoothing must have rank 0"),
    (lambda: softmax_cross_entropy(Z, jnp.zeros(B, int), axis=2), ValueError,
     r"axis 2 is out of range for logits of shape \(4, 5\)"),
    (lambda: softmax_cross_entropy(jnp.zeros((B, 0)), jnp.zeros(B, int)), ValueError,
     "logits must not be empty along axis 1"),
    (lambda: softmax_cross_entropy(Z, jnp.full((B, K), 0.5), validate=True), ValueError,
     "labels must hold probabilities"),
    (lambda: softmax_cross_entropy(Z, jnp.zeros(B, int), where=jnp.ones(K)), TypeError,
     "where must be a boolean mask"),
    (lambda: jax.jit(softmax_cross_entropy)(Z, jnp.zeros(3, int)), ValueError,
     "integer labels must have the shape of logits"),
    (lambda: jax.jit(mse)(jnp.ones(3), jnp.ones(4)), ValueError, "must have the same shape"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD_INPUTS)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_label_smoothing_out_of_range_raises_under_jit():
    # A Python constant becomes a tracer once converted inside jit: the range check
    # must read the argument itself.
    f = jax.jit(lambda logits: softmax_cross_entropy(logits, jnp.array([0]), label_smoothing=1.5))
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        f(jnp.zeros((1, 3)))


# ---------------------------------------------------------------------------
# softmax_cross_entropy: where= (entries or examples), tuple axes, against optax


def _grads(fn, logits, *args, **kwargs):
    return np.asarray(jax.jit(jax.grad(lambda z: jnp.sum(fn(z, *args, **kwargs))))(logits))


def _values(fn, logits, *args, **kwargs):
    return np.asarray(jax.jit(lambda z: fn(z, *args, **kwargs))(logits))


INT_CASES = {  # name: (logits shape, axis, where shape or None)
    "examples": ((B, K), -1, (B,)),
    "entries": ((B, K), -1, (B, K)),
    "classes": ((B, K), -1, (K,)),
    "examples_as_entries": ((B, K), -1, (B, 1)),
    "sequence_positions": ((2, 3, K), -1, (3,)),
    "class_axis_first": ((K, B), 0, (B,)),
    "axes": ((2, 3, 4, 5), (1, 2), None),
    "axes_reversed": ((2, 3, 4, 5), (2, 1), None),
    "axes_examples": ((2, 3, 4, 5), (1, -2), (2, 5)),
    "axes_entries": ((2, 3, 4, 5), (2, 1), (2, 3, 4, 5)),
}


def _as_entries(where, shape, axes):
    """Our reading of ``where`` as a full mask of entries: as it is if it broadcasts to
    ``shape``, else a mask of examples expanded over the class axes."""
    try:
        if np.broadcast_shapes(where.shape, shape) == shape:
            return np.broadcast_to(where, shape)
    except ValueError:
        pass
    batch = tuple(n for i, n in enumerate(shape) if i not in axes)
    where = np.broadcast_to(where, batch)
    return np.broadcast_to(np.expand_dims(where, tuple(sorted(axes))), shape)


def _flat_classes(x, axes):
    """``x`` with its class axes last, flattened in the order given (a label's index)."""
    n = x.ndim
    x = np.moveaxis(x, axes, range(n - len(axes), n))
    return x.reshape((*x.shape[:n - len(axes)], -1))


@pytest.mark.parametrize("case", list(INT_CASES))
def test_integer_labels_match_optax(case, rng):
    shape, axis, where_shape = INT_CASES[case]
    axes = tuple(a % len(shape) for a in ((axis,) if isinstance(axis, int) else axis))
    batch = tuple(n for i, n in enumerate(shape) if i not in axes)
    logits = _logits(rng, shape)
    kwargs, theirs = {"axis": axis}, {"axis": axis}
    entries = np.ones(shape, bool)
    if where_shape is not None:
        where = rng.random(where_shape) < 0.6
        entries = _as_entries(where, shape, axes)
        kwargs["where"] = where
        # optax takes a mask of exactly the batch shape or of logits' shape.
        theirs["where"] = where if where_shape in (batch, shape) else entries
    # Labels on included classes: optax scores a label on an excluded class against the
    # included ones, where jaxmath deletes it with its class.
    included = _flat_classes(entries, axes).reshape(-1, int(np.prod([shape[a] for a in axes])))
    labels = np.array([rng.choice(np.flatnonzero(row)) if row.any() else 0
                       for row in included]).reshape(batch)
    np.testing.assert_allclose(
        _values(softmax_cross_entropy, logits, labels, **kwargs),
        _values(optax.losses.softmax_cross_entropy_with_integer_labels, logits, labels,
                **theirs), rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(
        _grads(softmax_cross_entropy, logits, labels, **kwargs),
        _grads(optax.losses.softmax_cross_entropy_with_integer_labels, logits, labels,
               **theirs), rtol=F32_RTOL, atol=F32_ATOL)


FLOAT_CASES = {  # name: (logits shape, axis, where shape or None)
    "examples": ((B, K), -1, (B,)),
    "entries_with_target_mass": ((B, K), -1, (B, K)),
    "axes": ((2, 3, 4, 5), (1, 2), None),
    "axes_entries": ((2, 3, 4, 5), (-1, 1), (2, 3, 4, 5)),
    "axes_examples": ((2, 3, 4, 5), (0, 3), (3, 4)),
}


@pytest.mark.parametrize("case", list(FLOAT_CASES))
def test_probability_targets_match_optax(case, rng):
    shape, axis, where_shape = FLOAT_CASES[case]
    axes = tuple(a % len(shape) for a in ((axis,) if isinstance(axis, int) else axis))
    logits = _logits(rng, shape)
    targets = rng.random(shape)
    targets = (targets / targets.sum(axes, keepdims=True)).astype(np.float32)
    kwargs = {"axis": axis}
    if where_shape is not None:
        where = rng.random(where_shape) < 0.6
        if len(where_shape) < len(shape):  # optax expands a batch mask at axis
            where_optax = np.expand_dims(where, axes)
        else:
            where_optax = where
        kwargs["where"] = where
    got = _values(softmax_cross_entropy, logits, targets, **kwargs)
    if where_shape is not None:
        kwargs["where"] = where_optax
    np.testing.assert_allclose(
        got, _values(optax.losses.softmax_cross_entropy, logits, targets, **kwargs),
        rtol=F32_RTOL, atol=F32_ATOL)
    if where_shape is not None:
        kwargs["where"] = where
    g = _grads(softmax_cross_entropy, logits, targets, **kwargs)
    if where_shape is not None:
        kwargs["where"] = where_optax
    np.testing.assert_allclose(g, _grads(optax.losses.softmax_cross_entropy, logits, targets,
                                         **kwargs), rtol=F32_RTOL, atol=F32_ATOL)


@pytest.mark.parametrize("smoothing", [0.1, 0.3])
def test_label_smoothing_matches_optax_smoothed_targets(smoothing, rng):
    # optax has no smoothing for integer labels: compare with smoothed one-hot targets.
    def check(ours, theirs):  # values and logit gradients
        for run in (_values, _grads):
            np.testing.assert_allclose(run(softmax_cross_entropy, *ours),
                                       run(optax.losses.softmax_cross_entropy, *theirs),
                                       rtol=F32_RTOL, atol=F32_ATOL)

    logits, labels = _logits(rng), rng.integers(0, K, B)
    smoothed = optax.smooth_labels(jax.nn.one_hot(labels, K), smoothing)
    check((logits, labels, -1, smoothing), (logits, smoothed))
    # Over a tuple of class axes: smoothing spreads over all K = 3 * 4 classes.
    logits4 = _logits(rng, (2, 3, 4))
    flat = rng.integers(0, 12, 2)
    smoothed4 = optax.smooth_labels(jax.nn.one_hot(flat, 12), smoothing).reshape(2, 3, 4)
    check((logits4, flat, (1, 2), smoothing), (logits4, smoothed4, (1, 2)))
    # With a class mask it spreads over the included classes only.
    mask = ENTRY_MASK | (np.arange(K) == labels[:, None])
    mask[-1] = False
    t = ((1 - smoothing) * np.eye(K)[labels] * mask
         + smoothing * mask / np.maximum(mask.sum(-1, keepdims=True), 1)).astype(np.float32)
    check((logits, labels, -1, smoothing, mask), (logits, t, -1, mask))


def test_where_reading_when_both_fit(rng):
    """A mask that broadcasts to logits.shape masks classes, even when it also has the
    loss's shape ([B] with B == K); with logits' rank it masks examples unambiguously."""
    logits = _logits(rng, (K, K))
    labels = rng.integers(0, K, K)
    targets = _targets(rng, (K, K))
    mask = np.array([True, True, False, True, False])
    for y in (labels, targets):
        as_classes = np.asarray(softmax_cross_entropy(logits, y, where=mask))
        np.testing.assert_array_equal(as_classes, np.asarray(softmax_cross_entropy(
            logits, y, where=np.broadcast_to(mask, (K, K)))))
        as_examples = np.asarray(softmax_cross_entropy(logits, y,
                                                       where=np.expand_dims(mask, -1)))
        np.testing.assert_allclose(as_examples, np.where(mask, softmax_cross_entropy(logits, y),
                                                         0), rtol=F32_RTOL, atol=F32_ATOL)
        assert not np.allclose(as_classes, as_examples)
    # B != K: the same [B] mask can only mask examples.
    logits, labels = _logits(rng), rng.integers(0, K, B)
    keep = np.array([True, False, False, True])
    np.testing.assert_allclose(np.asarray(softmax_cross_entropy(logits, labels, where=keep)),
                               np.where(keep, softmax_cross_entropy(logits, labels), 0),
                               rtol=F32_RTOL, atol=F32_ATOL)


def test_excluded_entries_and_examples_are_deleted(rng):
    logits, targets = _logits(rng), _targets(rng)
    labels = rng.integers(0, K, B)
    mask = ENTRY_MASK
    clean = {"int": np.asarray(softmax_cross_entropy(logits, labels, label_smoothing=0.1,
                                                     where=mask)),
             "float": np.asarray(softmax_cross_entropy(logits, targets, where=mask))}
    bad_logits, bad_targets = logits.copy(), targets.copy()
    bad_logits[~mask] = np.resize([np.nan, np.inf, -np.inf, 1e30], int((~mask).sum()))
    bad_targets[~mask] = np.resize([np.nan, np.inf, 3.0], int((~mask).sum()))
    for y, key in ((labels, "int"), (bad_targets, "float")):
        kw = {"label_smoothing": 0.1} if key == "int" else {}
        fn = jax.jit(lambda z, y, m, kw=kw: softmax_cross_entropy(z, y, where=m, **kw))
        out = np.asarray(fn(bad_logits, y, mask))
        np.testing.assert_allclose(out, clean[key], rtol=F32_RTOL, atol=F32_ATOL)
        assert out[-1] == 0  # no class included
        g = np.asarray(jax.grad(lambda z, y=y, kw=kw: jnp.sum(softmax_cross_entropy(
            z, y, where=mask, **kw)))(bad_logits))
        assert np.all(np.isfinite(g)) and np.all(g[~mask] == 0)
    # Float targets on excluded classes are ignored, as in optax (not +inf).
    g = jax.grad(lambda t: jnp.sum(softmax_cross_entropy(logits, t, where=mask)))(bad_targets)
    assert np.all(np.isfinite(np.asarray(g))) and np.all(np.asarray(g)[~mask] == 0)
    # An integer label on an excluded class contributes nothing.
    label_out = np.array([2, 3, 1, 0])
    np.testing.assert_array_equal(np.asarray(softmax_cross_entropy(logits, label_out,
                                                                   where=mask)), 0.0)


def test_labels_of_excluded_examples_are_not_read(rng):
    logits = _logits(rng)
    labels = jnp.array([0, -1, 2, -100])  # padding values on the excluded examples
    keep = np.array([True, False, True, False])
    want = np.where(keep, softmax_cross_entropy(logits, jnp.array([0, 0, 2, 0])), 0)
    for fn in (softmax_cross_entropy, jax.jit(softmax_cross_entropy)):
        np.testing.assert_allclose(np.asarray(fn(logits, labels, where=keep)), want,
                                   rtol=F32_RTOL, atol=F32_ATOL)
    with pytest.raises(ValueError, match=r"got values from -1 to 2"):
        softmax_cross_entropy(logits, labels, where=np.array([True, True, True, False]))
    out = np.asarray(jax.jit(softmax_cross_entropy)(logits, labels,
                                                    where=np.array([True, True, True, False])))
    assert np.isnan(out[1]) and np.all(np.isfinite(out[[0, 2, 3]]))
    checked = checkify.checkify(jax.jit(
        lambda z, y, m: softmax_cross_entropy(z, y, where=m, validate=True)))
    err, _ = checked(logits, labels, keep)
    err.throw()
    err, _ = checked(logits, labels, np.ones(B, bool))
    with pytest.raises(checkify.JaxRuntimeError, match=r"integer labels must lie in \[0, 5\)"):
        err.throw()


def test_masked_float_targets_validate_over_included_classes(rng):
    logits = _logits(rng, (2, 3))
    targets = jnp.array([[0.5, 0.5, 9.0], [0.2, 0.8, jnp.nan]])
    mask = jnp.array([True, True, False])
    softmax_cross_entropy(logits, targets, where=mask, validate=True)
    with pytest.raises(ValueError, match="labels must hold probabilities"):
        softmax_cross_entropy(logits, targets, where=jnp.ones(3, bool), validate=True)


logits_bk = hnp.arrays(np.float32, (B, K), elements=st.floats(-30, 30, width=32))


@given(logits_bk, hnp.arrays(np.float64, (B, K), elements=st.floats(0, 1)),
       hnp.arrays(np.bool_, (B, K)))
def test_masking_a_class_equals_deleting_it(z, w, mask):
    t = w * mask
    rows = t.sum(-1, keepdims=True)
    t = np.where(rows > 0, t / np.where(rows > 0, rows, 1), mask / np.maximum(
        mask.sum(-1, keepdims=True), 1)).astype(np.float32)
    got = np.asarray(softmax_cross_entropy(z, t, where=mask))
    g = np.asarray(jax.grad(lambda z: jnp.sum(softmax_cross_entropy(z, t, where=mask)))(z))
    assert np.all(np.isfinite(g)) and np.all(g[~mask] == 0)
    for i in range(B):
        if not mask[i].any():  # a fully masked row: 0 with zero gradient
            assert got[i] == 0 and np.all(g[i] == 0)
            continue
        want = float(softmax_cross_entropy(z[i][mask[i]], t[i][mask[i]]))
        assert got[i] == pytest.approx(want, rel=F32_LOOSE, abs=F32_LOOSE)


def test_mse_where_matches_optax(rng):
    y, y_hat = rng.normal(size=(B, K)), rng.normal(size=(B, K))
    mask = rng.random((B, K)) < 0.5
    mask[0, 0] = True
    want = jnp.mean(optax.losses.squared_error(y_hat, y), where=mask)
    assert float(mse(y, y_hat, where=mask)) == pytest.approx(float(want), rel=F32_RTOL)
    g = jax.grad(lambda p: mse(y, p, where=mask))(y_hat)
    g_optax = jax.grad(lambda p: jnp.mean(optax.losses.squared_error(p, y), where=mask))(y_hat)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_optax), rtol=F32_RTOL, atol=F32_ATOL)
    rows = mask.any(-1, keepdims=True) & (np.arange(B) != 2)[:, None]
    assert float(mse(y, y_hat, where=rows)) == pytest.approx(
        float(jnp.mean(optax.losses.squared_error(y_hat, y)[rows[:, 0]])), rel=F32_RTOL)


BAD_WHERE_AND_AXES = [
    (lambda: softmax_cross_entropy(Z, jnp.zeros(B, int), where=jnp.ones((3,), bool)),
     ValueError, r"where.shape=\(3,\) fits neither reading of a mask: it must broadcast to "
                 r"logits.shape=\(4, 5\) \(a mask of entries\) or to \(4,\), the shape "
                 r"without the reduced axes \(1,\) \(a mask of rows\)"),
    (lambda: softmax_cross_entropy(Z, jnp.zeros((B, K)), where=jnp.ones((2, B, K), bool)),
     ValueError, "fits neither reading"),
    (lambda: softmax_cross_entropy(Z, jnp.zeros(B, int), where=jnp.ones(B)), TypeError,
     "where must be a boolean mask"),
    (lambda: softmax_cross_entropy(jnp.zeros((2, 3, 4)), jnp.zeros(2, int), axis=(1, 1)),
     ValueError, r"axis must not repeat an axis, got \(1, 1\) for logits of shape \(2, 3, 4\)"),
    (lambda: softmax_cross_entropy(jnp.zeros((2, 3, 4)), jnp.zeros(2, int), axis=(1, 3)),
     ValueError, r"axis \(1, 3\) is out of range for logits of shape \(2, 3, 4\): 3 not in"),
    (lambda: softmax_cross_entropy(Z, jnp.zeros(B, int), axis=()), ValueError,
     "axis must name at least one axis of logits"),
    (lambda: softmax_cross_entropy(Z, jnp.zeros(B, int), axis=(0, None)), TypeError,
     "axis must be an int or a tuple of ints"),
    (lambda: softmax_cross_entropy(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3), int), axis=(1, 2)),
     ValueError, r"integer labels must have the shape of logits without axis \(1, 2\), i.e. "
                 r"\(2,\), got labels.shape=\(2, 3\)"),
    (lambda: softmax_cross_entropy(jnp.zeros((2, 3, 4)), jnp.array([0, 12]), axis=(1, 2)),
     ValueError, r"integer labels must lie in \[0, 12\) for logits with 12 classes along "
                 r"axis \(1, 2\)"),
    (lambda: softmax_cross_entropy(jnp.zeros((2, 0, 4)), jnp.zeros(2, int), axis=(2, 1)),
     ValueError, r"logits must not be empty along axis \(2, 1\)"),
    (lambda: mse(jnp.ones(3), jnp.ones(3), where=jnp.ones((2, 3), bool)), ValueError,
     r"where must broadcast to the shape of y_true \(3,\), got where.shape=\(2, 3\)"),
    (lambda: jax.jit(lambda z, m: softmax_cross_entropy(z, jnp.zeros(B, int), where=m))(
        Z, jnp.ones(3, bool)), ValueError, "fits neither reading"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD_WHERE_AND_AXES)
def test_bad_where_and_axes(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_vmap_over_masks_equals_loop(rng):
    logits = np.stack([_logits(rng) for _ in range(3)])
    labels = rng.integers(0, K, (3, B))
    for masks in (rng.random((3, B)) < 0.6, rng.random((3, B, K)) < 0.6):
        got = jax.vmap(lambda z, y, m: softmax_cross_entropy(z, y, where=m))(logits, labels,
                                                                            masks)
        want = [np.asarray(softmax_cross_entropy(z, y, where=m))
                for z, y, m in zip(logits, labels, masks, strict=True)]
        np.testing.assert_allclose(np.asarray(got), np.stack(want), rtol=F32_RTOL,
                                   atol=F32_ATOL)
