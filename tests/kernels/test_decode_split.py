"""The split-KV decoding kernels (kernels/decode_split.py) against the SDPA reference
(``masked_decode_attention_sdpa``, in fp64): GQA ratios 1/2/4, one and several queries per
row, odd key counts, forced split counts whose last split is short, masks with holes (random,
and the ones the static cache builds: a ring not yet full, a wrapped ring, left padding,
packed documents), route mixtures. Unrouted rows are exactly zero and no key contributes
to them; keys no query sees are not read (NaN there stays out). On the CPU through the
Triton interpreter (tests/conftest.py sets TRITON_INTERPRET before any kernel is defined);
the ``gpu`` tests: bf16 at 128K keys, and a CUDA graph of the call."""

from __future__ import annotations

import pytest
import torch

from kernels.decode import DECODE_SPLIT_OP, masked_decode_attention, masked_decode_attention_sdpa
from kernels.decode_split import (
    GPU_SPLIT_CONFIG,
    combine_splits,
    num_splits,
    split_kv_decode_attention,
    split_layout,
    split_partials,
)
from kernels.fallbacks import clear_fallbacks, fallbacks

SCALE = 0.125
TOL = dict(atol=2e-5, rtol=2e-5)


def _inputs(B, Hq, Hkv, tq, tk, D=64, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(B, Hq, tq, D, generator=g).to(device, dtype)
    k = torch.randn(B, Hkv, tk, D, generator=g).to(device, dtype)
    v = torch.randn(B, Hkv, tk, D, generator=g).to(device, dtype)
    return q, k, v


def _holes(B, tq, tk, p=0.5, seed=1):
    """Random visibility with every query seeing at least one key (its own: the last
    ``tq`` keys are the queries' own, one each)."""
    g = torch.Generator().manual_seed(seed)
    vis = torch.rand(B, tq, tk, generator=g) < p
    own = torch.arange(tk - tq, tk)
    vis[:, torch.arange(tq), own] = True
    return vis


def _reference(q, k, v, visible, route=None):
    return masked_decode_attention_sdpa(q.double(), k.double(), v.double(), visible, SCALE, route)


@pytest.mark.parametrize("Hq,Hkv", [(2, 2), (4, 2), (8, 2)])  # GQA ratios 1, 2, 4
@pytest.mark.parametrize("tq", [1, 3])
@pytest.mark.parametrize("tk,splits", [(37, None), (37, 3), (53, 2), (53, 5), (9, 1)])
def test_split_kernel_equals_sdpa_reference(Hq, Hkv, tq, tk, splits):
    B = 2
    q, k, v = _inputs(B, Hq, Hkv, tq, tk)
    vis = _holes(B, tq, tk)
    route = torch.tensor([[True, False, True][:tq], [False, True, True][:tq]])
    if tq == 1:
        route = torch.tensor([[True], [False]])
    o = split_kv_decode_attention(q, k, v, vis, SCALE, route, splits=splits)
    ref = _reference(q, k, v, vis, route)
    torch.testing.assert_close(o.double(), ref, **TOL)
    assert o.dtype == q.dtype and o.shape == q.shape


@pytest.mark.parametrize("D", [16, 48, 128])  # 48: padded to 64 inside
def test_head_dims(D):
    q, k, v = _inputs(2, 4, 2, 2, 33, D=D)
    vis = _holes(2, 2, 33)
    route = torch.tensor([[True, False], [True, True]])
    o = split_kv_decode_attention(q, k, v, vis, SCALE, route, splits=2)
    torch.testing.assert_close(o.double(), _reference(q, k, v, vis, route), **TOL)


@pytest.mark.parametrize("tq", [1, 2])
def test_no_route_and_all_keys_visible(tq):
    q, k, v = _inputs(1, 4, 1, tq, 45)
    vis = torch.ones(1, tq, 45, dtype=torch.bool)
    o = split_kv_decode_attention(q, k, v, vis, SCALE, None)
    torch.testing.assert_close(o.double(), _reference(q, k, v, vis), **TOL)


def test_mask_broadcast_over_the_batch_and_strided_queries():
    """``visible (1, Tq, Tk)`` for every row; q a transposed view (the layers' layout)."""
    B, Hq, Hkv, tq, tk = 3, 4, 2, 2, 29
    q, k, v = _inputs(B, Hq, Hkv, tq, tk)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, Hq, Tq, D) with Tq outermost
    vis = _holes(1, tq, tk)
    o = split_kv_decode_attention(q, k, v, vis, SCALE, None, splits=2)
    torch.testing.assert_close(o.double(), _reference(q, k, v, vis.expand(B, -1, -1)), **TOL)


