"""The blockwise (memory-efficient) attention path: agreement with the xla path and torch,
gradients, transforms, dtypes, block bookkeeping and O(L·d) compiled memory."""

import importlib
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from jaxmath.nn.attention import attention, multi_head_attention
from tests.tolerances import F32_LOOSE, F64_ATOL, F64_RTOL, default_precision_tol

NN = default_precision_tol()  # float32 layers at JAX's default precision

bw = importlib.import_module("jaxmath.nn.blockwise_attention")  # the module, not a function

BF16_ATOL = 3e-2  # bfloat16 inputs (8-bit mantissa) against a float32 reference
# Compiled temporary memory from L to 4L: 4x for O(L·d), 16x for O(L^2).
LINEAR_GROWTH_MAX = 8.0


def _normal(rng, *shape, dtype=np.float32):
    return rng.normal(size=shape).astype(dtype)


def _t(x):
    return torch.from_numpy(np.array(x))


def _value_and_grads(fn, args, consts=(), impls=("xla", "blockwise")):
    """For each impl: the output of fn(impl, *args, *consts) and the gradients with respect
    to ``args`` of sum(w * output), w = cos(index); all in one compiled call.

    Masks and lengths go in ``consts`` (arguments of the compiled call, not constants
    folded into it, which compiles slower)."""

    @jax.jit
    def run(args, consts):
        results = {}
        for impl in impls:
            out, vjp = jax.vjp(lambda *a, impl=impl: fn(impl, *a, *consts), *args)
            w = jnp.cos(jnp.arange(out.size, dtype=np.float32)).reshape(out.shape)
            w = w.astype(out.dtype)
            results[impl] = (out, vjp(w), w)
        return results

    return run(args, consts)


def _assert_agree(results, rtol=F32_LOOSE, atol=F32_LOOSE):
    (ref_out, ref_grads, _), *others = results.values()
    for out, grads, _ in others:
        np.testing.assert_allclose(out, ref_out, rtol=rtol, atol=atol)
        for g, r in zip(grads, ref_grads, strict=True):
            np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)


def _torch_grads(q, k, v, bias, w, **kw):
    """Output and gradients of sum(w * sdpa(q, k, v, attn_mask=bias)) from torch autograd."""
    tq, tk, tv, tb = (torch.tensor(np.asarray(a), requires_grad=True) for a in (q, k, v, bias))
    out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=tb, **kw)
    (out * _t(w)).sum().backward()
    return out.detach().numpy(), [t.grad.numpy() for t in (tq, tk, tv, tb)]


# --------------------------------------------------------------------------- agreement

@pytest.mark.parametrize("lq,lk,block,is_causal", [
    (37, 45, (16, 8), True),     # odd lengths, several blocks, blocks across the diagonal
    (130, 64, None, False),      # default blocks, balanced to 65 x 64
])
def test_matches_xla_and_torch_with_mask_bias_lengths(rng, lq, lk, block, is_causal):
    b, h, d = 2, 3, 8
    q, k, v = _normal(rng, b, h, lq, d), _normal(rng, b, h, lk, d), _normal(rng, b, h, lk, 5)
    mask = rng.uniform(size=(b, 1, lq, lk)) < 0.7
    mask[..., 0] = True
    mask[0, 0, 3] = False                 # a fully masked query in every head of batch 0
    bias = _normal(rng, 1, h, lq, lk)
    bias[0, 1, :, 1] = -np.inf            # a key masked through the bias in head 1
    key_lengths = np.array([[lk - 3], [lk]])  # [B, 1]: key padding, shared by the heads
    scale = np.float32(0.3)               # traced: its gradient is checked too

    def fn(impl, q, k, v, bias, scale, mask, key_lengths):
        return attention(q, k, v, mask=mask, bias=bias, is_causal=is_causal, scale=scale,
                         key_lengths=key_lengths, implementation=impl,
                         block_size=block if impl == "blockwise" else None)

    # Against xla where the blocks are few (a cheap compile), against torch everywhere.
    impls = ("xla", "blockwise") if block is None else ("blockwise",)
    results = _value_and_grads(fn, (q, k, v, bias, scale), (mask, key_lengths), impls)
    _assert_agree(results)
    out, grads, w = results["blockwise"]
    keep = mask & (np.arange(lk) < key_lengths[..., None, None]) & np.isfinite(bias)
    if is_causal:
        keep &= np.tril(np.ones((lq, lk), bool))
    empty = ~keep.any(-1)
    assert empty.any()
    np.testing.assert_array_equal(np.asarray(out)[empty], 0.0)
    np.testing.assert_array_equal(np.asarray(grads[0])[empty], 0.0)
    # torch: one additive mask with -inf where a pair is not attended.
    additive = np.where(keep, bias, -np.inf).astype(np.float32)
    t_out, t_grads = _torch_grads(q, k, v, additive, w, scale=float(scale))
    np.testing.assert_allclose(out, t_out, **NN)
    for g, t in zip(grads[:3], t_grads[:3], strict=True):
        np.testing.assert_allclose(g, t, **NN)
    # d/dbias is summed over the batch axis the bias broadcasts over.
    np.testing.assert_allclose(grads[3], t_grads[3].sum(0, keepdims=True), **NN)


