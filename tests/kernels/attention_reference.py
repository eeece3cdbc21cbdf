"""Dense O(T^2) references with an explicit mask (fp64, expanded K/V) and grad helpers."""

from __future__ import annotations

import torch


def allowed_mask(T: int, doc_ids: torch.Tensor | None, B: int, window: int | None = None):
    """`(B, T, T)` bool: query i may attend key j."""
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    m = j <= i
    if window is not None:
        m = m & (i - j < window)
    m = m.expand(B, T, T)
    if doc_ids is not None:
        d = doc_ids.cpu()
        m = m & (d[:, :, None] == d[:, None, :])
    return m


def dense_attention(q, k, v, mask, scale=None):
    """Masked softmax attention in fp64 with K/V repeated per query head (HF order)."""
    B, Hq, T, D = q.shape
    G = Hq // k.shape[1]
    scale = D**-0.5 if scale is None else scale
    qd, kd, vd = (t.double() for t in (q, k, v))
    kd = kd.repeat_interleave(G, dim=1)
    vd = vd.repeat_interleave(G, dim=1)
    s = (qd @ kd.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask.to(q.device)[:, None], float("-inf"))
    return torch.softmax(s, dim=-1) @ vd


def token_sparse_reference(q, k, v, route, doc_ids=None, scale=None):
    o = dense_attention(q, k, v, allowed_mask(q.shape[2], doc_ids, q.shape[0]), scale)
    return o * route.to(o.device)[:, None, :, None].double()


def sliding_window_reference(q, k, v, window, doc_ids=None, scale=None):
    return dense_attention(q, k, v, allowed_mask(q.shape[2], doc_ids, q.shape[0], window), scale)


def random_doc_ids(B: int, T: int, n_docs: int, generator=None) -> torch.Tensor:
    """Contiguous documents of random lengths, `(B, T)` int32."""
    rows = []
    for _ in range(B):
        cuts = torch.randperm(T - 1, generator=generator)[: n_docs - 1] + 1
        starts = torch.zeros(T, dtype=torch.int32)
        starts[cuts] = 1
        rows.append(torch.cumsum(starts, 0, dtype=torch.int32))
    return torch.stack(rows)


def make_route(B: int, T: int, kind: str, generator=None) -> torch.Tensor:
    if kind == "none":
        return torch.zeros(B, T, dtype=torch.bool)
    if kind == "all":
        return torch.ones(B, T, dtype=torch.bool)
    if kind == "single":
        r = torch.zeros(B, T, dtype=torch.bool)
        r[0, T - 1] = True
        r[1:, T // 3] = True
        return r
    if kind == "mixed":  # random first row, nothing routed in the last
        r = torch.rand(B, T, generator=generator) < 0.3
        r[-1] = False
        return r
    if kind == "random":
        return torch.rand(B, T, generator=generator) < 0.3
    raise ValueError(kind)


def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    """||a - b|| / ||b||; `floor` (per element, RMS) keeps near-zero references (dq of a
    one-key window is zero up to rounding) from turning rounding into huge relative errors."""
    a, b = a.double(), b.double().to(a.device)
    denom = max(float(b.norm()), floor * b.numel() ** 0.5, 1e-30)
    return float((a - b).norm()) / denom


def run_with_grads(fn, q, k, v, do, *args, **kwargs):
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    o = fn(q, k, v, *args, **kwargs)
    o.backward(do.to(o.dtype))
    return o.detach(), q.grad, k.grad, v.grad


def reference_with_grads(ref_fn, q, k, v, do, *args, **kwargs):
    q, k, v = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    o = ref_fn(q, k, v, *args, **kwargs)
    o.backward(do.double())
    return o.detach(), q.grad, k.grad, v.grad


def check_block_mask_cover(bm, visible: torch.Tensor, block: int):
    """A flex `BlockMask` against the token-level `visible` (B, rows, cols): no block is both
    partial and full, skipped blocks hold no visible pair, full blocks only visible pairs.
    Returns the (B, row blocks, col blocks) bool maps of partial and full blocks."""
    B, rows, cols = visible.shape
    nq, nk = (rows + block - 1) // block, (cols + block - 1) // block
    padded = torch.nn.functional.pad(visible, (0, nk * block - cols, 0, nq * block - rows))
    any_vis = padded.view(B, nq, block, nk, block).any(4).any(2)
    cover = torch.ones(nq * block, nk * block, dtype=torch.bool)
    cover[:rows, :cols] = False  # padding counts as visible for the "all" test
    all_vis = (padded | cover).view(B, nq, block, nk, block).all(4).all(2)

    def dense(num, idx):
        out = torch.zeros(B, nq, nk, dtype=torch.bool)
        for b in range(B):
            for i in range(nq):
                out[b, i, idx[b, 0, i, : num[b, 0, i]].long()] = True
        return out

    partial = dense(bm.kv_num_blocks, bm.kv_indices)
    full = dense(bm.full_kv_num_blocks, bm.full_kv_indices)
    assert not (partial & full).any()
    assert ((partial | full) >= any_vis).all(), "a visible pair lies in a skipped block"
    assert (full <= all_vis).all(), "a full block holds a masked pair"
    return partial, full, any_vis
