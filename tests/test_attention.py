"""attention against torch scaled_dot_product_attention, jax.nn, flax and the attention
example of the blog post of core ML equations."""

import collections
import importlib
import re

import flax.linen as nn
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxmath.nn.attention import attention, attention_implementation, multi_head_attention
from tests.tolerances import F32_LOOSE, F64_ATOL, F64_RTOL, GRAD_RTOL, default_precision_tol

NN = default_precision_tol()  # float32 layers at JAX's default precision

attention_module = importlib.import_module("jaxmath.nn.attention")  # not the function

BF16_ATOL = 3e-2  # bfloat16 inputs (8-bit mantissa) against a float32 reference
DROP = 0.3  # the attention dropout rate of the tests
# The mean output over DROPOUT_DRAWS keep patterns equals the output without dropout
# within DROPOUT_SIGMAS standard errors.
DROPOUT_DRAWS, DROPOUT_SIGMAS = 2000, 6


def _normal(rng, *shape, dtype=np.float32):
    return rng.normal(size=shape).astype(dtype)


def _qkv(rng, b=2, h=3, lq=5, lk=7, d=4, dv=6, dtype=np.float32):
    return (_normal(rng, b, h, lq, d, dtype=dtype), _normal(rng, b, h, lk, d, dtype=dtype),
            _normal(rng, b, h, lk, dv, dtype=dtype))


def _t(x):
    return torch.from_numpy(np.asarray(x))


def _sdpa(q, k, v, **kw):
    kw = {n: _t(a) if isinstance(a, np.ndarray) else a for n, a in kw.items()}
    return F.scaled_dot_product_attention(_t(q), _t(k), _t(v), **kw).numpy()


# jax.nn's reference, compiled as one program (eagerly it compiles op by op: slower).
_jax_nn_attention = jax.jit(jax.nn.dot_product_attention, static_argnames="is_causal")


def _random_mask(rng, shape):
    """A random boolean mask with at least one True per row (torch gives NaN otherwise)."""
    mask = rng.uniform(size=shape) < 0.6
    mask[..., 0] = True
    return mask


# --------------------------------------------------------------------------- values

def test_blog_post_example_matches_torch():
    Q = torch.tensor([[1., 0.], [0., 1.]])
    K = torch.tensor([[1., 1.], [1., 0.]])
    V = torch.tensor([[0., 1.], [1., 0.]])
    # The blog post's own PyTorch function.
    scores = torch.matmul(Q, K.transpose(-2, -1)) / torch.sqrt(torch.tensor(2.0))
    expected = torch.matmul(torch.softmax(scores, dim=-1), V).numpy()
    np.testing.assert_allclose(expected, _sdpa(Q.numpy(), K.numpy(), V.numpy()),
                               rtol=F32_LOOSE, atol=F32_LOOSE)
    out = attention(Q.numpy(), K.numpy(), V.numpy())
    np.testing.assert_allclose(out, expected, rtol=F32_LOOSE, atol=F32_LOOSE)


@pytest.mark.parametrize("lq,lk", [(5, 7), (7, 4), (1, 6)])
def test_matches_torch_sdpa(rng, lq, lk):
    q, k, v = _qkv(rng, lq=lq, lk=lk)
    np.testing.assert_allclose(attention(q, k, v), _sdpa(q, k, v), rtol=F32_LOOSE,
                               atol=F32_LOOSE)
    mask = _random_mask(rng, (2, 1, lq, lk))  # broadcast over heads
    np.testing.assert_allclose(attention(q, k, v, mask=mask), _sdpa(q, k, v, attn_mask=mask),
                               rtol=F32_LOOSE, atol=F32_LOOSE)
    bias = _normal(rng, 1, 3, lq, lk)
    np.testing.assert_allclose(attention(q, k, v, bias=bias), _sdpa(q, k, v, attn_mask=bias),
                               rtol=F32_LOOSE, atol=F32_LOOSE)
    np.testing.assert_allclose(attention(q, k, v, scale=0.3), _sdpa(q, k, v, scale=0.3),
                               rtol=F32_LOOSE, atol=F32_LOOSE)
    # Both a boolean mask and a bias: torch takes them as one additive mask.
    combined = np.where(mask, bias, -np.inf).astype(np.float32)
    np.testing.assert_allclose(attention(q, k, v, mask=mask, bias=bias),
                               _sdpa(q, k, v, attn_mask=combined), rtol=F32_LOOSE,
                               atol=F32_LOOSE)


@pytest.mark.parametrize("lq,lk", [(5, 5), (3, 6), (6, 3)])
def test_causal_is_top_left_aligned_like_torch(rng, lq, lk):
    q, k, v = _qkv(rng, lq=lq, lk=lk)
    out = attention(q, k, v, is_causal=True)
    np.testing.assert_allclose(out, _sdpa(q, k, v, is_causal=True), rtol=F32_LOOSE,
                               atol=F32_LOOSE)
    tril = np.tril(np.ones((lq, lk), bool))
    np.testing.assert_allclose(out, attention(q, k, v, mask=tril), rtol=F32_LOOSE,
                               atol=F32_LOOSE)
    # Combined with a mask by logical and.
    mask = _random_mask(rng, (lq, lk))
    np.testing.assert_allclose(attention(q, k, v, mask=mask, is_causal=True),
                               _sdpa(q, k, v, attn_mask=mask & tril), rtol=F32_LOOSE,
                               atol=F32_LOOSE)


