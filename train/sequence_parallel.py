"""Sequence parallelism (DeepSpeed-Ulysses), applied to the model from outside.

`train.sequence_parallel=N` splits the ranks into groups of N consecutive ranks (DeepSpeed's
`parallel_state_sp`, passed to `deepspeed.initialize` as `mpu`). All ranks of a group read
the same packed row; each holds a contiguous 1/N slice of its tokens (`shard_batch`) and
runs embeddings, norms, MLPs, router, gate and loss on that slice only. Only the attention
core of every branch (`L2ABranchAttention.attention_core`) is wrapped (`apply_to_model`):
DeepSpeed's `UlyssesSPAttentionHF` all-to-alls q/k/v from (B, H, T/N, D) to (B, H/N, T, D),
the unchanged kernels run on whole sequences for H/N heads, and the output goes back to the
slice. KV heads are replicated when there are fewer than N (DeepSpeed's rule). The local
branch needs only the window before each query: by default it keeps the slice and gets the
window's keys and values from the ranks before it (train/sequence_halo.py).

With routed-only global projections (`l2a.routed_projections`) the global branch calls
`L2ABranchAttention.routed_attention_core` instead, on this rank's compacted routed queries
(a count that differs per rank): `RoutedUlyssesCore` all-to-alls the keys and values as
above, sends every rank's query rows of a head group to the rank of that group (uneven
row counts), runs the original core on the whole row's routed queries for H/N heads and
sends the output rows back.

Gradients: DeepSpeed sums them over all ranks and divides by the data-parallel size
(world / N) under an SP mpu (`stage_1_and_2.py`, `stage3.py`: `div_(world / sp)`), so
the trainer normalises the LM loss by the data-parallel size, not the world size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from train.config import ConfigError


def valid_sizes(num_heads: int, num_kv_heads: int) -> list[int]:
    """Sequence-parallel sizes that the head counts allow: N divides the query heads and
    N divides the KV heads or is a multiple of them (KV replicated)."""
    return [n for n in range(1, num_heads + 1)
            if num_heads % n == 0 and (num_kv_heads % n == 0 or n % num_kv_heads == 0)]


def check(sp: int, world_size: int, num_heads: int, num_kv_heads: int, seq_len: int | None) -> None:
    """One-line `ConfigError`s for a sequence-parallel size that cannot work."""
    if sp == 1:
        return
    if sp > world_size:
        raise ConfigError(f"train.sequence_parallel: must be <= the world size ({world_size}), got {sp}")
    if world_size % sp:
        raise ConfigError(f"train.sequence_parallel: must divide the world size ({world_size}), got {sp}")
    sizes = valid_sizes(num_heads, num_kv_heads)
    if sp not in sizes:
        raise ConfigError(
            f"train.sequence_parallel: the model's {num_heads} query / {num_kv_heads} KV heads "
            f"allow {', '.join(map(str, sizes))}, got {sp}")
    if seq_len is not None and seq_len % sp:
        raise ConfigError(
            f"train.sequence_parallel: must divide data.seq_len ({seq_len}), got {sp}")


def model_heads(model_cfg) -> tuple[int, int]:
    """(query heads, KV heads) of the configured base without building it."""
    if model_cfg.random_base is not None:
        h = model_cfg.random_base["num_attention_heads"]
        return h, model_cfg.random_base.get("num_key_value_heads", h)
    from transformers import AutoConfig

    try:
        c = AutoConfig.from_pretrained(model_cfg.base).get_text_config()
    except Exception as e:  # offline, a typo: one line, not a traceback
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"model.base: cannot read the config of {model_cfg.base!r} ({first})") from None
    return c.num_attention_heads, getattr(c, "num_key_value_heads", None) or c.num_attention_heads


# --------------------------------------------------------------------------- groups
class SequenceParallelMpu:
    """DeepSpeed's `parallel_state_sp` module as the `mpu` of `deepspeed.initialize`, saying
    that there is no tensor parallelism. The module aliases "model parallel" to sequence
    parallel, so DeepSpeed 0.19.8 writes `tp_degree = N` into a checkpoint that has one
    model-state file, and `ds_to_universal` then refuses it (file count 1 != tp 2). Every
    other query goes to the module (the SP checks look for `initialize_sequence_parallel`)."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)

    @staticmethod
    def get_tensor_model_parallel_world_size() -> int:
        return 1

    @staticmethod
    def get_tensor_model_parallel_rank() -> int:
        return 0


