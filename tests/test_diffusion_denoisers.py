"""Denoisers: the timestep embedding against diffusers, the MLP against a NumPy forward pass,
and the UNet's shapes, skip connections, attention and argument checks.

Parameters come from ``jax.eval_shape(model.init, ...)`` filled with NumPy draws: XLA:CPU
takes about a second to compile each random initialiser, which ``init`` would pay per
parameter shape.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads

from jaxmath.diffusion.denoisers import MLPDenoiser, UNet, timestep_embedding
from jaxmath.nn.transformer import sinusoidal_positions
from tests.tolerances import F32_LOOSE, F64_ATOL, F64_RTOL, GRAD_RTOL, default_precision_tol

NN = default_precision_tol()  # float32 layers at JAX's default precision

T_MAX = 999
# float32 angles t * w_i are rounded to half an ulp of t * w_i <= T_MAX, here and in
# diffusers (whose w_i differ from these by an ulp: float32 exp vs float64): the sines can
# differ by up to about two ulps of T_MAX (measured: 5.8e-5 at 128 dims).
EMBED_ATOL = 2 * float(np.spacing(np.float32(T_MAX)))
BF16_ATOL = 5e-2   # bfloat16 matmuls (8-bit mantissa) over widths <= 64, outputs of size ~1
KEY = jax.random.key(0)


def random_variables(model, *args, seed=0, **kwargs):
    """Random parameters of ``model`` (kernels ~ N(0, 1/fan_in), nonzero biases, norm scales
    near 1) without compiling ``init``: the shapes come from ``jax.eval_shape``."""
    shapes = jax.eval_shape(lambda: model.init(KEY, *args, **kwargs))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name == "scale":
            values = 1.0 + 0.1 * rng.normal(size=s.shape)
        elif name == "bias":
            values = 0.1 * rng.normal(size=s.shape)
        else:
            values = rng.normal(size=s.shape) / math.sqrt(math.prod(s.shape[:-1]))
        return jnp.asarray(values, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


# ----- timestep_embedding -----

def embedding_reference(t, dim, max_period=10_000.0, flip=False, shift=1.0, scale=1.0):
    """The closed form in float64."""
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half) / (half - shift))
    angles = scale * np.asarray(t, np.float64)[:, None] * freqs
    parts = [np.cos(angles), np.sin(angles)] if flip else [np.sin(angles), np.cos(angles)]
    if dim % 2:
        parts.append(np.zeros((len(t), 1)))
    return np.concatenate(parts, axis=-1)


@pytest.fixture(scope="module")
def diffusers_embedding():
    return pytest.importorskip("diffusers.models.embeddings").get_timestep_embedding


T_INT = np.array([0, 1, 2, 17, 250, 500, 998, T_MAX])


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("shift", [0.0, 1.0])
@pytest.mark.parametrize("dim", [4, 33, 128])
def test_embedding_matches_diffusers(diffusers_embedding, flip, shift, dim):
    want = diffusers_embedding(torch.from_numpy(T_INT), dim, flip_sin_to_cos=flip,
                                  downscale_freq_shift=shift).numpy()
    got = timestep_embedding(jnp.asarray(T_INT), dim, flip_sin_to_cos=flip,
                             downscale_freq_shift=shift)
    assert got.shape == (len(T_INT), dim) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=EMBED_ATOL)


def test_embedding_matches_diffusers_scale_period_and_fractional_t(diffusers_embedding):
    t = np.array([0.0, 0.25, 3.5, 41.75, 999.0], np.float32)
    want = diffusers_embedding(torch.from_numpy(t), 16, scale=2.0, max_period=100).numpy()
    got = timestep_embedding(jnp.asarray(t), 16, 100, scale=2.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=2 * EMBED_ATOL)  # angles up to 2 T_MAX


def test_embedding_float64_closed_form(x64):
    t = np.array([0.0, 0.5, 7.0, 123.25, 999.0])
    for flip, shift, dim in [(False, 1.0, 10), (True, 0.0, 7)]:
        got = timestep_embedding(jnp.asarray(t), dim, flip_sin_to_cos=flip,
                                 downscale_freq_shift=shift)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, embedding_reference(t, dim, flip=flip, shift=shift),
                                   rtol=F64_RTOL, atol=F64_ATOL)


def test_embedding_with_shift_zero_is_sinusoidal_positions_deinterleaved():
    length, dim = 50, 16
    table = np.asarray(sinusoidal_positions(length, dim))  # sin, cos interleaved
    got = timestep_embedding(jnp.arange(length), dim, downscale_freq_shift=0.0)
    np.testing.assert_allclose(got, np.concatenate([table[:, 0::2], table[:, 1::2]], -1),
                               rtol=0, atol=EMBED_ATOL)


def test_embedding_jit_vmap_and_grad(x64):
    t = jnp.array([[0.0, 3.0, 10.5], [1.0, 2.0, 999.0]])
    fn = jax.jit(lambda t: timestep_embedding(t, 6))
    batched = jax.vmap(fn)(t)
    for i in range(2):
        np.testing.assert_allclose(batched[i], timestep_embedding(t[i], 6), rtol=F64_RTOL,
                                   atol=F64_ATOL)
    check_grads(jax.jit(lambda t: timestep_embedding(t, 6)), (t[0],), order=1, modes=["rev"])


# ----- MLPDenoiser -----

def silu(x):
    return x / (1 + np.exp(-x))


def mlp_reference(p, x, t, features):
    """The MLP of the docstring in float64 NumPy."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)

    def dense(q, h):
        return h @ q["kernel"] + q["bias"]

    e = embedding_reference(t, features)
    e = dense(p["time_embed"]["dense_1"], silu(dense(p["time_embed"]["dense_0"], e)))
    e = silu(e)
    h = dense(p["dense_in"], np.asarray(x, np.float64))
    k = 0
    while f"block_{k}" in p:
        q = p[f"block_{k}"]
        h = h + dense(q["dense_1"], silu(dense(q["dense_0"], h) + dense(q["time_proj"], e)))
        k += 1
    return dense(p["dense_out"], silu(h))


