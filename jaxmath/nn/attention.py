r"""Scaled dot-product attention: masks, bias, causal, GQA, and four implementations.

Two layouts share one set of options:

* :func:`attention` takes ``[..., L, d]`` arrays whose leading axes broadcast
  (e.g. ``[B, H, L, d]``, like PyTorch's ``scaled_dot_product_attention``);
* :func:`multi_head_attention` takes ``[..., L, H, d]`` arrays (jax.nn's and
  Flax's ``[B, T, N, H]``) with grouped-query attention: fewer key/value heads
  than query heads. It is the function a multi-head attention layer calls on its
  projected queries, keys and values.

Attention dropout (``dropout_rate``, ``dropout_rng``, ``broadcast_dropout``) is an
option of both, on every path but cuDNN's: the keep pattern is drawn once per call
as flax draws it and read by whichever path runs, so the same key gives the same
result on each.

``implementation`` picks the computation: ``'xla'`` materialises the scores,
``'blockwise'`` never does (:mod:`jaxmath.nn.blockwise_attention`, pure JAX),
``'cudnn'`` calls ``jax.nn.dot_product_attention``'s cuDNN kernel, ``'pallas'``
runs jaxmath's flash-attention kernels for NVIDIA GPUs
(:mod:`jaxmath.nn.pallas_attention`), and ``None`` picks the fastest one that
supports the call (:func:`attention_implementation` tells which).

Which calls run where by default:

* CPU: ``'blockwise'`` from :data:`CPU_BLOCKWISE_MIN_LENGTH` queries and keys on
  (or past the memory budget), else ``'xla'``.
* NVIDIA GPU: ``'cudnn'`` for float16/bfloat16 inputs with a Python-number scale,
  at most ``[B, H]`` leading axes, ``Lq == Lk`` if causal, key lengths per batch
  element and no dropout (it takes masks and biases; if the kernel still refuses
  the call when traced -- head size, cuDNN version, GPU generation -- the next rule
  applies). Else ``'pallas'`` (float32, bfloat16 or float16, head sizes up to 256,
  any mask, bias, key lengths, causal alignment and dropout, a Python-number scale) from
  :data:`GPU_PALLAS_MIN_LENGTH` queries and keys on or past the memory budget; else
  ``'xla'``. Only a call that neither kernel takes and whose scores exceed
  :data:`XLA_MEMORY_BUDGET_BYTES` lands on ``'blockwise'``: a traced ``scale``, head
  sizes above 256, float64, or q, k, v of different dtypes.
* TPU and others: ``'blockwise'`` past the memory budget, else ``'xla'``.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxmath import _checks
from jaxmath._precision import check_precision
from jaxmath.nn import _softmax_kernels
from jaxmath.nn.blockwise_attention import DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q, blockwise_attention
from jaxmath.nn.pallas_attention import pallas_attention, pallas_supported

ArrayLike = jax.typing.ArrayLike

IMPLEMENTATIONS = ("xla", "blockwise", "cudnn", "pallas")
#: The backends whose default path :func:`attention_implementation` can describe.
BACKENDS = ("cpu", "gpu", "tpu")
#: The default path goes blockwise when the float32 scores ``[..., Lq, Lk]`` of one
#: call (batch x heads x Lq x Lk x 4 bytes) would exceed this many bytes. XLA holds
#: several arrays of that size in a forward and backward pass.
XLA_MEMORY_BUDGET_BYTES = 1 << 30
#: On CPU the default path also goes blockwise from this many queries and keys on,
#: where it was measured faster than xla: 1.6x to 2.3x at L = 1024 and 2x to 6x at
#: 4096 and 8192, forward or forward+backward (more when causal: it skips the key
#: blocks above the diagonal); see benchmarks/results/cpu.json. At L = 512 (a single
#: query block) xla was 1.3x to 2x faster.
CPU_BLOCKWISE_MIN_LENGTH = 1024
#: On an NVIDIA GPU a call that cuDNN does not take runs the Pallas kernel from this
#: many queries and keys on (shorter ones materialise their small scores with xla).
#: Set from the kernels' block sizes (64-128 rows), not yet measured on a GPU.
GPU_PALLAS_MIN_LENGTH = 512


# --------------------------------------------------------------------------- checks

class _Call(NamedTuple):
    """The checked arrays of a call, before broadcasting, and the shape of its scores.

    ``dropout`` is the boolean keep pattern of attention dropout (True = kept), drawn
    inside the compiled program; None before that and when dropout is off.
    """

    q: jax.Array
    k: jax.Array
    v: jax.Array
    mask: jax.Array | None
    bias: jax.Array | None
    key_lengths: jax.Array | None
    dropout: jax.Array | None
    scores_shape: tuple[int, ...]


def _check_shapes(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                  bias: jax.Array | None, key_lengths: jax.Array | None,
                  heads: bool = False) -> tuple[int, ...]:
    """Validate the operands; return the shape of the scores, ``[..., Lq, Lk]``.

    With ``heads`` the layout is ``[..., L, H, d]`` and the scores ``[..., H, Lq, Lk]``;
    otherwise ``[..., L, d]``. ``key_lengths`` broadcasts against the batch axes ``...``.
    """
    seq = -3 if heads else -2
    for x, name in ((q, "q"), (k, "k"), (v, "v")):
        _checks.check_ndim(x, name, min_ndim=-seq)
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same feature size d (last axis), got "
                         f"q.shape={tuple(q.shape)} and k.shape={tuple(k.shape)}")
    if k.shape[seq] != v.shape[seq]:
        raise ValueError(f"k and v must have the same number of keys Lk (axis {seq}), got "
                         f"k.shape={tuple(k.shape)} and v.shape={tuple(v.shape)}")
    _checks.check_nonempty(q, "q", axis=-1)
    _checks.check_nonempty(k, "k", axis=seq)
    if heads:
        h, h_kv = q.shape[-2], k.shape[-2]
        if v.shape[-2] != h_kv:
            raise ValueError(f"k and v must have the same number of heads H_kv (axis -2), "
                             f"got k.shape={tuple(k.shape)} and v.shape={tuple(v.shape)}")
        if h_kv == 0 or h % h_kv:
            raise ValueError(f"the number of query heads H={h} must be a multiple of the "
                             f"number of key/value heads H_kv={h_kv} (axis -2 of q and k)")
    lead = _checks.broadcast_shapes(
        *((x.shape[:seq], f"{name}.shape[:{seq}]") for x, name in ((q, "q"), (k, "k"), (v, "v"))),
        what="the leading (batch) axes of q, k, v")
    tail = (q.shape[-2],) if heads else ()
    scores = (*lead, *tail, q.shape[seq], k.shape[seq])
    what = "[..., H, Lq, Lk]" if heads else "[..., Lq, Lk]"
    for x, name in ((mask, "mask"), (bias, "bias")):
        if x is None:
            continue
        full = _checks.broadcast_shapes((scores, "scores"), (x, name),
                                        what=f"the scores {what} and {name}")
        if full[len(full) - len(tail) - 2:] != scores[len(scores) - len(tail) - 2:]:
            raise ValueError(f"{name} must broadcast to the scores {what} = [..., "
                             f"{', '.join(map(str, scores[len(scores) - len(tail) - 2:]))}], "
                             f"got {name}.shape={tuple(x.shape)}")
        scores = full
    if key_lengths is not None:
        batch = scores[:len(scores) - len(tail) - 2]
        full = _checks.broadcast_shapes((batch, "batch"), (key_lengths, "key_lengths"),
                                        what="the batch axes [...] and key_lengths")
        if len(full) > len(batch):
            raise ValueError(f"key_lengths must broadcast to the batch axes {batch}, got "
                             f"key_lengths.shape={tuple(key_lengths.shape)}")
        scores = (*full, *scores[len(batch):])
    return scores


def _check_options(q, k, v, mask, bias, key_lengths, is_causal, scale, implementation,
                   block_size, precision):
    """Convert and type-check the arguments shared by both layouts."""
    precision = check_precision(precision)
    if not isinstance(is_causal, bool | np.bool_):
        raise TypeError(f"is_causal must be a Python bool, got {type(is_causal).__name__}")
    if implementation is not None:
        _checks.check_choice(implementation, "implementation", (None, *IMPLEMENTATIONS))
    q, k, v = _checks.as_floats((q, "q"), (k, "k"), (v, "v"))
    if mask is not None:
        mask = _checks.check_bool_mask(mask, "mask", "; pass an additive float mask as bias")
    if bias is not None:
        bias = _checks.as_float(bias, "bias")
    if key_lengths is not None:
        key_lengths = jnp.asarray(key_lengths)
        _checks.check_integer(key_lengths, "key_lengths")
    if scale is None:
        pass  # 1 / sqrt(d), set by _run once the shapes are checked
    elif isinstance(scale, int | float) and not isinstance(scale, bool):
        scale = float(scale)  # static: the cuDNN kernel needs a Python number
    else:
        scale = _checks.as_float(scale, "scale")
        if scale.ndim != 0:
            raise ValueError(f"scale must be a scalar, got shape {tuple(scale.shape)}")
    return (q, k, v, mask, bias, key_lengths, bool(is_causal), scale,
            _blocks(block_size, implementation), precision)


def _check_dropout_rate(rate: object) -> float:
    """``rate`` as a float in [0, 1); TypeError for a traced or non-numeric rate."""
    if _checks.is_tracer(rate) or isinstance(rate, bool) or not isinstance(
            rate, numbers.Real):
        raise TypeError(f"dropout_rate must be a Python number (a static value: it decides "
                        f"whether the call draws a keep pattern), got {type(rate).__name__}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {rate}")
    return float(rate)


def _check_dropout(rate: object, rng: object, broadcast: object,
                   need_rng: bool = True) -> tuple[float, bool] | None:
    """``(rate, broadcast)`` of attention dropout, or None when the rate is 0 (the plain
    call, whatever ``rng`` is)."""
    rate = _check_dropout_rate(rate)
    if not isinstance(broadcast, bool | np.bool_):
        raise TypeError(f"broadcast_dropout must be a Python bool, got "
                        f"{type(broadcast).__name__}")
    if rate == 0.0:
        return None
    if need_rng:
        if rng is None:
            raise ValueError(f"dropout_rate={rate} needs dropout_rng, a PRNG key "
                             f"(jax.random.key(seed)) to draw the keep pattern from")
        key = rng if isinstance(rng, jax.Array) else np.asarray(rng)
        typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        if not (key.shape == () if typed else key.dtype == np.uint32 and key.ndim == 1):
            raise TypeError(f"dropout_rng must be one PRNG key (jax.random.key(seed)), got "
                            f"an array of dtype {key.dtype} and shape {tuple(key.shape)}")
    return rate, bool(broadcast)


def _dropout_shape(scores_shape: tuple[int, ...], broadcast: bool) -> tuple[int, ...]:
    """The shape of the keep pattern: the scores' ``[..., Lq, Lk]``, or ``(1, ..., 1, Lq,
    Lk)`` when it is shared by the batch and heads (flax's rule)."""
    if not broadcast:
        return scores_shape
    return (1,) * (len(scores_shape) - 2) + scores_shape[-2:]


def _blocks(block_size, implementation) -> tuple[int, int] | None:
    """``(block_q, block_k)`` from ``block_size`` (an int or a pair); None: the path's own."""
    if block_size is None:
        return None
    if implementation in ("xla", "cudnn"):
        raise ValueError(f"block_size applies to implementation='blockwise' or 'pallas' (or "
                         f"None), got implementation={implementation!r}")
    pair = (block_size, block_size) if isinstance(block_size, int | np.integer) else block_size
    if (not isinstance(pair, tuple | list) or len(pair) != 2
            or not all(isinstance(b, int | np.integer) and not isinstance(b, bool) and b > 0
                       for b in pair)):
        raise ValueError(f"block_size must be a positive int or a pair of positive ints "
                         f"(block_q, block_k), got {block_size!r}")
    return int(pair[0]), int(pair[1])


# --------------------------------------------------------------------------- choice of path

def _cudnn_unsupported(call: _Call, is_causal: bool, scale, heads_layout: bool,
                       backend: str, dropout: tuple[float, bool] | None = None) -> str | None:
    """Why the cuDNN kernel cannot take this call on ``backend`` (None if it may).

    These are the documented conditions; the kernel may still refuse a call at
    trace time (head size, cuDNN version), which the default path catches.
    """
    if dropout is not None:
        return ("jax.nn.dot_product_attention has no attention dropout; the xla, "
                "blockwise and Pallas paths have")
    if backend != "gpu":
        return f"it needs an NVIDIA GPU with cuDNN, and JAX's default backend is {backend!r}"
    if call.q.dtype not in (jnp.float16, jnp.bfloat16):
        return f"cuDNN takes float16 or bfloat16 inputs, got {call.q.dtype}"
    if not isinstance(scale, float):
        return "cuDNN needs scale as a Python number, got an array"
    lq, lk = call.scores_shape[-2:]
    if is_causal and lq != lk:
        return f"cuDNN's causal mask is used for Lq == Lk only, got Lq={lq}, Lk={lk}"
    if len(call.scores_shape) > 4:
        return f"cuDNN takes one batch axis, got scores of shape {call.scores_shape}"
    lengths = call.key_lengths
    if not heads_layout and lengths is not None and lengths.ndim and lengths.shape[-1] != 1:
        return "cuDNN takes key_lengths per batch element, not per head"
    return None


def _pallas_unsupported(call: _Call, scale, backend: str) -> str | None:
    """Why the Pallas kernel cannot take this call on ``backend`` (None if it may)."""
    return pallas_supported(call.q, call.k, call.v, call.bias, call.mask, call.key_lengths,
                            scale=scale, backend=backend)


def _refused(implementation: str, reason: str | None) -> None:
    if reason is not None:
        raise ValueError(f"implementation={implementation!r} cannot run this call: {reason}; "
                         f"use implementation=None to fall back to another path")


def _choose(call: _Call, is_causal: bool, scale, implementation: str | None,
            heads_layout: bool, backend: str,
            dropout: tuple[float, bool] | None) -> tuple[str, str | None]:
    """The path that runs a checked call, and the one to fall back on if cuDNN refuses.

    An explicit ``implementation`` is honoured (``'cudnn'`` and ``'pallas'`` raise
    ValueError with the reason when they cannot take the call; ``'pallas'`` off a GPU
    runs interpreted, slowly). ``None`` follows the rules of the module docstring:
    cuDNN where :func:`_cudnn_unsupported` allows (never with dropout), falling back
    on what the call would run without it: the Pallas kernel on a GPU for long calls
    or past the memory budget, blockwise past the memory budget or on a CPU from
    :data:`CPU_BLOCKWISE_MIN_LENGTH`, xla otherwise.
    """
    if implementation == "cudnn":
        _refused("cudnn", _cudnn_unsupported(call, is_causal, scale, heads_layout, backend,
                                             dropout))
        return "cudnn", None
    if implementation == "pallas":
        _refused("pallas", _pallas_unsupported(call, scale, "gpu"))
        return "pallas", None
    if implementation is not None:
        return implementation, None
    itemsize = jnp.dtype(jnp.promote_types(call.q.dtype, jnp.float32)).itemsize
    short = min(call.scores_shape[-2:])
    over_budget = math.prod(call.scores_shape) * itemsize > XLA_MEMORY_BUDGET_BYTES
    fallback = "xla"
    if (over_budget or short >= GPU_PALLAS_MIN_LENGTH) and _pallas_unsupported(
            call, scale, backend) is None:
        fallback = "pallas"
    elif over_budget or (backend == "cpu" and short >= CPU_BLOCKWISE_MIN_LENGTH):
        fallback = "blockwise"
    if _cudnn_unsupported(call, is_causal, scale, heads_layout, backend, dropout) is None:
        return "cudnn", fallback
    return fallback, None


# --------------------------------------------------------------------------- the paths

def _keep_mask(mask: jax.Array | None, bias: jax.Array | None, key_lengths: jax.Array | None,
               is_causal: bool, lq: int, lk: int) -> jax.Array | None:
    """Boolean mask of the (query, key) pairs attended to, or None when all are.

    Combines the user's ``mask``, the causal mask (key ``j <= i`` for query ``i``,
    top-left aligned), ``key_lengths`` and keys whose ``bias`` is ``-inf``.
    """
    keep = mask
    parts = []
    if is_causal:
        parts.append(jnp.tril(jnp.ones((lq, lk), dtype=bool)))
    if key_lengths is not None:
        parts.append(jnp.arange(lk) < key_lengths[..., None, None])
    if bias is not None:
        parts.append(bias != -jnp.inf)
    for part in parts:
        keep = part if keep is None else keep & part
    return keep


def _attention_xla(call: _Call, is_causal: bool, scale, blocks, precision,
                   dropout_rate: float) -> jax.Array:
    """Reference path: materialise the scores, softmax in float32, weight the values.

    Dropout multiplies the normalised weights by ``keep / (1 - rate)``, as
    flax.linen.dot_product_attention does. (``blocks`` is unused: the signature is
    that of the other paths.)
    """
    q, k, v, mask, bias, key_lengths, dropout, scores_shape = call
    compute_dtype = jnp.promote_types(q.dtype, jnp.float32)
    logits = jnp.matmul(q, jnp.swapaxes(k, -1, -2), preferred_element_type=compute_dtype,
                        precision=precision)
    logits = logits * jnp.asarray(scale, compute_dtype)
    if bias is not None:
        logits = logits + bias.astype(compute_dtype)
    keep = _keep_mask(mask, bias, key_lengths, is_causal, q.shape[-2], k.shape[-2])
    probs = _softmax_kernels.softmax(jnp.broadcast_to(logits, scores_shape), -1, keep)
    if dropout is not None:
        probs = probs * (dropout.astype(compute_dtype)
                         / jnp.asarray(1.0 - dropout_rate, compute_dtype))
    out = jnp.matmul(probs.astype(v.dtype), v, preferred_element_type=compute_dtype,
                     precision=precision)
    return jnp.broadcast_to(out, (*scores_shape[:-1], v.shape[-1])).astype(v.dtype)


def _attention_in_blocks(kernel, default_blocks: tuple, call: _Call, is_causal: bool, scale,
                         blocks, precision, dropout_rate: float) -> jax.Array:
    """The blockwise or Pallas kernel on a call: q, k, v broadcast to the scores' leading
    axes (not copied, where XLA can), mask, bias and keep pattern of the scores' rank."""
    lead, rank = call.scores_shape[:-2], len(call.scores_shape)

    def full_rank(x):
        return None if x is None else x.reshape((1,) * (rank - x.ndim) + x.shape)

    q, k, v = (jnp.broadcast_to(x, (*lead, *x.shape[-2:])) for x in call[:3])
    block_q, block_k = blocks or default_blocks
    return kernel(q, k, v, full_rank(call.bias), full_rank(call.mask), call.key_lengths,
                  scale=scale, is_causal=is_causal, block_q=block_q, block_k=block_k,
                  precision=precision, dropout_mask=full_rank(call.dropout),
                  dropout_rate=dropout_rate)


def _attention_cudnn(q_btnh, k_bsnh, v_bsnh, call: _Call, is_causal: bool,
                     scale: float) -> jax.Array:
    """jax.nn's cuDNN kernel on ``[B, T, N, H]`` arrays, with zeros on fully masked rows.

    ``call`` holds the mask, bias and key lengths, ranked like ``[B, N, T, S]``.
    """
    b = q_btnh.shape[0]

    def rank4(x):
        return None if x is None else x.reshape((1,) * (4 - x.ndim) + x.shape)

    lengths = None
    if call.key_lengths is not None:
        lengths = jnp.broadcast_to(call.key_lengths.reshape(-1) if call.key_lengths.ndim
                                   else call.key_lengths, (b,)).astype(jnp.int32)
    out = jax.nn.dot_product_attention(
        q_btnh, k_bsnh, v_bsnh, bias=rank4(call.bias), mask=rank4(call.mask), scale=scale,
        is_causal=is_causal, key_value_seq_lengths=lengths, implementation="cudnn")
    # cuDNN does not promise zeros where a query sees no key: set them.
    lq, lk = call.scores_shape[-2:]
    if call.mask is not None or call.bias is not None:
        keep = _keep_mask(rank4(call.mask), rank4(call.bias), None if lengths is None
                          else lengths[:, None], is_causal, lq, lk)
        seen = jnp.swapaxes(jnp.any(keep, axis=-1), -1, -2)[..., None]  # [B|1, T, N|1, 1]
    elif lengths is not None:
        seen = (lengths > 0)[:, None, None, None]
    else:
        return out
    return jnp.where(seen, out, 0).astype(out.dtype)


_PATHS = {
    "xla": _attention_xla,
    "blockwise": functools.partial(_attention_in_blocks, blockwise_attention,
                                   (DEFAULT_BLOCK_Q, DEFAULT_BLOCK_K)),
    "pallas": functools.partial(_attention_in_blocks, pallas_attention, (None, None)),
}


@functools.partial(jax.jit, static_argnames=("is_causal", "scale", "path", "fallback",
                                             "blocks", "scores_shape", "heads", "precision",
                                             "dropout"))
def _attention(q, k, v, mask, bias, key_lengths, scale_array, dropout_rng, *, is_causal, scale,
               path, fallback, blocks, scores_shape, heads, precision, dropout):
    """Checked arrays of either layout through the chosen path, compiled as one program.

    ``dropout`` is ``(rate, broadcast)`` or None; the keep pattern is drawn here from
    ``dropout_rng``, as flax draws it: ``bernoulli(rng, 1 - rate, shape)``.
    """
    scale = scale_array if scale is None else scale
    rate, keep = 0.0, None
    if dropout is not None:
        rate, broadcast = dropout
        keep = jax.random.bernoulli(dropout_rng, 1.0 - rate,
                                    _dropout_shape(scores_shape, broadcast))
    call = _Call(q, k, v, mask, bias, key_lengths, keep, scores_shape)
    if path == "cudnn":  # never with dropout: _cudnn_unsupported refuses it
        try:
            return (_cudnn_heads if heads else _cudnn_bhld)(call, is_causal, scale)
        except (ValueError, NotImplementedError, RuntimeError, TypeError):
            if fallback is None:
                raise
            path = fallback
    run = _PATHS[path]
    if not heads:
        return run(call, is_causal, scale, blocks, precision, rate)
    out = run(_to_groups(call), is_causal, scale, blocks, precision, rate)  # [..., Hkv, G, L, dv]
    out = out.reshape(*out.shape[:-4], -1, *out.shape[-2:])
    return jnp.swapaxes(out, -2, -3)


def _cudnn_bhld(call: _Call, is_causal: bool, scale: float) -> jax.Array:
    """cuDNN on the ``[..., N, L, d]`` layout: at most ``[B, N]`` leading axes."""
    lead = call.scores_shape[:-2]
    b, n = (1, 1, *lead)[-2:]

    def btnh(x, heads):
        x = x.reshape((1,) * (len(lead) + 2 - x.ndim) + x.shape)
        x = x.reshape((1,) * (2 - len(lead)) + x.shape)
        x = jnp.broadcast_to(x, (b, heads or x.shape[1], *x.shape[2:]))
        return jnp.swapaxes(x, 1, 2)

    lengths = call.key_lengths
    if lengths is not None and lengths.ndim:
        lengths = lengths[..., 0]  # drop the (size-1) head axis
    call = call._replace(key_lengths=lengths)
    out = _attention_cudnn(btnh(call.q, n), btnh(call.k, None), btnh(call.v, None), call,
                           is_causal, scale)
    return jnp.swapaxes(out, 1, 2).reshape(*lead, out.shape[1], out.shape[-1])


def _cudnn_heads(call: _Call, is_causal: bool, scale: float) -> jax.Array:
    """cuDNN on the ``[..., L, H, d]`` layout: at most one batch axis."""
    batch = call.scores_shape[:-3]
    b = batch[0] if batch else 1

    def btnh(x):
        x = x.reshape((1,) * (4 - x.ndim) + x.shape)
        return jnp.broadcast_to(x, (b, *x.shape[1:]))

    out = _attention_cudnn(btnh(call.q), btnh(call.k), btnh(call.v), call, is_causal, scale)
    return out.reshape(*batch, *out.shape[1:])


def _to_groups(call: _Call) -> _Call:
    """``[..., L, H, d]`` arrays as ``[..., H_kv, G, L, d]`` with K/V shared over the G axis.

    Query head ``h`` uses key/value head ``h // G`` (``G = H / H_kv``), as in
    PyTorch's ``enable_gqa`` and jax.nn.
    """
    q, k, v, mask, bias, key_lengths, dropout, scores_shape = call
    h, h_kv = q.shape[-2], k.shape[-2]
    g = h // h_kv

    def heads_first(x, group):
        x = jnp.swapaxes(x, -2, -3)
        return x.reshape(*x.shape[:-3], x.shape[-3] // group, group, *x.shape[-2:])

    def split(x):  # [..., H|1, Lq|1, Lk|1] -> [..., H_kv|1, G|1, Lq|1, Lk|1]
        if x is None:
            return None
        x = x.reshape((1,) * (3 - x.ndim) + x.shape)
        heads = (h_kv, g) if x.shape[-3] == h else (1, 1)
        return x.reshape(*x.shape[:-3], *heads, *x.shape[-2:])

    lengths = None if key_lengths is None else key_lengths[..., None, None]
    return _Call(heads_first(q, g), heads_first(k, 1), heads_first(v, 1), split(mask),
                 split(bias), lengths, split(dropout),
                 (*scores_shape[:-3], h_kv, g, *scores_shape[-2:]))


class _Checked(NamedTuple):
    """A checked call of either layout, its options and the path chosen for it."""

    call: _Call
    is_causal: bool
    scale: float | jax.Array
    blocks: tuple[int, int] | None
    precision: jax.lax.PrecisionLike
    dropout: tuple[float, bool] | None
    path: str
    fallback: str | None


def _check_and_choose(q, k, v, *, mask, bias, key_lengths, is_causal, scale, implementation,
                      block_size, precision, dropout, heads, backend=None) -> _Checked:
    """Check a call of either layout (``dropout``: checked by :func:`_check_dropout`) and
    choose its path on ``backend`` (default: JAX's default backend)."""
    q, k, v, mask, bias, key_lengths, is_causal, scale, blocks, precision = _check_options(
        q, k, v, mask, bias, key_lengths, is_causal, scale, implementation, block_size,
        precision)
    scores_shape = _check_shapes(q, k, v, mask, bias, key_lengths, heads=heads)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    call = _Call(q, k, v, mask, bias, key_lengths, None, scores_shape)
    backend = jax.default_backend() if backend is None else backend
    path, fallback = _choose(call, is_causal, scale, implementation, heads, backend, dropout)
    return _Checked(call, is_causal, scale, blocks, precision, dropout, path, fallback)


def _run(q, k, v, *, dropout_rate, dropout_rng, broadcast_dropout, heads, **options
         ) -> jax.Array:
    """Check, choose the path and run the compiled program (both layouts)."""
    c = _check_and_choose(q, k, v, heads=heads, **options,
                          dropout=_check_dropout(dropout_rate, dropout_rng, broadcast_dropout))
    static = isinstance(c.scale, float)
    return _attention(*c.call[:6], None if static else c.scale,
                      None if c.dropout is None else dropout_rng, is_causal=c.is_causal,
                      scale=c.scale if static else None, path=c.path, fallback=c.fallback,
                      blocks=c.blocks, scores_shape=c.call.scores_shape, heads=heads,
                      precision=c.precision, dropout=c.dropout)


# --------------------------------------------------------------------------- public functions

def attention(q: ArrayLike, k: ArrayLike, v: ArrayLike, mask: ArrayLike | None = None,
              bias: ArrayLike | None = None, is_causal: bool = False,
              scale: float | ArrayLike | None = None, *, key_lengths: ArrayLike | None = None,
              dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None,
              broadcast_dropout: bool = True, implementation: str | None = None,
              block_size: int | tuple[int, int] | None = None,
              precision: jax.lax.PrecisionLike = None) -> jax.Array:
    r"""Scaled dot-product attention on ``[..., L, d]`` arrays.

    .. math:: \mathrm{Attention}(Q, K, V) = \mathrm{softmax}\Big(s\, Q K^T + B\Big) V,
       \qquad s = 1/\sqrt{d_k} \text{ by default},

    with the softmax over keys restricted to the pairs allowed by ``mask``,
    ``key_lengths`` and ``is_causal``. Scores and softmax are computed in float32
    (float64 for float64 input), also for bfloat16/float16 inputs; the output has
    the input dtype. With attention dropout at rate :math:`p` the weights are
    dropped after normalisation (the softmax's normaliser counts every key):

    .. math:: O = \Big(\frac{M}{1 - p} \odot \mathrm{softmax}\big(s\, Q K^T + B\big)
       \Big) V, \qquad M_{ij} \sim \mathrm{Bernoulli}(1 - p),

    the keep pattern :math:`M` drawn as flax.linen.dot_product_attention draws it.

    Args:
      q: ``[..., Lq, d]`` queries.
      k: ``[..., Lk, d]`` keys.
      v: ``[..., Lk, dv]`` values. The leading axes ``...`` of ``q``, ``k``, ``v``
        (batch, heads, ...) broadcast against each other, e.g. ``[B, H, L, d]``
        queries with ``[B, 1, L, d]`` keys and values (multi-query attention).
      mask: optional boolean mask broadcastable to the scores ``[..., Lq, Lk]``;
        True = query attends to key (jax.nn's rule), e.g. ``[B, 1, 1, Lk]`` for key
        padding. Non-boolean masks raise TypeError: pass float masks as ``bias``.
      bias: optional additive bias :math:`B` broadcastable to ``[..., Lq, Lk]``;
        ``-inf`` entries mask their key out, exactly like ``mask``.
      is_causal: if True, query ``i`` attends only to keys ``j <= i``, aligned at
        the top-left as in ``jax.nn.dot_product_attention`` and PyTorch's
        ``scaled_dot_product_attention``: with ``Lq > Lk`` the queries after the
        last key see all keys; with ``Lq < Lk`` (e.g. new queries after a cached
        prefix) the last keys are never seen, so pass an explicit ``mask`` for
        bottom-right alignment. Combined with ``mask`` by logical and.
      scale: multiplier :math:`s` of :math:`QK^T`; default :math:`1/\sqrt{d}`. A
        traced array is allowed (and differentiated) except by ``'cudnn'``.
      key_lengths: optional integer array broadcastable to the leading axes
        ``[...]`` (``[B, 1]`` for ``[B, H, L, d]`` inputs): keys ``j >=
        key_lengths`` are masked out (key padding). 0 masks every key; values
        above ``Lk`` mask none.
      dropout_rate: probability :math:`p \in [0, 1)` of dropping an attention
        weight, a Python number. 0 (default) is the call without dropout, whatever
        ``dropout_rng`` is.
      dropout_rng: the PRNG key (``jax.random.key(seed)``) of the keep pattern,
        required when ``dropout_rate > 0``. The pattern is
        ``jax.random.bernoulli(dropout_rng, 1 - p, shape)`` with the shape of the
        scores ``[..., Lq, Lk]``, as in ``flax.linen.dot_product_attention``: the same
        key gives the same pattern on every path and in flax.
      broadcast_dropout: draw one ``[Lq, Lk]`` pattern, shape ``(1, ..., 1, Lq, Lk)``,
        shared by the batch and heads (default, flax's), instead of one per score.
        The pattern is a boolean array the paths read (blockwise and Pallas block by
        block, the broadcast axes never copied): ``Lq·Lk`` bytes when broadcast, one
        byte per score otherwise, on top of the path's own memory.
      implementation: ``'xla'`` materialises the ``[..., Lq, Lk]`` scores (memory
        O(Lq·Lk)); ``'blockwise'`` computes the same result by an online softmax over
        key blocks with memory O((Lq + Lk)·d) in the forward and backward passes
        (:mod:`jaxmath.nn.blockwise_attention`); ``'cudnn'`` is
        ``jax.nn.dot_product_attention(implementation='cudnn')``, which needs an
        NVIDIA GPU, float16/bfloat16 inputs, a Python-number ``scale``, at most
        ``[B, H]`` leading axes, ``Lq == Lk`` if causal and no dropout, and raises
        ValueError otherwise; ``'pallas'`` is the same online softmax as blockwise in Pallas
        kernels for NVIDIA GPUs (:mod:`jaxmath.nn.pallas_attention`: float32,
        bfloat16 or float16, head sizes up to 256, a Python-number ``scale``;
        elsewhere than on a GPU it runs interpreted, slowly). ``None`` (default)
        picks the fastest path that takes the call, by the rules of the module
        docstring (:func:`attention_implementation` tells which): on an NVIDIA GPU
        cuDNN (not with dropout), else Pallas for long calls; on a CPU blockwise from
        :data:`CPU_BLOCKWISE_MIN_LENGTH` (1024) queries and keys; blockwise
        wherever the float32 scores would exceed :data:`XLA_MEMORY_BUDGET_BYTES`
        (1 GiB) and no kernel takes the call; else xla.
      block_size: ``block_q`` or ``(block_q, block_k)`` for the blockwise path
        (default ``(512, 256)``, tuned on CPU) or the Pallas kernels (powers of two
        of at least 16; default by dtype and head size); ignored by a default call
        that runs another path, an error with ``'xla'`` or ``'cudnn'``.
      precision: of the two matrix products :math:`QK^T` and :math:`PV` (and of
        the backward pass), as ``jnp.matmul``'s. ``None`` (default) is JAX's
        default, as in every neural-network layer of jaxmath: float32 on CPU,
        TF32 for float32 inputs on recent NVIDIA GPUs (about 1e-3 relative error
        in the output), one bfloat16 pass on TPUs. ``"highest"`` gives float32
        products on every backend. The cuDNN kernel takes bfloat16/float16
        inputs, whose products it computes exactly in float32 whatever this is.

    Returns:
      ``[..., Lq, dv]``, the leading axes broadcast from all inputs. A query whose
      keys are all masked out (by ``mask``, ``key_lengths``, ``is_causal`` or
      ``-inf`` bias) gets zeros in every implementation, as in PyTorch's
      ``scaled_dot_product_attention`` (2.5 and later) -- not NaN (a plain softmax
      over ``-inf``) and not the uniform average of the values that
      ``jax.nn.dot_product_attention`` returns (it masks with a large negative
      number) -- and its gradients with respect to every input are zero. Elsewhere
      gradients are those of the formula above (with dropout: for the drawn keep
      pattern), with respect to ``q``, ``k``, ``v``, ``bias`` and a traced ``scale``.
      The blockwise and Pallas paths (the defaults on a CPU from 1024 queries and
      keys and on a GPU from 512) define reverse mode only (``jax.grad``,
      ``jax.vjp``): for ``jax.jvp`` pass ``implementation='xla'``.

    Raises:
      ValueError: rank < 2, different ``d`` in ``q`` and ``k``, different ``Lk`` in
        ``k`` and ``v``, ``d = 0`` or ``Lk = 0``, leading axes, mask, bias or
        key_lengths that do not broadcast, a non-scalar ``scale``, an unknown
        ``implementation``, ``'cudnn'`` where it cannot run (on dropout among other
        reasons), a bad ``block_size``, ``dropout_rate`` outside [0, 1) or above 0
        without ``dropout_rng``.
      TypeError: a non-boolean ``mask``, non-integer ``key_lengths``, non-bool
        ``is_causal``, complex input, a traced ``dropout_rate``, a ``dropout_rng`` that
        is not one PRNG key.

    Example:
      >>> q = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> k = jnp.array([[1.0, 1.0], [1.0, 0.0]])
      >>> v = jnp.array([[0.0, 1.0], [1.0, 0.0]])
      >>> attention(q, k, v)
      Array([[0.5       , 0.5       ],
             [0.33023846, 0.66976154]], dtype=float32)
      >>> attention(q, k, v, is_causal=True)  # query 0 sees key 0 only
      Array([[0.        , 1.        ],
             [0.33023846, 0.66976154]], dtype=float32)
      >>> attention(q, k, v, mask=jnp.array([[False, False], [True, True]]))
      Array([[0.        , 0.        ],
             [0.33023846, 0.66976154]], dtype=float32)
      >>> attention(q, k, v, key_lengths=1, implementation="blockwise")  # key 0 only
      Array([[0., 1.],
             [0., 1.]], dtype=float32)
      >>> # keep pattern [[1, 0], [1, 1]]: query 0 keeps key 0; kept weights doubled
      >>> attention(q, k, v, dropout_rate=0.5, dropout_rng=jax.random.key(1))
      Array([[0.       , 1.       ],
             [0.6604769, 1.3395231]], dtype=float32)
    """
    return _run(q, k, v, mask=mask, bias=bias, key_lengths=key_lengths, is_causal=is_causal,
                scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                broadcast_dropout=broadcast_dropout, implementation=implementation,
                block_size=block_size, precision=precision, heads=False)


def multi_head_attention(q: ArrayLike, k: ArrayLike, v: ArrayLike,
                         mask: ArrayLike | None = None, bias: ArrayLike | None = None,
                         is_causal: bool = False, scale: float | ArrayLike | None = None, *,
                         key_lengths: ArrayLike | None = None, dropout_rate: float = 0.0,
                         dropout_rng: jax.Array | None = None, broadcast_dropout: bool = True,
                         implementation: str | None = None,
                         block_size: int | tuple[int, int] | None = None,
                         precision: jax.lax.PrecisionLike = None) -> jax.Array:
    r"""Multi-head attention on ``[..., L, H, d]`` arrays, with grouped-query attention.

    .. math:: O_h = \mathrm{softmax}\big(s\, Q_h K_{g(h)}^T + B_h\big)\, V_{g(h)},
       \qquad g(h) = \lfloor h / G \rfloor, \quad G = H / H_{kv},

    for every query head :math:`h`: the ``H`` query heads share the ``H_kv`` key and
    value heads in consecutive groups of ``G`` (``H_kv = H``: multi-head attention;
    ``H_kv = 1``: multi-query attention), as PyTorch's ``scaled_dot_product_attention``
    with ``enable_gqa=True`` (heads first there) and ``jax.nn.dot_product_attention``.
    This is the layout of jax.nn (``[B, T, N, H]``) and of projections in a Flax
    layer, so a multi-head attention module calls it on its projected ``q, k, v``.

    Args:
      q: ``[..., Lq, H, d]`` queries.
      k: ``[..., Lk, H_kv, d]`` keys, ``H`` a multiple of ``H_kv``.
      v: ``[..., Lk, H_kv, dv]`` values. The batch axes ``...`` broadcast.
      mask: optional boolean mask broadcastable to ``[..., H, Lq, Lk]``, True =
        attend; e.g. ``[B, 1, Lq, Lk]`` shared by the heads.
      bias: optional additive bias broadcastable to ``[..., H, Lq, Lk]``; ``-inf``
        masks a key.
      is_causal: query ``i`` attends only to keys ``j <= i`` (top-left aligned,
        as in jax.nn and PyTorch).
      scale: multiplier of :math:`QK^T`; default :math:`1/\sqrt{d}`.
      key_lengths: optional integers broadcastable to the batch axes ``[...]``
        (e.g. ``[B]``): keys ``j >= key_lengths`` are masked out in every head.
      dropout_rate, dropout_rng, broadcast_dropout: attention dropout, as in
        :func:`attention`, on the weights ``[..., H, Lq, Lk]``: the pattern has that
        shape, or ``(1, ..., 1, Lq, Lk)`` shared by batch and heads when broadcast --
        flax.linen.MultiHeadDotProductAttention's, so that the same key drops the
        same weights.
      implementation: ``None``, ``'xla'``, ``'blockwise'``, ``'cudnn'`` or
        ``'pallas'``, as in :func:`attention` (cuDNN takes at most one batch axis
        here and runs on this layout without transposes; xla, blockwise and Pallas
        see the key/value heads broadcast over each group).
      block_size: block sizes of the blockwise or Pallas path, as in :func:`attention`.
      precision: of the matrix products, as in :func:`attention` (None: JAX's
        default; ``"highest"``: float32 on every backend).

    Returns:
      ``[..., Lq, H, dv]`` in the input dtype; zeros, with zero gradients, for a
      query that attends to no key. Gradients reach ``q``, ``k``, ``v`` (summed over
      each group), ``bias`` and a traced ``scale``.

    Raises:
      ValueError: ``H`` not a multiple of ``H_kv`` (naming both), ``k`` and ``v``
        with different heads, rank < 3, and the errors of :func:`attention`.
      TypeError: as :func:`attention`.

    Example:
      >>> q = jnp.ones((1, 3, 4, 8))                            # B=1, L=3, H=4, d=8
      >>> kv = jnp.arange(2 * 3 * 8.0).reshape(1, 3, 2, 8) / 48  # H_kv=2
      >>> out = multi_head_attention(q, kv, kv, is_causal=True)
      >>> out.shape
      (1, 3, 4, 8)
      >>> print(out[0, 0, :, 0])  # query 0 sees key 0: heads 0, 1 use K/V head 0
      [0.         0.         0.16666667 0.16666667]
    """
    return _run(q, k, v, mask=mask, bias=bias, key_lengths=key_lengths, is_causal=is_causal,
                scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                broadcast_dropout=broadcast_dropout, implementation=implementation,
                block_size=block_size, precision=precision, heads=True)


def attention_implementation(q: ArrayLike, k: ArrayLike, v: ArrayLike,
                             mask: ArrayLike | None = None, bias: ArrayLike | None = None,
                             is_causal: bool = False, scale: float | ArrayLike | None = None, *,
                             key_lengths: ArrayLike | None = None, dropout_rate: float = 0.0,
                             implementation: str | None = None,
                             multi_head: bool = False, backend: str | None = None) -> str:
    r"""The path, ``'xla'``, ``'blockwise'``, ``'cudnn'`` or ``'pallas'``, that a call runs.

    Takes the arguments of :func:`attention` (or of :func:`multi_head_attention`
    with ``multi_head=True``; of dropout only the rate, which keeps a call off
    cuDNN), checks them the same way and returns the path chosen
    for them on ``backend`` (``'cpu'``, ``'gpu'`` or ``'tpu'``; default: JAX's
    default backend), by the rules of the module docstring. By default:
    ``'cudnn'`` where it can run (an NVIDIA GPU); else, on a GPU, ``'pallas'`` if
    the kernel takes the call and :math:`\min(L_q, L_k) \ge`
    ``GPU_PALLAS_MIN_LENGTH`` or the scores of the xla path would exceed the memory
    budget,

    .. math:: 4 \cdot \textstyle\prod(\text{batch axes}) \cdot H \cdot L_q \cdot L_k
       \ \text{bytes} > \texttt{XLA\_MEMORY\_BUDGET\_BYTES};

    else ``'blockwise'`` past the budget or, on CPU, if :math:`\min(L_q, L_k) \ge`
    ``CPU_BLOCKWISE_MIN_LENGTH``; else ``'xla'``. Where ``'cudnn'`` is chosen by
    default the kernel may still refuse the call when it is traced; the call then
    runs the path this function gives for it without cuDNN.

    Example:
      >>> x = jnp.zeros((8, 1024, 64))
      >>> attention_implementation(x, x, x, backend="cpu")
      'blockwise'
      >>> attention_implementation(x[:, :8], x, x, backend="cpu")
      'xla'
      >>> attention_implementation(x, x, x, backend="gpu")  # float32: not cuDNN
      'pallas'
      >>> attention_implementation(x[:, :8], x, x, backend="gpu")  # decoding: short
      'xla'
      >>> x16 = x.astype(jnp.bfloat16)[None].transpose(0, 2, 1, 3)  # [B, L, H, d]
      >>> attention_implementation(x16, x16, x16, multi_head=True, backend="gpu")
      'cudnn'
    """
    if backend is not None:
        _checks.check_choice(backend, "backend", BACKENDS)
    return _check_and_choose(
        q, k, v, mask=mask, bias=bias, key_lengths=key_lengths, is_causal=is_causal,
        scale=scale, implementation=implementation, block_size=None, precision=None,
        dropout=_check_dropout(dropout_rate, None, True, need_rng=False), heads=multi_head,
        backend=backend).path
