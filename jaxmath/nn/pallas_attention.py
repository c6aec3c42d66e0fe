r"""Flash attention as Pallas kernels for NVIDIA GPUs (Triton), forward and backward.

The GPU counterpart of :mod:`jaxmath.nn.blockwise_attention`, for the calls that
jax.nn's cuDNN kernel refuses: float32 inputs, boolean masks and biases of any
broadcast shape, per-batch key lengths, ``d != dv``, ``Lq != Lk`` with a causal
mask. It computes

.. math:: O = \mathrm{softmax}(s\, Q K^T + B)\, V

with the recurrence of FlashAttention-2 (Dao, 2023): one program per block of
``block_q`` queries (and per batch element) visits the key blocks
:math:`j = 1, 2, \dots` in turn, keeping per row a running maximum :math:`m`,
normaliser :math:`\ell` and unnormalised output :math:`o`. In base 2 (``exp2`` is
the GPU's native exponential), with :math:`c = \log_2 e`:

.. math::
   S_j = c\,(s\, Q_i K_j^T + B_{ij}), \qquad
   m_j = \max\big(m_{j-1}, \max_k S_{j,k}\big), \qquad
   P_j = 2^{S_j - m_j},

   \ell_j = 2^{m_{j-1} - m_j}\, \ell_{j-1} + \textstyle\sum_k P_{j,k}, \qquad
   o_j = 2^{m_{j-1} - m_j}\, o_{j-1} + P_j V_j,

then :math:`O_i = o / \ell` and the log-sum-exp :math:`L_i = m + \log_2 \ell`.
Pairs that are not attended get :math:`S = -\infty`; :math:`m` starts at the most
negative finite float32, so a row that attends to no key ends with
:math:`\ell = 0` and gets zeros (and :math:`L = +\infty`), never NaN. Attention
dropout (keep pattern :math:`M`, rate :math:`p`) multiplies the normalised weights
by :math:`Z = M / (1 - p)`: :math:`o_j` accumulates :math:`(Z_{ij} \odot P_j) V_j`
while :math:`\ell` sums the undropped :math:`P_j`.

The backward pass (a ``jax.custom_vjp``) recomputes :math:`P = 2^{S - L}` block by
block from the saved :math:`L` instead of storing it. With
:math:`\delta = \mathrm{rowsum}(dO \odot O)` and
:math:`dS = P \odot (dO\, V^T - \delta)`, one kernel holds a key block and loops
over query blocks for :math:`dV_j = \sum_i P_{ij}^T dO_i` and
:math:`dK_j = s \sum_i dS_{ij}^T Q_i`; a second holds a query block and loops over
key blocks for :math:`dQ_i = s \sum_j dS_{ij} K_j`. The bias gradient is
:math:`dB = dS` summed over the axes where the bias broadcasts. With dropout,
:math:`dV_j = \sum_i (Z_{ij} \odot P_{ij})^T dO_i` and
:math:`dS = P \odot (Z \odot dO\, V^T - \delta)`, with the same :math:`\delta`.

Work skipped: key blocks entirely above the causal diagonal or past the key length
of the batch element, and their mirror images in the backward pass; the position
masks (causal, key length, padding) are applied only to the blocks that straddle
them. Every length is accepted: sequences are padded to the block size and head
sizes to a power of two of at least 16 (what ``tl.dot`` needs), and the padding is
masked.

Memory: O((Lq + Lk)·d) per batch element and head in the forward and backward
passes, plus the inputs. A mask, bias or dropout keep pattern is read through block
index maps, so its broadcast axes are never materialised. The bias gradient is the exception: it
holds the float32 gradient per batch element before the sum over broadcast batch
axes, ``B·Lq·Lk·4`` bytes for a ``[Lq, Lk]`` bias (``B`` = the product of the
leading axes), ``B·Lk·4`` for ``[1, Lk]`` and ``B·Lq·4`` for ``[Lq, 1]``.

Precision: softmax statistics, accumulators and dS are float32 for every input
dtype; the matrix products run at ``precision``: by default TF32 for float32
inputs on NVIDIA GPUs, and with ``"highest"`` Triton's IEEE float32 products,
which do not use tensor cores.

Not supported: forward-mode differentiation (``jax.jvp``; ``custom_vjp``), a traced
``scale`` (it is folded into the kernel; pass a Python number), head sizes above
:data:`MAX_HEAD_SIZE`, float64. Written for NVIDIA Hopper GPUs (H100/H200) through
the Pallas Triton backend, following the structure of JAX's own
``jax.experimental.pallas.ops.gpu.attention``; elsewhere it runs in Pallas's
interpret mode (slowly: that is for tests).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

#: Input dtypes the kernel takes (q, k, v and bias).
DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
#: The largest head size ``d`` or ``dv`` the kernel takes.
MAX_HEAD_SIZE = 256
#: The smallest block and padded head size: ``tl.dot`` needs M, N, K >= 16.
MIN_BLOCK = 16
_LOG2E = math.log2(math.e)
_F32_MIN = float(jnp.finfo(jnp.float32).min)


# --------------------------------------------------------------------------- tiles

@dataclasses.dataclass(frozen=True)
class _Tiles:
    """Block sizes and Triton launch parameters of one kernel.

    Forward and dQ kernels hold ``block_q`` queries and step over ``block_k`` keys;
    the dK/dV kernel holds ``block_k`` keys and steps over ``block_q`` queries.
    """

    block_q: int
    block_k: int
    num_warps: int
    num_stages: int


def _default_tiles(itemsize: int, d: int) -> tuple[_Tiles, _Tiles, _Tiles]:
    """Forward, dK/dV and dQ tiles for an input itemsize and padded head size ``d``.

    Not timed on a GPU: starting points for an H100/H200 (228 KiB of shared memory
    and 64K 32-bit registers per SM) taken from JAX's Pallas reference kernel
    (128 x 128 forward blocks with 4 warps up to d = 64 and 8 above; 32 x 32 backward
    blocks; 2 stages) and Triton's fused-attention tutorial (128 x 64 forward blocks;
    for d = 64, dK/dV kernels holding 128 keys and dQ kernels holding 128 queries,
    stepping by 32). The forward keeps Q (block_q x d) and its float32 accumulator
    (block_q x dv) resident and pipelines ``num_stages`` K and V blocks: at 2 bytes,
    d = 128, 128 x 64 and 3 stages that is 32 KiB + 3 x 32 KiB of shared memory.
    Float32 inputs and d = 256 double the bytes of a block, so their blocks are
    halved. The backward kernels keep their resident inputs and float32 accumulators
    (K, V, dK, dV or Q, dO, dQ) in registers, hence resident blocks that shrink as d
    grows; the dK/dV kernel, with four such blocks, gets 8 warps. Checked by compiling
    the kernels' Triton IR for sm_90 with Triton 3.9 (not the copy inside XLA): every
    kernel fits in shared memory and none spills registers, except the dK/dV kernel
    at ``precision="highest"`` (88 bytes of stack), which with 4 warps spilled 8 to
    280 bytes per thread. Measurements on an H200 should replace these numbers.
    """
    if itemsize == 2 and d <= 128:
        fwd, stages = (128, 64), 3
        dkv, dq = ((32, 128), (128, 32)) if d <= 64 else ((32, 64), (64, 32))
    elif itemsize == 2 or d <= 128:
        fwd, dkv, dq, stages = (64, 32), (32, 32), (32, 32), 2
    else:  # float32, d = 256
        fwd, dkv, dq, stages = (32, 32), (16, 32), (32, 16), 2
    warps = 4 if d <= 64 else 8
    return _Tiles(*fwd, warps, stages), _Tiles(*dkv, 8, 2), _Tiles(*dq, 4, 2)


def _check_block(block: int | None, name: str) -> None:
    if block is None:
        return
    if (not isinstance(block, int) or isinstance(block, bool) or block < MIN_BLOCK
            or block & (block - 1)):
        raise ValueError(f"{name} must be a power of two >= {MIN_BLOCK} (a Triton block "
                         f"size), got {block!r}")


def _fit(block: int, length: int) -> int:
    """``block`` lowered to the smallest power of two (>= 16) that covers ``length``."""
    return min(block, max(MIN_BLOCK, pl.next_power_of_2(length)))


def _padded_head(d: int) -> int:
    return max(MIN_BLOCK, pl.next_power_of_2(d))


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


# --------------------------------------------------------------------------- plan

@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static description of one call (hashable: the custom_vjp's static argument)."""

    lead: tuple[int, ...]  # the leading axes [...] of q, flattened to B in the kernels
    lq: int
    lk: int
    scale: float
    is_causal: bool
    precision: lax.PrecisionLike
    interpret: bool
    fwd: _Tiles
    dkv: _Tiles
    dq: _Tiles
    dropout_rate: float = 0.0

    @property
    def lq_pad(self) -> int:
        return _round_up(self.lq, max(self.fwd.block_q, self.dkv.block_q, self.dq.block_q))

    @property
    def lk_pad(self) -> int:
        return _round_up(self.lk, max(self.fwd.block_k, self.dkv.block_k, self.dq.block_k))

    def dot(self, a: jax.Array, b: jax.Array, trans_a: bool = False,
            trans_b: bool = False) -> jax.Array:
        """``a @ b`` (operands optionally transposed), float32 accumulation."""
        return plgpu.dot(a, b, trans_a=trans_a, trans_b=trans_b, precision=self.precision)

    def call(self, kernel, tiles: _Tiles, grid, in_specs, out_specs, out_shape, name: str):
        return pl.pallas_call(
            functools.partial(kernel, plan=self), grid=grid, in_specs=in_specs,
            out_specs=out_specs, out_shape=out_shape, interpret=self.interpret, name=name,
            compiler_params=plgpu.CompilerParams(num_warps=tiles.num_warps,
                                                 num_stages=tiles.num_stages))


