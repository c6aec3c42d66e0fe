"""The Pallas flash-attention kernels (in interpret mode off a GPU): agreement with a
float64 NumPy reference, torch and the xla path, gradients, transforms, precision, the
block spans that skip work, bad arguments, and the lowering of all three kernels to
Triton for CUDA."""

import importlib
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxmath.nn.attention import attention
from tests.tolerances import default_precision_tol

pa = importlib.import_module("jaxmath.nn.pallas_attention")  # the module, not the function

NN = default_precision_tol()  # float32 layers at JAX's default precision
# bfloat16 inputs (unit roundoff 2^-9 = 2e-3) against float64 on the same rounded inputs:
# P and dS are rounded to bfloat16 before their products, which sum ~20 terms of order 1.
BF16_TOL = {"rtol": 3e-2, "atol": 3e-2}
SCALE = 0.3
HIGHEST = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)


def _normal(rng, *shape):
    return rng.normal(size=shape).astype(np.float32)


def _pallas(q, k, v, bias, mask, key_lengths, is_causal, blocks=(None, None), **kw):
    return pa.pallas_attention(q, k, v, bias, mask, key_lengths, scale=SCALE,
                               is_causal=is_causal, block_q=blocks[0], block_k=blocks[1], **kw)


def _xla(q, k, v, bias, mask, key_lengths, is_causal):
    """The xla path on float32 copies of the inputs."""
    f32 = [None if x is None else x.astype(jnp.float32) for x in (q, k, v, bias)]
    out = attention(f32[0], f32[1], f32[2], mask, f32[3], is_causal, SCALE,
                    key_lengths=key_lengths, implementation="xla")
    return out.astype(v.dtype)


def _keep(shape, bias, mask, key_lengths, is_causal) -> np.ndarray:
    """Boolean ``[..., Lq, Lk]`` of the attended (query, key) pairs."""
    lq, lk = shape[-2:]
    keep = np.ones(shape, bool)
    if bias is not None:
        keep &= np.isfinite(np.asarray(bias, np.float32))
    if mask is not None:
        keep &= mask
    if is_causal:
        keep &= np.tril(np.ones((lq, lk), bool))
    if key_lengths is not None:
        keep &= np.arange(lk) < np.asarray(key_lengths)[..., None, None]
    return keep