def test_matches_jax_nn_dot_product_attention(rng):
    # jax.nn uses [B, T, N, H]; jaxmath uses [..., L, d], i.e. [B, N, T, H].
    q, k, v = _qkv(rng, lq=6, lk=6, d=4, dv=4)
    mask = _random_mask(rng, (2, 3, 6, 6))
    bias = _normal(rng, 2, 3, 6, 6)

    def to_btnh(x):
        return jnp.swapaxes(x, 1, 2)

    for kw in ({"mask": mask, "bias": bias}, {"is_causal": True}):
        ref = _jax_nn_attention(to_btnh(q), to_btnh(k), to_btnh(v), **kw)
        np.testing.assert_allclose(attention(q, k, v, **kw), to_btnh(ref), rtol=F32_LOOSE,
                                   atol=F32_LOOSE)
    # On a fully masked query jax.nn (a large finite negative logit) averages the values
    # uniformly; jaxmath gives zeros.
    mask[0, 1, 2] = False
    ref = to_btnh(_jax_nn_attention(to_btnh(q), to_btnh(k), to_btnh(v), mask=mask))
    out = attention(q, k, v, mask=mask)
    np.testing.assert_allclose(ref[0, 1, 2], v[0, 1].mean(0), rtol=F32_LOOSE, atol=F32_LOOSE)
    np.testing.assert_array_equal(out[0, 1, 2], 0.0)
    np.testing.assert_allclose(np.delete(out[0, 1], 2, 0), np.delete(ref[0, 1], 2, 0),
                               rtol=F32_LOOSE, atol=F32_LOOSE)


def test_leading_axes_broadcast(rng):
    q = _normal(rng, 2, 4, 5, 3)
    k, v = _normal(rng, 2, 1, 6, 3), _normal(rng, 1, 6, 2)  # shared over heads / batch
    out = attention(q, k, v)
    assert out.shape == (2, 4, 5, 2)
    np.testing.assert_allclose(
        out, attention(q, np.broadcast_to(k, (2, 4, 6, 3)), np.broadcast_to(v, (2, 4, 6, 2))),
        **NN)
    # A key-padding mask [Lk] and an unbatched query with a batched mask.
    pad = np.array([True, True, True, False, False, True])
    np.testing.assert_allclose(attention(q, k, v, mask=pad),
                               attention(q, k[..., pad, :], v[..., pad, :]), **NN)
    masks = _random_mask(rng, (3, 1, 5, 6))
    assert attention(q[0, 0], k[0, 0], v[0], mask=masks).shape == (3, 1, 5, 2)


@given(hnp.arrays(np.float32, (3, 4), elements=st.floats(-3, 3, width=32)),
       hnp.arrays(np.float32, (5, 4), elements=st.floats(-3, 3, width=32)),
       st.permutations(range(5)))
def test_laws_convex_combination_and_key_permutation(q, k, perm):
    v = np.arange(10.0, dtype=np.float32).reshape(5, 2)
    out = attention(q, k, v)
    # Each output row is a convex combination of the value rows.
    assert np.all(out >= v.min(0) - F32_LOOSE) and np.all(out <= v.max(0) + F32_LOOSE)
    np.testing.assert_allclose(attention(q, k, np.ones((5, 3))), np.ones((3, 3)),
                               rtol=F32_LOOSE, atol=F32_LOOSE)
    # Permuting keys and values together changes nothing.
    perm = np.array(perm)
    np.testing.assert_allclose(attention(q, k[perm], v[perm]), out, rtol=F32_LOOSE,
                               atol=F32_LOOSE)


# --------------------------------------------------------------------------- masked rows

def test_fully_masked_rows_give_zeros_and_zero_gradients(rng):
    q, k, v = _qkv(rng, lq=4, lk=5)
    mask = _random_mask(rng, (2, 3, 4, 5))
    mask[0, 1, 2] = False       # one query sees no key
    mask[1, :, 0] = False       # and another in every head
    bias = _normal(rng, 2, 3, 4, 5)
    inf_bias = np.where(mask, bias, -np.inf).astype(np.float32)
    masked = ~mask.any(-1)
    for kw in ({"mask": mask}, {"bias": inf_bias}, {"mask": mask, "bias": bias}):
        out = attention(q, k, v, **kw)
        assert np.all(np.isfinite(out))
        np.testing.assert_array_equal(np.asarray(out)[masked], 0.0)
        # torch 2.13's SDPA also gives zeros there (the blog post's plain softmax gives NaN).
        ref = _sdpa(q, k, v, attn_mask=inf_bias if "bias" in kw else mask)
        np.testing.assert_allclose(out, ref, rtol=F32_LOOSE, atol=F32_LOOSE)
        naive = torch.softmax(_t(q) @ _t(k).transpose(-1, -2) / 2 + _t(inf_bias), -1) @ _t(v)
        assert np.all(np.isnan(naive.numpy()[masked]))

    def loss(q, k, v, bias):
        return jnp.sum(attention(q, k, v, mask=mask, bias=bias) ** 2)

    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias)
    for g in grads:
        assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(np.asarray(grads[0])[masked], 0.0)  # d/dq of masked queries
    np.testing.assert_array_equal(np.asarray(grads[3])[~mask], 0.0)   # d/dbias of masked keys
    g_inf = jax.grad(lambda b: jnp.sum(attention(q, k, v, bias=b)))(inf_bias)
    assert np.all(np.isfinite(g_inf))
    np.testing.assert_array_equal(np.asarray(g_inf)[~mask], 0.0)


def test_large_negative_bias_is_not_a_mask(rng):
    # A finite bias of -1e9 on every key is a uniform average, as in torch; -inf is a mask.
    q, k, v = _qkv(rng, b=1, h=1, lq=2, lk=3)
    bias = np.full((2, 3), -1e9, np.float32)
    np.testing.assert_allclose(attention(q, k, v, bias=bias), _sdpa(q, k, v, attn_mask=bias),
                               rtol=F32_LOOSE, atol=F32_LOOSE)
    np.testing.assert_array_equal(attention(q, k, v, bias=np.full((2, 3), -np.inf)), 0.0)


# --------------------------------------------------------------------------- gradients