B, D, F = 5, 3, 16
X = np.random.default_rng(1).normal(size=(B, D)).astype(np.float32)
T = np.array([0, 3, 99, 500, 999], np.int32)


@pytest.fixture(scope="module")
def mlp():
    model = MLPDenoiser(features=F, num_blocks=2)
    return model, random_variables(model, X, T)


def test_mlp_matches_numpy_reference(mlp):
    model, variables = mlp
    got = model.apply(variables, X, T)
    assert got.shape == (B, D) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, mlp_reference(variables["params"], X, T, F),
                               **NN)
    assert model.apply(variables, X, T).shape == X.shape


def test_mlp_jit_and_scalar_t(mlp):
    model, variables = mlp
    jitted = jax.jit(model.apply)(variables, X, T)
    np.testing.assert_allclose(jitted, model.apply(variables, X, T), rtol=F32_LOOSE,
                               atol=F32_LOOSE)
    np.testing.assert_allclose(model.apply(variables, X, 7),
                               model.apply(variables, X, np.full(B, 7)), rtol=0, atol=0)


def test_mlp_vmap_over_an_ensemble_equals_a_loop(mlp):
    model, _ = mlp
    members = [random_variables(model, X, T, seed=s) for s in range(3)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *members)
    batched = jax.vmap(model.apply, in_axes=(0, None, None))(stacked, X, T)
    for i, v in enumerate(members):
        np.testing.assert_allclose(batched[i], model.apply(v, X, T), **NN)


def test_mlp_bfloat16_compute(mlp):
    model, variables = mlp
    bf16 = MLPDenoiser(features=F, num_blocks=2, dtype=jnp.bfloat16)
    shapes = jax.eval_shape(bf16.init, KEY, X, T)
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(shapes))  # param_dtype
    got = bf16.apply(variables, X, T)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), model.apply(variables, X, T),
                               rtol=0, atol=BF16_ATOL)


def test_mlp_gradients(mlp, x64):
    model, variables = mlp
    p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
    x = np.asarray(X, np.float64)
    check_grads(jax.jit(lambda x: model.apply(p64, x, T)), (x,), order=1, modes=["rev"],
                rtol=GRAD_RTOL)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, x, T) ** 2)))(p64)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


# ----- UNet -----

IMAGES = np.random.default_rng(2).normal(size=(2, 8, 8, 1)).astype(np.float32)
T_IMG = np.array([5, 900], np.int32)
UNET = dict(channels=8, channel_mults=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
            num_groups=4, num_heads=2)


