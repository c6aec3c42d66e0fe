"""Tests for jaxmath.nn.softmax: values vs SciPy/PyTorch/jax.nn, masks, extremes, transforms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

from jaxmath.nn.softmax import log_softmax, softmax
from tests.tolerances import F32_ATOL, F32_RTOL, F64_ATOL, F64_RTOL, GRAD_RTOL

FUNCS = [softmax, log_softmax]
SCIPY = {softmax: scipy.special.softmax, log_softmax: scipy.special.log_softmax}
TORCH = {softmax: torch.softmax, log_softmax: torch.log_softmax}
BF16_ATOL = 1e-2  # bfloat16 keeps 8 bits of mantissa

# A fixed shape keeps hypothesis fast: every new shape would compile afresh.
logits_2d = hnp.arrays(np.float32, (4, 6), elements=st.floats(-30, 30, width=32))


@pytest.mark.parametrize("fn", FUNCS)
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_matches_scipy_and_torch(fn, axis, rng):
    z = rng.normal(scale=5.0, size=(4, 5, 6)).astype(np.float32)
    got = np.asarray(fn(z, axis=axis))
    np.testing.assert_allclose(got, SCIPY[fn](z.astype(np.float64), axis=axis),
                               rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(got, TORCH[fn](torch.from_numpy(z), dim=axis).numpy(),
                               rtol=F32_RTOL, atol=F32_ATOL)


@given(logits_2d)
def test_softmax_is_a_distribution(z):
    p = np.asarray(softmax(z))
    assert np.all(p >= 0)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=F32_RTOL, atol=F32_RTOL)
    np.testing.assert_allclose(np.asarray(log_softmax(z)), scipy.special.log_softmax(
        z.astype(np.float64), axis=-1), rtol=F32_RTOL, atol=F32_RTOL)


@given(logits_2d, st.floats(-1e4, 1e4, width=32))
def test_shift_invariance(z, c):
    # Also covers |z| up to 1e4: the shifted logits keep float32's absolute spacing.
    z = z.astype(np.float32)
    shifted = (z + np.float32(c)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(softmax(shifted)),
                               scipy.special.softmax(shifted.astype(np.float64), axis=-1),
                               atol=F32_ATOL)


@pytest.mark.parametrize("scale", [1e4, 1e30])
def test_extreme_logits_stay_finite(scale):
    z = jnp.array([[scale, -scale, 0.0], [scale, scale, -scale]], jnp.float32)
    p = softmax(z)
    lp = log_softmax(z)
    np.testing.assert_allclose(np.asarray(p), [[1, 0, 0], [0.5, 0.5, 0]], atol=F32_ATOL)
    assert not np.any(np.isnan(np.asarray(lp)))
    np.testing.assert_allclose(np.asarray(lp[0, :2]), [0.0, -2 * scale], rtol=F32_RTOL)
    for fn in FUNCS:
        g = jax.grad(lambda z, fn=fn: jnp.sum(fn(z)[:, 0]))(z)
        assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("fn", FUNCS)
def test_saturated_and_single_entry_rows_gradients_match_torch(fn):
    # Rows whose exp-sum is exactly 1 (one dominant logit, or a single class).
    for z in (np.array([[0.0, -1e4, -200.0], [5.0, 5.0, -1e4]], np.float32),
              np.array([[3.0], [-2.0]], np.float32)):
        w = np.arange(z.size, dtype=np.float32).reshape(z.shape) - 1.0
        g = jax.grad(lambda z, w=w: jnp.sum(fn(z) * w))(z)
        zt = torch.from_numpy(z).requires_grad_()
        (TORCH[fn](zt, dim=-1) * torch.from_numpy(w)).sum().backward()
        np.testing.assert_allclose(np.asarray(g), zt.grad.numpy(), rtol=GRAD_RTOL,
                                   atol=F32_ATOL)


def test_neg_inf_logits():
    z = jnp.array([[-jnp.inf, 0.0, 1.0], [-jnp.inf] * 3])
    np.testing.assert_allclose(np.asarray(softmax(z)), [
        [0.0, *scipy.special.softmax([0.0, 1.0])], [0.0, 0.0, 0.0]], atol=F32_ATOL)
    lp = np.asarray(log_softmax(z))
    assert lp[0, 0] == -np.inf and np.all(lp[1] == -np.inf)
    np.testing.assert_allclose(lp[0, 1:], scipy.special.log_softmax([0.0, 1.0]), rtol=F32_RTOL)
    # The all -inf row is constant: zero, finite gradients.
    cot = jnp.arange(3.0)
    g = jax.grad(lambda z: jnp.sum(softmax(z) * cot))(z)
    np.testing.assert_array_equal(np.asarray(g[1]), 0.0)
    g = jax.grad(lambda z: jnp.sum(log_softmax(z)[:, 1:] * cot[1:]))(z)
    assert np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_array_equal(np.asarray(g[1]), 0.0)


def test_where_matches_jax_nn_and_masked_rows_are_zero(rng):
    z = rng.normal(size=(5, 7)).astype(np.float32)
    mask = rng.random((5, 7)) < 0.6
    mask[2] = False
    mask[3] = True
    ok = mask.any(-1)
    p = np.asarray(softmax(z, where=mask))
    lp = np.asarray(log_softmax(z, where=mask))
    np.testing.assert_allclose(p[ok], np.asarray(jax.nn.softmax(z, where=mask))[ok],
                               rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_allclose(np.where(mask, lp, 0)[ok],
                               np.where(mask, jax.nn.log_softmax(z, where=mask), 0)[ok],
                               rtol=F32_RTOL, atol=F32_ATOL)
    assert np.all(p[~mask] == 0) and np.all(lp[~mask] == -np.inf)
    np.testing.assert_array_equal(p[2], 0.0)
    np.testing.assert_allclose(p[ok].sum(-1), 1.0, rtol=F32_RTOL)
    # Masked entries with huge logits must not leak into the result or gradients.
    z_big = np.where(mask, z, 1e30).astype(np.float32)
    np.testing.assert_allclose(np.asarray(softmax(z_big, where=mask)), p, atol=F32_ATOL)
    for fn in FUNCS:
        g = jax.grad(lambda z, fn=fn: jnp.sum(jnp.where(mask, fn(z, where=mask), 0)))(z_big)
        g = np.asarray(g)
        assert np.all(np.isfinite(g)) and np.all(g[~mask] == 0)


def test_where_broadcasts():
    z = jnp.arange(6.0).reshape(2, 3)
    mask = jnp.array([True, False, True])
    np.testing.assert_allclose(np.asarray(softmax(z, where=mask)),
                               np.asarray(jax.nn.softmax(z, where=mask)), atol=F32_ATOL)


def test_seed_example():
    # The seed prints [0.09003057 0.24472847 0.66524096]; SciPy agrees.
    z = np.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(np.asarray(softmax(z)), scipy.special.softmax(z),
                               rtol=F32_RTOL)


@pytest.mark.parametrize("fn", FUNCS)
def test_jit_matches_eager(fn, rng):
    z = rng.normal(size=(3, 4)).astype(np.float32)
    mask = rng.random((3, 4)) < 0.5
    np.testing.assert_allclose(np.asarray(jax.jit(fn, static_argnames="axis")(z, axis=0)),
                               np.asarray(fn(z, axis=0)), rtol=F32_RTOL, atol=F32_ATOL)
    np.testing.assert_array_equal(np.asarray(jax.jit(fn)(z, where=mask)),
                                  np.asarray(fn(z, where=mask)))


@pytest.mark.parametrize("fn", FUNCS)
def test_vmap_matches_loop(fn, rng):
    z = rng.normal(size=(4, 3, 5)).astype(np.float32)
    mask = rng.random((4, 3, 5)) < 0.7
    got = jax.vmap(lambda a, m: fn(a, axis=0, where=m))(z, mask)
    want = np.stack([np.asarray(fn(a, axis=0, where=m)) for a, m in zip(z, mask, strict=True)])
    np.testing.assert_allclose(np.asarray(got), want, rtol=F32_RTOL, atol=F32_ATOL)


@pytest.mark.parametrize("fn", FUNCS)
def test_check_grads_x64(fn, x64, rng):
    z = jnp.asarray(rng.normal(size=(3, 4)))
    mask = jnp.asarray(rng.random((3, 4)) < 0.7).at[:, 0].set(True)
    check_grads(lambda z: jnp.where(mask, fn(z, where=mask), 0), (z,), order=1,
                modes=["fwd", "rev"])


@pytest.mark.parametrize("fn", FUNCS)
def test_grad_matches_torch(fn, rng):
    z = rng.normal(scale=3.0, size=(3, 5)).astype(np.float32)
    w = rng.normal(size=(3, 5)).astype(np.float32)
    g = jax.grad(lambda z: jnp.sum(fn(z) * w))(z)
    zt = torch.from_numpy(z).requires_grad_()
    (TORCH[fn](zt, dim=-1) * torch.from_numpy(w)).sum().backward()
    np.testing.assert_allclose(np.asarray(g), zt.grad.numpy(), rtol=GRAD_RTOL, atol=F32_ATOL)


@pytest.mark.parametrize("fn", FUNCS)
def test_dtypes(fn, x64, rng):
    z = rng.normal(size=(2, 5))
    out = fn(z)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), SCIPY[fn](z, axis=-1), rtol=F64_RTOL,
                               atol=F64_ATOL)
    assert fn(z.astype(np.float32)).dtype == jnp.float32
    half = fn(jnp.asarray(z, jnp.bfloat16))
    assert half.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(half, np.float64), SCIPY[fn](
        np.asarray(jnp.asarray(z, jnp.bfloat16), np.float64), axis=-1), atol=BF16_ATOL)
    assert fn(jnp.array([1, 2, 3], jnp.int32)).dtype == jnp.float64


def test_integer_input_gives_default_float():
    assert softmax(jnp.array([1, 2, 3])).dtype == jnp.float32


BAD_INPUTS = [
    (lambda: softmax(jnp.ones(3) * 1j), TypeError, "z must be real"),
    (lambda: log_softmax("abc"), TypeError, "z must be array-like"),
    (lambda: softmax(jnp.ones((2, 3)), axis=2), ValueError, r"axis 2 is out of range.*\(2, 3\)"),
    (lambda: log_softmax(jnp.ones((2, 3)), axis=-3), ValueError, "axis -3 is out of range"),
    (lambda: softmax(jnp.ones(3), axis=1.0), TypeError, "axis must be an int"),
    (lambda: softmax(jnp.array(1.0)), ValueError, r"out of range for z of shape \(\)"),
    (lambda: softmax(jnp.ones((2, 3)), where=jnp.ones((2, 3))), TypeError,
     "where must be a boolean mask"),
    (lambda: log_softmax(jnp.ones((2, 3)), where=jnp.ones((2, 2), bool)), ValueError,
     r"shapes do not broadcast.*where.shape=\(2, 2\)"),
    (lambda: softmax(jnp.ones(3), where=jnp.ones((2, 3), bool)), ValueError,
     r"where must broadcast to the shape of z \(3,\)"),
    (lambda: jax.jit(softmax, static_argnames="axis")(jnp.ones((2, 3)), axis=5), ValueError,
     "axis 5 is out of range"),
    (lambda: jax.jit(log_softmax)(jnp.ones((2, 3)), where=jnp.ones(4, bool)), ValueError,
     "shapes do not broadcast"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD_INPUTS)
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---------------------------------------------------------------------------
# Several axes normalised together


@pytest.mark.parametrize("fn", FUNCS)
@pytest.mark.parametrize("axis", [(2, 0), (-1, -3, 1), [0, 1]])
def test_tuple_axes_match_scipy_and_jax_nn(fn, axis, rng):
    z = rng.normal(scale=5.0, size=(2, 3, 4)).astype(np.float32)
    got = np.asarray(fn(z, axis=axis))
    np.testing.assert_allclose(got, SCIPY[fn](z.astype(np.float64), axis=tuple(axis)),
                               rtol=F32_RTOL, atol=F32_ATOL)
    jax_nn = {softmax: jax.nn.softmax, log_softmax: jax.nn.log_softmax}[fn]
    mask = rng.random(z.shape) < 0.7
    mask[0] = True
    ok = np.any(mask, axis=tuple(axis), keepdims=True) & mask
    np.testing.assert_allclose(
        np.where(ok, np.asarray(fn(z, axis=axis, where=mask)), 0),
        np.where(ok, np.asarray(jax_nn(z, axis=tuple(axis), where=mask)), 0),
        rtol=F32_RTOL, atol=F32_ATOL)
    jitted = jax.jit(fn, static_argnames="axis")(z, axis=tuple(axis))
    np.testing.assert_allclose(np.asarray(jitted), got, rtol=F32_RTOL, atol=F32_ATOL)


def test_tuple_axes_fully_masked_slice_and_gradients(x64, rng):
    z = jnp.asarray(rng.normal(size=(2, 3, 4)))
    mask = np.ones((2, 3, 4), bool)
    mask[1] = False  # the whole second slice over axes (1, 2)
    p = np.asarray(softmax(z, axis=(1, 2), where=mask))
    np.testing.assert_allclose(p[0].sum(), 1.0, rtol=F64_RTOL)
    np.testing.assert_array_equal(p[1], 0.0)
    g = jax.grad(lambda z: jnp.sum(softmax(z, axis=(2, 1), where=mask) * jnp.arange(4.0)))(z)
    np.testing.assert_array_equal(np.asarray(g)[1], 0.0)
    check_grads(lambda z: softmax(z, axis=(0, 2)), (z,), order=1, modes=["fwd", "rev"])
    check_grads(lambda z: log_softmax(z, axis=(1, 2)), (z,), order=1, modes=["fwd", "rev"])
    # vmap of a tuple-axis softmax equals a loop over the batch.
    got = jax.vmap(lambda a: log_softmax(a, axis=(0, 1)))(z)
    want = np.stack([np.asarray(log_softmax(a, axis=(0, 1))) for a in z])
    np.testing.assert_allclose(np.asarray(got), want, rtol=F64_RTOL, atol=F64_ATOL)


BAD_AXES = [
    (lambda: softmax(jnp.ones((2, 3)), axis=(0, 0)), ValueError,
     r"axis must not repeat an axis, got \(0, 0\) for z of shape \(2, 3\)"),
    (lambda: log_softmax(jnp.ones((2, 3)), axis=(1, -1)), ValueError,
     "1 and -1 are both axis 1"),
    (lambda: softmax(jnp.ones((2, 3)), axis=(0, 2)), ValueError,
     r"axis \(0, 2\) is out of range for z of shape \(2, 3\): 2 not in \[-2, 2\)"),
    (lambda: softmax(jnp.ones((2, 3)), axis=()), ValueError, "axis must name at least one"),
    (lambda: softmax(jnp.ones((2, 3)), axis=(0, 1.5)), TypeError,
     "axis must be an int or a tuple of ints"),
    (lambda: jax.jit(softmax, static_argnames="axis")(jnp.ones((2, 3)), axis=(1, 1)),
     ValueError, "must not repeat"),
]


@pytest.mark.parametrize(("call", "exc", "match"), BAD_AXES)
def test_bad_axes(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