def test_gradients_match_torch_autograd(rng, x64):
    q, k, v = _qkv(rng, lq=4, lk=5, dtype=np.float64)
    mask = _random_mask(rng, (2, 1, 4, 5))
    mask[1, 0, 3] = False  # a fully masked query: zero gradients in both libraries
    bias = _normal(rng, 3, 4, 5, dtype=np.float64)
    w = _normal(rng, 2, 3, 4, 6, dtype=np.float64)

    def loss(q, k, v, bias):
        return jnp.sum(w * attention(q, k, v, mask=mask, bias=bias, scale=0.7))

    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias)
    tq, tk, tv, tb = (torch.tensor(a, requires_grad=True) for a in (q, k, v, bias))
    additive = tb.masked_fill(~_t(mask), -torch.inf)
    out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=additive, scale=0.7)
    (out * _t(w)).sum().backward()
    for g, t in zip(grads, (tq, tk, tv, tb), strict=True):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=F64_RTOL, atol=F64_ATOL)


def test_check_grads(rng, x64):
    q, k, v = _qkv(rng, b=1, h=2, lq=3, lk=4, d=2, dv=2, dtype=np.float64)
    bias = _normal(rng, 3, 4, dtype=np.float64)
    mask = np.array([[True, False, True, True], [False] * 4, [True] * 4])
    check_grads(jax.jit(lambda q, k, v, b: attention(q, k, v, mask=mask, bias=b,
                                                     is_causal=True)),
                (q, k, v, bias), order=1, modes=("fwd", "rev"), rtol=GRAD_RTOL)


# --------------------------------------------------------------------------- transforms, dtypes

def test_jit_and_vmap(rng):
    q, k, v = _qkv(rng, lq=4, lk=6)
    mask = _random_mask(rng, (2, 3, 4, 6))
    eager = attention(q, k, v, mask=mask, is_causal=True)
    jitted = jax.jit(attention, static_argnames="is_causal")(q, k, v, mask, is_causal=True)
    np.testing.assert_allclose(jitted, eager, rtol=F32_LOOSE, atol=F32_LOOSE)
    vmapped = jax.vmap(lambda q, k, v, m: attention(q, k, v, mask=m, is_causal=True))(
        q, k, v, mask)
    loop = np.stack([attention(q[i], k[i], v[i], mask=mask[i], is_causal=True)
                     for i in range(2)])
    np.testing.assert_allclose(vmapped, loop, rtol=F32_LOOSE, atol=F32_LOOSE)
    np.testing.assert_allclose(vmapped, eager, rtol=F32_LOOSE, atol=F32_LOOSE)


def test_dtypes(rng, x64):
    q, k, v = _qkv(rng, lq=3, lk=4, dtype=np.float64)
    assert attention(q, k, v).dtype == jnp.float64
    np.testing.assert_allclose(attention(q, k, v), _sdpa(q, k, v), rtol=F64_RTOL,
                               atol=F64_ATOL)
    assert attention(q.astype(np.float32), k.astype(np.float32), v.astype(np.float32),
                     scale=0.5).dtype == jnp.float32


def test_bfloat16_inputs_use_float32_softmax(rng):
    q, k, v = (jnp.asarray(a, jnp.bfloat16) for a in _qkv(rng, lq=8, lk=8, d=16, dv=8))
    out = attention(q, k, v, is_causal=True)
    assert out.dtype == jnp.bfloat16
    ref = attention(*(a.astype(jnp.float32) for a in (q, k, v)), is_causal=True)
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=BF16_ATOL)
    # Large logits (scale 10 on d = 16) stay finite: the softmax runs in float32.
    big = attention(q, k, v, scale=10.0)
    assert np.all(np.isfinite(big.astype(jnp.float32)))


# --------------------------------------------------------------------------- key lengths, heads

def test_key_lengths_match_a_padding_mask_torch_and_jax_nn(rng):
    q, k, v = _qkv(rng, lq=5, lk=7, dv=4)
    lengths = np.array([3, 7])
    pad = np.arange(7) < lengths[:, None, None, None]                  # [B, 1, 1, Lk]
    out = attention(q, k, v, key_lengths=lengths[:, None])             # [B, 1] vs [B, H]
    np.testing.assert_allclose(out, _sdpa(q, k, v, attn_mask=pad), rtol=F32_LOOSE,
                               atol=F32_LOOSE)
    np.testing.assert_allclose(out, attention(q, k, v, mask=pad), rtol=F32_LOOSE,
                               atol=F32_LOOSE)
    # The [..., L, H, d] layout takes lengths per batch element, like jax.nn.
    q_h, k_h, v_h = (np.swapaxes(a, 1, 2) for a in (q, k, v))
    ref = _jax_nn_attention(q_h, k_h, v_h, key_value_seq_lengths=lengths)
    np.testing.assert_allclose(multi_head_attention(q_h, k_h, v_h, key_lengths=lengths), ref,
                               rtol=F32_LOOSE, atol=F32_LOOSE)
    # 0 masks every key (zeros); lengths above Lk mask none.
    both = attention(q, k, v, key_lengths=np.array([[0], [99]]))
    np.testing.assert_array_equal(both[0], 0.0)
    np.testing.assert_allclose(both[1], attention(q, k, v)[1], rtol=F32_LOOSE, atol=F32_LOOSE)


def test_multi_head_gqa_matches_torch_and_jax_nn(rng):
    b, lq, lk, h, h_kv, d = 2, 5, 7, 6, 2, 4   # MQA (H_kv = 1): test_multi_head_jit_and_vmap
    q = _normal(rng, b, lq, h, d)
    k, v = _normal(rng, b, lk, h_kv, d), _normal(rng, b, lk, h_kv, d)
    mask = _random_mask(rng, (b, 1, lq, lk))                 # shared by the heads
    bias = _normal(rng, h, lq, lk)                           # one per query head
    out = multi_head_attention(q, k, v, mask=mask, bias=bias, is_causal=True)
    assert out.shape == (b, lq, h, d)
    additive = np.where(mask & np.tril(np.ones((lq, lk), bool)), bias, -np.inf)
    ref = F.scaled_dot_product_attention(*(_t(np.swapaxes(a, 1, 2)) for a in (q, k, v)),
                                         attn_mask=_t(additive.astype(np.float32)),
                                         enable_gqa=True)
    np.testing.assert_allclose(out, np.swapaxes(ref.numpy(), 1, 2), **NN)
    ref = _jax_nn_attention(q, k, v, bias=bias[None], mask=mask, is_causal=True)
    np.testing.assert_allclose(out, ref, **NN)
    # Query head i uses K/V head i // (H / H_kv): the [..., L, d] layout with repeated K/V.
    g = h // h_kv
    per_head = attention(np.swapaxes(q, 1, 2), np.repeat(np.swapaxes(k, 1, 2), g, 1),
                         np.repeat(np.swapaxes(v, 1, 2), g, 1), mask=mask, bias=bias,
                         is_causal=True)
    np.testing.assert_allclose(out, np.swapaxes(per_head, 1, 2), **NN)


