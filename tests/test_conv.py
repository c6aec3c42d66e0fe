"""convolve against NumPy/SciPy and conv2d against torch.nn.functional.conv2d."""

import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxmath.nn.conv import conv2d, convolve
from tests.tolerances import F32_LOOSE, F64_ATOL, F64_RTOL, GRAD_RTOL, default_precision_tol

NN = default_precision_tol()  # float32 layers at JAX's default precision

MODES = ("full", "same", "valid")


def _normal(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


# --------------------------------------------------------------------------- convolve

@st.composite
def _pair_1d(draw):
    n = draw(st.integers(1, 12))
    m = draw(st.integers(1, 12))
    elems = st.floats(-10, 10, width=32)
    f = draw(hnp.arrays(np.float32, n, elements=elems))
    g = draw(hnp.arrays(np.float32, m, elements=elems))
    return f, g


@given(_pair_1d(), st.sampled_from(MODES))
def test_convolve_1d_matches_numpy_and_scipy(pair, mode):
    f, g = pair
    out = np.asarray(convolve(f, g, mode))
    ref = scipy.signal.convolve(f.astype(np.float64), g.astype(np.float64), mode, method="direct")
    np.testing.assert_allclose(out, ref, rtol=F32_LOOSE, atol=F32_LOOSE)
    if mode != "same" or len(f) >= len(g):
        # np.convolve agrees except for 'same' with a longer kernel (see the next test).
        np.testing.assert_allclose(out, np.convolve(f.astype(np.float64), g, mode),
                                   rtol=F32_LOOSE, atol=F32_LOOSE)


def test_convolve_same_with_longer_kernel_follows_scipy(rng):
    f, g = _normal(rng, 3), _normal(rng, 6)
    out = convolve(f, g, "same")
    assert out.shape == (3,)  # np.convolve would give len(g) = 6 values
    assert np.convolve(f, g, "same").shape == (6,)
    np.testing.assert_allclose(out, scipy.signal.convolve(f, g, "same"), rtol=F32_LOOSE,
                               atol=F32_LOOSE)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("f_shape,g_shape", [
    ((6, 7), (3, 2)),       # kernel smaller
    ((5, 4), (4, 4)),       # even kernel sizes: the 'same' centring convention
    ((2, 3), (4, 5)),       # kernel larger in every axis ('valid' swaps)
    ((3, 5), (4, 2)),       # larger in one axis, smaller in the other
    ((4, 3, 5), (2, 3, 2)),  # 3-D
    ((1, 1), (1, 1)),
])
def test_convolve_nd_matches_scipy(rng, x64, mode, f_shape, g_shape):
    f, g = rng.normal(size=f_shape), rng.normal(size=g_shape)
    try:
        ref = scipy.signal.convolve(f, g, mode, method="direct")
    except ValueError:
        with pytest.raises(ValueError, match="valid"):
            convolve(f, g, mode)
        return
    out = convolve(f, g, mode)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, ref, rtol=F64_RTOL, atol=F64_ATOL)


def test_convolve_is_commutative_in_full_mode(rng):
    f, g = _normal(rng, 5, 3), _normal(rng, 2, 4)
    np.testing.assert_allclose(convolve(f, g), convolve(g, f), rtol=F32_LOOSE, atol=F32_LOOSE)


def test_convolve_delta_is_identity():
    f = jnp.arange(1.0, 7.0).reshape(2, 3)
    np.testing.assert_array_equal(convolve(f, jnp.ones((1, 1)), "same"), f)


def test_convolve_flipped_kernel_equals_conv2d(rng):
    f, g = _normal(rng, 7, 6), _normal(rng, 3, 2)
    via_conv2d = conv2d(f[None, :, :, None], g[::-1, ::-1, None, None])[0, :, :, 0]
    np.testing.assert_allclose(convolve(f, g, "valid"), via_conv2d, rtol=F32_LOOSE,
                               atol=F32_LOOSE)


