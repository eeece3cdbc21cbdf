"""Token-sparse attention with the queries given in compacted form (routed rows only).

The layer projects queries for routed tokens only (`q_proj`, QK-norm, RoPE on R rows
instead of T), so the op takes `q_c (B, Hq, R, D)`: row `c` of batch row `b` is the
`c`-th routed position of `b` in position order; rows at or past `count[b]` are padding
(R is the largest routed count of the batch). Keys and values stay `(B, Hkv, T, D)`.

The queries may be the last `Tq` of `Tk` key positions (a prefill chunk against a KV
cache): `route (B, Tq)` and `slots` are then over the queries, forward only on the Triton
path, as for `token_sparse_attention`.

`routed_slots` gives the gather index of those rows. In its capacity layout
(`capacity=True`) there are `T` rows, not `R`: the routed positions of a row first, then its
unrouted ones (a permutation of the positions), so that no shape depends on the device's
counts and no host synchronisation is needed; the op then takes `q_c (B, Hq, T, D)` and the
FlexAttention path gives query blocks made only of padding rows no key block (the attention
costs what `R` rows cost; the projections around it are the full ones). Backends: `torch` (the reference:
scattered back to positions and run through the token-sparse reference), `triton` (the
same scatter around our kernels, which compact the queries themselves), `flex` / `fa4`
(FlexAttention on the compacted queries directly, kernels/token_sparse/flex.py).
"""

from __future__ import annotations

import torch

from ..flash.routing import build_routing
from ..utils import check_doc_ids, check_qkv, check_route, default_scale, derived, known, remember

_ROWS = "routed_rows"
_PENDING = "routed_rows_pending"


def routed_rows(route: torch.Tensor, count: torch.Tensor | None = None) -> int:
    """`R`, the largest routed count of a row of `route (B, T)` (`count (B,)` where the
    caller has the counts), as a host int: one host synchronisation the first time for a
    route tensor, none for later calls on it (the layer's projections and its attention op
    share one decision tensor). After `begin_routed_rows_read(route)` the host waits only
    for that copy, not for the work queued since."""

    def read(r):
        if not r.numel():
            return 0
        pending = known(r, _PENDING)
        if pending is not None:
            host, ready = pending
            ready.synchronize()
            return int(host)
        return int((r.sum(1) if count is None else count).max())  # host sync: R is a shape

    return derived(route, _ROWS, read)