def _make_plan(q, k, v, scale, is_causal, block_q, block_k, precision, interpret,
               dropout_rate) -> _Plan:
    lq, lk = q.shape[-2], k.shape[-2]
    d = max(_padded_head(q.shape[-1]), _padded_head(v.shape[-1]))
    tiles = _default_tiles(jnp.dtype(q.dtype).itemsize, d)
    tiles = tuple(_Tiles(_fit(block_q or t.block_q, lq), _fit(block_k or t.block_k, lk),
                         t.num_warps, t.num_stages) for t in tiles)
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    return _Plan(tuple(q.shape[:-2]), lq, lk, float(scale), bool(is_causal), precision,
                 bool(interpret), *tiles, float(dropout_rate))


# --------------------------------------------------------------------------- block helpers

def _i32(x) -> jax.Array:
    return jnp.asarray(x, jnp.int32)


def _div(a, b: int) -> jax.Array:
    """``a // b`` for non-negative int32 ``a`` (also under ``jax_enable_x64``)."""
    return lax.div(_i32(a), _i32(b))


def _cdiv(a, b: int) -> jax.Array:
    return _div(a + (b - 1), b)


def _select(pred, a, b) -> jax.Array:
    """Scalar ``a if pred else b`` as int32. (Pallas's Triton lowering gives a weakly
    typed literal in ``jnp.where`` the predicate's type, bool.)"""
    return lax.select(pred, _i32(a), _i32(b))