def test_multi_head_gradients_match_torch_autograd(rng, x64):
    b, lq, lk, h, h_kv, d = 2, 4, 5, 4, 2, 3
    q = _normal(rng, b, lq, h, d, dtype=np.float64)
    k, v = (_normal(rng, b, lk, h_kv, d, dtype=np.float64) for _ in range(2))
    bias = _normal(rng, 1, h, lq, lk, dtype=np.float64)
    lengths = np.array([5, 2])
    w = _normal(rng, b, lq, h, d, dtype=np.float64)

    def loss(q, k, v, bias):
        return jnp.sum(w * multi_head_attention(q, k, v, bias=bias, key_lengths=lengths))

    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias)
    tq, tk, tv = (torch.tensor(np.swapaxes(a, 1, 2), requires_grad=True) for a in (q, k, v))
    tb = torch.tensor(bias, requires_grad=True)
    pad = _t(np.arange(lk) < lengths[:, None, None, None])
    out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tb.masked_fill(~pad, -torch.inf),
                                         enable_gqa=True)
    (out * _t(np.swapaxes(w, 1, 2))).sum().backward()
    for g, t in zip(grads[:3], (tq, tk, tv), strict=True):
        np.testing.assert_allclose(g, np.swapaxes(t.grad.numpy(), 1, 2), rtol=F64_RTOL,
                                   atol=F64_ATOL)
    np.testing.assert_allclose(grads[3], tb.grad.numpy(), rtol=F64_RTOL, atol=F64_ATOL)


def test_multi_head_jit_and_vmap(rng):
    q, k, v = _normal(rng, 3, 4, 2, 2), _normal(rng, 3, 6, 1, 2), _normal(rng, 3, 6, 1, 2)
    lengths = np.array([6, 1, 3])
    eager = multi_head_attention(q, k, v, key_lengths=lengths, is_causal=True)
    vmapped = jax.jit(jax.vmap(lambda q, k, v, n: multi_head_attention(
        q, k, v, key_lengths=n, is_causal=True)))(q, k, v, lengths)
    np.testing.assert_allclose(vmapped, eager, rtol=F32_LOOSE, atol=F32_LOOSE)
    # Multi-query attention (one K/V head) against torch.
    keep = np.tril(np.ones((4, 6), bool)) & (np.arange(6) < lengths[:, None, None, None])
    ref = F.scaled_dot_product_attention(*(_t(np.swapaxes(a, 1, 2)) for a in (q, k, v)),
                                         attn_mask=_t(keep), enable_gqa=True)
    np.testing.assert_allclose(eager, np.swapaxes(ref.numpy(), 1, 2), rtol=F32_LOOSE,
                               atol=F32_LOOSE)


# --------------------------------------------------------------------------- dropout

def _softmax_weights(q, k, keep, scale):
    """float64 softmax of ``scale q k^T`` over the attended keys (every row has one)."""
    s = np.where(keep, scale * np.asarray(q, np.float64) @ np.swapaxes(k, -1, -2), -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    return w / w.sum(-1, keepdims=True)


@pytest.mark.parametrize("broadcast", [True, False])
def test_dropout_matches_numpy_with_the_pattern_of_flax(rng, broadcast):
    """Weights times keep / (1 - p) after normalisation, the pattern drawn as flax draws
    it: bernoulli(rng, 1 - p, shape) of the scores' shape, or (1, 1, Lq, Lk) shared."""
    q, k, v = _qkv(rng, lq=5, lk=7)
    mask = _random_mask(rng, (2, 1, 5, 7))
    key = jax.random.key(5)
    out = attention(q, k, v, mask=mask, is_causal=True, dropout_rate=DROP, dropout_rng=key,
                    broadcast_dropout=broadcast)
    pattern = np.asarray(jax.random.bernoulli(key, 1 - DROP, (1, 1, 5, 7) if broadcast
                                              else (2, 3, 5, 7)))
    weights = _softmax_weights(q, k, mask & np.tril(np.ones((5, 7), bool)), 0.5)
    np.testing.assert_allclose(out, weights * pattern / (1 - DROP) @ v, **NN)


def test_multi_head_dropout_matches_flax_dot_product_attention(rng):
    """One pattern per weight [B, H, Lq, Lk] (the shared one: tests/test_mha.py)."""
    q, k, v = _normal(rng, 2, 5, 4, 8), _normal(rng, 2, 6, 4, 8), _normal(rng, 2, 6, 4, 3)
    mask, bias = _random_mask(rng, (2, 1, 5, 6)), _normal(rng, 4, 5, 6)
    key = jax.random.key(2)
    out = multi_head_attention(q, k, v, mask=mask, bias=bias, dropout_rate=DROP,
                               dropout_rng=key, broadcast_dropout=False)
    ref = jax.jit(lambda q, k, v, bias, mask: nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, dropout_rng=key, dropout_rate=DROP,
        broadcast_dropout=False, deterministic=False))(q, k, v, bias, mask)
    np.testing.assert_allclose(out, ref, **NN)


