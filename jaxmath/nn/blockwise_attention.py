r"""Memory-efficient attention: online softmax over key blocks, in pure JAX.

The kernel behind ``attention(..., implementation='blockwise')`` (Rabe & Staats,
"Self-attention does not need O(n^2) memory", 2021; Dao et al., FlashAttention
and FlashAttention-2). It computes exactly

.. math:: O = \mathrm{softmax}(s\, Q K^T + B)\, V

without ever holding the ``[Lq, Lk]`` scores. The queries are cut into blocks of
``block_q`` rows and the keys into blocks of ``block_k``; for one query block the
key blocks :math:`j = 1, 2, \dots` are visited in turn, keeping per query row a
running maximum :math:`m`, normaliser :math:`\ell` and unnormalised output
:math:`o` (the online-softmax recurrence):

.. math::
   S_j = s\, Q_i K_j^T + B_{ij}, \qquad
   m_j = \max\big(m_{j-1}, \max_k S_{j,k}\big), \qquad
   P_j = e^{S_j - m_j},

   \ell_j = e^{m_{j-1} - m_j}\, \ell_{j-1} + \textstyle\sum_k P_{j,k}, \qquad
   o_j = e^{m_{j-1} - m_j}\, o_{j-1} + P_j V_j,

and finally :math:`O_i = o / \ell` and the log-sum-exp :math:`L_i = m + \log\ell`.
Masked pairs get :math:`S = -\infty` (so :math:`P = 0`); :math:`m` starts at the
most negative finite number, so a row with no attended key ends with
:math:`\ell = 0` and gets zeros, never NaN.

Attention dropout with a keep pattern :math:`M` and rate :math:`p` multiplies the
weights after normalisation by :math:`Z = M / (1 - p)`: the accumulation becomes
:math:`o_j = e^{m_{j-1} - m_j}\, o_{j-1} + (Z_{ij} \odot P_j) V_j` while
:math:`\ell` still sums the undropped :math:`P_j` (the normaliser counts every key).

The backward pass is a ``jax.custom_vjp`` in the style of FlashAttention-2: it
saves only :math:`Q, K, V, B`, the output and :math:`L` (O(L·d) memory) and
recomputes each block of probabilities :math:`P = e^{S - L}` from them. For each
key block it loops over the query blocks that see it, accumulating
:math:`dV_j \mathrel{+}= P^T dO_i`, :math:`dS = P \odot (dO_i V_j^T - \delta_i)`
with :math:`\delta = \mathrm{rowsum}(dO \odot O)`, :math:`dK_j \mathrel{+}= s\, dS^T Q_i`,
:math:`dQ_i \mathrel{+}= s\, dS K_j` and :math:`dB_{ij} = dS`. The gradient with
respect to a (traced) scale is :math:`\sum dS \odot Q K^T`. With dropout,
:math:`dV_j \mathrel{+}= (Z \odot P)^T dO_i` and
:math:`dS = P \odot (Z \odot dO_i V_j^T - \delta_i)`; :math:`\delta` is unchanged,
since :math:`\mathrm{rowsum}(P \odot Z \odot dO\, V^T) = \mathrm{rowsum}(dO \odot O)`
for the dropped output :math:`O`.

Memory: forward and backward hold O((Lq + Lk)·d) per batch and head plus one
``[block_q, block_k]`` block of scores, against the O(Lq·Lk) of the scores
materialised by ``implementation='xla'``. A ``bias`` is an input the caller
already holds; its gradient has the size of the bias as passed (before
broadcasting), so a ``[Lq, Lk]`` bias costs O(Lq·Lk) in the backward pass. So is a
dropout keep pattern (boolean, read block by block, size-1 axes never copied).

Work skipped: with ``is_causal`` a query block visits only the key blocks at or
before its last row (about half of them), and with ``key_lengths`` no block lies
entirely past the longest key sequence; the backward pass skips the same blocks.
Any length is accepted: blocks are balanced (``block_q`` is lowered so that
``Lq`` splits into equal blocks) and the last block is padded and masked.

Only reverse-mode differentiation is defined (``jax.grad``, ``jax.vjp``);
forward mode (``jax.jvp``, ``jax.jacfwd``) raises, as for any ``custom_vjp``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

ArrayLike = jax.typing.ArrayLike

# Tuned on a 2-core x86 CPU (AMD EPYC) for B=1, H=8, d=64, float32, forward+backward
# (python -m benchmarks.attention --tune): on an idle machine 512 x 256 and 512 x 512
# took 0.94-0.96 s at L=4096 causal against 1.35-1.52 s for blocks of 128 or 256 (larger
# matrix products keep both cores busy), and 512 x 256 was ahead at L=1024 (86 ms vs
# 103 ms); 1024 or more was slower again. One block of scores is then 8 x 512 x 256 x 4
# bytes = 4 MiB.
DEFAULT_BLOCK_Q = 512
DEFAULT_BLOCK_K = 256


def block_sizes(lq: int, lk: int, block_q: int = DEFAULT_BLOCK_Q,
                block_k: int = DEFAULT_BLOCK_K) -> tuple[int, int]:
    """Balanced block sizes: the fewest blocks of at most ``block_q`` / ``block_k``.

    ``Lq = 130`` with ``block_q = 128`` gives two blocks of 65 (padded to 130)
    rather than blocks of 128 and 2 (padded to 256).
    """
    nq, nk = -(-lq // block_q), -(-lk // block_k)
    return -(-lq // nq), -(-lk // nk)


def _pad_axis(x: jax.Array | None, axis: int, size: int, value=0) -> jax.Array | None:
    """Pad ``x`` at the end of ``axis`` to ``size`` (no-op for None or broadcast axes)."""
    if x is None or x.shape[axis] in (1, size):
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis % x.ndim] = (0, size - x.shape[axis])
    return jnp.pad(x, widths, constant_values=value)


def _block(x: jax.Array | None, start: jax.Array, size: int, axis: int) -> jax.Array | None:
    """``x[..., start:start + size, ...]`` along ``axis``; broadcast (size-1) axes stay."""
    if x is None or x.shape[axis] == 1:
        return x
    return lax.dynamic_slice_in_dim(x, start, size, axis=axis % x.ndim)


def _add_block(acc: jax.Array, blk: jax.Array, i0: jax.Array, j0: jax.Array) -> jax.Array:
    """``acc[..., i0:, j0:] += blk``, first summing ``blk`` over ``acc``'s size-1 axes."""
    axes = tuple(a for a in range(acc.ndim) if acc.shape[a] == 1 and blk.shape[a] != 1)
    blk = jnp.sum(blk, axis=axes, keepdims=True).astype(acc.dtype)
    zero = jnp.zeros((), jnp.int32)
    starts = [zero] * (acc.ndim - 2) + [zero if acc.shape[-2] == 1 else i0.astype(jnp.int32),
                                        zero if acc.shape[-1] == 1 else j0.astype(jnp.int32)]
    return lax.dynamic_update_slice(acc, lax.dynamic_slice(acc, starts, blk.shape) + blk, starts)