def test_convolve_jit_vmap_and_dtypes(rng):
    f, g = _normal(rng, 4, 9), _normal(rng, 4, 3)
    for mode in MODES:
        loop = np.stack([convolve(a, b, mode) for a, b in zip(f, g, strict=True)])
        vmapped = jax.vmap(lambda a, b, m=mode: convolve(a, b, m))(f, g)
        np.testing.assert_allclose(vmapped, loop, rtol=F32_LOOSE, atol=F32_LOOSE)
        jitted = jax.jit(convolve, static_argnames="mode")(f[0], g[0], mode=mode)
        np.testing.assert_allclose(jitted, loop[0], rtol=F32_LOOSE, atol=F32_LOOSE)
    assert convolve(jnp.arange(3), jnp.arange(2)).dtype == jnp.float32  # ints -> float
    np.testing.assert_array_equal(convolve(jnp.arange(3), jnp.arange(2)), [0, 0, 1, 2])


def test_convolve_grads(rng, x64):
    f, g = rng.normal(size=(4, 5)), rng.normal(size=(2, 3))
    check_grads(jax.jit(lambda a, b: tuple(convolve(a, b, m) for m in MODES)), (f, g),
                order=1, modes=("fwd", "rev"))
    # d/df sum(w * (f * g)) is the correlation of w with g: check it in 1-D against NumPy.
    f1, g1 = rng.normal(size=6), rng.normal(size=3)
    w = rng.normal(size=8)
    grad = jax.grad(lambda a: jnp.sum(w * convolve(a, g1)))(f1)
    np.testing.assert_allclose(grad, np.correlate(w, g1, "valid"), rtol=F64_RTOL,
                               atol=F64_ATOL)


# --------------------------------------------------------------------------- conv2d

def _torch_conv2d(x_nhwc, k_hwio, **kw):
    """torch.nn.functional.conv2d in float64 on NHWC/HWIO arrays, result as NHWC."""
    x = torch.from_numpy(np.asarray(x_nhwc, np.float64)).permute(0, 3, 1, 2)
    w = torch.from_numpy(np.asarray(k_hwio, np.float64)).permute(3, 2, 0, 1)
    b = kw.pop("bias", None)
    b = None if b is None else torch.from_numpy(np.asarray(b, np.float64))
    return F.conv2d(x, w, b, **kw).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("stride,padding,dilation,groups,torch_padding", [
    (1, "VALID", 1, 1, 0),
    (2, "VALID", 1, 1, 0),
    ((1, 2), "valid", 1, 1, 0),
    (1, 1, 1, 1, 1),
    (2, (2, 1), 1, 1, (2, 1)),
    (1, "SAME", 1, 1, "same"),
    (1, "same", 2, 1, "same"),
    (1, 0, (2, 1), 1, 0),
    (1, 1, 1, 2, 1),
    (2, 1, 2, 4, 1),
])
def test_conv2d_matches_torch(rng, stride, padding, dilation, groups, torch_padding):
    c_in, c_out = 4, 8
    x = _normal(rng, 2, 9, 8, c_in)
    k = _normal(rng, 3, 3, c_in // groups, c_out)
    b = _normal(rng, c_out)
    out = conv2d(x, k, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=b)
    ref = _torch_conv2d(x, k, bias=b, stride=stride, padding=torch_padding, dilation=dilation,
                        groups=groups)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, **NN)


def test_conv2d_explicit_asymmetric_padding_matches_torch(rng):
    x, k = _normal(rng, 1, 6, 7, 2), _normal(rng, 2, 4, 2, 3)
    out = conv2d(x, k, padding=((1, 2), (0, 3)))
    x_padded = np.pad(x, ((0, 0), (1, 2), (0, 3), (0, 0)))
    np.testing.assert_allclose(out, _torch_conv2d(x_padded, k), rtol=F32_LOOSE, atol=F32_LOOSE)


@pytest.mark.parametrize("size,kernel,stride,dilation", [(9, 3, 2, 1), (8, 4, 3, 1),
                                                        (10, 3, 2, 2)])
def test_conv2d_same_with_stride_is_tensorflow_convention(rng, size, kernel, stride, dilation):
    # 'SAME': output ceil(H / s); total padding split with the extra zero at the end.
    x, k = _normal(rng, 1, size, size, 1), _normal(rng, kernel, kernel, 1, 2)
    out_size = math.ceil(size / stride)
    total = max((out_size - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    lo, hi = total // 2, total - total // 2
    ref = _torch_conv2d(np.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0))), k, stride=stride,
                        dilation=dilation)
    out = conv2d(x, k, stride=stride, padding="SAME", dilation=dilation)
    assert out.shape == (1, out_size, out_size, 2)
    np.testing.assert_allclose(out, ref, rtol=F32_LOOSE, atol=F32_LOOSE)


