"""MultiHeadAttention against flax.linen, torch.nn.MultiheadAttention and a NumPy reference."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from jaxmath.nn.mha import MultiHeadAttention
from tests.tolerances import F32_LOOSE, F64_ATOL, F64_RTOL, GRAD_RTOL, default_precision_tol

NN = default_precision_tol()  # float32 layers at JAX's default precision

BF16_ATOL = 5e-2  # bfloat16 projections and attention against a float32 run
B, L, D, H = 2, 6, 16, 4


def _x(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def random_variables(model, *args, seed=0, **kwargs):
    """Random parameters (nonzero biases, scales near 1) and a zero cache, without compiling
    ``init``: the shapes come from ``jax.eval_shape``. (Also tests/test_transformer.py's.)"""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        if path[0].key == "cache":
            return jnp.zeros(s.shape, s.dtype)
        base = 1.0 if path[-1].key == "scale" else 0.0
        return jnp.asarray(base + 0.3 * rng.normal(size=s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _params(model, *args, **kwargs):
    return random_variables(model, *args, **kwargs)["params"]


def _reference(p, xq, xkv, h, h_kv, mask=None, causal=False, norm=None, eps=1e-6):
    """NumPy float64 multi-head attention: K/V heads repeated for GQA, masks as -inf."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)

    def proj(x, name):
        return np.einsum("...ld,dhk->...lhk", x, p[name]["kernel"]) + p[name]["bias"]

    def normalise(x, name):
        if norm == "layernorm":
            x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
        elif norm == "rmsnorm":
            x = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps)
        return x if norm is None else x * p[name]["scale"]

    q = normalise(proj(xq, "query"), "query_norm")
    k = np.repeat(normalise(proj(xkv, "key"), "key_norm"), h // h_kv, axis=-2)
    v = np.repeat(proj(xkv, "value"), h // h_kv, axis=-2)
    logits = np.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(q.shape[-1])
    keep = np.ones(logits.shape, bool)
    if mask is not None:
        keep &= mask
    if causal:
        keep &= np.tril(np.ones(logits.shape[-2:], bool))
    logits = np.where(keep, logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("...hqk,...khd->...qhd", w, v)
    return np.einsum("...qhd,hde->...qe", o, p["out"]["kernel"]) + p["out"]["bias"]


# --------------------------------------------------------------------------- values

@pytest.mark.parametrize("h_kv,norm", [(2, "layernorm"), (1, "rmsnorm")])
def test_matches_numpy_reference_with_gqa_and_qk_norm(h_kv, norm):
    x, kv = _x(0, B, L, D), _x(1, B, L + 2, 12)
    mask = np.random.default_rng(2).uniform(size=(B, 1, L, L + 2)) < 0.7
    mask[..., 0] = True
    model = MultiHeadAttention(H, num_kv_heads=h_kv, qk_norm=norm, out_features=8)
    params = _params(model, x, kv)
    out = jax.jit(model.apply)({"params": params}, x, kv, mask=mask)
    assert out.shape == (B, L, 8)
    ref = _reference(params, x, kv, H, h_kv, mask=mask, norm=norm)
    np.testing.assert_allclose(out, ref, **NN)


_PERM_MODEL = MultiHeadAttention(H, num_kv_heads=2)
_PERM_APPLY = jax.jit(_PERM_MODEL.apply)


@given(st.permutations(range(L)))
def test_self_attention_is_permutation_equivariant(perm):
    """Without positions, masks or causality, permuting the tokens permutes the outputs."""
    x = _x(0, B, L, D)
    variables = random_variables(_PERM_MODEL, x)
    out = _PERM_APPLY(variables, x)
    np.testing.assert_allclose(_PERM_APPLY(variables, x[:, list(perm)]), out[:, list(perm)],
                               rtol=F32_LOOSE, atol=F32_LOOSE)


def test_gqa_equals_mha_with_repeated_kv_heads():
    x = _x(0, B, L, D)
    gqa = MultiHeadAttention(H, num_kv_heads=2, is_causal=True)
    p = _params(gqa, x)
    rep = dict(p)
    for name in ("key", "value"):  # query head h uses K/V head h // G
        rep[name] = {"kernel": jnp.repeat(p[name]["kernel"], 2, axis=1),
                     "bias": jnp.repeat(p[name]["bias"], 2, axis=0)}
    mha = MultiHeadAttention(H, is_causal=True)
    np.testing.assert_allclose(gqa.apply({"params": p}, x), mha.apply({"params": rep}, x),
                               rtol=F32_LOOSE, atol=F32_LOOSE)


@pytest.mark.parametrize("case", ["self", "cross_mask", "causal", "qk_norm", "dropout"])
def test_matches_flax_multi_head_dot_product_attention(case):
    x, kv = _x(0, B, L, D), _x(1, B, L + 3, 10)
    mask = np.random.default_rng(2).uniform(size=(B, H, L, L + 3)) < 0.6
    mask[..., 0] = True
    ours = dict(num_heads=H, qkv_features=2 * H, out_features=12)
    theirs = dict(ours)
    args, call, call_flax = (x,), {}, None
    if case == "cross_mask":
        args, call = (x, kv), {"mask": mask}
    elif case == "causal":
        ours["is_causal"] = True
        call_flax = {"mask": nn.make_causal_mask(jnp.ones((B, L)))}
    elif case == "qk_norm":
        ours["qk_norm"], theirs["normalize_qk"] = "layernorm", True
    elif case == "dropout":
        ours["dropout_rate"] = theirs["dropout_rate"] = 0.4
        call = {"deterministic": False}
    model, ref = MultiHeadAttention(**ours), nn.MultiHeadDotProductAttention(**theirs)
    params = _params(model, *args, **call)
    flax_params = {{"query_norm": "query_ln", "key_norm": "key_ln"}.get(n, n): v
                   for n, v in params.items()}
    rngs = {"dropout": jax.random.key(7)}  # flax's make_rng gives both the same pattern
    out = model.apply({"params": params}, *args, **call, rngs=rngs)
    expected = ref.apply({"params": flax_params}, *args, **(call_flax or call), rngs=rngs)
    np.testing.assert_allclose(out, expected, rtol=F32_LOOSE, atol=F32_LOOSE)


def _to_torch(params, e, h):
    """Copy our [E, H, d] / [H, d, E] kernels into a torch MultiheadAttention."""
    mha = torch.nn.MultiheadAttention(e, h, batch_first=True)
    p = jax.tree.map(lambda a: torch.tensor(np.asarray(a)), params)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([p[n]["kernel"].reshape(e, e).T
                                            for n in ("query", "key", "value")]))
        mha.in_proj_bias.copy_(torch.cat([p[n]["bias"].reshape(e)
                                          for n in ("query", "key", "value")]))
        mha.out_proj.weight.copy_(p["out"]["kernel"].reshape(e, e).T)
        mha.out_proj.bias.copy_(p["out"]["bias"])
    return mha


@pytest.mark.parametrize("case", ["self", "causal", "key_padding"])
def test_matches_torch_multihead_attention(case):
    x = _x(0, B, L, D)
    pad = np.zeros((B, L), bool)
    pad[0, 4:] = pad[1, 2:] = True  # torch: True = padding, ignored
    model = MultiHeadAttention(H, is_causal=case == "causal")
    params = _params(model, x)
    kw = {}
    if case == "causal":
        kw["attn_mask"] = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
    mask = None
    if case == "key_padding":
        kw["key_padding_mask"] = torch.from_numpy(pad)
        mask = ~pad[:, None, None, :]
    xt = torch.from_numpy(x)
    expected, _ = _to_torch(params, D, H)(xt, xt, xt, need_weights=False, **kw)
    out = model.apply({"params": params}, x, mask=mask)
    np.testing.assert_allclose(out, expected.detach().numpy(), **NN)


@pytest.mark.parametrize("h_kv,chunks", [(2, [1] * L), (1, [4, 1, 1])])
def test_decode_cache_equals_full_causal_attention(h_kv, chunks):
    x = _x(0, B, L, D)
    model = MultiHeadAttention(H, num_kv_heads=h_kv, is_causal=True, qk_norm="rmsnorm")
    params = _params(model, x)
    full = model.apply({"params": params}, x)
    decoder = model.clone(decode=True)
    cache = random_variables(decoder, x)["cache"]
    assert cache["cached_key"].shape == (B, L, h_kv, D // H)
    step = jax.jit(lambda c, xt: decoder.apply({"params": params, "cache": c}, xt,
                                               mutable=["cache"]))
    outs, start = [], 0
    for n in chunks:  # one token at a time, or a prefill followed by tokens
        y, variables = step(cache, x[:, start:start + n])
        cache, start = variables["cache"], start + n
        outs.append(y)
    assert int(cache["cache_index"]) == L
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, **NN)


def test_fully_masked_query_gives_the_output_bias():
    x = _x(0, B, L, D)
    model = MultiHeadAttention(H)
    params = _params(model, x)
    mask = np.ones((B, 1, L, L), bool)
    mask[:, :, 2] = False  # query 2 sees no key
    out = jax.jit(model.apply)({"params": params}, x, mask=mask)
    np.testing.assert_allclose(out[:, 2], np.broadcast_to(params["out"]["bias"], (B, D)),
                               rtol=F32_LOOSE, atol=F32_LOOSE)


def test_implementations_agree():
    x = _x(0, B, L, D)
    outs = []
    for impl in ("xla", "blockwise"):
        model = MultiHeadAttention(H, num_kv_heads=2, is_causal=True, implementation=impl)
        outs.append(jax.jit(model.apply)(random_variables(model, x), x))
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], rtol=F32_LOOSE, atol=F32_LOOSE)


# --------------------------------------------------------------------------- dropout

@pytest.mark.parametrize("impl,broadcast", [("xla", False), ("blockwise", True),
                                            ("pallas", False)])
def test_dropout_matches_flax_on_every_implementation(impl, broadcast):
    """Cross-attention with a mask and dropout: the same outputs and parameter gradients
    as flax's layer with the same 'dropout' rng, whichever path runs (Pallas interpreted;
    the default path: test_matches_flax_multi_head_dot_product_attention)."""
    x, kv = _x(0, B, L, D), _x(1, B, L + 3, 10)
    mask = np.random.default_rng(2).uniform(size=(B, 1, L, L + 3)) < 0.6
    mask[..., 0] = True
    kw = dict(num_heads=H, qkv_features=2 * H, out_features=12, dropout_rate=0.4,
              broadcast_dropout=broadcast, deterministic=False)
    model = MultiHeadAttention(**kw, implementation=impl)
    ref = nn.MultiHeadDotProductAttention(**kw)
    params = _params(model, x, kv)
    rngs = {"dropout": jax.random.key(3)}

    @jax.jit
    def run(params):
        def loss(module, p):
            out = module.apply({"params": p}, x, kv, mask=mask, rngs=rngs)
            return jnp.sum(jnp.cos(out)), out
        return [jax.value_and_grad(functools.partial(loss, m), has_aux=True)(params)
                for m in (model, ref)]

    ((_, out), grads), ((_, expected), flax_grads) = run(params)
    np.testing.assert_allclose(out, expected, rtol=F32_LOOSE, atol=F32_LOOSE)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(flax_grads), strict=True):
        np.testing.assert_allclose(g, r, rtol=F32_LOOSE, atol=F32_LOOSE)


def test_dropout_deterministic_and_rng():
    x = _x(0, B, L, D)
    model = MultiHeadAttention(H, dropout_rate=0.5)
    variables = random_variables(model, x, deterministic=True)
    plain = MultiHeadAttention(H).apply(variables, x)
    np.testing.assert_allclose(model.apply(variables, x, deterministic=True), plain,
                               rtol=F32_LOOSE, atol=F32_LOOSE)
    a, b, c = (model.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(s)})
               for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    with pytest.raises(ValueError, match="deterministic"):
        model.apply(variables, x)  # neither the attribute nor the argument is set


# --------------------------------------------------------------------------- transforms

def test_jit_and_vmap_ensemble():
    x = _x(0, B, L, D)
    model = MultiHeadAttention(H, num_kv_heads=2, is_causal=True)
    keys = jax.random.split(jax.random.key(0), 3)
    with jax.threefry_partitionable(False):  # the same keys; XLA compiles this 4x faster
        ensemble = jax.jit(jax.vmap(model.init, in_axes=(0, None)))(keys, x)
    outs = jax.jit(jax.vmap(model.apply, in_axes=(0, None)))(ensemble, x)
    apply = jax.jit(model.apply)
    for i in range(3):  # members differ, and each equals its own jitted apply
        member = jax.tree.map(lambda a, i=i: a[i], ensemble)
        np.testing.assert_allclose(outs[i], apply(member, x), rtol=F32_LOOSE, atol=F32_LOOSE)
    assert not np.allclose(outs[0], outs[1])


def test_gradients_float64(x64):
    x = _x(0, 1, 4, 8).astype(np.float64)
    model = MultiHeadAttention(2, num_kv_heads=1, is_causal=True, qk_norm="layernorm",
                               param_dtype=jnp.float64)
    params = _params(model, x)
    apply = jax.jit(lambda p, xx: model.apply({"params": p}, xx))
    out = apply(params, x)
    assert out.dtype == jnp.float64
    ref = _reference(params, x, x, 2, 1, causal=True, norm="layernorm")
    np.testing.assert_allclose(out, ref, rtol=F64_RTOL, atol=F64_ATOL)
    check_grads(apply, (params, x), order=1, modes=["rev"], rtol=GRAD_RTOL)


def test_bfloat16_runs():
    x = _x(0, B, L, D)
    model = MultiHeadAttention(H, is_causal=True)
    variables = random_variables(model, x)
    out = model.clone(dtype=jnp.bfloat16).apply(variables, x.astype(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(np.float32), model.apply(variables, x),
                               atol=BF16_ATOL, rtol=BF16_ATOL)


# --------------------------------------------------------------------------- bad inputs

X = np.ones((B, L, D), np.float32)


def _call(x=X, kv=None, **kw):
    mask = kw.pop("mask", None)
    kw.setdefault("deterministic", True)
    model = MultiHeadAttention(**{"num_heads": H, **kw})
    key = jax.random.key(0)
    return jax.eval_shape(lambda: model.init({"params": key, "dropout": key}, x, kv, mask=mask))


BAD_INPUTS = [
    (lambda: _call(num_kv_heads=3), ValueError, r"num_kv_heads=3 must divide num_heads=4"),
    (lambda: _call(num_heads=3), ValueError, r"qkv_features=16 .* divisible by num_heads=3"),
    (lambda: _call(qkv_features=10), ValueError, r"qkv_features=10 .* num_heads=4"),
    (lambda: _call(num_heads=0), ValueError, r"num_heads must be >= 1"),
    (lambda: _call(num_heads=2.0), TypeError, r"num_heads must be an int"),
    (lambda: _call(dropout_rate=1.0), ValueError, r"dropout_rate must be in \[0, 1\)"),
    (lambda: _call(qk_norm="batchnorm"), ValueError, r"qk_norm must be one of"),
    (lambda: _call(implementation="flash"), ValueError, r"implementation must be one of"),
    (lambda: _call(mask=np.ones((3, L, L), bool)), ValueError, r"mask"),
    (lambda: _call(mask=np.ones((L, L))), TypeError, r"mask must be boolean"),
    (lambda: _call(mask=np.ones((3, L, L), bool), dropout_rate=0.1, deterministic=False),
     ValueError, r"the scores \[..., H, Lq, Lk\] and mask do not broadcast: scores=\(2, 4, 6, 6\)"),
    (lambda: _call(dropout_rate=0.1, deterministic=False, implementation="cudnn"), ValueError,
     r"implementation='cudnn' cannot run this call: .* no attention dropout"),
    (lambda: _call(dropout_rate="0.1"), TypeError, r"dropout_rate must be a Python number"),
    (lambda: _call(x=np.ones(D)), ValueError, r"inputs_q must have rank >= 2"),
    (lambda: _call(x=X + 1j), TypeError, r"inputs_q must be real"),
    (lambda: _call(kv=np.ones((B, L)), decode=True), ValueError, r"inputs_kv must be None"),
    (lambda: jax.jit(lambda x: _call(x, num_kv_heads=3))(X), ValueError,
     r"num_kv_heads=3 must divide num_heads=4"),
    (lambda: jax.jit(lambda x: _call(x, mask=np.ones((B, 1, L, L + 1), bool)))(X), ValueError,
     r"mask"),
]


@pytest.mark.parametrize("call,exc,msg", BAD_INPUTS)
def test_bad_inputs(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_decode_input_that_does_not_fit_the_cache():
    decoder = MultiHeadAttention(H, decode=True)
    variables = random_variables(decoder, X)
    with pytest.raises(ValueError, match=r"cache holds keys of shape \(2, 6, 4, 4\)"):
        decoder.apply(variables, np.ones((3, 1, D), np.float32), mutable=["cache"])
    with pytest.raises(ValueError, match=r"at most L_max=6"):
        decoder.apply(variables, np.ones((B, L + 1, D), np.float32), mutable=["cache"])