def test_unrouted_rows_are_exactly_zero_and_see_no_key():
    """Row 0: query 1 unrouted; row 1: nothing routed (its programs run no key loop). No
    key adds to an unrouted row's partials (l == 0, m == -inf), so none was read for it."""
    B, Hq, Hkv, tq, tk = 2, 4, 2, 2, 40
    q, k, v = _inputs(B, Hq, Hkv, tq, tk)
    vis = torch.ones(B, tq, tk, dtype=torch.bool)
    route = torch.tensor([[True, False], [False, False]])
    o = split_kv_decode_attention(q, k, v, vis, SCALE, route, splits=3)
    assert torch.equal(o[0, :, 1], torch.zeros_like(o[0, :, 1]))
    assert torch.equal(o[1], torch.zeros_like(o[1]))
    assert o[0, :, 0].abs().min() > 0
    parts = split_partials(q, k, v, vis, SCALE, route, splits=3)
    G = Hq // Hkv
    per_row = parts.l.view(B, Hkv, -1, G, tq)  # (B, Hkv, S, head in group, query)
    m_row = parts.m.view(B, Hkv, -1, G, tq)
    assert torch.equal(per_row[0, :, :, :, 1], torch.zeros_like(per_row[0, :, :, :, 1]))
    assert torch.equal(per_row[1], torch.zeros_like(per_row[1]))
    assert bool((m_row[1] == float("-inf")).all()) and bool((m_row[0, :, :, :, 1] == float("-inf")).all())
    assert bool((per_row[0, :, :, :, 0] > 0).all())  # the routed query saw keys in every split


def test_combine_reads_no_partial_of_an_unrouted_row():
    """Stage 2 alone, on made-up partials (every split: m 0, l 1, acc 7, so a row that reads
    them comes out 7): unrouted rows still come out 0."""
    B, Hq, Hkv, tq, tk = 2, 4, 2, 2, 40
    q, k, v = _inputs(B, Hq, Hkv, tq, tk)
    vis = torch.ones(B, tq, tk, dtype=torch.bool)
    route = torch.tensor([[True, False], [False, True]])
    parts = split_partials(q, k, v, vis, SCALE, route, splits=2)
    parts.m.fill_(0.0)
    parts.l.fill_(1.0)
    parts.acc.fill_(7.0)
    o = combine_splits(parts, route, torch.empty_like(q))
    assert torch.equal(o[0, :, 1], torch.zeros_like(o[0, :, 1]))
    assert torch.equal(o[1, :, 0], torch.zeros_like(o[1, :, 0]))
    assert bool((o[0, :, 0] == 7).all()) and bool((o[1, :, 1] == 7).all())


def test_keys_nobody_sees_are_not_read():
    """K and V are NaN at every key no query sees (and at every key of an unrouted row's
    batch row): a load of one would turn the output into NaN (0 * NaN)."""
    B, Hq, Hkv, tq, tk = 2, 4, 2, 2, 50
    q, k, v = _inputs(B, Hq, Hkv, tq, tk)
    vis = _holes(B, tq, tk, p=0.3)
    route = torch.tensor([[True, True], [False, False]])
    ref = _reference(q, k, v, vis, route)
    unseen = ~vis.any(dim=1)  # (B, Tk)
    unseen[1] = True  # row 1 routes nothing: none of its keys may be read
    k[unseen[:, None, :].expand_as(k[..., 0])] = float("nan")
    v[unseen[:, None, :].expand_as(v[..., 0])] = float("nan")
    o = split_kv_decode_attention(q, k, v, vis, SCALE, route, splits=3)
    torch.testing.assert_close(o.double(), ref, **TOL)


# -- the visibility the static cache builds (l2a/static_cache.py) --------------------------


