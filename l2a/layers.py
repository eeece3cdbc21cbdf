"""The L2A layer: local sliding-window branch, router, token-sparse global branch.

Follows the method page step by step (local branch on RMSNorm_local(x), router and global
branch on RMSNorm_global of the stream *after* the local branch, straight-through gate).
Nothing here knows about ranks or processes: under sequence parallelism (Ulysses,
`train/parallel/`) a rank runs these modules on its slice of the sequence and
only the attention core (``L2ABranchAttention.attention_core``) is wrapped from outside, to
see whole sequences for a subset of heads (and, with routed-only projections, the routed
core ``L2ABranchAttention.routed_attention_core``); the router decision is per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP, Qwen2RotaryEmbedding
from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3MLP,
    Qwen3RotaryEmbedding,
    rotate_half,
)

from kernels import sliding_window_attention, token_sparse_attention
from kernels.decode import DECODE_MAX_QUERIES, masked_decode_attention
from kernels.token_sparse.compact import (
    begin_routed_rows_read,
    remember_routed_rows,
    routed_query_attention,
    routed_rows,
    routed_slots,
)

from .cache import cache_slots
from .dense_path import dense_forward_routed_backward
from .fused import add_rms_norm, compiled, gated_add, gated_scatter_add, norm_rope, router
from .gated_output import GatedOutputProjection, straight_through_gate
from .rmsnorm import LeanRMSNorm
from .router_logit import router_logit


@dataclass(frozen=True)
class Family:
    """What differs between the Qwen generations an L2A layer is built on."""

    name: str
    rmsnorm: type
    mlp: type
    rotary: type
    qk_norm: bool  # Qwen3: per-head RMSNorm on q and k

    def qkv_bias(self, config) -> bool:
        return bool(config.attention_bias) if self.name == "qwen3" else True

    def o_bias(self, config) -> bool:
        return bool(config.attention_bias) if self.name == "qwen3" else False


# LeanRMSNorm: the forward of Qwen2RMSNorm / Qwen3RMSNorm (identical), without their fp32
# copy of the input kept for backward (l2a/rmsnorm.py).
QWEN3 = Family("qwen3", LeanRMSNorm, Qwen3MLP, Qwen3RotaryEmbedding, qk_norm=True)
QWEN2 = Family("qwen2", LeanRMSNorm, Qwen2MLP, Qwen2RotaryEmbedding, qk_norm=False)


@dataclass
class AttentionContext:
    """Per-forward facts every layer needs, computed once by the decoder stack.

    ``doc_ids`` label every key position a layer may see, cached ones included (``(B,
    past + T)``; padding is one more document): the kernels' document masking does the
    rest. A cache slot that keeps fewer keys (the local window) uses the last columns.
    """

    doc_ids: torch.Tensor | None = None
    cache: Any | None = None
    backend: str = "auto"
    # Global branch: project queries and output for routed tokens only, in steps without
    # the dense path: training, uncached forwards and prefills (also chunks onto a cache)
    # longer than a decoding step (config ``l2a_routed_projections``).
    routed_projections: bool = False
    # With routed projections: the compacted queries in the capacity layout, T rows instead
    # of the routed count R (config ``l2a_routed_rows: capacity``): no shape depends on the
    # device, so no layer reads R from it (no host synchronisation per layer), at the cost
    # of q_proj / QK-norm / RoPE / o_proj on every row (the attention still costs R rows).
    row_capacity: bool = False
    # The elementwise work around the branches in torch.compile'd regions (l2a/fused.py;
    # config ``l2a_fused_elementwise``; training, uncached forwards and prefills).
    fused: bool = False
    # A decoding step on a static cache (l2a/static_cache.py): which keys of the fixed-size
    # buffers each new token sees (``StepMasks``); set, the step has fixed shapes and no
    # host synchronisation (the global branch takes the route as a device tensor).
    step: Any | None = None
    # Layer index -> its routed count R (a host int), read once per layer and forward.
    routed_rows: dict[int, int] = field(default_factory=dict)

    @property
    def capacity_layout(self) -> bool:
        """The routed rows in the capacity layout: the routed path's compacted queries and a
        dense-path step's token-sparse backward (l2a/dense_path.py), no count read."""
        return self.routed_projections and self.row_capacity

    def begin_routed_rows(self, layer_idx: int, route: torch.Tensor) -> None:
        """The layer's routed count ``R`` (a shape of its compacted queries): read from the
        device once per layer and forward, the read started here and finished by the first
        kernel call that needs it (on CUDA the host then waits only for that copy, the key
        and value projections queued meanwhile keep the GPU busy); ``finish_routed_rows``
        keeps it. The recomputation of activation checkpointing runs with this same context
        and reproduces the forward's decisions (fp32 router), so it reads nothing again.
        In the capacity layout of the routed path there is no R to read."""
        if self.capacity_layout:
            return
        rows = self.routed_rows.get(layer_idx)
        if rows is None:
            begin_routed_rows_read(route)
        else:
            remember_routed_rows(route, rows)

    def finish_routed_rows(self, layer_idx: int, route: torch.Tensor) -> int | None:
        """``R`` of the layer, kept for its recomputation (no new read: the kernel call that
        needed it has read it); None in the capacity layout (nothing to remember)."""
        if self.routed_projections and self.row_capacity:
            return None
        rows = self.routed_rows[layer_idx] = routed_rows(route)
        return rows

    def doc_ids_for(self, num_keys: int) -> torch.Tensor | None:
        if self.doc_ids is None or self.doc_ids.shape[1] == num_keys:
            return self.doc_ids
        return self.doc_ids[:, -num_keys:]