def _batch_index(b: jax.Array, lead: tuple[int, ...], sub: tuple[int, ...]) -> list:
    """Index into the leading axes ``sub`` (each equal to ``lead``'s or 1) of flat batch ``b``."""
    index = []
    for n, m in zip(reversed(lead), reversed(sub), strict=True):
        index.append(lax.rem(b, _i32(n)) if m != 1 else 0)
        b = _div(b, n)
    return index[::-1]


def _plane_spec(x: jax.Array | None, lead: tuple[int, ...]) -> pl.BlockSpec | None:
    """Block of a mask or bias ``[...|1, Lq|1, Lk|1]``: its whole plane for batch ``b``.

    Broadcast leading axes are indexed at 0, so they are read, never materialised.
    """
    if x is None:
        return None
    return pl.BlockSpec((None,) * len(lead) + x.shape[-2:],
                        lambda _, b: (*_batch_index(b, lead, x.shape[:-2]), 0, 0))


def _tile(ref, r0, nr: int, c0, nc: int) -> jax.Array:
    """``ref[r0:r0 + nr, c0:c0 + nc]``; a size-1 (broadcast) axis stays size 1."""
    rows = pl.ds(r0, nr) if ref.shape[-2] > 1 else pl.ds(0, 1)
    cols = pl.ds(c0, nc) if ref.shape[-1] > 1 else pl.ds(0, 1)
    return ref[rows, cols]


def _key_limit(plan: _Plan, len_ref, b):
    """Keys ``j >= limit`` of batch element ``b`` are not attended (padding, key_lengths)."""
    return plan.lk if len_ref is None else len_ref[b]


def _position_masked(plan: _Plan, len_ref) -> bool:
    return plan.is_causal or len_ref is not None or plan.lk_pad != plan.lk


def _logits(plan: _Plan, q, k, bias_ref, mask_ref, r0, c0, limit, masked: bool,
            keys_first: bool = False):
    """Base-2 logits ``log2(e) (s q k^T + b)`` of the block at rows ``r0``, keys ``c0``:
    ``[queries, keys]``, or ``[keys, queries]`` if ``keys_first``.

    ``-inf`` where the pair is not attended: the user's mask always, the position
    masks (key limit, causal) when ``masked``.
    """
    nr, nc = q.shape[0], k.shape[0]
    s = plan.dot(k, q, trans_b=True) if keys_first else plan.dot(q, k, trans_b=True)
    s = s * (plan.scale * _LOG2E)

    def tile(ref):
        t = _tile(ref, r0, nr, c0, nc)
        return t.T if keys_first else t

    if bias_ref is not None:
        s = s + tile(bias_ref).astype(jnp.float32) * _LOG2E
    keep = None if mask_ref is None else tile(mask_ref)
    if masked:
        rows, cols = r0 + lax.iota(jnp.int32, nr), c0 + lax.iota(jnp.int32, nc)
        rows, cols = (rows[None, :], cols[:, None]) if keys_first else (rows[:, None],
                                                                        cols[None, :])
        pos = cols < limit
        if plan.is_causal:
            pos = pos & (cols <= rows)
        keep = pos if keep is None else keep & pos
    return s if keep is None else jnp.where(keep, s, -jnp.inf)