class _OneLayerConfig:
    """The fields ``L2AStaticCache`` reads: one L2A layer with a global branch."""

    num_hidden_layers = 1

    def __init__(self, window):
        self.l2a_window = window

    def is_l2a_layer(self, i):
        return True

    def has_global_branch(self, i):
        return True


def _step_masks(window, max_len, prompt, mask=None, doc_ids=None, steps=1):
    """The step masks of the ``steps``-th decoding step after a prefill of ``prompt``
    tokens (``mask``: generate's attention mask of the prompt; ``doc_ids``: packed)."""
    from l2a.static_cache import L2AStaticCache

    B = 1 if mask is None else mask.shape[0]
    cache = L2AStaticCache(_OneLayerConfig(window), max_cache_len=max_len)
    cache.begin_prefill(B, torch.device("cpu"), doc_ids, mask, prompt)
    cache.end(prompt)
    for i in range(steps):
        step_mask = None if mask is None else torch.cat([mask, mask.new_ones(B, i + 1)], dim=1)
        masks = cache.begin_step(B, torch.device("cpu"), step_mask).masks
        cache.end(1)
    return masks


def _static_cases():
    left_pad = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1]])
    packed = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2]])
    return {
        "ring not full": _step_masks(window=16, max_len=40, prompt=5),
        "ring wrapped": _step_masks(window=8, max_len=40, prompt=13, steps=3),
        "left padding": _step_masks(window=8, max_len=33, prompt=9, mask=left_pad, steps=2),
        "packed documents": _step_masks(window=16, max_len=35, prompt=11, doc_ids=packed),
    }


@pytest.mark.parametrize("case", list(_static_cases()))
@pytest.mark.parametrize("branch", ["full", "window"])
def test_static_cache_visibility(case, branch):
    masks = _static_cases()[case]
    vis = getattr(masks, branch)
    B, tq, tk = vis.shape
    # The masks have the holes the case is about (first principles: what the cache holds).
    if branch == "window" and case == "ring not full":
        assert not bool(vis.all())
    if branch == "full":
        assert not bool(vis.all())  # at least the rows past the current token
    q, k, v = _inputs(B, 8, 2, tq, tk, seed=3)
    route = torch.tensor([[True], [False]])[:B] if B == 2 else None
    o = split_kv_decode_attention(q, k, v, vis, SCALE, route, splits=3)
    torch.testing.assert_close(o.double(), _reference(q, k, v, vis, route), **TOL)


# -- split layout and dispatch ------------------------------------------------------------


@pytest.mark.parametrize("keys,want", [(37, 3), (128, 4), (1000, 7), (5, 4), (64, 64)])
def test_split_layout_covers_every_key_once(keys, want):
    block = 16
    per, splits = split_layout(keys, want, block)
    assert per % block == 0 and per > 0
    assert (splits - 1) * per < keys <= splits * per  # no empty split, every key in one
    assert splits <= want


def test_split_count_depends_on_shapes_only():
    cfg = GPU_SPLIT_CONFIG
    # Batch 1, 8 KV heads, 128K keys on 132 SMs: enough programs for 2 per SM.
    s1 = num_splits(1, 8, 131072, cfg, 132)
    assert s1 * 8 >= 2 * 132 and s1 == num_splits(1, 8, 131072, cfg, 132)
    # Short buffers: no split under min_keys_per_split keys.
    assert num_splits(1, 8, 300, cfg, 132) == 1
    # A large batch fills the GPU without splitting much.
    assert num_splits(64, 8, 131072, cfg, 132) == 1