def test_conv2d_seed_example_matches_torch_conv2d_layer():
    # The seed: nn.Conv2d(1, 1, kernel_size=3) on a 1x1x28x28 image gives 1x1x26x26.
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(1, 1, kernel_size=3)
    image = torch.randn(1, 1, 28, 28)
    with torch.no_grad():
        expected = layer(image)
    assert tuple(expected.shape) == (1, 1, 26, 26)
    out = conv2d(image.permute(0, 2, 3, 1).numpy(),
                 layer.weight.detach().permute(2, 3, 1, 0).numpy(),
                 bias=layer.bias.detach().numpy())
    assert out.shape == (1, 26, 26, 1)
    np.testing.assert_allclose(out, expected.permute(0, 2, 3, 1).numpy(), rtol=F32_LOOSE,
                               atol=F32_LOOSE)


def test_conv2d_unbatched_jit_vmap(rng):
    x, k = _normal(rng, 3, 7, 7, 2), _normal(rng, 3, 3, 2, 4)
    batched = conv2d(x, k, stride=2, padding=1)
    np.testing.assert_allclose(conv2d(x[1], k, stride=2, padding=1), batched[1],
                               rtol=F32_LOOSE, atol=F32_LOOSE)
    jitted = jax.jit(conv2d, static_argnames=("stride", "padding"))(x, k, stride=2, padding=1)
    np.testing.assert_allclose(jitted, batched, rtol=F32_LOOSE, atol=F32_LOOSE)
    kernels = _normal(rng, 5, 3, 3, 2, 4)  # vmap over an ensemble of kernels
    vmapped = jax.vmap(lambda kk: conv2d(x, kk, padding="SAME"))(kernels)
    loop = np.stack([conv2d(x, kk, padding="SAME") for kk in kernels])
    np.testing.assert_allclose(vmapped, loop, rtol=F32_LOOSE, atol=F32_LOOSE)


def test_conv2d_grads_match_torch_autograd(rng):
    x, k, b = _normal(rng, 2, 6, 6, 4), _normal(rng, 3, 2, 2, 6), _normal(rng, 6)
    w = _normal(rng, 2, 3, 7, 6)  # cotangent of the output (stride 2, padding 1, groups 2)

    def loss(x, k, b):
        return jnp.sum(w * conv2d(x, k, stride=(2, 1), padding=1, groups=2, bias=b))

    grads = jax.grad(loss, argnums=(0, 1, 2))(x, k, b)
    tx = torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2).requires_grad_()
    tk = torch.tensor(k, dtype=torch.float64).permute(3, 2, 0, 1).requires_grad_()
    tb = torch.tensor(b, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(w, dtype=torch.float64).permute(0, 3, 1, 2)
    (F.conv2d(tx, tk, tb, stride=(2, 1), padding=1, groups=2) * tw).sum().backward()
    refs = (tx.grad.permute(0, 2, 3, 1), tk.grad.permute(2, 3, 1, 0), tb.grad)
    for g, r in zip(grads, refs, strict=True):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, r.numpy(), rtol=F32_LOOSE, atol=F32_LOOSE)


def test_conv2d_check_grads_and_x64(rng, x64):
    x, k, b = rng.normal(size=(1, 5, 5, 2)), rng.normal(size=(2, 3, 2, 3)), rng.normal(size=3)
    out = conv2d(x, k, stride=2, padding="SAME", dilation=1, bias=b)
    assert out.dtype == jnp.float64
    check_grads(jax.jit(lambda x, k, b: conv2d(x, k, padding=1, dilation=(1, 2), bias=b)),
                (x, k, b), order=1, modes=("fwd", "rev"), rtol=GRAD_RTOL)


# --------------------------------------------------------------------------- bad inputs