class _Config:
    """Static description of one call: block sizes, lengths, causal flag, dtypes, precision
    and the dropout rate."""

    def __init__(self, lq: int, lk: int, bq: int, bk: int, is_causal: bool, prescale: bool,
                 precision: lax.PrecisionLike = None, dropout_rate: float = 0.0):
        self.lq, self.lk, self.bq, self.bk = lq, lk, bq, bk
        self.is_causal, self.prescale, self.precision = is_causal, prescale, precision
        self.dropout_rate = dropout_rate
        self.nq, self.nk = -(-lq // bq), -(-lk // bk)

    def _key(self):
        return (self.lq, self.lk, self.bq, self.bk, self.is_causal, self.prescale,
                self.precision, self.dropout_rate)

    def dot(self, spec: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
        """``jnp.einsum(spec, a, b)`` accumulated in ``dtype`` at the call's precision."""
        return jnp.einsum(spec, a, b, preferred_element_type=dtype, precision=self.precision)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, _Config) and self._key() == other._key()

    def key_blocks_end(self, i: jax.Array, kv_end: jax.Array) -> jax.Array:
        """One past the last key block that query block ``i`` attends to."""
        if not self.is_causal:
            return kv_end
        last_row = jnp.minimum((i + 1) * self.bq, self.lq) - 1
        return jnp.minimum(kv_end, last_row // self.bk + 1)

    def query_blocks_start(self, j: jax.Array, kv_end: jax.Array) -> jax.Array:
        """The first query block that attends to key block ``j`` (``nq`` if none does)."""
        none = j >= kv_end
        start = jnp.zeros_like(j)
        if self.is_causal:
            start = (j * self.bk) // self.bq
            none |= j * self.bk >= self.lq  # keys after the last query are never seen
        return jnp.where(none, self.nq, start)


def _kv_end(cfg: _Config, key_lengths: jax.Array | None) -> jax.Array:
    """Number of key blocks that hold at least one key within ``key_lengths``."""
    if key_lengths is None:
        return jnp.asarray(cfg.nk, jnp.int32)
    longest = jnp.clip(jnp.max(key_lengths), 0, cfg.lk).astype(jnp.int32)
    return (longest + cfg.bk - 1) // cfg.bk


def _both(a: jax.Array | None, b: jax.Array) -> jax.Array:
    return b if a is None else a & b


def _keep_t(cfg: _Config, i: jax.Array, j: jax.Array, mask: jax.Array | None,
            key_lengths: jax.Array | None) -> jax.Array | None:
    """Boolean ``[..., bk, bq]`` mask (keys by queries) of the pairs attended in block (i, j).

    None when every pair is attended. (Applying the causal mask only to the blocks
    across the diagonal was measured to save nothing on CPU, and doubles the code.)
    """
    keys = j * cfg.bk + lax.broadcasted_iota(jnp.int32, (cfg.bk, 1), 0)
    keep = None
    if cfg.nk * cfg.bk != cfg.lk:
        keep = keys < cfg.lk
    if cfg.is_causal:
        keep = _both(keep, keys <= i * cfg.bq + lax.broadcasted_iota(jnp.int32, (1, cfg.bq), 1))
    if key_lengths is not None:
        keep = _both(keep, keys < key_lengths[..., None, None])
    if mask is not None:
        blk = _block(_block(mask, i * cfg.bq, cfg.bq, -2), j * cfg.bk, cfg.bk, -1)
        keep = _both(keep, jnp.swapaxes(blk, -1, -2))
    return keep


def _dropout(cfg: _Config, i: jax.Array, j: jax.Array, dropout: jax.Array | None, dtype,
             keys_first: bool = False) -> jax.Array | None:
    """The dropout multiplier ``Z = M / (1 - p)`` of block (i, j), ``[..., bq, bk]`` (or
    keys by queries), or None without dropout."""
    if dropout is None:
        return None
    blk = _block(_block(dropout, i * cfg.bq, cfg.bq, -2), j * cfg.bk, cfg.bk, -1)
    blk = jnp.swapaxes(blk, -1, -2) if keys_first else blk
    return blk.astype(dtype) / jnp.asarray(1.0 - cfg.dropout_rate, dtype)


def _scores_t(cfg: _Config, q_i, k_j, bias, scale, i, j, compute_dtype) -> jax.Array:
    """Scores of block (i, j) as ``[..., bk, bq]`` (keys by queries): ``s k_j q_i^T + b^T``.

    ``q_i`` is already multiplied by the scale when ``cfg.prescale`` (float32 and wider);
    bfloat16/float16 products are scaled in float32 instead.
    """
    s = cfg.dot("...kd,...qd->...kq", k_j, q_i, compute_dtype)
    if not cfg.prescale:
        s = s * scale
    if bias is not None:
        b = _block(_block(bias, i * cfg.bq, cfg.bq, -2), j * cfg.bk, cfg.bk, -1)
        s = s + jnp.swapaxes(b, -1, -2).astype(compute_dtype)
    return s


def _scores(cfg: _Config, q_i, k_j, bias, scale, i, j, compute_dtype) -> jax.Array:
    """Scores of block (i, j) as ``[..., bq, bk]`` (queries by keys)."""
    s = cfg.dot("...qd,...kd->...qk", q_i, k_j, compute_dtype)
    if not cfg.prescale:
        s = s * scale
    if bias is not None:
        b = _block(_block(bias, i * cfg.bq, cfg.bq, -2), j * cfg.bk, cfg.bk, -1)
        s = s + b.astype(compute_dtype)
    return s


def _prescaled(cfg: _Config, q: jax.Array, scale: jax.Array) -> jax.Array:
    return (q * scale).astype(q.dtype) if cfg.prescale else q


def _forward(cfg: _Config, q, k, v, bias, mask, key_lengths, dropout, scale):
    """Output ``[..., Lq_pad, dv]`` and log-sum-exp ``[..., Lq_pad]`` (+inf on empty rows).

    Blocks are processed as queries by keys: the products ``Q K^T`` and ``P V`` are
    then both plain row-major matrix products.
    """
    compute_dtype = jnp.promote_types(q.dtype, jnp.float32)
    lead, dv = q.shape[:-2], v.shape[-1]
    kv_end = _kv_end(cfg, key_lengths)
    qs = _prescaled(cfg, q, scale)

    def query_block(i):
        q_i = _block(qs, i * cfg.bq, cfg.bq, -2)

        def key_block(j, carry):
            o, m, l = carry
            s = _scores(cfg, q_i, _block(k, j * cfg.bk, cfg.bk, -2), bias, scale, i, j,
                        compute_dtype)
            keep = _keep_t(cfg, i, j, mask, key_lengths)
            if keep is not None:
                s = jnp.where(jnp.swapaxes(keep, -1, -2), s, -jnp.inf)
            m_new = jnp.maximum(m, jnp.max(s, axis=-1))
            alpha = jnp.exp(m - m_new)
            p = jnp.exp(s - m_new[..., None])
            l = alpha * l + jnp.sum(p, axis=-1)
            z = _dropout(cfg, i, j, dropout, compute_dtype)
            if z is not None:
                p = p * z
            pv = cfg.dot("...qk,...kd->...qd", p.astype(v.dtype),
                         _block(v, j * cfg.bk, cfg.bk, -2), compute_dtype)
            return alpha[..., None] * o + pv, m_new, l

        carry = (jnp.zeros((*lead, cfg.bq, dv), compute_dtype),
                 jnp.full((*lead, cfg.bq), jnp.finfo(compute_dtype).min, compute_dtype),
                 jnp.zeros((*lead, cfg.bq), compute_dtype))
        o, m, l = lax.fori_loop(0, cfg.key_blocks_end(i, kv_end), key_block, carry)
        empty = l == 0
        o = o / jnp.where(empty, 1, l)[..., None]
        lse = jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1, l)))
        return o.astype(v.dtype), lse

    o, lse = lax.map(query_block, jnp.arange(cfg.nq))  # [nq, ..., bq, dv], [nq, ..., bq]
    o = jnp.moveaxis(o, 0, -3).reshape(*lead, cfg.nq * cfg.bq, dv)
    lse = jnp.moveaxis(lse, 0, -2).reshape(*lead, cfg.nq * cfg.bq)
    return o, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash(cfg, q, k, v, bias, mask, key_lengths, dropout, scale):
    return _forward(cfg, q, k, v, bias, mask, key_lengths, dropout, scale)[0]