@pytest.fixture(scope="module")
def unet():
    model = UNet(**UNET)
    return model, random_variables(model, IMAGES, T_IMG), jax.jit(model.apply)


def test_unet_shape_dtype_and_parameters(unet):
    _, variables, apply = unet
    out = apply(variables, IMAGES, T_IMG)
    assert out.shape == IMAGES.shape and out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
    params = variables["params"]
    # attention at the level of downsampling factor 2 (4x4 maps), on the way down, in the
    # middle and on the way up; none at full resolution
    for name in ["down_1_attn_0", "mid_attn", "up_1_attn_0", "up_1_attn_1"]:
        assert params[name]["attention"]["query"]["kernel"].shape == (16, 2, 8)
    assert not any("attn" in name for name in params if name.startswith(("down_0", "up_0")))
    assert {"down_0_downsample", "up_1_upsample", "conv_in", "conv_out"} <= set(params)
    three = UNet(out_channels=3, **UNET)
    v3 = jax.eval_shape(three.init, KEY, IMAGES, T_IMG)
    assert jax.eval_shape(three.apply, v3, IMAGES, T_IMG).shape == (2, 8, 8, 3)


def test_unet_attention_path_is_used(unet):
    _, variables, apply = unet
    base = apply(variables, IMAGES, T_IMG)
    for name in ["down_1_attn_0", "mid_attn", "up_1_attn_1"]:
        changed = jax.tree_util.tree_map_with_path(
            lambda path, a, name=name: a * 1.5 if path[1].key == name else a, variables)
        assert not np.allclose(apply(changed, IMAGES, T_IMG), base, atol=1e-3), name
    plain = UNet(**{**UNET, "attention_resolutions": (), "mid_attention": False})
    plain_params = jax.eval_shape(plain.init, KEY, IMAGES, T_IMG)["params"]
    assert not any("attn" in name for name in plain_params)


def test_unet_examples_are_independent_and_time_matters(unet):
    _, variables, apply = unet
    out = apply(variables, IMAGES, T_IMG)
    # GroupNorm and attention must not mix the batch: changing example 1 leaves example 0
    other = IMAGES.copy()
    other[1] = -other[1]
    changed = apply(variables, other, T_IMG)
    np.testing.assert_allclose(changed[0], out[0], rtol=F32_LOOSE, atol=F32_LOOSE)
    assert not np.allclose(changed[1], out[1], atol=1e-3)
    other_t = apply(variables, IMAGES, T_IMG[::-1])
    assert not np.allclose(other_t, out, atol=1e-3)


def test_unet_gradients_trace():
    """The backward pass traces (shapes, dtypes) without compiling it; see the slow test."""
    model = UNet(**UNET)
    variables = jax.eval_shape(model.init, KEY, IMAGES, T_IMG)
    grads = jax.eval_shape(jax.grad(lambda p: jnp.mean(model.apply(p, IMAGES, T_IMG) ** 2)),
                           variables)
    assert jax.tree.structure(grads) == jax.tree.structure(variables)


@pytest.mark.slow
def test_unet_gradients_finite_and_reach_attention(unet):
    model, variables, _ = unet
    grads = jax.jit(jax.grad(lambda p: jnp.mean(model.apply(p, IMAGES, T_IMG) ** 2)))(variables)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    for name in ["down_1_attn_0", "mid_attn", "up_1_attn_1"]:
        assert np.abs(grads["params"][name]["attention"]["query"]["kernel"]).max() > 0


def test_unet_bfloat16_and_other_sizes():
    bf16 = UNet(dtype=jnp.bfloat16, **UNET)
    variables = jax.eval_shape(bf16.init, KEY, IMAGES, T_IMG)
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(variables))
    assert jax.eval_shape(bf16.apply, variables, IMAGES, T_IMG).dtype == jnp.bfloat16
    # three levels: 8x8 -> 4x4 -> 2x2; non-square images whose sides divide by 4
    deep = UNet(channels=8, channel_mults=(1, 2, 2), attention_resolutions=(4,), num_groups=4,
                num_heads=2)
    x = jnp.zeros((1, 8, 12, 3))
    v = jax.eval_shape(deep.init, KEY, x, 0)
    assert jax.eval_shape(deep.apply, v, x, 0).shape == (1, 8, 12, 3)
    assert "down_2_attn_0" in v["params"] and "down_1_attn_0" not in v["params"]