def begin_routed_rows_read(route: torch.Tensor) -> None:
    """Start reading `R` of a CUDA `route` without waiting: its max row count is copied to
    pinned host memory behind an event, so that the GPU work queued before the first
    `routed_rows(route)` (the global branch's key and value projections) runs while the host
    waits for that copy alone; a plain read would wait for the whole queue and leave the GPU
    idle while the host builds the branch's masks (one H100, 32K, 2026-12-07: the L2A step
    at 70% GPU busy). A no-op on the CPU or where R is known."""
    if not route.is_cuda or not route.numel() or route.is_inference() or known(route, _ROWS) is not None:
        return
    host = torch.empty((), dtype=torch.int64, pin_memory=True)
    host.copy_(route.sum(1).max(), non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    remember(route, _PENDING, (host, ready))


def remember_routed_rows(route: torch.Tensor, rows: int) -> None:
    """Tell later `routed_rows(route)` calls the count, known without reading the device
    (the recomputation of a checkpointed layer reproduces the decisions of its forward)."""
    remember(route, _ROWS, rows)


def routed_slots(route: torch.Tensor, capacity: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`(slots, valid)`, both `(B, R)` with `R = max routed count of a row`, or `(B, T)`
    with `capacity`.

    `slots[b, :count[b]]` are the routed positions of row `b` in position order; the
    padding slots after them are unrouted positions of that row, so the slots of a row are
    distinct (a scatter-add through them never collides). `valid` marks the routed slots.
    `R` is a shape: `routed_rows(route)` (a host synchronisation unless already known).
    `capacity`: every position of the row (the padding is all its unrouted positions, the
    slots a permutation of `0..T-1`), computed on the device with no host read.
    """
    routing = build_routing(route, None)
    if capacity:
        slots = routing.order.long()
        R = slots.shape[1]
    else:
        R = routed_rows(route, routing.count)
        slots = routing.order[:, :R].long()
    valid = torch.arange(R, device=route.device)[None, :] < routing.count[:, None]
    return slots, valid


def _layout_slots(route: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`routed_slots` of the layout `rows` compacted rows are in: as many rows as positions
    is the capacity layout (with every position routed, the count layout is the same one),
    read without a host synchronisation; fewer, the count layout."""
    return routed_slots(route, capacity=rows == route.shape[1])


def scatter_rows(q_c: torch.Tensor, slots: torch.Tensor, T: int) -> torch.Tensor:
    """`(B, H, R, D)` compacted rows -> `(B, H, T, D)` rows at their positions, zeros
    elsewhere (padding rows land at unrouted positions, which the token-sparse op ignores)."""
    B, H, R, D = q_c.shape
    idx = slots[:, None, :, None].expand(B, H, R, D)
    return q_c.new_zeros(B, H, T, D).scatter(2, idx, q_c)


def gather_rows(o: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """`(B, H, T, D)` rows at their positions -> `(B, H, R, D)` the rows `slots` lists
    (the inverse of `scatter_rows` on those rows)."""
    B, H, _, D = o.shape
    return o.gather(2, slots[:, None, :, None].expand(B, H, slots.shape[1], D))


def routed_query_attention_naive(q_c, k, v, route, doc_ids=None, scale=None) -> torch.Tensor:
    """The reference: queries scattered to their positions, the token-sparse reference,
    rows gathered back. Padding rows come out zero (unrouted rows are exact zeros)."""
    from .naive import token_sparse_attention_naive

    slots, _ = _layout_slots(route, q_c.shape[2])
    full = scatter_rows(q_c, slots, route.shape[1])
    return gather_rows(token_sparse_attention_naive(full, k, v, route, doc_ids, scale), slots)


def _check_rows(q_c: torch.Tensor, slots: torch.Tensor) -> None:
    if q_c.shape[2] != slots.shape[1]:
        raise ValueError(
            f"q: {q_c.shape[2]} compacted rows, expected {slots.shape[1]} (the largest routed "
            "count, or every position in the capacity layout)"
        )


def routed_query_attention(
    q_c: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    route: torch.Tensor,
    doc_ids: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    *,
    slots: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Causal attention of compacted routed queries against every key.

    Args:
        q_c: `(B, Hq, R, D)`, rows in the order of `routed_slots(route)`; R = the largest
            routed count of a row (rows past a row's count are padding), or `Tq` rows in
            the capacity layout (`routed_slots(route, capacity=True)`).
        k, v: `(B, Hkv, Tk, D)`, GQA as in `token_sparse_attention`.
        route: `(B, Tq)` bool, `Tq <= Tk`, which positions the rows of `q_c` are; the
            queries are the last `Tq` key positions (`Tq == Tk` without a KV cache).
        doc_ids, scale: as in `token_sparse_attention`.
        backend: `auto`, `torch`, `triton`, `flex` or `fa4` (kernels/backends.py).
        slots: `routed_slots(route[, capacity])` where the caller has it (saves a host sync
            in the count layout; without it, the layout follows q's row count).

    Returns:
        `(B, Hq, R, D)` in q's dtype; padding rows are zero and get zero gradient.
    """
    from ..backends import resolve

    # Checked as the positional op sees them: a meta tensor of q's full shape (no memory).
    if not isinstance(q_c, torch.Tensor) or q_c.dim() != 4:
        raise ValueError(f"q: expected shape (B, Hq, R, D), got {getattr(q_c, 'shape', q_c)}")
    B, Hq, _, D = q_c.shape
    T = k.shape[2] if isinstance(k, torch.Tensor) and k.dim() == 4 else 0
    Tq = route.shape[1] if isinstance(route, torch.Tensor) and route.dim() == 2 else T
    full_meta = torch.empty(B, Hq, Tq, D, dtype=q_c.dtype, device="meta")
    check_qkv(full_meta, k.to("meta"), v.to("meta"))
    if q_c.device != k.device or q_c.device != v.device:
        raise ValueError(f"q, k, v must be on one device, got {q_c.device}, {k.device}, {v.device}")
    check_route(route, B, Tq, q_c.device)
    check_doc_ids(doc_ids, B, T, q_c.device)
    scale = default_scale(scale, D)
    backend = resolve(backend, q_c, token_sparse=True)
    slots, valid = _layout_slots(route, q_c.shape[2]) if slots is None else slots
    _check_rows(q_c, slots)
    if backend in ("flex", "fa4"):
        from .flex import routed_query_attention_flex

        # Key positions of the rows (the queries are the last Tq keys).
        key_slots = slots + (T - Tq) if Tq < T else slots
        return routed_query_attention_flex(
            q_c, k, v, key_slots, valid, doc_ids, scale, flash=backend == "fa4"
        )
    if backend == "torch":
        from .naive import token_sparse_attention_naive as positional
    else:
        from .triton_op import token_sparse_attention_triton as positional
    full = scatter_rows(q_c, slots, Tq)
    return gather_rows(positional(full, k, v, route, doc_ids, scale), slots)