X = jnp.ones((1, 5, 5, 4))
K = jnp.ones((3, 3, 4, 2))
BAD_INPUTS = [
    (lambda: convolve(jnp.ones(3), jnp.ones(2), "circular"), ValueError, "mode must be one of"),
    (lambda: convolve(jnp.ones(3), jnp.ones((2, 2))), ValueError, "same rank"),
    (lambda: convolve(jnp.ones(()), jnp.ones(())), ValueError, "rank >= 1"),
    (lambda: convolve(jnp.ones(0), jnp.ones(2)), ValueError, "f must not be empty"),
    (lambda: convolve(jnp.ones(3), jnp.ones((0,))), ValueError, "g must not be empty"),
    (lambda: convolve(jnp.ones((3, 5)), jnp.ones((4, 2)), "valid"), ValueError,
     r"at least as large.*\(3, 5\)"),
    (lambda: convolve(jnp.ones(3) * 1j, jnp.ones(2)), TypeError, "f must be real"),
    (lambda: jax.jit(convolve, static_argnames="mode")(jnp.ones(3), jnp.ones(2), mode="x"),
     ValueError, "mode must be one of"),
    (lambda: conv2d(X, K, padding="FULL"), ValueError, "padding must be one of"),
    (lambda: conv2d(X, K, padding=-1), ValueError, "non-negative"),
    (lambda: conv2d(X, K, padding=((1, 1), (1,))), TypeError, "padding must be"),
    (lambda: conv2d(X, K, padding=1.5), TypeError, "padding must be"),
    (lambda: conv2d(X, K, stride=0), ValueError, "stride must be >= 1"),
    (lambda: conv2d(X, K, dilation=(1, 2, 3)), TypeError, "dilation must be an int or a pair"),
    (lambda: conv2d(X, K, groups=3), ValueError, "groups=3 must divide"),
    (lambda: conv2d(X, K, groups=0), ValueError, "groups must be >= 1"),
    (lambda: conv2d(X, K, groups=1.0), TypeError, "groups must be an int, got float"),
    (lambda: conv2d(X, K, stride=True), TypeError, "stride must be an int or a pair"),
    (lambda: conv2d(X, K, stride=1.5), TypeError, "stride must be an int or a pair"),
    (lambda: conv2d(X, jnp.ones((3, 3, 4, 3)), groups=2), ValueError, "groups=2 must divide"),
    (lambda: conv2d(X, jnp.ones((3, 3, 3, 2))), ValueError, r"input channels.*\(3, 3, 3, 2\)"),
    (lambda: conv2d(X, jnp.ones((3, 3, 4, 2)), groups=2), ValueError, "x.shape\\[-1\\] / groups"),
    (lambda: conv2d(jnp.ones((5, 5)), K), ValueError, "x must have rank 3 or 4"),
    (lambda: conv2d(X, jnp.ones((3, 4, 2))), ValueError, "kernel must have rank 4"),
    (lambda: conv2d(X, jnp.ones((7, 3, 4, 2))), ValueError, "output would be empty"),
    (lambda: conv2d(X, K, dilation=3), ValueError, "kernel spans 7 pixels"),
    (lambda: conv2d(X, K, bias=jnp.ones(3)), ValueError, r"bias must have shape \(C_out,\)"),
    (lambda: jax.jit(conv2d)(X, jnp.ones((3, 3, 3, 2))), ValueError, "input channels"),
]


@pytest.mark.parametrize("call,exc,msg", BAD_INPUTS)
def test_bad_inputs(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_conv2d_is_one_lax_convolution_on_accelerators(platform):
    """conv2d adds nothing to the convolution XLA gets: the same op as calling
    lax.conv_general_dilated directly (on an H200 the two measured 0.90x apart when timed
    one after the other, without warm-up: a measurement effect, not extra work)."""
    import re

    x, w = jnp.zeros((8, 56, 56, 64), jnp.bfloat16), jnp.zeros((3, 3, 64, 64), jnp.bfloat16)

    def convolutions(fn):
        text = jax.jit(fn).trace(x, w).lower(lowering_platforms=(platform,)).as_text()
        ops = [re.sub(r"%[\w#:]+", "%", line).strip() for line in text.splitlines()
               if "stablehlo." in line]
        assert len(ops) == 1, ops  # nothing but the convolution
        return ops

    lax_ops = convolutions(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    assert convolutions(lambda x, w: conv2d(x, w, padding="SAME")) == lax_ops