def sequence_attention_core(q, k, v, route, window, doc_ids, scale, backend):
    """q ``(B, Hq, Tq, D)``, k, v ``(B, Hkv, Tk, D)`` after projections, QK-norm and RoPE
    (q: the last Tq of the keys) -> o ``(B, Hq, Tq, D)``: token-sparse causal attention when
    ``route`` is set, else sliding-window (``window`` None: dense causal); ``doc_ids``
    label the keys. Sequence parallelism replaces it per module (train/parallel/apply.py)."""
    if route is not None:
        return token_sparse_attention(q, k, v, route, doc_ids, scale, backend=backend)
    window = window if window is not None else k.shape[2]
    return sliding_window_attention(q, k, v, window, doc_ids, scale, backend=backend)


def routed_query_core(q_c, k, v, route, doc_ids, scale, backend, slots, valid):
    """Compacted routed queries ``q_c (B, Hq, R, D)`` (rows listed by ``slots``/``valid``,
    ``routed_slots(route)``) against every key ``k, v (B, Hkv, T, D)`` -> ``(B, Hq, R, D)``,
    padding rows zero. Sequence parallelism replaces it per module (train/parallel/routed.py)."""
    return routed_query_attention(q_c, k, v, route, doc_ids, scale, backend=backend, slots=(slots, valid))