def _flash_fwd(cfg, q, k, v, bias, mask, key_lengths, dropout, scale):
    o, lse = _forward(cfg, q, k, v, bias, mask, key_lengths, dropout, scale)
    return o, (q, k, v, bias, mask, key_lengths, dropout, scale, o, lse)


def _flash_bwd(cfg, res, do):
    """FlashAttention-2 backward with blocks as keys by queries.

    In that orientation every matrix product contracts the last axis of its left
    operand (``P^T dO``, ``dS^T Q``, ``V dO^T``, ``K^T dS^T``), the fast case of
    XLA:CPU's matrix kernels; ``dQ`` is accumulated transposed, ``[..., d, Lq]``.
    """
    q, k, v, bias, mask, key_lengths, dropout, scale, o, lse = res
    compute_dtype = jnp.promote_types(q.dtype, jnp.float32)
    kv_end = _kv_end(cfg, key_lengths)
    qs = _prescaled(cfg, q, scale)
    delta = jnp.sum(do.astype(compute_dtype) * o.astype(compute_dtype), axis=-1)

    def key_block(carry, j):
        dq_t, dbias_t = carry
        k_j = _block(k, j * cfg.bk, cfg.bk, -2)
        v_j = _block(v, j * cfg.bk, cfg.bk, -2)
        k_j_t = jnp.swapaxes(k_j, -1, -2)

        def query_block(i, c):
            dk_j, dv_j, dq_t, dbias_t = c
            q_i = _block(qs, i * cfg.bq, cfg.bq, -2)
            do_i = _block(do, i * cfg.bq, cfg.bq, -2)
            s_t = _scores_t(cfg, q_i, k_j, bias, scale, i, j, compute_dtype)
            p_t = jnp.exp(s_t - _block(lse, i * cfg.bq, cfg.bq, -1)[..., None, :])
            keep = _keep_t(cfg, i, j, mask, key_lengths)
            if keep is not None:
                p_t = jnp.where(keep, p_t, 0)
            z_t = _dropout(cfg, i, j, dropout, compute_dtype, keys_first=True)
            dv_j = dv_j + cfg.dot("...kq,...qd->...kd",
                                  (p_t if z_t is None else p_t * z_t).astype(do.dtype), do_i,
                                  compute_dtype)
            dp_t = cfg.dot("...kd,...qd->...kq", v_j, do_i, compute_dtype)
            if z_t is not None:
                dp_t = dp_t * z_t
            ds_t = p_t * (dp_t - _block(delta, i * cfg.bq, cfg.bq, -1)[..., None, :])
            dk_j = dk_j + cfg.dot("...kq,...qd->...kd", ds_t.astype(q.dtype), q_i,
                                  compute_dtype)
            dq_i_t = cfg.dot("...dk,...kq->...dq", k_j_t, ds_t.astype(k.dtype), compute_dtype)
            dq_t = lax.dynamic_update_slice_in_dim(
                dq_t, _block(dq_t, i * cfg.bq, cfg.bq, -1) + dq_i_t, i * cfg.bq, axis=-1)
            if dbias_t is not None:
                dbias_t = _add_block(dbias_t, ds_t, j * cfg.bk, i * cfg.bq)
            return dk_j, dv_j, dq_t, dbias_t

        carry = (jnp.zeros(k_j.shape, compute_dtype), jnp.zeros(v_j.shape, compute_dtype),
                 dq_t, dbias_t)
        dk_j, dv_j, dq_t, dbias_t = lax.fori_loop(cfg.query_blocks_start(j, kv_end), cfg.nq,
                                                   query_block, carry)
        return (dq_t, dbias_t), (dk_j, dv_j)

    lead = q.shape[:-2]
    dq_t = jnp.zeros((*lead, q.shape[-1], q.shape[-2]), compute_dtype)
    dbias_t = None if bias is None else jnp.zeros(jnp.swapaxes(bias, -1, -2).shape,
                                                  compute_dtype)
    (dq_t, dbias_t), (dk, dv) = lax.scan(key_block, (dq_t, dbias_t), jnp.arange(cfg.nk))
    dk = jnp.moveaxis(dk, 0, -3).reshape(*lead, cfg.nk * cfg.bk, k.shape[-1])
    dv = jnp.moveaxis(dv, 0, -3).reshape(*lead, cfg.nk * cfg.bk, v.shape[-1])
    # dq_t holds sum_j dS K_j (transposed); the scale enters dQ and, unless q was
    # prescaled, dK. d(scale) = sum(dS * Q K^T) = sum(q * sum_j dS K_j).
    dq_raw = jnp.swapaxes(dq_t, -1, -2)
    dscale = jnp.sum(dq_raw * q.astype(compute_dtype)).astype(scale.dtype)
    if not cfg.prescale:
        dk = dk * scale
    return ((dq_raw * scale).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
            None if bias is None else jnp.swapaxes(dbias_t, -1, -2).astype(bias.dtype),
            None, None, None, dscale)