def _dropout(plan: _Plan, drop_ref, r0, nr: int, c0, nc: int, keys_first: bool = False):
    """The float32 dropout multiplier ``M / (1 - p)`` of the block at rows ``r0``, keys
    ``c0`` (``[queries, keys]``, or ``[keys, queries]`` if ``keys_first``); None without
    dropout."""
    if drop_ref is None:
        return None
    t = _tile(drop_ref, r0, nr, c0, nc)
    t = t.T if keys_first else t
    return t.astype(jnp.float32) * (1.0 / (1.0 - plan.dropout_rate))


def _key_spans(plan: _Plan, t: _Tiles, i, limit):
    """``(j_mid, j_end)``: query block ``i`` sees key blocks ``[0, j_end)``, of which
    ``[0, j_mid)`` lie wholly inside the position masks (no masking needed)."""
    r0 = i * t.block_q
    end = _select(r0 < plan.lq, limit, 0)  # a block of padding rows sees nothing
    full = _div(end, t.block_k)
    if plan.is_causal:
        end = jnp.minimum(end, r0 + t.block_q)
        full = jnp.minimum(full, _div(r0 + 1, t.block_k))
    j_end = _cdiv(end, t.block_k)
    return jnp.minimum(full, j_end), j_end


def _query_spans(plan: _Plan, t: _Tiles, j, limit):
    """``(i_start, i_mid, i_end)``: key block ``j`` is seen by query blocks
    ``[i_start, i_end)``, of which ``[i_mid, i_end)`` need no position mask."""
    c0, c1 = j * t.block_k, (j + 1) * t.block_k
    i_end = _cdiv(plan.lq, t.block_q)
    start, mid = jnp.zeros_like(j), jnp.zeros_like(j)
    if plan.is_causal:
        start, mid = _div(c0, t.block_q), _cdiv(c1 - 1, t.block_q)
    mid = _select(c1 > limit, i_end, mid)  # the key limit cuts this block: mask it all
    start = _select(c0 >= limit, i_end, jnp.minimum(start, i_end))
    return start, jnp.clip(mid, start, i_end), i_end


# --------------------------------------------------------------------------- kernels

def _forward_kernel(q_ref, k_ref, v_ref, bias_ref, mask_ref, len_ref, drop_ref, o_ref, lse_ref,
                    *, plan: _Plan):
    t = plan.fwd
    i, b = pl.program_id(0), pl.program_id(1)
    limit = _key_limit(plan, len_ref, b)
    q = q_ref[...]

    def step(masked):
        def body(j, carry):
            o, m, l = carry
            keys = pl.ds(j * t.block_k, t.block_k)
            s = _logits(plan, q, k_ref[keys, :], bias_ref, mask_ref, i * t.block_q,
                        j * t.block_k, limit, masked)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            alpha = jnp.exp2(m - m_new)
            p = jnp.exp2(s - m_new[:, None])
            l = alpha * l + jnp.sum(p, axis=-1)
            z = _dropout(plan, drop_ref, i * t.block_q, t.block_q, j * t.block_k, t.block_k)
            v = v_ref[keys, :]
            o = alpha[:, None] * o + plan.dot((p if z is None else p * z).astype(v.dtype), v)
            return o, m_new, l
        return body

    j_mid, j_end = _key_spans(plan, t, i, limit)
    carry = (jnp.zeros((t.block_q, v_ref.shape[-1]), jnp.float32),
             jnp.full((t.block_q,), _F32_MIN, jnp.float32), jnp.zeros((t.block_q,), jnp.float32))
    carry = lax.fori_loop(0, j_mid, step(False), carry)
    o, m, l = lax.fori_loop(j_mid, j_end, step(_position_masked(plan, len_ref)), carry)
    empty = l == 0
    l = jnp.where(empty, 1.0, l)
    o_ref[...] = (o / l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, jnp.inf, m + jnp.log2(l))


