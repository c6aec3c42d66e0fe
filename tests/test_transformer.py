"""TransformerBlock, Transformer and TransformerLM: references, causality, decoding, training,
and the fields they share with MultiHeadAttention."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxmath.nn.mha import AttentionOptions, MultiHeadAttention
from jaxmath.nn.transformer import (
    Transformer,
    TransformerBlock,
    TransformerLM,
    sinusoidal_positions,
)
from tests.test_mha import random_variables as _variables
from tests.tolerances import F32_ATOL, F32_LOOSE, F32_RTOL, default_precision_tol

NN = default_precision_tol()  # float32 layers at JAX's default precision

BF16_ATOL = 1e-1  # bfloat16 blocks against float32
B, L, D, H, V = 2, 8, 16, 4, 11


@functools.cache
def _apply(model):
    """One jitted ``apply`` per model configuration, shared by the tests."""
    return jax.jit(model.apply)


def _tokens(seed, *shape):
    return np.random.default_rng(seed).integers(0, V, size=shape).astype(np.int32)


def _lm(**kw):
    return TransformerLM(**{"vocab_size": V, "num_layers": 1, "d_model": D, "num_heads": H,
                            "max_len": L, **kw})


# --------------------------------------------------------------------------- values

def test_sinusoidal_positions_match_the_formula():
    pe = np.asarray(sinusoidal_positions(7, 6))
    for p in range(7):
        for i in range(3):
            angle = p / 10_000 ** (2 * i / 6)
            np.testing.assert_allclose(pe[p, 2 * i], np.sin(angle), rtol=F32_RTOL, atol=F32_ATOL)
            np.testing.assert_allclose(pe[p, 2 * i + 1], np.cos(angle), rtol=F32_RTOL,
                                       atol=F32_ATOL)


@functools.partial(jax.jit, static_argnames="causal")
def _flax_block(p, x, mask, causal):
    """The same block from flax.linen pieces: LN, MultiHeadDotProductAttention, LN, MLP."""
    ln = nn.LayerNorm()
    h = ln.apply({"params": p["ln_attn"]}, x)
    if causal:
        mask = nn.combine_masks(mask, nn.make_causal_mask(jnp.ones(x.shape[:2])))
    h = nn.MultiHeadDotProductAttention(H).apply({"params": p["attn"]}, h, mask=mask)
    x = x + h
    h = ln.apply({"params": p["ln_mlp"]}, x)
    h = nn.Dense(4 * D).apply({"params": p["mlp_in"]}, h)
    return x + nn.Dense(D).apply({"params": p["mlp_out"]}, nn.gelu(h))


def test_causal_block_with_key_padding_matches_flax_composition():
    x = np.random.default_rng(0).normal(size=(B, L, D)).astype(np.float32)
    mask = np.ones((B, 1, 1, L), bool)
    mask[1, ..., 5:] = False  # key padding
    block = TransformerBlock(H, is_causal=True)
    params = _variables(block, x)["params"]
    out = jax.jit(block.apply)({"params": params}, x, mask=mask)
    np.testing.assert_allclose(out, _flax_block(params, x, mask, causal=True), rtol=F32_LOOSE,
                               atol=F32_LOOSE)


@pytest.mark.parametrize("kw,inputs,shape", [
    (dict(vocab_size=V), _tokens(0, B, L), (B, L, D)),
    (dict(positions="sinusoidal"), np.ones((B, L, 3), np.float32), (B, L, D)),
])
def test_encoder_shapes_and_bidirectional(kw, inputs, shape):
    enc = Transformer(num_layers=2, d_model=D, num_heads=H, max_len=L, **kw)
    variables = _variables(enc, inputs)
    apply = jax.jit(enc.apply)
    out = apply(variables, inputs)
    assert out.shape == shape
    changed = inputs.copy()
    changed[:, -1] = (changed[:, -1] + 1) % V  # the last input changes the first output
    assert not np.allclose(apply(variables, changed)[:, 0], out[:, 0])


def test_lm_is_causal():
    tokens = _tokens(0, B, L)
    lm = _lm(num_kv_heads=2)
    apply = _apply(lm)
    variables = _variables(lm, tokens)
    logits = apply(variables, tokens)
    assert logits.shape == (B, L, V) and logits.dtype == jnp.float32
    changed = tokens.copy()
    changed[:, 5] = (changed[:, 5] + 1) % V
    other = apply(variables, changed)
    np.testing.assert_allclose(other[:, :5], logits[:, :5], rtol=F32_LOOSE, atol=F32_LOOSE)
    assert not np.allclose(other[:, 5:], logits[:, 5:])


def test_lm_decode_token_by_token_equals_full_forward():
    tokens = _tokens(1, B, L)
    lm = _lm(num_layers=2, num_kv_heads=2)  # the cache passes through both blocks
    params = _variables(lm, tokens)["params"]
    full = _apply(lm)({"params": params}, tokens)
    decoder = lm.clone(decode=True)
    cache = _variables(decoder, tokens)["cache"]
    step = jax.jit(lambda c, t: decoder.apply({"params": params, "cache": c}, t,
                                              mutable=["cache"]))
    outs = []
    for t in range(L):
        logits, variables = step(cache, tokens[:, t:t + 1])
        cache = variables["cache"]
        outs.append(logits)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, **NN)


def test_tiny_lm_overfits_a_sequence():
    seq = jnp.asarray([[3, 1, 4, 1, 5, 9, 2, 6, 5]])
    lm = _lm(d_model=32)
    params = _variables(lm, seq[:, :-1])["params"]
    opt = optax.adam(1e-2)

    def loss_fn(p):
        logits = lm.apply({"params": p}, seq[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, seq[:, 1:]).mean()

    @jax.jit
    def train(p):
        def step(carry, _):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss
        return jax.lax.scan(step, (p, opt.init(p)), length=20)[1]

    losses = train(params)  # the gradients of the whole LM drive this: finite, and right
    assert np.all(np.isfinite(losses))
    assert losses[0] > 2.0 and losses[-1] < 0.1 * losses[0]


# --------------------------------------------------------------------------- dropout, transforms

def test_dropout_needs_deterministic_and_rng():
    tokens = _tokens(0, B, L)
    lm = _lm(dropout_rate=0.3)
    variables = _variables(lm, tokens, deterministic=True)
    apply = jax.jit(functools.partial(lm.apply, deterministic=False))
    a, b, c = (apply(variables, tokens, rngs={"dropout": jax.random.key(s)}) for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    with pytest.raises(ValueError, match="deterministic"):
        lm.apply(variables, tokens)  # neither the attribute nor the argument is set


def test_vmap_over_params_and_bfloat16():
    x = np.random.default_rng(0).normal(size=(B, L, D)).astype(np.float32)
    block = TransformerBlock(H, num_kv_heads=1, is_causal=True)
    members = [_variables(block, x, seed=s) for s in range(2)]
    ensemble = jax.tree.map(lambda *a: jnp.stack(a), *members)
    outs = jax.jit(jax.vmap(block.apply, in_axes=(0, None)))(ensemble, x)
    apply = jax.jit(block.apply)
    for member, out in zip(members, outs, strict=True):
        np.testing.assert_allclose(apply(member, x), out, rtol=F32_LOOSE, atol=F32_LOOSE)
    out16 = jax.jit(block.clone(dtype=jnp.bfloat16).apply)(members[1], x.astype(jnp.bfloat16))
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_allclose(out16.astype(np.float32), outs[1], rtol=BF16_ATOL,
                               atol=BF16_ATOL)


# --------------------------------------------------------------------------- shared fields

def _attention_layers(model, *args):
    """Every MultiHeadAttention that ``model.init`` calls, as built."""
    found = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, MultiHeadAttention) and context.method_name == "__call__":
            found.append(context.module)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), *args))
    return found


# A value other than the default for every field of AttentionOptions but num_heads,
# is_causal and decode (set by the modules).
OPTIONS = dict(num_kv_heads=2, dropout_rate=0.1, broadcast_dropout=False, deterministic=True,
               qk_norm="rmsnorm", implementation="blockwise", dtype=jnp.float32,
               param_dtype=jnp.float32, precision="highest")


def test_every_attention_option_reaches_every_attention_layer():
    """The options are declared once (AttentionOptions) and handed down: LM -> Transformer ->
    blocks -> attention, with is_causal set by the LM and deterministic by the call."""
    names = {f.name for f in dataclasses.fields(AttentionOptions)} - {"parent", "name"}
    assert names == {*OPTIONS, "num_heads", "is_causal", "decode"}
    for model, inputs in ((_lm(num_layers=2, **OPTIONS), TOKENS),
                          (Transformer(2, D, H, decode=True, max_len=L, **OPTIONS),
                           np.ones((B, L, 3), np.float32))):
        layers = _attention_layers(model, inputs)
        assert len(layers) == 2
        for layer in layers:
            got = {n: getattr(layer, n) for n in names}
            assert got == {**{n: getattr(model, n) for n in names}, "is_causal": True,
                           "deterministic": None}


def test_construction_keeps_positional_fields_and_clone():
    assert Transformer(1, D, H) == Transformer(num_layers=1, d_model=D, num_heads=H)
    assert TransformerLM(V, 1, D, H) == _lm(max_len=512)
    assert TransformerBlock(H).clone(decode=True).decode
    for make in (lambda: TransformerBlock(H, 2), lambda: MultiHeadAttention(H, 2),
                 lambda: Transformer(1, D, H, 4.0)):
        with pytest.raises(TypeError, match="positional arguments"):
            make()


# --------------------------------------------------------------------------- bad inputs

def _shape(model, *args):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), *args))


TOKENS = np.zeros((B, L), np.int32)

BAD_INPUTS = [
    (lambda: sinusoidal_positions(4, 5), ValueError, r"dim must be even"),
    (lambda: sinusoidal_positions(0, 4), ValueError, r"length must be >= 1"),
    (lambda: _shape(_lm(max_len=4), TOKENS), ValueError, r"L=8 exceeds max_len=4"),
    (lambda: _shape(_lm(positions="rotary"), TOKENS), ValueError, r"positions must be one of"),
    (lambda: _shape(_lm(num_kv_heads=3), TOKENS), ValueError,
     r"num_kv_heads=3 must divide num_heads=4"),
    (lambda: _shape(_lm(num_heads=3), TOKENS), ValueError,
     r"qkv_features=16 must be divisible by num_heads=3"),
    (lambda: _shape(_lm(), TOKENS.astype(np.float32)), TypeError, r"integer dtype"),
    (lambda: _shape(Transformer(1, D, H), np.ones(L)), ValueError, r"inputs must have rank"),
    (lambda: _shape(TransformerBlock(H, mlp_ratio=0.01), np.ones((L, D))), ValueError,
     r"mlp_ratio"),
    (lambda: jax.jit(lambda t: _shape(_lm(max_len=4), t))(TOKENS), ValueError,
     r"exceeds max_len=4"),
    (lambda: _shape(_lm(is_causal=False), TOKENS), ValueError,
     r"a language model is causal: is_causal must be True"),
    (lambda: _shape(_lm(num_layers=1.5), TOKENS), TypeError, r"num_layers must be an int"),
    (lambda: _shape(_lm(vocab_size=0), TOKENS), ValueError, r"vocab_size must be >= 1"),
    (lambda: _shape(Transformer(1, 0, H), np.ones((L, 3))), ValueError,
     r"d_model must be >= 1"),
    (lambda: _shape(_lm(dropout_rate=1.0, deterministic=True), TOKENS), ValueError,
     r"dropout_rate must be in \[0, 1\)"),
]


@pytest.mark.parametrize("call,exc,msg", BAD_INPUTS)
def test_bad_inputs(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()