_flash.defvjp(_flash_fwd, _flash_bwd)


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None = None,
                        mask: jax.Array | None = None, key_lengths: jax.Array | None = None, *,
                        scale: float | jax.Array, is_causal: bool = False,
                        block_q: int = DEFAULT_BLOCK_Q, block_k: int = DEFAULT_BLOCK_K,
                        precision: lax.PrecisionLike = None,
                        dropout_mask: jax.Array | None = None,
                        dropout_rate: float = 0.0) -> jax.Array:
    r"""Attention by the online-softmax recurrence of the module docstring.

    The kernel of ``attention(..., implementation='blockwise')``, which checks and
    broadcasts the arguments; call that. Here the arguments must already be
    consistent: ``q`` ``[..., Lq, d]``, ``k`` ``[..., Lk, d]`` and ``v``
    ``[..., Lk, dv]`` with the same leading axes ``...``; ``bias`` (float) and
    ``mask`` (bool, True = attend) of rank ``q.ndim``, broadcastable to
    ``[..., Lq, Lk]``; ``key_lengths`` (int) broadcastable to ``[...]``;
    ``scale`` a scalar; ``block_q`` and ``block_k`` positive ints (default
    :data:`DEFAULT_BLOCK_Q` = 512, :data:`DEFAULT_BLOCK_K` = 256, balanced by
    :func:`block_sizes`). ``is_causal``: query ``i`` attends to keys ``j <= i``.
    ``precision``: of every block's matrix products, forward and backward
    (None: JAX's default; ``"highest"``: float32 on every backend).
    ``dropout_mask``: attention dropout's keep pattern (bool, True = kept) of rank
    ``q.ndim``, broadcastable to ``[..., Lq, Lk]`` with the full ``Lq, Lk`` axes; the
    kept weights are multiplied by ``1 / (1 - dropout_rate)`` (a Python float).

    Returns:
      ``[..., Lq, dv]`` in ``v``'s dtype; zeros (and zero gradients) for a query
      that attends to no key. Gradients flow to ``q``, ``k``, ``v``, ``bias`` and
      a traced ``scale``.

    Example:
      >>> q = k = v = jnp.eye(3)
      >>> out = blockwise_attention(q, k, v, scale=1.0, is_causal=True, block_q=2, block_k=2)
      >>> print(np.round(out, 6))
      [[1.       0.       0.      ]
       [0.268941 0.731059 0.      ]
       [0.211942 0.211942 0.576117]]
    """
    lq, lk = q.shape[-2], k.shape[-2]
    bq, bk = block_sizes(lq, lk, block_q, block_k)
    prescale = jnp.dtype(q.dtype).itemsize >= 4
    cfg = _Config(lq, lk, bq, bk, bool(is_causal), prescale, precision,
                  float(dropout_rate) if dropout_mask is not None else 0.0)
    lq_pad, lk_pad = cfg.nq * bq, cfg.nk * bk
    q = _pad_axis(q, -2, lq_pad)
    k, v = _pad_axis(k, -2, lk_pad), _pad_axis(v, -2, lk_pad)
    bias = _pad_axis(_pad_axis(bias, -2, lq_pad), -1, lk_pad)
    mask = _pad_axis(_pad_axis(mask, -2, lq_pad, False), -1, lk_pad, False)
    dropout = _pad_axis(_pad_axis(dropout_mask, -2, lq_pad, False), -1, lk_pad, False)
    scale = jnp.asarray(scale, jnp.promote_types(q.dtype, jnp.float32))
    out = _flash(cfg, q, k, v, bias, mask, key_lengths, dropout, scale)
    return out[..., :lq, :]


__all__ = ["DEFAULT_BLOCK_K", "DEFAULT_BLOCK_Q", "block_sizes", "blockwise_attention"]
