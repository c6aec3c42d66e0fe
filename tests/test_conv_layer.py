"""Conv2D against torch.nn.Conv2d (the seed's example) and flax.linen.Conv."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads

from jaxmath.nn.conv_layer import Conv2D
from tests.tolerances import F32_LOOSE, F64_ATOL, F64_RTOL, GRAD_RTOL

BF16_ATOL = 5e-2  # bfloat16 convolution against float32


def _x(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _variables(layer, x, seed=0):
    """Random parameters of ``layer`` without compiling ``init`` (shapes from eval_shape)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(layer.init, jax.random.key(0), x)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), shapes)


def _from_torch(conv: torch.nn.Conv2d) -> dict:
    """torch OIHW weight -> HWIO kernel, and the bias."""
    params = {"kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0)}
    if conv.bias is not None:
        params["bias"] = conv.bias.detach().numpy()
    return {"params": params}


def test_seed_example_matches_torch():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, kernel_size=3)  # the seed's layer and image
    image = torch.randn(1, 1, 28, 28)
    expected = conv(image)
    assert tuple(expected.shape) == (1, 1, 26, 26)
    layer = Conv2D(features=1, kernel_size=3)
    out = layer.apply(_from_torch(conv), image.numpy().transpose(0, 2, 3, 1))  # NCHW -> NHWC
    assert out.shape == (1, 26, 26, 1)
    np.testing.assert_allclose(out, expected.detach().numpy().transpose(0, 2, 3, 1),
                               rtol=F32_LOOSE, atol=F32_LOOSE)


@pytest.mark.parametrize("c_in,c_out,kw", [
    (3, 4, dict(kernel_size=(3, 2), stride=2, padding=1)),
    (4, 6, dict(kernel_size=3, dilation=2, groups=2, bias=False)),
    (2, 2, dict(kernel_size=1, padding=(0, 1))),
])
def test_matches_torch_conv2d(c_in, c_out, kw):
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(c_in, c_out, **kw)
    x = _x(0, 2, 9, 8, c_in)
    ours = dict(kernel_size=kw["kernel_size"], strides=kw.get("stride", 1),
                padding=kw.get("padding", 0), dilation=kw.get("dilation", 1),
                groups=kw.get("groups", 1), use_bias=kw.get("bias", True))
    out = Conv2D(c_out, **ours).apply(_from_torch(conv), x)
    expected = conv(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(out, expected.transpose(0, 2, 3, 1), rtol=F32_LOOSE,
                               atol=F32_LOOSE)


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, padding="SAME"),
    dict(kernel_size=(2, 3), strides=2, dilation=(1, 2), groups=2, padding="VALID"),
])
def test_matches_flax_conv_with_the_same_params(kw):
    x = _x(0, 2, 7, 7, 4)
    layer = Conv2D(6, **kw)
    variables = _variables(layer, x)
    flax_kw = dict(kernel_size=kw["kernel_size"], strides=kw.get("strides", 1),
                   padding=kw["padding"], kernel_dilation=kw.get("dilation", 1),
                   feature_group_count=kw.get("groups", 1))
    if isinstance(flax_kw["kernel_size"], int):
        flax_kw["kernel_size"] = (flax_kw["kernel_size"],) * 2
    ref = nn.Conv(6, **flax_kw)
    assert jax.eval_shape(ref.init, jax.random.key(0), x) == jax.eval_shape(
        layer.init, jax.random.key(0), x)
    np.testing.assert_allclose(layer.apply(variables, x), ref.apply(variables, x),
                               rtol=F32_LOOSE, atol=F32_LOOSE)


