"""Token-sparse attention of compacted queries through FlexAttention.

`q_c (B, Hq, R, D)` attends to all keys with a block mask over (R compacted queries) x
(T keys), built from block-level bounds on the queries' positions (kernels/flex_mask.py).
`flash=True` asks FlexAttention for its FLASH backend (FlashAttention-4 kernels with the
block mask). Compiled once with dynamic shapes: the routed count R changes every step
without recompiling. In the capacity layout (R = T, compact.py) the query blocks made
only of padding rows get no key block, so the attention costs what the routed rows cost.
"""

from __future__ import annotations

import functools

import torch

from ..fallbacks import has_fallen_back, record_fallback
from ..flex_mask import query_block_mask
from ..utils import allow_recompiles, derived, doc_start_positions

MIN_ROWS = 128  # one FlexAttention query block


def _flex_call(q, k, v, block_mask, scale, enable_gqa, kernel_options):
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(
        q,
        k,
        v,
        block_mask=block_mask,
        scale=scale,
        enable_gqa=enable_gqa,
        kernel_options=kernel_options,
    )


@functools.cache
def _compiled_flex(dynamic: bool):
    # Our own compiled function (its own recompile budget, kernels/sliding_window/flex.py
    # says why); dynamic: one graph for every routed count; fullgraph: no silent eager
    # fallback, which would materialise (B, H, R, T) scores. Inductor's CPU FlexAttention
    # fails to compile with dynamic shapes (torch 2.13), so CPU (tests only) is static.
    allow_recompiles()
    return torch.compile(_flex_call, dynamic=dynamic, fullgraph=True)


def routed_query_attention_flex(q_c, k, v, slots, valid, doc_ids, scale: float, flash: bool):
    """`slots`, `valid`: `routed_slots(route)` (either layout). Padding rows take the
    position of their row's last routed row as a stand-in (positions stay ascending for the
    block bounds, and a block mixing routed and padding rows spans only the routed rows'
    keys); blocks of padding rows only get no key block (`query_block_mask`'s `q_valid`);
    padding rows are zeroed after (zero gradient to q, k, v through them)."""
    B, _, R, _ = q_c.shape
    T = k.shape[2]
    if R == 0:
        return q_c * 0 + (k.sum() + v.sum()) * 0  # attached to q, k, v: zero gradients
    if doc_ids is None:
        starts = torch.zeros(B, T, dtype=torch.int32, device=q_c.device)
    else:
        # Once per forward, not per layer: every layer's mask reads the same documents.
        starts = derived(doc_ids, "doc_starts", doc_start_positions)
    # The valid rows are a prefix in ascending position order: a running max carries the
    # last routed position over the padding (0 for a row routing nothing: dead blocks only).
    q_pos = torch.where(valid, slots, 0).cummax(1).values  # int64: the mask takes it to int32
    q_valid = valid
    short = MIN_ROWS - R
    if short > 0:
        # FlexAttention's compiled kernels reject GQA with fewer queries than one block;
        # a layer that routes few tokens pads with padding rows (sliced off).
        q_c = torch.cat([q_c, q_c.new_zeros(B, q_c.shape[1], short, q_c.shape[3])], dim=2)
        q_pos = torch.cat([q_pos, q_pos[:, -1:].expand(B, short)], dim=1)
        q_valid = torch.cat([valid, valid.new_zeros(B, short)], dim=1)
    mask = query_block_mask(q_pos, starts, None, q_valid=q_valid)
    o = _flex(q_c, k, v, mask, scale, flash)
    return o[:, :, :R] * valid[:, None, :, None].to(o.dtype)


FLEX_OP = "token_sparse.flex"


def _flex(q, k, v, mask, scale, flash: bool):
    """FlexAttention, FLASH backend if asked. If that backend fails to compile, the run goes
    on with FlexAttention's default (Triton) backend from then on, and the fallback is
    recorded (kernels/fallbacks.py: benchmarks report it, GPU tests fail on it;
    ``L2A_STRICT_BACKENDS=1`` raises instead)."""
    gqa = q.shape[1] != k.shape[1]
    fn = _compiled_flex(q.is_cuda)
    if flash and not has_fallen_back(FLEX_OP, "FLASH"):
        try:
            return fn(q, k, v, mask, scale, gqa, {"BACKEND": "FLASH"})
        except Exception as exc:  # noqa: BLE001  (InductorError, or a CuTe DSL error)
            record_fallback(FLEX_OP, "FLASH", "TRITON", exc)
    return fn(q, k, v, mask, scale, gqa, None)