def _numpy(q, k, v, bias, keep):
    """softmax(s q k^T + b) v over the attended keys in float64; zeros for a query that
    attends to none."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = SCALE * q @ np.swapaxes(k, -1, -2)
    if bias is not None:
        s = s + np.where(keep, np.asarray(bias, np.float64), 0)
    s = np.where(keep, s, -np.inf)
    m = np.max(s, axis=-1, keepdims=True)
    p = np.where(keep, np.exp(s - np.where(np.isfinite(m), m, 0)), 0)
    return p / np.maximum(p.sum(-1, keepdims=True), np.finfo(np.float64).tiny) @ v


def _torch(q, k, v, bias, keep, w):
    """Float64 torch output and gradients (q, k, v, bias) of sum(w * sdpa) with one
    additive mask: the bias where attended, -inf elsewhere."""
    tq, tk, tv = (torch.tensor(np.asarray(x, np.float64), requires_grad=True)
                  for x in (q, k, v))
    tb = torch.zeros((), dtype=torch.float64) if bias is None else torch.tensor(
        np.asarray(bias, np.float64), requires_grad=True)
    additive = torch.where(torch.from_numpy(keep), tb, -torch.inf)
    out = F.scaled_dot_product_attention(tq, tk, tv, attn_mask=additive, scale=SCALE)
    (out * torch.from_numpy(np.asarray(w, np.float64))).sum().backward()
    grads = [t.grad.numpy() for t in (tq, tk, tv)] + [None if bias is None else tb.grad.numpy()]
    return out.detach().numpy(), grads


@jax.jit(static_argnames=("is_causal", "blocks"))
def _value_and_grads(args, consts, is_causal, blocks):
    """Output and gradients (q, k, v, bias) of sum(w * out), w = cos(index), of the Pallas
    kernel and of the xla path, in one compiled call."""
    results = {}
    for name, fn in (("pallas", _pallas), ("xla", _xla)):
        extra = {"blocks": blocks} if name == "pallas" else {}
        out, vjp = jax.vjp(lambda *a, fn=fn, extra=extra: fn(*a, *consts, is_causal, **extra),
                           *args)
        w = jnp.cos(jnp.arange(out.size, dtype=jnp.float32)).reshape(out.shape)
        results[name] = (out, vjp(w.astype(out.dtype)), w)
    return results


# --------------------------------------------------------------------------- agreement

def _causal_lq_lt_lk(rng):
    """Lq < Lk: a full mask, a [1, H, Lq, Lk] bias with -inf entries, key_lengths 0 and
    partial; batch 0 sees no key, query 4 of head 0 none through the bias."""
    b, h, lq, lk = 2, 2, 20, 37
    bias = _normal(rng, 1, h, lq, lk)
    bias[0, 1, :, 2] = -np.inf
    bias[0, 0, 4, :] = -np.inf
    mask = rng.uniform(size=(b, h, lq, lk)) < 0.8
    mask[..., 0] = True
    return dict(q=_normal(rng, b, h, lq, 8), k=_normal(rng, b, h, lk, 8),
                v=_normal(rng, b, h, lk, 5), bias=bias, mask=mask,
                key_lengths=np.array([[0], [23]]), is_causal=True, blocks=(16, 16))


def _causal_lq_gt_lk(rng):
    """Lq > Lk, default blocks: a per-key bias [B, 1, 1, Lk] (its gradient summed over
    queries), a per-query mask [1, H, Lq, 1] (masked rows), key_lengths > Lk and partial."""
    b, h, lq, lk = 2, 2, 37, 20
    mask = rng.uniform(size=(1, h, lq, 1)) < 0.8
    mask[0, 0, 5] = False
    return dict(q=_normal(rng, b, h, lq, 8), k=_normal(rng, b, h, lk, 8),
                v=_normal(rng, b, h, lk, 8), bias=_normal(rng, b, 1, 1, lk), mask=mask,
                key_lengths=np.array([[50], [13]]), is_causal=True, blocks=(None, None))


def _causal_square(rng):
    """Lq == Lk == 33 (padded to 48 and 64), a per-query bias [B, H, Lq, 1], no mask."""
    b, h, n = 2, 2, 33
    return dict(q=_normal(rng, b, h, n, 16), k=_normal(rng, b, h, n, 16),
                v=_normal(rng, b, h, n, 4), bias=_normal(rng, b, h, n, 1), mask=None,
                key_lengths=None, is_causal=True, blocks=(16, 32))


def _rank2_scalar_bias(rng):
    """No batch axes, Lq = 5 and d = 3 below the smallest block (padded to 16), dv = 7,
    a [1, 1] bias, no mask and no causal mask."""
    return dict(q=_normal(rng, 5, 3), k=_normal(rng, 19, 3), v=_normal(rng, 19, 7),
                bias=_normal(rng, 1, 1), mask=None, key_lengths=None, is_causal=False,
                blocks=(None, None))


def _bfloat16(rng):
    """bfloat16 inputs, a key-padding mask [B, 1, 1, Lk] and key_lengths."""
    b, h, n = 2, 1, 24
    mask = rng.uniform(size=(b, 1, 1, n)) < 0.8
    mask[..., 0] = True
    q, k, v = (jnp.asarray(_normal(rng, b, h, n, 16), jnp.bfloat16) for _ in range(3))
    return dict(q=q, k=k, v=v, bias=None, mask=mask, key_lengths=np.array([[24], [9]]),
                is_causal=True, blocks=(16, 16))


CASES = {f.__name__.lstrip("_"): f for f in (_causal_lq_lt_lk, _causal_lq_gt_lk,
                                              _causal_square, _rank2_scalar_bias, _bfloat16)}


@pytest.mark.parametrize("case", CASES)
def test_matches_numpy_torch_and_xla(rng, case):
    c = CASES[case](rng)
    q, k, v, bias, mask, lengths = (c[n] for n in ("q", "k", "v", "bias", "mask",
                                                   "key_lengths"))
    results = _value_and_grads((q, k, v, bias), (mask, lengths), is_causal=c["is_causal"],
                               blocks=c["blocks"])
    out, grads, w = results["pallas"]
    assert out.shape == (*q.shape[:-1], v.shape[-1]) and out.dtype == v.dtype
    assert [None if g is None else g.shape for g in grads] == [
        x.shape if x is not None else None for x in (q, k, v, bias)]
    tol = BF16_TOL if q.dtype == jnp.bfloat16 else NN
    keep = _keep((*q.shape[:-1], k.shape[-2]), bias, mask, lengths, c["is_causal"])
    out32 = np.asarray(out, np.float32)
    np.testing.assert_allclose(out32, _numpy(q, k, v, bias, keep), **tol)
    # Gradients against the xla path and float64 torch.
    ref_out, ref_grads, _ = results["xla"]
    t_out, t_grads = _torch(q, k, v, bias, keep, w)
    np.testing.assert_allclose(out32, np.asarray(ref_out, np.float32), **tol)
    np.testing.assert_allclose(out32, t_out, **tol)
    for g, r, t in zip(grads, ref_grads, t_grads, strict=True):
        if g is not None:
            np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32),
                                       **tol)
            np.testing.assert_allclose(np.asarray(g, np.float32), t, **tol)
    # A query that attends to no key: zeros, and zero gradient for it.
    empty = ~keep.any(-1)
    assert empty.any() == (case in ("causal_lq_lt_lk", "causal_lq_gt_lk"))
    np.testing.assert_array_equal(out32[empty], 0.0)
    np.testing.assert_array_equal(np.asarray(grads[0], np.float32)[empty], 0.0)


# --------------------------------------------------------------------------- transforms

def test_vmap_matches_a_loop(rng):
    """jax.vmap (the pallas_call batching rule) against one call per example, with a
    batched bias and key length."""
    q, k, v = (_normal(rng, 2, 3, 18, 8) for _ in range(3))
    bias, lengths = _normal(rng, 2, 1, 18, 18), np.array([5, 30])

    def f(q, k, v, bias, n):
        return _pallas(q, k, v, bias, None, n, True, blocks=(16, 16))

    batched = jax.jit(jax.vmap(f))(q, k, v, bias, lengths)
    single = jax.jit(f)
    for i in range(2):
        np.testing.assert_allclose(batched[i], single(q[i], k[i], v[i], bias[i], lengths[i]),
                                   **NN)


def test_forward_mode_and_traced_scale_raise():
    x = jnp.ones((4, 16))
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(lambda x: pa.pallas_attention(x, x, x, scale=1.0), (x,), (x,))
    with pytest.raises(TypeError, match="scale must be a Python number"):
        jax.jit(lambda s: pa.pallas_attention(x, x, x, scale=s))(1.0)


@pytest.mark.parametrize("block", [0, 8, 24, 100, -16, True, 16.0])
def test_bad_block_sizes_raise(block):
    x = jnp.ones((4, 16))
    for name in ("block_q", "block_k"):
        with pytest.raises(ValueError, match=f"{name} must be a power of two >= 16"):
            pa.pallas_attention(x, x, x, scale=1.0, **{name: block})


# --------------------------------------------------------------------------- precision

def _kernel_dots(jaxpr) -> dict[str, list]:
    """The ``precision`` of every dot_general in each pallas_call of ``jaxpr``, by name."""
    found: dict[str, list] = {}

    def walk(jaxpr, kernel):
        for eqn in jaxpr.eqns:
            name = eqn.params["name"] if eqn.primitive.name == "pallas_call" else kernel
            if eqn.primitive.name == "dot_general" and kernel is not None:
                found.setdefault(kernel, []).append(eqn.params["precision"])
            for p in eqn.params.values():
                for sub in p if isinstance(p, tuple | list) else (p,):
                    sub = getattr(sub, "jaxpr", sub)
                    if hasattr(sub, "eqns"):
                        walk(sub, name)

    walk(jaxpr.jaxpr, None)
    return found


@pytest.mark.parametrize("precision,expected", [(None, None), ("highest", HIGHEST)])
def test_precision_reaches_every_dot_forward_and_backward(precision, expected):
    x, bias = jnp.ones((2, 20, 8)), jnp.ones((1, 20, 20))

    def loss(x, bias):
        return pa.pallas_attention(x, x, x, bias, scale=1.0, is_causal=True,
                                   precision=precision).sum()

    dots = _kernel_dots(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, bias))
    # Q K^T and P V; Q K^T, P^T dO, dO V^T, dS^T Q; Q K^T, dO V^T, dS K -- each in the
    # loop over the masked and over the unmasked blocks.
    assert {n: len(p) for n, p in dots.items()} == {
        "pallas_attention_forward": 4, "pallas_attention_dkv": 8, "pallas_attention_dq": 6}
    assert {p for ps in dots.values() for p in ps} == {expected}


# --------------------------------------------------------------------------- spans

@pytest.mark.parametrize("lq,lk,bq,bk,is_causal,limit", [
    (37, 45, 16, 16, True, 45), (37, 20, 32, 16, True, 13), (20, 37, 16, 32, False, 23),
    (40, 40, 16, 16, True, 0), (33, 33, 16, 32, True, 33), (50, 17, 16, 16, True, 17)])
def test_spans_visit_exactly_the_attended_blocks(lq, lk, bq, bk, is_causal, limit):
    """Forward/dQ and dK/dV loops visit every block with an attended pair and no other,
    and leave the position masks off only where every pair is attended."""
    t = pa._Tiles(bq, bk, 4, 2)
    plan = pa._Plan((), lq, lk, 1.0, is_causal, None, True, t, t, t)
    rows, cols = np.arange(plan.lq_pad)[:, None], np.arange(plan.lk_pad)[None, :]
    pos = (cols < limit) & ((cols <= rows) if is_causal else (rows >= 0))
    nq, nk = plan.lq_pad // bq, plan.lk_pad // bk

    def block(i, j):
        return pos[i * bq:(i + 1) * bq, j * bk:(j + 1) * bk]

    needed = {(i, j) for i, j in itertools.product(range(nq), range(nk))
              if block(i, j)[:max(0, lq - i * bq)].any()}
    fwd, bwd = set(), set()
    for i in range(nq):
        j_mid, j_end = map(int, pa._key_spans(plan, t, jnp.int32(i), limit))
        fwd |= {(i, j) for j in range(j_end)}
        assert all(block(i, j).all() for j in range(j_mid))
    for j in range(nk):
        i_start, i_mid, i_end = map(int, pa._query_spans(plan, t, jnp.int32(j), limit))
        bwd |= {(i, j) for i in range(i_start, i_end)}
        assert all(block(i, j).all() for i in range(i_mid, i_end))
    assert fwd == needed and bwd == needed


# --------------------------------------------------------------------------- dispatch

@pytest.mark.parametrize("change,reason", [
    ({}, None),
    ({"backend": "cpu"}, "compiled for NVIDIA GPUs"),
    ({"q": np.zeros((2, 8, 64))}, "got q.dtype=float64"),
    ({"bias": np.zeros((1, 8, 8), np.int32)}, "got bias.dtype=int32"),
    ({"v": np.zeros((2, 8, 64), jnp.bfloat16)}, "one dtype for q, k, v"),
    ({"q": np.zeros((2, 8, 512), np.float32)}, "head sizes up to 256"),
    ({"scale": jnp.float32(0.1)}, "scale as a Python number"),
    ({"mask": np.zeros((1, 8, 8), np.float32)}, "boolean mask"),
    ({"key_lengths": np.zeros((2,), np.float32)}, "integer key_lengths"),
])
def test_pallas_supported(change, reason):
    x = np.zeros((2, 8, 64), np.float32)
    call = dict(q=x, k=x, v=x, bias=None, mask=None, key_lengths=None, scale=0.1,
                backend="gpu") | change
    got = pa.pallas_supported(**call)
    assert got is None if reason is None else reason in got


# --------------------------------------------------------------------------- CUDA lowering

@pytest.mark.parametrize("dtype,d,dv,options,forward_launch", [
    (jnp.bfloat16, 64, 64, {}, ("3", "4")),
    (jnp.float16, 128, 128, {"bias": (1, 3, 100, 70), "mask": (2, 1, 1, 70), "lengths": True,
                             "is_causal": True, "dropout": (1, 1, 100, 70)}, ("3", "8")),
    (jnp.float32, 256, 200, {"bias": (2, 1, 1, 70), "mask": (1, 3, 100, 1), "x64": True,
                             "dropout": (2, 3, 100, 70)}, ("2", "8")),
])
def test_kernels_lower_to_triton_for_cuda(dtype, d, dv, options, forward_launch):
    """Forward, dK/dV and dQ kernels lower for CUDA through Pallas's Triton backend (this
    runs on a CPU: it builds the Triton IR, which the GPU compiler turns into PTX); with
    a dropout keep pattern shared by batch and heads, and with one per score."""
    shapes = options.get("bias"), options.get("mask"), options.get("dropout")
    q = jnp.zeros((2, 3, 100, d), dtype)
    k, v = jnp.zeros((2, 3, 70, d), dtype), jnp.zeros((2, 3, 70, dv), dtype)
    bias = None if shapes[0] is None else jnp.zeros(shapes[0], dtype)
    mask = None if shapes[1] is None else jnp.ones(shapes[1], bool)
    dropout = None if shapes[2] is None else jnp.ones(shapes[2], bool)
    lengths = jnp.array([[3], [50]]) if options.get("lengths") else None

    def loss(q, k, v, bias):
        out = pa.pallas_attention(q, k, v, bias, mask, lengths, scale=0.1, interpret=False,
                                  is_causal=options.get("is_causal", False),
                                  dropout_mask=dropout, dropout_rate=0.25)
        return out.astype(jnp.float32).sum()

    with jax.enable_x64(options.get("x64", False)):
        lowered = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).trace(q, k, v, bias).lower(
            lowering_platforms=("cuda",))
    calls = re.findall(r'custom_call @__gpu\$xla\.gpu\.triton\(.*name = "(\w+)", '
                       r'num_stages = (\d+) : i32, num_warps = (\d+) : i32', lowered.as_text())
    # (num_stages, num_warps): the forward's by dtype and head size, then dK/dV and dQ.
    assert sorted(calls) == [("pallas_attention_dkv", "2", "8"), ("pallas_attention_dq", "2", "4"),
                             ("pallas_attention_forward", *forward_launch)]