# ----- bad inputs -----

def _init(model, x, t):
    return lambda: jax.eval_shape(model.init, KEY, x, t)


X2 = np.ones((2, 3), np.float32)
T2 = np.array([1, 2])
IMG = np.ones((2, 8, 8, 1), np.float32)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: timestep_embedding(jnp.ones((2, 2)), 8), ValueError,
     r"t must have rank 1, got shape \(2, 2\)"),
    (lambda: timestep_embedding(T2, 1), ValueError, r"dim must be >= 2, got 1"),
    (lambda: timestep_embedding(T2, 8.0), TypeError, r"dim must be a Python int"),
    (lambda: timestep_embedding(T2, 2), ValueError,
     r"downscale_freq_shift must be < dim // 2 = 1 .*got 1.0"),
    (lambda: timestep_embedding(T2, 8, max_period=0.0), ValueError,
     r"max_period must be > 0, got 0.0"),
    (lambda: timestep_embedding(T2 * 1j, 8), TypeError, r"t must be real"),
    (_init(MLPDenoiser(features=8), np.ones((2, 3, 4)), T2), ValueError,
     r"x must have rank 2 \(\[B, d\]\), got shape \(2, 3, 4\)"),
    (_init(MLPDenoiser(features=8), X2, np.array([1, 2, 3])), ValueError,
     r"t must be a scalar or have shape \[B\] = \(2,\) for x of shape \(2, 3\), "
     r"got t.shape=\(3,\)"),
    (_init(MLPDenoiser(features=8), X2, np.ones((2, 1))), ValueError,
     r"t must be a scalar or have shape \[B\]"),
    (_init(MLPDenoiser(features=8), X2, np.array([True, False])), TypeError,
     r"t must hold real timesteps"),
    (_init(MLPDenoiser(features=0), X2, T2), ValueError, r"features must be >= 1, got 0"),
    (_init(MLPDenoiser(features=8), np.ones((0, 3)), np.zeros(0)), ValueError,
     r"x must not be empty"),
    (_init(UNet(**UNET), np.ones((2, 8, 8)), T2), ValueError,
     r"x must have rank 4 \(\[B, H, W, C\]: NHWC images\), got shape \(2, 8, 8\)"),
    (_init(UNet(**UNET), np.ones((2, 7, 8, 1)), T2), ValueError,
     r"height and width must be divisible by 2\*\*\(levels - 1\) = 2 for 2 levels .*"
     r"got x.shape=\(2, 7, 8, 1\)"),
    (_init(UNet(**{**UNET, "channel_mults": (1, 2, 2), "attention_resolutions": ()}),
           np.ones((2, 6, 6, 1)), T2), ValueError,
     r"divisible by 2\*\*\(levels - 1\) = 4 for 3 levels"),
    (_init(UNet(**{**UNET, "num_groups": 3}), IMG, T2), ValueError,
     r"num_groups=3 must divide every level's width channels \* channel_mults = \[8, 16\]"),
    (_init(UNet(**{**UNET, "num_heads": 3}), IMG, T2), ValueError,
     r"num_heads=3 must divide the width of every attention level, \[16, 16\]"),
    (_init(UNet(**{**UNET, "attention_resolutions": (4,)}), IMG, T2), ValueError,
     r"attention_resolutions entries must be downsampling factors of the levels, "
     r"\(1, 2\) for 2 levels, got \(4,\)"),
    (_init(UNet(out_channels=0, **UNET), IMG, T2), ValueError, r"out_channels must be >= 1"),
    (_init(UNet(**{**UNET, "channel_mults": ()}), IMG, T2), ValueError,
     r"channel_mults must name at least one level"),
    (_init(UNet(**UNET), IMG, np.arange(3)), ValueError,
     r"t must be a scalar or have shape \[B\] = \(2,\)"),
    (lambda: jax.jit(MLPDenoiser(features=8).init)(KEY, np.ones((2, 3, 4)), T2), ValueError,
     r"x must have rank 2"),
    (lambda: jax.jit(UNet(**UNET).init)(KEY, np.ones((2, 8, 7, 1)), T2), ValueError,
     r"divisible by 2\*\*\(levels - 1\) = 2"),
])
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