def test_dropout_on_every_path_equals_xla(rng):
    """The same key gives the same values and gradients on the blockwise and Pallas paths
    as on xla: a pattern per score in the [..., L, d] layout (broadcast leading axes, mask,
    -inf bias, key lengths, causal, several blocks), one shared by batch and heads in the
    GQA layout."""
    q, k, v = _normal(rng, 2, 2, 20, 8), _normal(rng, 2, 1, 19, 8), _normal(rng, 1, 19, 5)
    mask, bias = _random_mask(rng, (2, 1, 20, 19)), _normal(rng, 2, 20, 19)
    bias[1, :, 2] = -np.inf
    lengths = np.array([[15], [19]])
    q_h, kv_h = _normal(rng, 2, 20, 4, 8), _normal(rng, 2, 17, 2, 8)
    keys = jax.random.split(jax.random.key(1))

    def fn(path):
        blocks = {"xla": None, "blockwise": (8, 8), "pallas": (16, 16)}[path]

        def f(q, k, v, bias, q_h, kv_h):
            per_score = attention(q, k, v, mask=mask, bias=bias, is_causal=True,
                                  key_lengths=lengths, dropout_rate=DROP, dropout_rng=keys[0],
                                  broadcast_dropout=False, implementation=path,
                                  block_size=blocks)
            shared = multi_head_attention(q_h, kv_h, kv_h, is_causal=True, dropout_rate=DROP,
                                          dropout_rng=keys[1], implementation=path,
                                          block_size=blocks)
            return per_score, shared
        return f

    @jax.jit
    def run(*args):
        results = {}
        for path in ("xla", "blockwise", "pallas"):
            out, vjp = jax.vjp(fn(path), *args)
            results[path] = (out, vjp(jax.tree.map(jnp.cos, out)))
        return results

    results = run(q, k, v, bias, q_h, kv_h)
    for path in ("blockwise", "pallas"):
        for got, want in zip(jax.tree.leaves(results[path]), jax.tree.leaves(results["xla"]),
                             strict=True):
            np.testing.assert_allclose(got, want, **NN)


def test_dropout_rate_zero_is_the_plain_call_keys_decide_the_pattern_and_it_is_unbiased(rng):
    q, k, v = _qkv(rng, lq=4, lk=6)
    v = np.tanh(v)
    key = jax.random.key(0)
    plain = attention(q, k, v)
    np.testing.assert_array_equal(attention(q, k, v, dropout_rate=0.0, dropout_rng=key), plain)
    np.testing.assert_array_equal(attention(q, k, v, dropout_rate=0), plain)

    def dropped(key):
        return attention(q, k, v, dropout_rate=DROP, dropout_rng=key)

    keys = jax.random.split(key, DROPOUT_DRAWS)
    draws = jax.jit(jax.vmap(dropped))(keys)  # jit and vmap over keys equal to a loop
    np.testing.assert_allclose(draws[:2], np.stack([dropped(x) for x in keys[:2]]),
                               rtol=F32_LOOSE, atol=F32_LOOSE)
    assert not np.allclose(draws[0], draws[1])
    # The mean over the patterns is the output without dropout, within DROPOUT_SIGMAS
    # standard errors: Var O_ij = p / (1 - p) sum_k P_ik^2 v_kj^2 per draw.
    weights = _softmax_weights(q, k, np.ones((4, 6), bool), 0.5)
    se = np.sqrt(weights ** 2 @ v.astype(np.float64) ** 2 * DROP / (1 - DROP) / DROPOUT_DRAWS)
    assert np.all(np.abs(draws.mean(0) - plain) <= DROPOUT_SIGMAS * se + F32_LOOSE)


# --------------------------------------------------------------------------- implementations

@pytest.mark.parametrize("backend", attention_module.BACKENDS)
def test_default_implementation_policy(backend, monkeypatch):
    def path(*args, **kwargs):
        return attention_implementation(*args, backend=backend, **kwargs)

    x, short = jnp.zeros((2, 1024, 8)), jnp.zeros((2, 8, 8))
    long_path = {"cpu": "blockwise", "gpu": "pallas", "tpu": "xla"}[backend]
    assert path(short, short, short) == "xla"
    # On CPU from CPU_BLOCKWISE_MIN_LENGTH queries and keys on: blockwise.
    assert path(x, x, x, is_causal=True) == long_path
    assert path(x[:, :8], x, x) == "xla"                             # 8 queries (decoding)
    half = x[:, :512]                                                 # one query block
    assert path(half, half, half, is_causal=True) == ("pallas" if backend == "gpu" else "xla")
    assert path(x[:, :511], x, x) == "xla"
    assert path(x, x, x, implementation="xla") == "xla"
    heads = jnp.zeros((1, 1024, 4, 8))
    assert path(heads, heads[..., :1, :], heads[..., :1, :], multi_head=True) == long_path
    # bfloat16 [B, L, H, d] goes to cuDNN on an NVIDIA GPU, whatever its length.
    h16 = heads.astype(jnp.bfloat16)
    assert path(h16, h16, h16, multi_head=True) == ("cudnn" if backend == "gpu" else long_path)
    assert path(h16[:, :8], h16[:, :8], h16[:, :8], multi_head=True) == (
        "cudnn" if backend == "gpu" else "xla")
    # A bfloat16 call cuDNN refuses (a traced scale) is long: Pallas would take it on a
    # GPU, but not with a traced scale either.
    assert path(h16, h16, h16, multi_head=True, scale=jnp.float32(0.5)) == (
        "xla" if backend == "gpu" else long_path)
    # Past the memory budget of the scores: a kernel that takes the call on a GPU,
    # blockwise on every other backend or for what the kernels refuse.
    monkeypatch.setattr(attention_module, "CPU_BLOCKWISE_MIN_LENGTH", 10**9)
    monkeypatch.setattr(attention_module, "GPU_PALLAS_MIN_LENGTH", 10**9)
    assert path(x, x, x) == "xla"
    monkeypatch.setattr(attention_module, "XLA_MEMORY_BUDGET_BYTES", 2 * 1024 * 1024 * 4 - 1)
    assert path(x, x, x) == ("pallas" if backend == "gpu" else "blockwise")
    assert path(x, x, x, scale=jnp.float32(0.5)) == "blockwise"