def _dkv_kernel(q_ref, k_ref, v_ref, bias_ref, mask_ref, len_ref, drop_ref, do_ref, lse_ref,
                delta_ref, dk_ref, dv_ref, dbias_ref, *, plan: _Plan):
    """dK, dV (and dB summed over queries for a ``[..., 1, Lk]`` bias) of key block ``j``."""
    t = plan.dkv
    j, b = pl.program_id(0), pl.program_id(1)
    limit = _key_limit(plan, len_ref, b)
    k, v = k_ref[...], v_ref[...]

    def step(masked):
        def body(i, carry):
            dk, dv, db = carry
            rows = pl.ds(i * t.block_q, t.block_q)
            q, do = q_ref[rows, :], do_ref[rows, :]
            s_t = _logits(plan, q, k, bias_ref, mask_ref, i * t.block_q, j * t.block_k,
                          limit, masked, keys_first=True)
            p_t = jnp.exp2(s_t - lse_ref[rows][None, :])
            dp_t = plan.dot(v, do, trans_b=True)
            z_t = _dropout(plan, drop_ref, i * t.block_q, t.block_q, j * t.block_k, t.block_k,
                           keys_first=True)
            if z_t is None:
                dv = dv + plan.dot(p_t.astype(do.dtype), do)
            else:
                dv = dv + plan.dot((p_t * z_t).astype(do.dtype), do)
                dp_t = dp_t * z_t
            ds_t = p_t * (dp_t - delta_ref[rows][None, :])
            dk = dk + plan.dot(ds_t.astype(q.dtype), q)
            return dk, dv, None if db is None else db + jnp.sum(ds_t, axis=1)
        return body

    i_start, i_mid, i_end = _query_spans(plan, t, j, limit)
    zeros = functools.partial(jnp.zeros, dtype=jnp.float32)
    carry = (zeros(k.shape), zeros(v.shape), None if dbias_ref is None else zeros(t.block_k))
    carry = lax.fori_loop(i_start, i_mid, step(_position_masked(plan, len_ref)), carry)
    dk, dv, db = lax.fori_loop(i_mid, i_end, step(False), carry)
    dk_ref[...] = (dk * plan.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)
    if dbias_ref is not None:
        dbias_ref[...] = db