def test_dispatch_cpu_auto_is_sdpa_and_triton_is_the_kernel(monkeypatch):
    import kernels.decode_split as split

    calls = []
    real = split.split_kv_decode_attention
    monkeypatch.setattr(split, "split_kv_decode_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = _inputs(1, 4, 2, 1, 20)
    vis = torch.ones(1, 1, 20, dtype=torch.bool)
    a = masked_decode_attention(q, k, v, vis, SCALE, None)  # CPU, auto: SDPA
    assert calls == []
    b = masked_decode_attention(q, k, v, vis, SCALE, None, backend="triton")
    assert calls == [1]
    torch.testing.assert_close(a, b, **TOL)


def test_triton_backend_rejects_what_the_kernel_cannot_take():
    q, k, v = _inputs(1, 4, 2, 1, 20, D=256)
    vis = torch.ones(1, 1, 20, dtype=torch.bool)
    with pytest.raises(ValueError, match="head dim 256"):
        masked_decode_attention(q, k, v, vis, SCALE, None, backend="triton")


# -- GPU -------------------------------------------------------------------------------------


def _rel_err(o, ref):
    return ((o.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 8])
def test_gpu_bf16_at_128k_keys(B):
    """Qwen3-8B's attention shape at 128K keys, a route mixture and a prefix of valid keys
    per row (the static cache's global buffer, rows filled to different lengths)."""
    clear_fallbacks()
    tk, Hq, Hkv, D = 131072, 32, 8, 128
    q, k, v = _inputs(B, Hq, Hkv, 1, tk, D=D, dtype=torch.bfloat16, device="cuda")
    q = q * 4  # peaked attention: the output is not the mean of V
    lengths = torch.linspace(tk // 3, tk, B).long().cuda()
    vis = (torch.arange(tk, device="cuda")[None, :] < lengths[:, None])[:, None, :]
    route = (torch.arange(B, device="cuda") % 3 != 1)[:, None]
    o = masked_decode_attention(q, k, v, vis, SCALE, route)
    ref = masked_decode_attention_sdpa(q.float(), k.float(), v.float(), vis, SCALE, route)
    assert fallbacks() == []
    routed = route[:, 0]
    assert _rel_err(o[routed], ref[routed]) < 1e-2
    assert torch.equal(o[~routed], torch.zeros_like(o[~routed]))
    # The kernel's bf16 error is of the order of SDPA's own bf16 rounding.
    sdpa_bf16 = masked_decode_attention_sdpa(q, k, v, vis, SCALE, route)
    assert _rel_err(o[routed], ref[routed]) < 2 * _rel_err(sdpa_bf16[routed], ref[routed]) + 1e-3


@pytest.mark.gpu
def test_gpu_cuda_graph_replays_with_new_inputs():
    """Captured once, replayed on new contents of the same buffers (queries, keys, the
    visibility and the route changed in place): equals the reference of the new inputs."""
    B, Hq, Hkv, tq, tk, D = 2, 32, 8, 1, 8192, 128
    q, k, v = _inputs(B, Hq, Hkv, tq, tk, D=D, dtype=torch.bfloat16, device="cuda")
    vis = torch.ones(B, tq, tk, dtype=torch.bool, device="cuda")
    route = torch.ones(B, tq, dtype=torch.bool, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        split_kv_decode_attention(q, k, v, vis, SCALE, route)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = split_kv_decode_attention(q, k, v, vis, SCALE, route)
    q2, k2, v2 = _inputs(B, Hq, Hkv, tq, tk, D=D, dtype=torch.bfloat16, device="cuda", seed=7)
    q.copy_(q2 * 4)
    k.copy_(k2)
    v.copy_(v2)
    vis[0, :, 5000:] = False
    route[1] = False
    graph.replay()
    torch.cuda.synchronize()
    ref = masked_decode_attention_sdpa(q.float(), k.float(), v.float(), vis, SCALE, route)
    assert _rel_err(out[0], ref[0]) < 1e-2
    assert torch.equal(out[1], torch.zeros_like(out[1]))


@pytest.mark.gpu
def test_gpu_unsupported_call_falls_back_and_is_recorded(monkeypatch):
    monkeypatch.delenv("L2A_STRICT_BACKENDS", raising=False)
    clear_fallbacks()
    q, k, v = _inputs(1, 4, 2, 1, 300, D=256, dtype=torch.bfloat16, device="cuda")
    vis = torch.ones(1, 1, 300, dtype=torch.bool, device="cuda")
    o = masked_decode_attention(q, k, v, vis, SCALE, None)
    torch.testing.assert_close(o, masked_decode_attention_sdpa(q, k, v, vis, SCALE, None))
    assert [f["op"] for f in fallbacks()] == [DECODE_SPLIT_OP]
    clear_fallbacks()