class L2ABranchAttention(nn.Module):
    """One attention branch: q/k/v/o projections (+ QK-norm for Qwen3), RoPE, attention.

    Parameter names match the base model's ``self_attn`` so conversion is a rename.
    """

    def __init__(self, config, family: Family, gated_output: bool = False):
        super().__init__()
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        qkv_bias, o_bias = family.qkv_bias(config), family.o_bias(config)
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=qkv_bias)
        # The global branch's o_proj also takes the residual and the gate (l2a/gated_output.py).
        out_proj = GatedOutputProjection if gated_output else nn.Linear
        self.o_proj = out_proj(self.num_heads * self.head_dim, hidden, bias=o_bias)
        if family.qk_norm:
            self.q_norm = family.rmsnorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = family.rmsnorm(self.head_dim, eps=config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        # Replaceable per module from outside (sequence parallelism wraps it with all-to-alls).
        self.attention_core = sequence_attention_core
        self.routed_attention_core = routed_query_core

    def forward(
        self,
        x: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        ctx: AttentionContext,
        cache_slot: int,
        window: int | None = None,
        route: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
        gate: torch.Tensor | None = None,
        backward_route: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, T, hidden). ``window`` set: local branch; ``route`` set: token-sparse global
        branch (rows of unrouted tokens are zero before o_proj); neither: dense causal.
        ``residual`` and ``gate`` (a gated o_proj only): returns ``residual + gate * out``.
        ``backward_route`` (a dense-path step): dense causal forward whose backward runs
        token-sparse over these routed queries (l2a/dense_path.py: exact when the gate
        zeroes the output's gradient at the other rows)."""
        bsz, seq, _ = x.shape
        shape = (bsz, seq, -1, self.head_dim)
        q = self.q_proj(x).view(shape)
        k = self.k_proj(x).view(shape)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        cos, sin = position_embeddings
        q = self._norm_rope(q, self.q_norm, cos, sin, ctx.fused)
        k = self._norm_rope(k, self.k_norm, cos, sin, ctx.fused)
        if ctx.cache is not None:
            # With a cache, k/v hold the cached keys too and q the last T of them.
            k, v = ctx.cache.update(k, v, cache_slot)
        doc_ids = ctx.doc_ids_for(k.shape[2])

        if ctx.step is not None:
            visible = ctx.step.window if window is not None else ctx.step.full
            o = masked_decode_attention(q, k, v, visible, self.scaling, route, ctx.backend)
        elif backward_route is not None:
            routed_core = self.routed_attention_core if ctx.capacity_layout else None
            o = dense_forward_routed_backward(self.attention_core, q, k, v, backward_route, doc_ids,
                                              self.scaling, ctx.backend, routed_core)
        else:
            o = self.attention_core(q, k, v, route, window, doc_ids, self.scaling, ctx.backend)
        # Under sequence parallelism the core keeps its own (all-to-all'd) copies: these are
        # garbage now, not to be held through o_proj and the gated add.
        del q, k, v
        o = o.transpose(1, 2).reshape(bsz, seq, -1)
        return self.o_proj(o) if residual is None else self.o_proj(o, residual, gate)

    def cache_keys(
        self, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor], ctx, cache_slot: int
    ) -> None:
        """Only the keys and values into the cache (a step whose tokens all skip this branch:
        later routed queries still attend to them)."""
        bsz, seq, _ = x.shape
        k = self.k_proj(x).view(bsz, seq, -1, self.head_dim)
        v = self.v_proj(x).view(bsz, seq, -1, self.head_dim).transpose(1, 2)
        cos, sin = position_embeddings
        ctx.cache.update(self._norm_rope(k, self.k_norm, cos, sin, False), v, cache_slot)

    @staticmethod
    def _norm_rope(x, norm, cos, sin, fused: bool) -> torch.Tensor:
        """``x (B, n, H, D)`` -> QK-norm (Qwen3) and RoPE at ``cos``/``sin (B, n, D)``, as
        ``(B, H, n, D)``: transformers' ``apply_rotary_pos_emb`` formula, per tensor so that
        queries and keys may sit at different positions."""
        if fused:
            weight, eps = (norm.weight, norm.variance_epsilon) if norm is not None else (None, 0.0)
            return compiled(norm_rope)(x, weight, eps, cos, sin)
        if norm is not None:
            x = norm(x)
        x = x.transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return (x * cos) + (rotate_half(x) * sin)

    def forward_routed(
        self,
        x: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        ctx: AttentionContext,
        route: torch.Tensor,
        cache_slot: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The token-sparse branch with queries and output projected for routed tokens only
        (keys and values for every token, into the cache at ``cache_slot`` when there is
        one). Returns ``(a, slots, valid)``: ``a (B, R, hidden)`` is ``o_proj`` *without
        its bias* of the routed rows listed by ``slots``/``valid``
        (``kernels.token_sparse.compact.routed_slots``); padding rows are zero. With
        ``ctx.row_capacity`` R is the row length T (every row projected, no host read)."""
        bsz, seq, hidden = x.shape
        k = self.k_proj(x).view(bsz, seq, -1, self.head_dim)
        v = self.v_proj(x).view(bsz, seq, -1, self.head_dim).transpose(1, 2)
        cos, sin = (t.expand(bsz, -1, -1) for t in position_embeddings)
        # Keys first: queued before R is read, they keep the GPU busy while the host waits.
        k = self._norm_rope(k, self.k_norm, cos, sin, ctx.fused)
        # R is a shape: AttentionContext.begin_routed_rows (T in the capacity layout).
        slots, valid = routed_slots(route, capacity=ctx.row_capacity)
        R = slots.shape[1]
        xs = x.gather(1, slots[:, :, None].expand(bsz, R, hidden))
        q = self.q_proj(xs).view(bsz, R, self.num_heads, self.head_dim)
        rows = slots[:, :, None].expand(bsz, R, cos.shape[-1])
        q = self._norm_rope(q, self.q_norm, cos.gather(1, rows), sin.gather(1, rows), ctx.fused)
        if ctx.cache is not None:
            # The queries are the last `seq` of the cached keys (slots index the queries).
            k, v = ctx.cache.update(k, v, cache_slot)
        o = self.routed_attention_core(
            q, k, v, route, ctx.doc_ids_for(k.shape[2]), self.scaling, ctx.backend, slots, valid
        )
        o = o.transpose(1, 2).reshape(bsz, R, self.num_heads * self.head_dim)
        return F.linear(o, self.o_proj.weight), slots, valid


class L2AAttention(nn.Module):
    """Replaces a decoder layer's self-attention: local branch, router, global branch.

    ``input_layernorm`` of the decoder layer is RMSNorm_local; ``global_norm`` is RMSNorm_global.
    """

    def __init__(self, config, layer_idx: int, family: Family):
        super().__init__()
        self.layer_idx = layer_idx
        self.window = config.l2a_window
        self.tau = config.l2a_router_tau
        self.logit_threshold = config.l2a_logit_threshold
        self.local_slot, self.global_slot = cache_slots(config)[layer_idx]
        self.local_attn = L2ABranchAttention(config, family)
        # A pruned (local-only) layer has no router and no global branch at all.
        self.has_global = config.has_global_branch(layer_idx)
        if self.has_global:
            self.global_norm = family.rmsnorm(config.hidden_size, eps=config.rms_norm_eps)
            self.router = nn.Linear(config.hidden_size, 1, bias=False)
            self.global_attn = L2ABranchAttention(config, family, gated_output=True)

    def route(self, g: torch.Tensor, fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Router on the normed stream g (B, T, hidden) -> (soft p, hard d), both (B, T).

        Computed in fp32: a bf16 logit near the threshold would flip decisions between the
        forward pass and the recomputation of activation checkpointing."""
        if fused:
            return compiled(router)(g, self.router.weight, self.tau, self.logit_threshold)
        logit = router_logit(g, self.router.weight)  # no fp32 copy of g kept for backward
        return torch.sigmoid(logit / self.tau), logit >= self.logit_threshold

    def forward(
        self,
        hidden: torch.Tensor,
        local_input: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        ctx: AttentionContext,
        dense: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns the updated residual stream, router probabilities p and decisions d
        (None, None for a local-only layer)."""
        local = self.local_attn(local_input, position_embeddings, ctx, self.local_slot, window=self.window)
        if not self.has_global:
            return hidden + local, None, None
        if ctx.fused:
            norm = self.global_norm
            hidden, g = compiled(add_rms_norm)(hidden, local, norm.weight, norm.variance_epsilon)
            p, d = self.route(g, fused=True)
        else:
            hidden = hidden + local
            g = self.global_norm(hidden)
            p, d = self.route(g)
        step = ctx.cache is not None and hidden.shape[1] <= DECODE_MAX_QUERIES
        if step and ctx.step is None and not dense and not bool(d.any()):
            # Generation: no token of this call is routed, so the global branch adds nothing;
            # only its keys and values are computed, for the cache. (A decoding step only:
            # a prefill practically always routes some token, and the check is a host sync;
            # a static cache's step keeps fixed shapes: unrouted rows are zeroed on the device.)
            self.global_attn.cache_keys(g, position_embeddings, ctx, self.global_slot)
            return hidden, p, d
        sparse = not dense and not step
        if sparse:
            ctx.begin_routed_rows(self.layer_idx, d)
        epilogue = compiled if ctx.fused else (lambda fn: fn)
        if ctx.routed_projections and sparse:
            # Routed rows only: unrouted rows of the attention output are zero, so their
            # branch output is o_proj's bias (gated by d = 0 forward, and giving p the same
            # gradient, bias . dL/dhidden, as the full path). Decoding steps keep the full
            # path: a few rows, and the folded decoding attention (kernels/decode.py).
            a, slots, valid = self.global_attn.forward_routed(
                g, position_embeddings, ctx, d, self.global_slot
            )
            ctx.finish_routed_rows(self.layer_idx, d)
            bias = self.global_attn.o_proj.bias
            return epilogue(gated_scatter_add)(hidden, a, d, p, slots, valid, bias), p, d
        # Stochastic dense path: the global branch runs for every token and is still gated
        # by d~, so the router gets a gradient for tokens it has switched off. Every token
        # attending is plain causal attention, so it goes to the dense causal kernel (route
        # None, window None), not to the token-sparse one with an all-ones route: on an H200
        # at 128K that step took 36.8 s through the token-sparse Triton kernel against 27.5 s
        # for a whole dense step on FlashAttention-4 (docs/BENCHMARKS.md). The gate's forward
        # value d zeroes the gradient of unrouted rows, so the backward is token-sparse.
        attn_route, backward_route = (None, d) if dense else (d, None)
        if ctx.fused:
            a = self.global_attn(g, position_embeddings, ctx, self.global_slot, route=attn_route,
                                 backward_route=backward_route)
            if sparse:
                ctx.finish_routed_rows(self.layer_idx, d)
            return epilogue(gated_add)(hidden, a, d, p), p, d
        # o_proj and the gated add in one autograd node that does not keep the branch output.
        out = self.global_attn(g, position_embeddings, ctx, self.global_slot, route=attn_route,
                               residual=hidden, gate=straight_through_gate(d, p),
                               backward_route=backward_route)
        if sparse:
            ctx.finish_routed_rows(self.layer_idx, d)
        return out, p, d


class L2ADecoderLayer(GradientCheckpointingLayer):
    """A Qwen decoder layer whose self-attention is an L2A block (or the base attention,
    for layers left out of ``l2a_layers``)."""

    def __init__(self, config, layer_idx: int, family: Family):
        super().__init__()
        self.layer_idx = layer_idx
        self.is_l2a = config.is_l2a_layer(layer_idx)
        if self.is_l2a:
            self.self_attn = L2AAttention(config, layer_idx, family)
        else:
            self.self_attn = L2ABranchAttention(config, family)
            self.cache_slot = cache_slots(config)[layer_idx][0]
        self.mlp = family.mlp(config)
        self.input_layernorm = family.rmsnorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = family.rmsnorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        ctx: AttentionContext | None = None,
        dense: bool = False,
    ):
        h = self.input_layernorm(hidden)
        if self.is_l2a:
            hidden, p, d = self.self_attn(hidden, h, position_embeddings, ctx, dense)
        else:
            hidden = hidden + self.self_attn(h, position_embeddings, ctx, self.cache_slot)
            p = d = None
        hidden = hidden + self.mlp(self.post_attention_layernorm(hidden))
        return hidden, p, d