def _dq_kernel(q_ref, k_ref, v_ref, bias_ref, mask_ref, len_ref, drop_ref, do_ref, lse_ref,
               delta_ref, dq_ref, dbias_ref, *, plan: _Plan):
    """dQ of query block ``i``, and dB: its dS blocks (``[..., Lq, Lk]`` bias, padded with
    zeros where no key is visited) or their row sums (``[..., Lq, 1]`` or ``[..., 1, 1]``)."""
    t = plan.dq
    i, b = pl.program_id(0), pl.program_id(1)
    limit = _key_limit(plan, len_ref, b)
    q, do = q_ref[...], do_ref[...]
    lse, delta = lse_ref[...][:, None], delta_ref[...][:, None]
    blocks = dbias_ref is not None and dbias_ref.ndim == 2

    def step(masked):
        def body(j, carry):
            dq, db = carry
            keys = pl.ds(j * t.block_k, t.block_k)
            k, v = k_ref[keys, :], v_ref[keys, :]
            s = _logits(plan, q, k, bias_ref, mask_ref, i * t.block_q, j * t.block_k, limit,
                        masked)
            p = jnp.exp2(s - lse)
            dp = plan.dot(do, v, trans_b=True)
            z = _dropout(plan, drop_ref, i * t.block_q, t.block_q, j * t.block_k, t.block_k)
            ds = p * ((dp if z is None else dp * z) - delta)
            if blocks:
                dbias_ref[:, keys] = ds
            elif db is not None:
                db = db + jnp.sum(ds, axis=1)
            return dq + plan.dot(ds.astype(k.dtype), k), db
        return body

    j_mid, j_end = _key_spans(plan, t, i, limit)
    rows_db = dbias_ref is not None and not blocks
    carry = (jnp.zeros(q.shape, jnp.float32),
             jnp.zeros((t.block_q,), jnp.float32) if rows_db else None)
    carry = lax.fori_loop(0, j_mid, step(False), carry)
    dq, db = lax.fori_loop(j_mid, j_end, step(_position_masked(plan, len_ref)), carry)
    dq_ref[...] = (dq * plan.scale).astype(dq_ref.dtype)
    if blocks:
        def zero(j, _):
            dbias_ref[:, pl.ds(j * t.block_k, t.block_k)] = jnp.zeros(
                (t.block_q, t.block_k), jnp.float32)
        lax.fori_loop(j_end, plan.lk_pad // t.block_k, zero, None)
    elif rows_db:
        dbias_ref[...] = db


# --------------------------------------------------------------------------- pallas calls

def _inputs(plan: _Plan, q_spec, k_spec, q, k, v, bias, mask, lengths, dropout):
    """Operands and block specs shared by the three kernels (grid ``(blocks, B)``)."""
    specs = [q_spec(q.shape[-1]), k_spec(k.shape[-1]), k_spec(v.shape[-1]),
             _plane_spec(bias, plan.lead), _plane_spec(mask, plan.lead),
             None if lengths is None else pl.BlockSpec(lengths.shape, lambda *_: (0,)),
             _plane_spec(dropout, plan.lead)]
    return [q, k, v, bias, mask, lengths, dropout], specs


def _row_spec(rows: int, cols: int | None = None):
    """``[B, L, cols]`` (or ``[B, L]``) in blocks of ``rows`` rows along the grid's axis 0."""
    if cols is None:
        return pl.BlockSpec((None, rows), lambda i, b: (b, i))
    return pl.BlockSpec((None, rows, cols), lambda i, b: (b, i, 0))


def _whole_spec(length: int, cols: int | None = None):
    """``[B, L, cols]`` (or ``[B, L]``): the whole sequence of batch element ``b``."""
    if cols is None:
        return pl.BlockSpec((None, length), lambda _, b: (b, 0))
    return pl.BlockSpec((None, length, cols), lambda _, b: (b, 0, 0))


def _forward(plan: _Plan, q, k, v, bias, mask, lengths, dropout):
    """Padded output ``[B, Lq_pad, dv_pad]`` and base-2 log-sum-exp ``[B, Lq_pad]``."""
    t, nb = plan.fwd, q.shape[0]
    args, specs = _inputs(plan, functools.partial(_row_spec, t.block_q),
                          functools.partial(_whole_spec, plan.lk_pad), q, k, v, bias, mask,
                          lengths, dropout)
    out_shape = [jax.ShapeDtypeStruct((nb, plan.lq_pad, v.shape[-1]), v.dtype),
                 jax.ShapeDtypeStruct((nb, plan.lq_pad), jnp.float32)]
    out_specs = [_row_spec(t.block_q, v.shape[-1]), _row_spec(t.block_q)]
    return plan.call(_forward_kernel, t, (plan.lq_pad // t.block_q, nb), specs, out_specs,
                     out_shape, "pallas_attention_forward")(*args)


def _bias_grad_layout(bias: jax.Array | None) -> str | None:
    """How the kernels return the bias gradient: ``'blocks'``, dS itself (dQ kernel), for
    a ``[..., Lq, Lk]`` bias; ``'cols'``, its sums over queries (dK/dV kernel), for
    ``[..., 1, Lk]``; ``'rows'``, its sums over keys (dQ kernel), for ``[..., Lq|1, 1]``."""
    if bias is None:
        return None
    if bias.shape[-1] == 1:
        return "rows"
    return "cols" if bias.shape[-2] == 1 else "blocks"


def _optional(cond: bool, shape: tuple[int, ...], spec: pl.BlockSpec):
    """A float32 output of the given shape and block spec if ``cond``, else no output."""
    return (jax.ShapeDtypeStruct(shape, jnp.float32), spec) if cond else (None, None)


def _dkv(plan: _Plan, q, k, v, bias, mask, lengths, dropout, do, lse, delta):
    t, nb = plan.dkv, q.shape[0]
    args, specs = _inputs(plan, functools.partial(_whole_spec, plan.lq_pad),
                          functools.partial(_row_spec, t.block_k), q, k, v, bias, mask, lengths,
                          dropout)
    args += [do, lse, delta]
    specs += [_whole_spec(plan.lq_pad, do.shape[-1]), _whole_spec(plan.lq_pad),
              _whole_spec(plan.lq_pad)]
    db_shape, db_spec = _optional(_bias_grad_layout(bias) == "cols", (nb, plan.lk_pad),
                                  _row_spec(t.block_k))
    out_shape = [jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype),
                 db_shape]
    out_specs = [_row_spec(t.block_k, k.shape[-1]), _row_spec(t.block_k, v.shape[-1]), db_spec]
    return plan.call(_dkv_kernel, t, (plan.lk_pad // t.block_k, nb), specs, out_specs,
                     out_shape, "pallas_attention_dkv")(*args)


def _dq(plan: _Plan, q, k, v, bias, mask, lengths, dropout, do, lse, delta):
    t, nb = plan.dq, q.shape[0]
    args, specs = _inputs(plan, functools.partial(_row_spec, t.block_q),
                          functools.partial(_whole_spec, plan.lk_pad), q, k, v, bias, mask,
                          lengths, dropout)
    args += [do, lse, delta]
    specs += [_row_spec(t.block_q, do.shape[-1]), _row_spec(t.block_q), _row_spec(t.block_q)]
    layout = _bias_grad_layout(bias)
    if layout == "blocks":
        db_shape, db_spec = _optional(True, (nb, plan.lq_pad, plan.lk_pad),
                                      _row_spec(t.block_q, plan.lk_pad))
    else:
        db_shape, db_spec = _optional(layout == "rows", (nb, plan.lq_pad), _row_spec(t.block_q))
    out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype), db_shape]
    out_specs = [_row_spec(t.block_q, q.shape[-1]), db_spec]
    return plan.call(_dq_kernel, t, (plan.lq_pad // t.block_q, nb), specs, out_specs,
                     out_shape, "pallas_attention_dq")(*args)


def _sum_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``x`` summed over the axes where ``shape`` has 1 (the axes a bias broadcast along)."""
    axes = tuple(a for a, n in enumerate(shape) if n == 1 and x.shape[a] != 1)
    return jnp.sum(x, axis=axes, keepdims=True)


def _bias_grad(plan: _Plan, bias: jax.Array, db_dkv, db_dq) -> jax.Array:
    """The kernels' ``[B, ...]`` float32 dS (or its sums) summed to the bias's shape."""
    layout = _bias_grad_layout(bias)
    if layout == "cols":
        db = db_dkv[:, None, :]
    else:
        db = db_dq if layout == "blocks" else db_dq[:, :, None]
    return _sum_to(db.reshape(*plan.lead, *db.shape[1:]), bias.shape).astype(bias.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(plan, q, k, v, bias, mask, lengths, dropout):
    return _forward(plan, q, k, v, bias, mask, lengths, dropout)[0]


def _attend_fwd(plan, q, k, v, bias, mask, lengths, dropout):
    o, lse = _forward(plan, q, k, v, bias, mask, lengths, dropout)
    return o, (q, k, v, bias, mask, lengths, dropout, o, lse)


def _attend_bwd(plan, res, do):
    inputs, (o, lse), bias = res[:7], res[7:], res[3]
    # delta = rowsum(dO * O) with the dropped O: rowsum(P * Z * dO V^T) also with dropout.
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=-1)
    dk, dv, db_dkv = _dkv(plan, *inputs, do, lse, delta)
    dq, db_dq = _dq(plan, *inputs, do, lse, delta)
    dbias = None if bias is None else _bias_grad(plan, bias, db_dkv, db_dq)
    return dq, dk, dv, dbias, None, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


# --------------------------------------------------------------------------- public

def _pad_to(x: jax.Array | None, sizes: tuple[int, ...], value=0) -> jax.Array | None:
    """Pad the trailing axes of ``x`` at the end to ``sizes``; size-1 axes stay."""
    if x is None:
        return None
    widths = [(0, 0)] * (x.ndim - len(sizes))
    widths += [(0, 0 if n == 1 else s - n) for n, s in zip(x.shape[-len(sizes):], sizes,
                                                           strict=True)]
    return x if not any(w for _, w in widths) else jnp.pad(x, widths, constant_values=value)


def _full_rank(x: jax.Array | None, ndim: int) -> jax.Array | None:
    return None if x is None else x.reshape((1,) * (ndim - x.ndim) + x.shape)


def _kernel_operands(plan: _Plan, q, k, v, bias, mask, key_lengths, dropout) -> tuple:
    """The operands as the kernels take them: q, k, v as ``[B, L_pad, d_pad]`` (zero
    padding), bias, mask and dropout keep pattern of rank ``len(lead) + 2`` padded along
    their full sequence axes, key lengths as ``[B]`` int32 clipped to ``[0, Lk]``."""
    nb, rank = math.prod(plan.lead), len(plan.lead) + 2

    def rows(x, length, pad):
        return _pad_to(x.reshape(nb, length, x.shape[-1]), (pad, _padded_head(x.shape[-1])))

    lengths = None
    if key_lengths is not None:
        lengths = jnp.clip(jnp.broadcast_to(key_lengths, plan.lead), 0, plan.lk)
        lengths = lengths.reshape(nb).astype(jnp.int32)
    return (rows(q, plan.lq, plan.lq_pad), rows(k, plan.lk, plan.lk_pad),
            rows(v, plan.lk, plan.lk_pad),
            _pad_to(_full_rank(bias, rank), (plan.lq_pad, plan.lk_pad)),
            _pad_to(_full_rank(mask, rank), (plan.lq_pad, plan.lk_pad), False), lengths,
            _pad_to(_full_rank(dropout, rank), (plan.lq_pad, plan.lk_pad), False))


def pallas_supported(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None,
                     mask: jax.Array | None = None, key_lengths: jax.Array | None = None, *,
                     scale: float | jax.Array | None = None,
                     backend: str | None = None) -> str | None:
    """Why :func:`pallas_attention` should not take this call, or None if it should.

    ``backend`` defaults to JAX's default backend: elsewhere than ``'gpu'`` the kernel
    only runs in (slow) interpret mode. ``scale=None`` stands for the default
    ``1/sqrt(d)``, a Python number. The shapes are assumed checked by
    :func:`jaxmath.nn.attention.attention`.

    Example:
      >>> x = jnp.zeros((2, 8, 64))
      >>> print(pallas_supported(x, x, x, scale=0.125, backend="gpu"))
      None
      >>> pallas_supported(x, x, x, scale=jnp.float32(0.125), backend="gpu")
      'the Pallas kernel needs scale as a Python number, got an array'
    """
    backend = jax.default_backend() if backend is None else backend
    if backend != "gpu":
        return (f"the Pallas kernel is compiled for NVIDIA GPUs (Triton), and the backend "
                f"is {backend!r}")
    names = ", ".join(str(t) for t in DTYPES)
    for x, name in ((q, "q"), (k, "k"), (v, "v"), (bias, "bias")):
        if x is not None and jnp.dtype(x.dtype) not in DTYPES:
            return f"the Pallas kernel takes {names}, got {name}.dtype={x.dtype}"
    if not q.dtype == k.dtype == v.dtype:
        return f"the Pallas kernel needs one dtype for q, k, v, got {q.dtype}, {k.dtype}, {v.dtype}"
    if max(q.shape[-1], v.shape[-1]) > MAX_HEAD_SIZE:
        return (f"the Pallas kernel takes head sizes up to {MAX_HEAD_SIZE}, got "
                f"d={q.shape[-1]}, dv={v.shape[-1]}")
    if scale is not None and not isinstance(scale, int | float):
        return "the Pallas kernel needs scale as a Python number, got an array"
    if mask is not None and mask.dtype != jnp.bool_:
        return f"the Pallas kernel takes a boolean mask, got {mask.dtype}"
    if key_lengths is not None and not jnp.issubdtype(key_lengths.dtype, jnp.integer):
        return f"the Pallas kernel takes integer key_lengths, got {key_lengths.dtype}"
    return None


def pallas_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None,
                     mask: jax.Array | None = None, key_lengths: jax.Array | None = None, *,
                     scale: float, is_causal: bool = False, block_q: int | None = None,
                     block_k: int | None = None, precision: lax.PrecisionLike = None,
                     interpret: bool | None = None, dropout_mask: jax.Array | None = None,
                     dropout_rate: float = 0.0) -> jax.Array:
    r"""Attention by the Pallas flash-attention kernels of the module docstring.

    A kernel of ``attention()`` for GPUs; the arguments must already be checked and
    consistent, as for :func:`~jaxmath.nn.blockwise_attention.blockwise_attention`:
    ``q`` ``[..., Lq, d]``, ``k`` ``[..., Lk, d]`` and ``v`` ``[..., Lk, dv]`` with the
    same leading axes ``...`` (broadcast them first) and one dtype (float32, bfloat16
    or float16; see :func:`pallas_supported`); ``bias`` (float) and ``mask`` (bool,
    True = attend) broadcastable to ``[..., Lq, Lk]`` (of rank ``q.ndim``, or lower:
    size-1 leading axes are added), whose broadcast axes are read, never
    materialised; ``key_lengths`` (int)
    broadcastable to ``[...]``: keys ``j >= key_lengths`` are not attended.
    ``is_causal``: query ``i`` attends to keys ``j <= i`` (top-left aligned).

    Args:
      scale: the multiplier :math:`s` of :math:`QK^T`, a Python number (it is
        compiled into the kernel; a traced scale raises TypeError).
      block_q, block_k: powers of two >= 16 used by all three kernels (the dK/dV
        kernel holds ``block_k`` keys and steps over ``block_q`` queries); default:
        per kernel, dtype and head size (see ``_default_tiles``). Each is lowered to
        the smallest power of two (>= 16) that covers its sequence.
      precision: of every matrix product in the kernels, forward and backward: None
        is the backend's default (TF32 for float32 inputs on NVIDIA GPUs),
        ``"highest"`` full float32.
      interpret: run the kernels in Pallas's interpret mode; default: when JAX's
        default backend is not ``'gpu'``.
      dropout_mask: attention dropout's keep pattern (bool, True = kept), broadcastable
        to ``[..., Lq, Lk]`` with the full ``Lq, Lk`` axes; read through block index
        maps like ``mask``, so its broadcast axes are never materialised.
      dropout_rate: the rate :math:`p` of that pattern: kept weights are multiplied by
        :math:`1 / (1 - p)` after normalisation (a Python float).

    Returns:
      ``[..., Lq, dv]`` in ``v``'s dtype; zeros, with zero gradients, for a query that
      attends to no key. Reverse-mode gradients reach ``q``, ``k``, ``v`` and ``bias``
      (summed over its broadcast axes).

    Raises:
      ValueError: a block size that is not a power of two >= 16.
      TypeError: a ``scale`` that is not a Python number.

    Example:
      >>> q = k = v = jnp.eye(3)
      >>> out = pallas_attention(q, k, v, scale=1.0, is_causal=True, interpret=True)
      >>> print(np.round(out, 6))
      [[1.       0.       0.      ]
       [0.268941 0.731059 0.      ]
       [0.211942 0.211942 0.576117]]
    """
    _check_block(block_q, "block_q")
    _check_block(block_k, "block_k")
    if not isinstance(scale, int | float) or isinstance(scale, bool):
        raise TypeError(f"scale must be a Python number for the Pallas kernel, got "
                        f"{type(scale).__name__}")
    plan = _make_plan(q, k, v, scale, is_causal, block_q, block_k, precision, interpret,
                      dropout_rate if dropout_mask is not None else 0.0)
    out = _attend(plan, *_kernel_operands(plan, q, k, v, bias, mask, key_lengths, dropout_mask))
    return out[:, :plan.lq, :v.shape[-1]].reshape(*plan.lead, plan.lq, v.shape[-1])


__all__ = ["DTYPES", "MAX_HEAD_SIZE", "pallas_attention", "pallas_supported"]
