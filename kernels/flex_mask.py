"""FlexAttention block masks from block-level bounds, for queries at given positions.

Queries are given by their positions `q_pos (B, Q)`, ascending per row: every position for
the local branch, the routed positions (compacted) for the token-sparse branch. A query at
`p` sees key `j` iff `j <= p`, `p - j < window` and both lie in one document. The mask is
built from block-level bounds (O(Q/block x T/block) booleans), never from a dense Q x T
token mask: a key block is *full* for a query block when one document spans both and every
pair is inside the window and causal, *partial* when some pair may be visible (the
mask_mod then decides per token), skipped otherwise. Document equality is tested on
document start positions, which are monotone along the sequence.
"""

from __future__ import annotations

import functools

import torch

from .fallbacks import has_fallen_back, record_fallback
from .utils import allow_recompiles

MASK_OP = "flex_mask.block_bounds"

BLOCK = 128


def _dense_to_ordered(dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dense = dense.to(torch.int32)
    num = dense.sum(dim=-1).to(torch.int32)
    idx = torch.argsort(dense, dim=-1, descending=True, stable=True).to(torch.int32)
    return num.contiguous(), idx.contiguous()


def _pad_to_blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """Right-pad `(B, n)` to a multiple of `block` with its last column: the mask_mod may be
    evaluated at indices past the length, and must read in-bounds values there."""
    pad = -x.shape[1] % block
    return torch.cat([x, x[:, -1:].expand(-1, pad)], dim=1) if pad else x


def _block_tensors(q_pos: torch.Tensor, starts: torch.Tensor, win, block: int,
                   q_valid: torch.Tensor | None = None):
    """The block-level part of `query_block_mask`, pure tensor work (compiled on CUDA into a
    few kernels instead of ~80 launches per layer and pass): the partial and full key blocks
    of every query block and, transposed, the query blocks of every key block (the
    backward's), plus the padded positions and document starts the mask_mod reads. `win`:
    the window in keys (the row length for plain causal). `q_valid`: see `query_block_mask`."""
    B, Q = q_pos.shape
    T = starts.shape[1]
    dev = starts.device
    nq, nk = (Q + block - 1) // block, (T + block - 1) // block
    q_first = torch.arange(nq, device=dev) * block
    q_last = torch.clamp(q_first + block - 1, max=Q - 1)
    k_first = torch.arange(nk, device=dev) * block
    k_last = torch.clamp(k_first + block - 1, max=T - 1)
    qs, qe = q_pos[:, q_first].long(), q_pos[:, q_last].long()  # (B, nq)
    sq_first, sq_last = starts.gather(1, qs), starts.gather(1, qe)
    sk_first, sk_last = starts[:, k_first], starts[:, k_last]  # (B, nk)
    qs, qe = qs[:, :, None], qe[:, :, None]
    ks, ke = k_first[None, None, :], k_last[None, None, :]
    any_pair = (ks <= qe) & (qs - ke < win)
    any_pair = any_pair & (sq_first[:, :, None] <= sk_last[:, None, :])
    any_pair = any_pair & (sk_first[:, None, :] <= sq_last[:, :, None])
    one_doc = (sq_first == sq_last)[:, :, None] & (sk_first == sk_last)[:, None, :]
    one_doc = one_doc & (sq_first[:, :, None] == sk_first[:, None, :])
    full = (ke <= qs) & (qe - ks < win) & one_doc
    if q_valid is not None:
        # The valid rows are a prefix of each row: a block is live iff its first row is.
        live = q_valid[:, q_first][:, :, None]
        any_pair, full = any_pair & live, full & live
    full = full[:, None]
    partial = any_pair[:, None] & ~full
    kv_num, kv_idx = _dense_to_ordered(partial)
    full_num, full_idx = _dense_to_ordered(full)
    q_num, q_idx = _dense_to_ordered(partial.transpose(-2, -1))
    full_q_num, full_q_idx = _dense_to_ordered(full.transpose(-2, -1))
    pos = _pad_to_blocks(q_pos.to(torch.int32), block)
    doc = _pad_to_blocks(starts.to(torch.int32), block)
    return kv_num, kv_idx, full_num, full_idx, q_num, q_idx, full_q_num, full_q_idx, pos, doc


@functools.cache
def _compiled_block_tensors():
    allow_recompiles()
    # dynamic: one graph for every routed count and row length.
    return torch.compile(_block_tensors, dynamic=True, fullgraph=True)


def query_block_mask(
    q_pos: torch.Tensor, starts: torch.Tensor, window: int | None, block: int = BLOCK,
    compiled: bool | None = None, q_valid: torch.Tensor | None = None,
):
    """BlockMask for queries at `q_pos (B, Q)` (ascending) over keys with document starts
    `starts (B, T)` and a causal window of `window` keys (None: plain causal).

    `q_valid (B, Q)` bool (a device tensor, never read on the host): the rows that are
    queries, a prefix of each row; the rest are the caller's padding (the capacity layout of
    compacted routed queries: all T rows, `kernels/token_sparse/compact.py`). A query block
    whose first row is padding gets no key block at all, forward or backward (its rows come
    out zero and cost nothing); the padding rows of a block that also holds queries are
    computed like those queries (their `q_pos` must keep the row ascending) and are the
    caller's to zero.

    The mask_mod captures tensors only, never a Python number: under a dynamic-shape
    compile a captured number derived from a shape is a symbolic scalar, which
    FlexAttention's FLASH backend cannot inline (torch 2.11: "NYI: ... captures a dynamic
    scalar"). The window, when there is one, travels as a 0-d device tensor.

    `compiled` (default: on CUDA): the block bounds through one torch.compile'd region.
    The host cost of a layer's token-sparse branch was mostly this mask (on one H100 at
    32K, 2026-12-07, the L2A step was host-bound at 70% GPU busy; ~80 of the ~150 eager
    operators of a layer pass were the mask's)."""
    from torch.nn.attention.flex_attention import BlockMask

    Q, T = q_pos.shape[1], starts.shape[1]
    win = T if window is None else window  # block bounds: plain ints, outside the mask_mod
    if compiled is None:
        compiled = starts.is_cuda and not has_fallen_back(MASK_OP, "compiled")
    tensors = None
    if compiled:
        try:
            tensors = _compiled_block_tensors()(q_pos, starts, win, block, q_valid)
        except Exception as exc:  # noqa: BLE001  (a compile failure: recorded, not silent)
            record_fallback(MASK_OP, "compiled", "eager", exc)
    if tensors is None:
        tensors = _block_tensors(q_pos, starts, win, block, q_valid)
    kv_num, kv_idx, full_num, full_idx, q_num, q_idx, full_q_num, full_q_idx, pos, doc = tensors

    if window is None:

        def mask_mod(b, h, q_idx, kv_idx):
            p = pos[b, q_idx]
            return (kv_idx <= p) & (doc[b, p] == doc[b, kv_idx])

    else:
        win_t = torch.tensor(window, dtype=torch.int32, device=starts.device)

        def mask_mod(b, h, q_idx, kv_idx):
            p = pos[b, q_idx]
            return (kv_idx <= p) & (p - kv_idx < win_t) & (doc[b, p] == doc[b, kv_idx])

    return BlockMask(
        seq_lengths=(Q, T),
        kv_num_blocks=kv_num,
        kv_indices=kv_idx,
        full_kv_num_blocks=full_num,
        full_kv_indices=full_idx,
        q_num_blocks=q_num,
        q_indices=q_idx,
        full_q_num_blocks=full_q_num,
        full_q_indices=full_q_idx,
        BLOCK_SIZE=(block, block),
        mask_mod=mask_mod,
    )