def init_groups(sp: int) -> SequenceParallelMpu:
    """DeepSpeed's SP groups (ranks [i*sp, (i+1)*sp) per group); returns the mpu."""
    import deepspeed.runtime.sequence_parallel.parallel_state_sp as mpu

    if mpu._SEQUENCE_PARALLEL_GROUP is not None:
        if mpu.get_sequence_parallel_world_size() == sp:
            return SequenceParallelMpu(mpu)
        mpu._release_sequence_parallel_groups()  # another run in this process used another N
    mpu.initialize_sequence_parallel(sp)
    return SequenceParallelMpu(mpu)


def release_groups() -> None:
    """Forget the SP mpu (several runs in one process: a later one without SP)."""
    from deepspeed.utils import groups
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    groups.mpu = None
    while _replaced_attention:
        impl, fn = _replaced_attention.popitem()
        ALL_ATTENTION_FUNCTIONS[impl] = fn


# --------------------------------------------------------------------------- data
def shard_batch(batch: dict, sp_rank: int, sp: int) -> dict:
    """A full packed row -> this rank's contiguous 1/N slice.

    input_ids, position_ids: sliced. labels: shifted on the whole row first (position t
    predicts token t + 1, also across the slice boundary), then sliced (`shift_labels`).
    `doc_ids`: this slice of the whole row's document ids (numbered on the whole row, so
    that the attention wrapper's all-gather gives the row's). `router_mask` (valid tokens:
    labels not -100) is the whole row's: the router statistics are the row's."""
    from kernels.utils import doc_ids_from_position_ids
    from train.losses import shift_labels

    seq = batch["input_ids"].shape[1]
    if seq % sp:
        raise ConfigError(f"train.sequence_parallel: must divide the sequence length ({seq}), got {sp}")
    part = slice(sp_rank * (seq // sp), (sp_rank + 1) * (seq // sp))
    labels = batch["labels"]
    return {
        "input_ids": batch["input_ids"][:, part],
        "position_ids": batch["position_ids"][:, part],
        "shift_labels": shift_labels(labels)[:, part],
        "doc_ids": doc_ids_from_position_ids(batch["position_ids"])[:, part],
        "router_mask": labels != -100,
    }


# --------------------------------------------------------------------------- router stats
class _GatherSequence(torch.autograd.Function):
    """All-gather along the sequence (dim 1) over the SP group. Every rank then computes the
    same function of the whole row; backward keeps this rank's slice of the gradient (not
    a sum), so the ranks' gradients add up to the gradient of that one function."""

    @staticmethod
    def forward(ctx, x, group):
        n, r = dist.get_world_size(group), dist.get_rank(group)
        parts = [torch.empty_like(x) for _ in range(n)]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.part = slice(r * x.shape[1], (r + 1) * x.shape[1])
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad):
        return grad[:, ctx.part], None


def gather_sequence(x: torch.Tensor, group) -> torch.Tensor:
    if x.requires_grad:
        return _GatherSequence.apply(x, group)
    with torch.no_grad():
        return _GatherSequence.apply(x, group)


def gather_router_outputs(probs, routes, group) -> tuple[tuple, tuple]:
    """Router probabilities and decisions of every L2A layer for the whole row."""
    probs = tuple(gather_sequence(p, group) for p in probs)
    routes = tuple(gather_sequence(d.to(torch.uint8), group).bool() for d in routes)
    return probs, routes


# --------------------------------------------------------------------------- attention
# How the local (sliding-window) branch runs under sequence parallelism: `halo` keeps the
# slice and exchanges the window's keys (train/sequence_halo.py); `ulysses` all-to-alls it
# like the global branch.
SP_WINDOW_MODES = ("halo", "ulysses")

class UlyssesCore:
    """Replaces one branch's attention core: gathers the route over the SP group and runs
    the original core on whole sequences for H/N heads through DeepSpeed's
    `UlyssesSPAttentionHF`. Not an nn.Module: the model's parameters and state dict are
    unchanged."""

    def __init__(self, inner, ulysses, group):
        self.inner = inner
        self.ulysses = ulysses
        self.group = group

    def __call__(self, q, k, v, route, window, doc_ids, scale, backend):
        bsz, heads, local, dim = q.shape
        if route is not None:
            route = gather_sequence(route.to(torch.uint8), self.group).bool()

        def core(_module, qf, kf, vf, _mask, *args, **kwargs):
            # After the all-to-all: (B, H/N, T, D); DeepSpeed gathered the `position_ids`
            # we passed, i.e. the whole row's document ids.
            o = self.inner(qf, kf, vf, route, window, kwargs["position_ids"], scale, backend)
            return o.transpose(1, 2), None  # (B, T, H/N, D), as DeepSpeed expects

        self.ulysses.attn = core
        # DeepSpeed all-gathers `position_ids` (it needs the whole row's); we hand it our
        # slice of the whole row's document ids instead, which is what the kernels need.
        out, _ = self.ulysses(_NoEval, q, k, v, None, position_ids=doc_ids.contiguous())
        return out.view(bsz, local, heads, dim).transpose(1, 2)


# --------------------------------------------------------------------------- routed queries
class _AllToAll(torch.autograd.Function):
    """Uneven all-to-all of a flat tensor over the SP group: `send_sizes[j]` elements to
    rank j, `recv_sizes[i]` from rank i. Backward is the reverse exchange. One flat
    `all_to_all_single` with split sizes: gloo's list form needs equal sizes."""

    @staticmethod
    def forward(ctx, flat, send_sizes, recv_sizes, group):
        ctx.sizes, ctx.group = (send_sizes, recv_sizes), group
        out = flat.new_empty(sum(recv_sizes))
        dist.all_to_all_single(out, flat.contiguous(), recv_sizes, send_sizes, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        send_sizes, recv_sizes = ctx.sizes
        out = grad.new_empty(sum(send_sizes))
        dist.all_to_all_single(out, grad.contiguous(), send_sizes, recv_sizes, group=ctx.group)
        return out, None, None, None


def exchange(send: list[torch.Tensor], recv_shapes: list[tuple], group) -> list[torch.Tensor]:
    """`send[j]` to rank j of `group`; returns what rank i sent here, shaped `recv_shapes[i]`
    (differentiable: the gradient of a received tensor goes back to its sender)."""
    flat = torch.cat([t.reshape(-1) for t in send])
    recv_sizes = [math.prod(shape) for shape in recv_shapes]
    out = _AllToAll.apply(flat, [t.numel() for t in send], recv_sizes, group)
    return [part.view(shape) for part, shape in zip(out.split(recv_sizes), recv_shapes)]


@dataclass
class RoutedRows:
    """The routed query rows of a whole row, as the ranks of a group hold them: rank i's
    `counts[i]` compacted rows (`routed_slots` of its slice) one after the other, at key
    positions `i * T/N + slot`. `order` (None when no row is padding) puts the routed rows
    first, in position order, and the padding after them: the layout `routed_slots` gives
    a whole row, which the core's backends need (FlexAttention's block bounds take the
    positions as ascending; its padding stand-in is the last position)."""

    slots: torch.Tensor  # (B, S) key positions, in `order`
    valid: torch.Tensor  # (B, S) routed (not padding), in `order`
    counts: list[int]  # rows per rank (the largest routed count of its slice)
    order: torch.Tensor | None  # (B, S): rank-segment row of each row above


def whole_row_routed_rows(route: torch.Tensor, n: int) -> RoutedRows:
    """`route (B, T)` of the whole row, split in `n` contiguous slices. One host sync."""
    from kernels.flash.routing import build_routing

    B, T = route.shape
    local = T // n
    seg = route.view(B, n, local)
    per_slice = seg.sum(-1)  # (B, n)
    table = per_slice.tolist()
    counts = [max(row[i] for row in table) for i in range(n)]
    # A slice's slots as its rank's `routed_slots` lists them (the same function of the route).
    pos = build_routing(seg.reshape(B * n, local), None).order.view(B, n, local).long()
    arange = torch.arange(max(counts, default=0), device=route.device)
    slots = torch.cat([pos[:, i, :c] + i * local for i, c in enumerate(counts)], dim=1)
    valid = torch.cat([arange[None, :c] < per_slice[:, i, None] for i, c in enumerate(counts)], dim=1)
    if all(row[i] == c for row in table for i, c in enumerate(counts)):
        return RoutedRows(slots, valid, counts, None)  # no padding (always so for one row)
    order = torch.argsort((~valid).to(torch.int8), dim=1, stable=True)
    return RoutedRows(slots.gather(1, order), valid.gather(1, order), counts, order)


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, H, S, D), index (B, S): x[b, :, index[b]]."""
    B, H, _, D = x.shape
    return x.gather(2, index[:, None, :, None].expand(B, H, index.shape[1], D))


class RoutedUlyssesCore:
    """Replaces one branch's routed attention core (`routed_projections`): this rank holds
    compacted queries `q_c (B, Hq, R_i, D)` of its slice's routed tokens (R_i differs per
    rank) and keys/values `(B, Hkv, T/N, D)` of its slice. Keys and values go to the head
    groups as in Ulysses (replicated when fewer than N), every rank's query rows of head
    group j to rank j, which runs the original core on the whole row for Hq/N heads; the
    output rows go back. Not an nn.Module (the model's state dict is unchanged)."""

    def __init__(self, inner, group):
        self.inner, self.group = inner, group

    def __call__(self, q_c, k, v, route, doc_ids, scale, backend, slots, valid):
        n, rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        B, Hq, R, D = q_c.shape
        local = k.shape[2]
        if route.shape[1] != local:
            raise ValueError("sequence parallelism: routed queries must be all the keys' (no KV cache)")
        route = gather_sequence(route.to(torch.uint8), self.group).bool()
        if doc_ids is not None:
            doc_ids = gather_sequence(doc_ids, self.group)
        rows = whole_row_routed_rows(route, n)
        if rows.counts[rank] != R or slots.shape[1] != R:
            raise RuntimeError(f"sequence parallelism: rank {rank} holds {R} routed rows, "
                               f"its slice of the route says {rows.counts[rank]}")
        k, v = self._whole_sequence(k), self._whole_sequence(v)
        hq = Hq // n
        # Head group j of every rank's rows to rank j; rank i's rows arrive as segment i.
        parts = exchange([q_c[:, j * hq:(j + 1) * hq] for j in range(n)],
                         [(B, hq, c, D) for c in rows.counts], self.group)
        q = torch.cat(parts, dim=2)
        if rows.order is not None:
            q = _rows(q, rows.order)
        o = self.inner(q, k, v, route, doc_ids, scale, backend, rows.slots, rows.valid)
        if rows.order is not None:
            o = _rows(o, torch.argsort(rows.order, dim=1))
        back = exchange(list(o.split(rows.counts, dim=2)), [(B, hq, R, D)] * n, self.group)
        return torch.cat(back, dim=1)

    def _whole_sequence(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Hkv, T/N, D) -> (B, Hkv/N, T, D) of this rank's head group (Hkv < N: the one
        KV head its query heads use, replicated as DeepSpeed does)."""
        n = dist.get_world_size(self.group)
        B, H, local, D = x.shape
        if H < n:
            x = x.repeat_interleave(n // H, dim=1)
            H = n
        h = H // n
        parts = exchange([x[:, j * h:(j + 1) * h] for j in range(n)], [(B, h, local, D)] * n, self.group)
        return torch.cat(parts, dim=2)


class _NoEvalModule:
    training = True  # UlyssesSPAttentionHF only reads `module.training` (disable_in_eval)


_NoEval = _NoEvalModule()


def apply_to_model(model: torch.nn.Module, group, micro_batch_size: int, window: str = "halo") -> int:
    """Wrap the attention cores (full and routed) of every L2A branch of `model` for sequence
    parallelism over `group`; returns the number of branches wrapped. `window`
    (`train.sequence_parallel_window`): the local branches through `halo` exchange
    (train/sequence_halo.py) or Ulysses like the global ones."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF

    from l2a.layers import L2AAttention, L2ABranchAttention
    from train.sequence_halo import HaloWindowCore

    if window not in SP_WINDOW_MODES:
        raise ConfigError(f"train.sequence_parallel_window: must be one of {', '.join(SP_WINDOW_MODES)}, got {window!r}")
    local = {id(m.local_attn) for m in model.modules() if isinstance(m, L2AAttention)}
    cfg = model.config
    n = 0
    for module in model.modules():
        if isinstance(module, L2ABranchAttention) and window == "halo" and id(module) in local:
            module.attention_core = HaloWindowCore(module.attention_core, group)
            n += 1
        elif isinstance(module, L2ABranchAttention):
            ulysses = UlyssesSPAttentionHF(
                attn=None, batch_size=micro_batch_size, attn_head_count=module.num_heads,
                attn_head_size=module.head_dim, kv_head_count=module.num_kv_heads,
                num_hidden_layers=cfg.num_hidden_layers, process_group=group,
                seq_length_is_variable=True,
            )
            module.attention_core = UlyssesCore(module.attention_core, ulysses, group)
            module.routed_attention_core = RoutedUlyssesCore(module.routed_attention_core, group)
            n += 1
    return n


def apply_to_dense_model(model: torch.nn.Module, sp: int, micro_batch_size: int):
    """The dense baseline (an HF model): DeepSpeed's own registration, which routes the
    model's attention implementation through Ulysses; returns the mpu. Packed rows then
    attend causally across documents (DeepSpeed drops the mask; flash-attention
    implementations use the gathered position ids instead)."""
    from deepspeed.runtime.sequence_parallel.ulysses_sp import UlyssesSPAttentionHF
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    import deepspeed.runtime.sequence_parallel.parallel_state_sp as mpu

    impl = model.config._attn_implementation
    _replaced_attention.setdefault(impl, ALL_ATTENTION_FUNCTIONS[impl])
    if mpu._SEQUENCE_PARALLEL_GROUP is not None:
        mpu._release_sequence_parallel_groups()  # register_with_transformers makes its own
    return SequenceParallelMpu(UlyssesSPAttentionHF.register_with_transformers(
        model, impl, sp, micro_batch_size, seq_length_is_variable=True))


_replaced_attention: dict = {}