@pytest.mark.parametrize("call,reason", [
    (lambda x: dict(q=x, k=x, v=x), "cuDNN takes float16 or bfloat16 inputs, got float32"),
    (lambda x: dict(q=x.astype(jnp.bfloat16), k=x.astype(jnp.bfloat16),
                    v=x.astype(jnp.bfloat16), scale=jnp.float32(0.5)), "scale as a Python number"),
    (lambda x: dict(q=x[:, :4].astype(jnp.bfloat16), k=x.astype(jnp.bfloat16),
                    v=x.astype(jnp.bfloat16), is_causal=True), "Lq == Lk only"),
    (lambda x: dict(q=x.astype(jnp.bfloat16), k=x.astype(jnp.bfloat16),
                    v=x.astype(jnp.bfloat16), dropout_rate=0.1),
     "jax.nn.dot_product_attention has no attention dropout"),
])
def test_cudnn_refusals_on_a_gpu(call, reason):
    x = jnp.zeros((2, 16, 2, 8))  # [B, L, H, d]
    with pytest.raises(ValueError, match=f"'cudnn' cannot run this call: .*{reason}"):
        attention_implementation(**call(x), implementation="cudnn", multi_head=True,
                                 backend="gpu")
    assert attention_implementation(**call(x), multi_head=True, backend="gpu") != "cudnn"


def test_cudnn_takes_different_head_sizes_for_q_and_v():
    # jax.nn's cuDNN kernel takes d != dv on Hopper with cuDNN >= 9.10 and refuses it at
    # trace time elsewhere, where the default path falls back.
    x = jnp.zeros((2, 16, 2, 8), jnp.bfloat16)
    assert attention_implementation(x, x, x[..., :4], multi_head=True, backend="gpu") == "cudnn"


def test_attention_implementation_rejects_an_unknown_backend():
    x = jnp.zeros((2, 8, 8))
    with pytest.raises(ValueError, match="backend must be one of"):
        attention_implementation(x, x, x, backend="cuda")


@pytest.fixture
def fake_cudnn(monkeypatch):
    """Pretend cuDNN can run: jax.nn's xla implementation stands in for its kernel."""
    calls = []
    original = jax.nn.dot_product_attention

    def stand_in(*args, implementation=None, **kw):
        calls.append(implementation)
        return original(*args, implementation="xla", **kw)

    monkeypatch.setattr(attention_module, "_cudnn_unsupported", lambda *a, **kw: None)
    monkeypatch.setattr(jax.nn, "dot_product_attention", stand_in)
    return calls


def test_cudnn_path_layouts_lengths_and_masked_rows(rng, fake_cudnn):
    # The plumbing around the kernel (layouts, lengths, zeros on fully masked rows), with
    # jax.nn's xla path standing in for cuDNN (no GPU here; jax.nn averages masked rows).
    q, k, v = _qkv(rng, lq=6, lk=6, d=4, dv=4)
    mask = _random_mask(rng, (2, 3, 6, 6))
    mask[0, 1, 2] = False
    lengths = np.array([[4], [0]])
    kw = {"mask": mask, "key_lengths": lengths, "is_causal": True}
    want = attention(q, k, v, implementation="xla", **kw)
    np.testing.assert_allclose(attention(q, k, v, implementation="cudnn", **kw), want,
                               rtol=F32_LOOSE, atol=F32_LOOSE)
    q_h, k_h, v_h = (np.swapaxes(a, 1, 2) for a in (q, k, v))
    out = multi_head_attention(q_h, k_h[:, :, :1], v_h[:, :, :1], mask=mask,
                               key_lengths=lengths[:, 0], implementation="cudnn")
    want = multi_head_attention(q_h, k_h[:, :, :1], v_h[:, :, :1], mask=mask,
                                key_lengths=lengths[:, 0], implementation="xla")
    np.testing.assert_allclose(out, want, rtol=F32_LOOSE, atol=F32_LOOSE)
    np.testing.assert_array_equal(out[1], 0.0)
    assert fake_cudnn == ["cudnn", "cudnn"]


def test_default_falls_back_when_cudnn_refuses(rng, fake_cudnn, monkeypatch):
    def refuse(*args, **kw):
        raise NotImplementedError("cuDNN refuses this call")

    monkeypatch.setattr(jax.nn, "dot_product_attention", refuse)
    q, k, v = _qkv(rng, lq=3, lk=4)
    assert attention_implementation(q, k, v) == "cudnn"
    np.testing.assert_allclose(attention(q, k, v, scale=0.25),
                               attention(q, k, v, scale=0.25, implementation="xla"),
                               rtol=F32_LOOSE, atol=F32_LOOSE)
    with pytest.raises(NotImplementedError, match="refuses"):
        attention(q, k, v, scale=0.25, implementation="cudnn")


# --------------------------------------------------------------------------- bad inputs

Q, KV = jnp.ones((2, 3, 4)), jnp.ones((2, 5, 4))
KEY = jax.random.key(0)
# Why implementation='cudnn' refuses these float32 arrays on the backend in use.
CUDNN_REFUSAL = ("cuDNN takes float16 or bfloat16 inputs, got float32"
                 if jax.default_backend() == "gpu" else "it needs an NVIDIA GPU")