def test_gqa_cross_attention_causal_lengths_match_torch(rng):
    # Lq > Lk with causal: the queries after the last key see every key.
    b, lq, lk, h, h_kv, d = 3, 50, 37, 4, 2, 8
    q = _normal(rng, b, lq, h, d)
    k, v = _normal(rng, b, lk, h_kv, d), _normal(rng, b, lk, h_kv, d)
    key_lengths = np.array([37, 17, 0])   # batch 2 sees no key at all
    key_bias = _normal(rng, 1, 1, lk)     # a per-key bias shared by queries and heads

    def fn(impl, q, k, v, key_bias, key_lengths):
        return multi_head_attention(q, k, v, bias=key_bias, is_causal=True,
                                    key_lengths=key_lengths, implementation=impl,
                                    block_size=(16, 32) if impl == "blockwise" else None)

    out, grads, w = _value_and_grads(fn, (q, k, v, key_bias), (key_lengths,),
                                     impls=("blockwise",))["blockwise"]
    np.testing.assert_array_equal(out[2], 0.0)
    keep = (np.tril(np.ones((lq, lk), bool))
            & (np.arange(lk) < key_lengths[:, None, None, None]))
    additive = np.where(keep, key_bias, -np.inf).astype(np.float32)   # [B, 1, Lq, Lk]
    tq, tk, tv = (torch.tensor(np.swapaxes(a, 1, 2), requires_grad=True) for a in (q, k, v))
    t_out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=_t(additive), enable_gqa=True)
    (t_out * _t(np.swapaxes(w, 1, 2))).sum().backward()
    np.testing.assert_allclose(out, np.swapaxes(t_out.detach().numpy(), 1, 2),
                               **NN)
    for g, t in zip(grads[:3], (tq, tk, tv), strict=True):
        np.testing.assert_allclose(g, np.swapaxes(t.grad.numpy(), 1, 2), **NN)


@pytest.mark.parametrize("lq,lk,bq,bk", [(37, 45, 16, 8), (64, 37, 16, 16), (45, 37, 8, 24),
                                         (9, 40, 4, 7)])
def test_causal_skips_exactly_the_blocks_above_the_diagonal(lq, lk, bq, bk):
    """The forward and the backward pass visit every block with an attended (query, key)
    pair and no other."""
    cfg = bw._Config(lq, lk, bq, bk, is_causal=True, prescale=True)
    rows, cols = np.arange(cfg.nq * bq), np.arange(cfg.nk * bk)
    causal = (cols[None, :] <= rows[:, None]) & (rows[:, None] < lq) & (cols[None, :] < lk)
    needed = {(i, j) for i, j in itertools.product(range(cfg.nq), range(cfg.nk))
              if causal[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk].any()}
    fwd = {(i, j) for i in range(cfg.nq) for j in range(int(cfg.key_blocks_end(i, cfg.nk)))}
    bwd = {(i, j) for j in range(cfg.nk)
           for i in range(int(cfg.query_blocks_start(j, cfg.nk)), cfg.nq)}
    assert fwd == needed
    assert bwd == needed