def test_jit_vmap_ensemble_unbatched_and_gradients():
    x = _x(0, 2, 6, 6, 3)
    layer = Conv2D(4, kernel_size=3, padding=1)
    keys = jax.random.split(jax.random.key(0), 3)
    with jax.threefry_partitionable(False):  # the same keys; XLA compiles this 4x faster
        ensemble = jax.jit(jax.vmap(layer.init, in_axes=(0, None)))(keys, x)
    outs = jax.jit(jax.vmap(layer.apply, in_axes=(0, None)))(ensemble, x)
    apply = jax.jit(layer.apply)
    for i in range(3):
        member = jax.tree.map(lambda a, i=i: a[i], ensemble)
        np.testing.assert_allclose(apply(member, x), outs[i], rtol=F32_LOOSE, atol=F32_LOOSE)
        np.testing.assert_allclose(layer.apply(member, x[0]), outs[i, 0], rtol=F32_LOOSE,
                                   atol=F32_LOOSE)
    grads = jax.jit(jax.grad(lambda v: (layer.apply(v, x) ** 2).sum()))(member)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_float64_and_gradients(x64):
    x = np.random.default_rng(0).normal(size=(1, 5, 5, 2))
    layer = Conv2D(3, kernel_size=2, strides=(1, 2), param_dtype=jnp.float64)
    variables = _variables(layer, x)
    out = layer.apply(variables, x)
    assert out.dtype == jnp.float64
    torch_conv = torch.nn.Conv2d(2, 3, 2, stride=(1, 2), dtype=torch.float64)
    with torch.no_grad():
        torch_conv.weight.copy_(torch.tensor(
            np.asarray(variables["params"]["kernel"]).transpose(3, 2, 0, 1)))
        torch_conv.bias.copy_(torch.tensor(np.asarray(variables["params"]["bias"])))
    expected = torch_conv(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    np.testing.assert_allclose(out, expected.transpose(0, 2, 3, 1), rtol=F64_RTOL,
                               atol=F64_ATOL)
    check_grads(jax.jit(layer.apply), (variables, x), order=1, modes=["rev"], rtol=GRAD_RTOL)


def test_bfloat16_runs():
    x = _x(0, 1, 6, 6, 2)
    layer = Conv2D(3, kernel_size=3)
    variables = _variables(layer, x)
    out = layer.clone(dtype=jnp.bfloat16).apply(variables, x)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(np.float32), layer.apply(variables, x),
                               rtol=BF16_ATOL, atol=BF16_ATOL)


X = np.ones((1, 6, 6, 4), np.float32)


def _init(x=X, **kw):
    layer = Conv2D(**{"features": 2, "kernel_size": 3, **kw})
    return jax.eval_shape(layer.init, jax.random.key(0), x)


BAD_INPUTS = [
    (lambda: _init(features=0), ValueError, r"features must be >= 1"),
    (lambda: _init(features=2.0), TypeError, r"features must be an int"),
    (lambda: _init(kernel_size=(3, 3, 3)), TypeError, r"kernel_size must be an int or a pair"),
    (lambda: _init(kernel_size=0), ValueError, r"kernel_size must be >= 1"),
    (lambda: _init(groups=3), ValueError, r"groups=3 must divide .* features=2"),
    (lambda: _init(groups=0), ValueError, r"groups must be >= 1"),
    (lambda: _init(groups=1.0), TypeError, r"groups must be an int, got float"),
    (lambda: _init(kernel_size=(3, True)), TypeError, r"kernel_size must be an int or a pair"),
    (lambda: _init(x=np.ones((6, 6))), ValueError, r"x must have rank 3 or 4"),
    (lambda: _init(x=X + 1j), TypeError, r"x must be real"),
    (lambda: _init(kernel_size=7), ValueError, r"the kernel spans 7 pixels"),
    (lambda: _init(padding="full"), ValueError, r"padding must be one of"),
    (lambda: _init(strides=0), ValueError, r"stride must be >= 1"),
    (lambda: jax.jit(lambda x: _init(x, kernel_size=7))(X), ValueError,
     r"the kernel spans 7 pixels"),
]


@pytest.mark.parametrize("call,exc,msg", BAD_INPUTS)
def test_bad_inputs(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()