BAD_INPUTS = [
    (lambda: attention(Q, jnp.ones((2, 5, 3)), KV), ValueError,
     r"same feature size d.*\(2, 5, 3\)"),
    (lambda: attention(Q, KV, jnp.ones((2, 6, 4))), ValueError,
     r"same number of keys Lk.*\(2, 6, 4\)"),
    (lambda: attention(jnp.ones(4), KV, KV), ValueError, "q must have rank >= 2"),
    (lambda: attention(Q, KV, jnp.ones(4)), ValueError, "v must have rank >= 2"),
    (lambda: attention(jnp.ones((3, 3, 4)), KV, KV), ValueError, "leading .* do not broadcast"),
    (lambda: attention(Q, KV, KV, mask=jnp.ones((3, 4), bool)), ValueError,
     r"the scores \[..., Lq, Lk\] and mask do not broadcast"),
    (lambda: attention(Q, KV, KV, mask=jnp.ones((7, 1, 5), bool)), ValueError,
     "do not broadcast"),
    (lambda: attention(jnp.ones((2, 1, 4)), KV, KV, mask=jnp.ones((3, 5), bool)), ValueError,
     r"mask must broadcast to the scores.*\[..., 1, 5\]"),
    (lambda: attention(Q, KV, KV, mask=jnp.ones((3, 5))), TypeError, "mask must be boolean"),
    (lambda: attention(Q, KV, KV, mask=jnp.ones((3, 5), jnp.int32)), TypeError,
     "pass an additive float mask as bias"),
    (lambda: attention(Q, KV, KV, bias=jnp.ones((4, 5))), ValueError, "bias do not broadcast"),
    (lambda: attention(Q, KV, KV, is_causal=1), TypeError, "is_causal must be a Python bool"),
    (lambda: attention(Q, KV, KV, scale=jnp.ones(2)), ValueError, "scale must be a scalar"),
    (lambda: attention(jnp.ones((2, 3, 0)), jnp.ones((2, 5, 0)), KV), ValueError,
     "q must not be empty along axis -1"),
    (lambda: attention(Q, jnp.ones((2, 0, 4)), jnp.ones((2, 0, 4))), ValueError,
     "k must not be empty along axis -2"),
    (lambda: attention(Q * 1j, KV, KV), TypeError, "q must be real"),
    (lambda: jax.jit(attention)(Q, KV, jnp.ones((2, 6, 4))), ValueError, "same number of keys"),
    (lambda: jax.jit(attention)(Q, KV, KV, jnp.ones((3, 5))), TypeError, "mask must be boolean"),
    # key lengths
    (lambda: attention(Q, KV, KV, key_lengths=jnp.ones(2)), TypeError,
     "key_lengths must have an integer dtype"),
    (lambda: attention(Q, KV, KV, key_lengths=jnp.ones(3, int)), ValueError,
     r"batch axes \[...\] and key_lengths do not broadcast.*\(3,\)"),
    (lambda: attention(Q, KV, KV, key_lengths=jnp.ones((4, 1, 2), int)), ValueError,
     "key_lengths must broadcast to the batch axes"),
    # implementations and block sizes
    (lambda: attention(Q, KV, KV, implementation="flash"), ValueError,
     "implementation must be one of .*'xla', 'blockwise', 'cudnn'.*got 'flash'"),
    (lambda: attention(Q, KV, KV, implementation="cudnn"), ValueError,
     "implementation='cudnn' cannot run this call: " + CUDNN_REFUSAL),
    (lambda: jax.jit(lambda q: attention(q, KV, KV, implementation="cudnn"))(Q), ValueError,
     "implementation='cudnn' cannot run"),
    (lambda: attention(Q, KV, KV, block_size=0, implementation="blockwise"), ValueError,
     "block_size must be a positive int or a pair"),
    (lambda: attention(Q, KV, KV, block_size=(16, 8, 4)), ValueError,
     r"block_size must be .* got \(16, 8, 4\)"),
    (lambda: attention(Q, KV, KV, block_size=2.5), ValueError, "block_size must be"),
    (lambda: attention(Q, KV, KV, block_size=16, implementation="xla"), ValueError,
     "block_size applies to implementation='blockwise'"),
    # the [..., L, H, d] layout
    (lambda: multi_head_attention(jnp.ones((2, 3, 6, 4)), jnp.ones((2, 5, 4, 4)),
                                  jnp.ones((2, 5, 4, 4))), ValueError,
     "query heads H=6 must be a multiple of the number of key/value heads H_kv=4"),
    (lambda: multi_head_attention(jnp.ones((2, 3, 6, 4)), jnp.ones((2, 5, 2, 4)),
                                  jnp.ones((2, 5, 3, 4))), ValueError,
     "k and v must have the same number of heads H_kv"),
    (lambda: multi_head_attention(jnp.ones((3, 4)), KV, KV), ValueError,
     "q must have rank >= 3"),
    (lambda: multi_head_attention(jnp.ones((2, 1, 6, 4)), jnp.ones((2, 5, 2, 4)),
                                  jnp.ones((2, 5, 2, 4)), mask=jnp.ones((3, 5), bool)),
     ValueError, r"mask must broadcast to the scores \[..., H, Lq, Lk\] = \[..., 6, 1, 5\]"),
    (lambda: multi_head_attention(jnp.ones((2, 3, 6, 4)), jnp.ones((2, 5, 2, 4)),
                                  jnp.ones((2, 5, 2, 4)), bias=jnp.ones((4, 3, 5))),
     ValueError, r"the scores \[..., H, Lq, Lk\] and bias do not broadcast"),
    (lambda: jax.jit(multi_head_attention)(jnp.ones((1, 3, 6, 4)), jnp.ones((1, 5, 4, 4)),
                                           jnp.ones((1, 5, 4, 4))), ValueError,
     "H=6 must be a multiple of .* H_kv=4"),
    (lambda: attention_implementation(Q, KV, KV, implementation="cudnn"), ValueError,
     "cannot run this call"),
    # dropout
    (lambda: attention(Q, KV, KV, dropout_rate=1.0, dropout_rng=KEY), ValueError,
     r"dropout_rate must be in \[0, 1\), got 1.0"),
    (lambda: attention(Q, KV, KV, dropout_rate=-0.1, dropout_rng=KEY), ValueError,
     r"dropout_rate must be in \[0, 1\), got -0.1"),
    (lambda: attention(Q, KV, KV, dropout_rate=0.1), ValueError,
     r"dropout_rate=0.1 needs dropout_rng, a PRNG key"),
    (lambda: jax.jit(lambda p: attention(Q, KV, KV, dropout_rate=p, dropout_rng=KEY))(0.1),
     TypeError, "dropout_rate must be a Python number"),
    (lambda: attention(Q, KV, KV, dropout_rate="0.1", dropout_rng=KEY), TypeError,
     "dropout_rate must be a Python number"),
    (lambda: attention(Q, KV, KV, dropout_rate=0.1, dropout_rng=jnp.ones(3)), TypeError,
     r"dropout_rng must be one PRNG key .* float32 and shape \(3,\)"),
    (lambda: attention(Q, KV, KV, dropout_rate=0.1, dropout_rng=jax.random.split(KEY)),
     TypeError, "dropout_rng must be one PRNG key"),
    (lambda: attention(Q, KV, KV, dropout_rate=0.1, dropout_rng=KEY, broadcast_dropout=1),
     TypeError, "broadcast_dropout must be a Python bool"),
    (lambda: attention(Q, KV, KV, dropout_rate=0.1, dropout_rng=KEY, implementation="cudnn"),
     ValueError, "'cudnn' cannot run this call: jax.nn.dot_product_attention has no "
                 "attention dropout"),
    (lambda: multi_head_attention(jnp.ones((1, 3, 2, 4)), jnp.ones((1, 5, 2, 4)),
                                  jnp.ones((1, 5, 2, 4)), dropout_rate=0.5), ValueError,
     "needs dropout_rng"),
    (lambda: attention_implementation(Q, KV, KV, dropout_rate=1.5), ValueError,
     r"dropout_rate must be in \[0, 1\)"),
]