@given(st.integers(1, 300), st.integers(1, 300), st.integers(1, 64), st.integers(1, 64))
def test_block_sizes_are_balanced(lq, lk, block_q, block_k):
    bq, bk = bw.block_sizes(lq, lk, block_q, block_k)
    for length, block, b in ((lq, block_q, bq), (lk, block_k, bk)):
        n = -(-length // block)                 # the fewest blocks of at most `block`
        assert b <= block and -(-length // b) == n and n * b - length < n


# --------------------------------------------------------------------------- gradients, dtypes

def test_float64_values_and_gradients_match_torch(rng, x64):
    q, k, v = (_normal(rng, 2, 11, 3, dtype=np.float64) for _ in range(3))
    bias = _normal(rng, 11, 11, dtype=np.float64)
    mask = rng.uniform(size=(11, 11)) < 0.8
    mask[4] = False

    def fn(impl, q, k, v, bias, mask):
        return attention(q, k, v, mask=mask, bias=bias, is_causal=True, implementation=impl,
                         block_size=(4, 3) if impl == "blockwise" else None)

    results = _value_and_grads(fn, (q, k, v, bias), (mask,), impls=("blockwise",))
    out, grads, w = results["blockwise"]
    assert out.dtype == jnp.float64 and all(g.dtype == jnp.float64 for g in grads)
    additive = np.where(mask & np.tril(np.ones((11, 11), bool)), bias, -np.inf)
    t_out, t_grads = _torch_grads(q, k, v, additive, w)
    np.testing.assert_allclose(out, t_out, rtol=F64_RTOL, atol=F64_ATOL)
    for g, t in zip(grads, t_grads, strict=True):
        np.testing.assert_allclose(g, np.where(np.isfinite(additive), t, 0) if g.ndim == 2
                                   else t, rtol=F64_RTOL, atol=F64_ATOL)
    # custom_vjp: reverse mode only.
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda q: fn("blockwise", q, k, v, bias, mask), (q,), (q,))


def test_dropout_equals_xla_in_float64(rng, x64):
    """The keep pattern (one per score) multiplies P_j in the P V accumulation and dV, dP
    in the backward pass, the normaliser undropped: equal to the xla path to float64
    precision, across causal block skipping, key lengths and padded blocks."""
    q, k, v = (_normal(rng, 2, 2, 13, 3, dtype=np.float64) for _ in range(3))
    key_lengths = np.array([[9], [13]])
    key = jax.random.key(4)

    def fn(impl, q, k, v, key_lengths):
        return attention(q, k, v, is_causal=True, key_lengths=key_lengths, dropout_rate=0.4,
                         dropout_rng=key, broadcast_dropout=False, implementation=impl,
                         block_size=(4, 3) if impl == "blockwise" else None)

    _assert_agree(_value_and_grads(fn, (q, k, v), (key_lengths,)), rtol=F64_RTOL,
                  atol=F64_ATOL)


def test_bfloat16_inputs(rng):
    q, k, v = (_normal(rng, 2, 40, 16) for _ in range(3))

    def fn(impl, q, k, v):
        return attention(q, k, v, is_causal=True, implementation=impl,
                         block_size=16 if impl == "blockwise" else None)

    (out, grads, _), = _value_and_grads(
        fn, tuple(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)), impls=("blockwise",)).values()
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    (ref, ref_grads, _), = _value_and_grads(fn, (q, k, v), impls=("xla",)).values()
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=BF16_ATOL)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g.astype(jnp.float32), r, atol=BF16_ATOL, rtol=BF16_ATOL)


def test_jit_and_vmap_with_batched_key_lengths(rng):
    q, k, v = (_normal(rng, 3, 2, 21, 4) for _ in range(3))
    key_lengths = np.array([5, 21, 0])

    def f(q, k, v, n):
        return attention(q, k, v, key_lengths=n, is_causal=True, implementation="blockwise",
                         block_size=8)

    vmapped = jax.jit(jax.vmap(f))(q, k, v, key_lengths)
    loop = np.stack([f(q[i], k[i], v[i], key_lengths[i]) for i in range(3)])
    np.testing.assert_allclose(vmapped, loop, rtol=F32_LOOSE, atol=F32_LOOSE)
    np.testing.assert_array_equal(vmapped[2], 0.0)


# --------------------------------------------------------------------------- memory

def _temp_bytes(f, length, heads=2, d=16):
    x = jax.ShapeDtypeStruct((1, heads, length, d), jnp.float32)
    return jax.jit(f).lower(x, x, x).compile().memory_analysis().temp_size_in_bytes


def _forward(impl):
    return lambda q, k, v: attention(q, k, v, is_causal=True, implementation=impl,
                                     block_size=64 if impl == "blockwise" else None)


def _forward_backward(impl):
    return jax.grad(lambda q, k, v: jnp.sum(_forward(impl)(q, k, v) * v), argnums=(0, 1, 2))


@pytest.mark.parametrize("make", [_forward, _forward_backward], ids=["fwd", "fwd+bwd"])
def test_compiled_memory_grows_linearly_in_length(make):
    small, large = _temp_bytes(make("blockwise"), 256), _temp_bytes(make("blockwise"), 1024)
    assert large / small < LINEAR_GROWTH_MAX, (small, large)
    if make is _forward:  # the scores of the xla path grow quadratically, and the test sees it
        xla_small, xla_large = _temp_bytes(make("xla"), 256), _temp_bytes(make("xla"), 1024)
        assert xla_large / xla_small > 1.5 * LINEAR_GROWTH_MAX
        assert large < xla_large / 4