@pytest.mark.parametrize("call,exc,msg", BAD_INPUTS)
def test_bad_inputs(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


# --------------------------------------------------------------------------- the cuDNN path


@pytest.fixture
def cuda_lowering(monkeypatch):
    """Lower for CUDA on any machine: off a GPU, pretend cuDNN 9.10 on a Hopper GPU."""
    if jax.default_backend() != "gpu":
        fused = pytest.importorskip("jax._src.cudnn.fused_attention_stablehlo")
        if not hasattr(fused, "check_cudnn_version"):
            pytest.skip("this JAX version checks cuDNN differently")
        monkeypatch.setattr(fused, "check_cudnn_version", lambda: 91000)
        monkeypatch.setattr(fused, "check_compute_capability", lambda capability: True)
        monkeypatch.setattr(attention_module.jax, "default_backend", lambda: "gpu")

    def ops(fn, *args):
        """The program's operations, SSA names and locations stripped, as a multiset."""
        text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        return collections.Counter(
            re.sub(r"%[\w#:]+", "%", re.sub(r"loc\([^)]*\)", "", line)).strip()
            for line in text.splitlines() if "stablehlo." in line)
    return ops


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("h_kv", [4, 1])
def test_default_path_on_a_gpu_is_jax_nn_cudnn_call(cuda_lowering, is_causal, h_kv):
    """bfloat16 [B, L, H, d] without a mask: the same cuDNN program as jax.nn's, forward
    and backward, so no work is added on top of the kernel."""
    q = jnp.zeros((2, 256, 4, 64), jnp.bfloat16)
    kv = q[:, :, :h_kv]
    w = jnp.ones_like(q)

    def jm_call(q, k, v):
        return multi_head_attention(q, k, v, is_causal=is_causal)

    def jax_nn_call(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=is_causal,
                                            implementation="cudnn")

    def fwd_bwd(f):
        return jax.grad(lambda q, k, v: jnp.sum((w * f(q, k, v)).astype(jnp.float32)),
                        argnums=(0, 1, 2))

    forward = cuda_lowering(jm_call, q, kv, kv)
    assert any("__cudnn$fmha" in op for op in forward)
    assert forward == cuda_lowering(jax_nn_call, q, kv, kv)
    assert cuda_lowering(fwd_bwd(jm_call), q, kv, kv) == cuda_lowering(fwd_bwd(jax_nn_call),
                                                                         q, kv, kv)


# --------------------------------------------------------------------------- the Pallas path
# (interpreted off a GPU: small shapes; tests/test_pallas_attention.py tests the kernels)


def _grads(fn, *args):
    return jax.value_and_grad(lambda *a: jnp.sum(fn(*a) * jnp.cos(fn(*a))), argnums=(0, 1, 2, 3)
                              )(*args)


def test_pallas_path_equals_xla_through_attention(rng):
    """Broadcast leading axes, d != dv, mask, bias with -inf, key lengths and causal."""
    q, k, v = _normal(rng, 2, 3, 40, 8), _normal(rng, 2, 1, 37, 8), _normal(rng, 1, 37, 5)
    mask = _random_mask(rng, (2, 1, 40, 37))
    bias = _normal(rng, 3, 40, 37)
    bias[1, :, 2] = -np.inf
    key_lengths = np.array([[30], [37]])

    def fn(impl):
        return lambda q, k, v, bias: attention(q, k, v, mask=mask, bias=bias, is_causal=True,
                                               key_lengths=key_lengths, implementation=impl)

    got, want = _grads(fn("pallas"), q, k, v, bias), _grads(fn("xla"), q, k, v, bias)
    np.testing.assert_allclose(got[0], want[0], **NN)
    for g, w in zip(got[1], want[1], strict=True):
        np.testing.assert_allclose(g, w, **NN)


def test_pallas_path_equals_xla_with_gqa_under_jit(rng):
    q, kv = _normal(rng, 2, 33, 4, 16), _normal(rng, 2, 33, 2, 16)

    def fn(impl):
        return jax.jit(lambda q, kv: multi_head_attention(q, kv, kv, is_causal=True,
                                                          implementation=impl))

    np.testing.assert_allclose(fn("pallas")(q, kv), fn("xla")(q, kv), **NN)


@pytest.mark.parametrize("call,match", [
    (lambda: attention(Q, KV, KV, scale=jnp.float32(0.5), implementation="pallas"),
     "implementation='pallas' cannot run this call: .*scale as a Python number"),
    (lambda: attention(Q, KV, KV, block_size=(24, 16), implementation="pallas"),
     "power of two"),
])
def test_pallas_path_refusals(call, match):
    with pytest.raises(ValueError, match=match):
        call()
