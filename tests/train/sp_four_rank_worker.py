"""Run under torchrun (4 processes, gloo) by test_sequence_parallel_four_ranks.py: what only
differs from 2 ranks, each case against the whole rows on one process (every rank computes
the reference too). Layouts:

* `sp4`: one sequence group of 4 ranks (slices of 8 of 32-token rows). L2A models whose
  local window is narrower than a slice, exactly one slice and wider than two (the halo
  then comes from the 3 ranks before the last one), GQA with fewer KV heads than ranks (8/2:
  KV replicated 2x), MQA (4/1: 4x), Ulysses for the local branch; normal, dense and routed
  steps (routed-only projections: 4 ranks compact different numbers of rows); and the dense
  baseline (DeepSpeed's own registration).
* `sp2dp2`: two sequence groups of 2 ranks ({0, 1} and {2, 3}), each reading other rows.
  The gradients are averaged over the data-parallel ranks as the trainer and DeepSpeed do
  (each rank's LM sum weighted by divisor / all target tokens, the router term by divisor /
  data-parallel size, summed over all ranks, divided by the divisor: the data-parallel size
  under ZeRO 1/2), against the whole combined batch (4 rows) on one process. Per group, the
  loss and the router outputs are also compared with that group's rows alone: an exchange
  that leaked into the other group would show there.

Writes `<out>/<layout>_rank<r>.json`: per case the largest differences (loss, LM loss, router
probabilities, decisions, every parameter's gradient: all parameters trainable), the ranks
each halo exchange received keys from, the routed counts per slice, the group's ranks.

    torchrun --nproc_per_node=4 tests/train/sp_four_rank_worker.py <out dir> sp4|sp2dp2
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from sp_model_worker import (
    LAMBDA,
    ROUTED_CALLS,
    batch,
    count_routed_calls,
    finish,
    grad_rel_err,
    slice_counts,
    tiny_base,
    tiny_l2a,
)

import l2a  # noqa: F401
from l2a.losses import router_regulariser
from train.losses import causal_lm_loss, shift_labels
from train.parallel import apply as sp_apply
from train.parallel import groups as sp_groups
from train.parallel import halo as sp_halo
from train.parallel import shard as sp_shard
from train.parallel.topology import Topology

SEQ = 32  # slices of 8 under SP 4, of 16 under SP 2
# Packed rows: documents crossing slice boundaries, one (21 tokens) over three slices of SP
# 4; the last row of each batch ends in padding. The second data-parallel group's rows differ.
DOCS = {0: ([3, 21, 8], [11, 6, 15]), 1: ([7, 19, 6], [14, 18])}
PAD_LAST = {0: 3, 1: 2}
# The dense baseline drops the document mask under DeepSpeed's Ulysses (causal over the
# row): one document per row.
WHOLE_ROWS = ([SEQ], [SEQ])

HALO_SENDERS: list[list[int]] = []


def record_halo_senders():
    """Record, for every halo exchange, the ranks that sent this rank a non-empty tail."""
    exchange = sp_halo.exchange

    def recorded(send, recv_shapes, group):
        HALO_SENDERS.append([i for i, s in enumerate(recv_shapes) if torch.Size(s).numel() > 0])
        return exchange(send, recv_shapes, group)

    sp_halo.exchange = recorded


def whole_rows(model, b, l2a_model: bool, dense: bool):
    """One process, the whole rows: LM token mean + LAMBDA * R (L2A), router outputs."""
    kwargs = {"l2a_dense": dense} if l2a_model else {}
    out = model.model(input_ids=b["input_ids"], position_ids=b["position_ids"], **kwargs)
    lm_sum, n = causal_lm_loss(out.last_hidden_state, model.lm_head.weight, b["labels"],
                               reduction="sum", return_num_tokens=True)
    loss, probs, routes = lm_sum / n, (), ()
    if l2a_model:
        probs, routes = out.router_probs, out.routes
        loss = loss + LAMBDA * router_regulariser(probs, b["labels"] != -100)
    return loss, float(lm_sum.detach() / n), probs, routes


def all_sum(x: torch.Tensor, group=None) -> torch.Tensor:
    x = x.detach().clone()
    dist.all_reduce(x, group=group)
    return x


def sliced_rows(model, part, topo: Topology, group, l2a_model: bool, dense: bool):
    """This rank's slice of its group's rows, weighted as the trainer weighs it (ZeRO 1/2:
    the divisor is the data-parallel size), backward run. Returns the step's loss as the
    trainer reports it (LM token mean over all ranks + the router term's mean over the
    groups), this group's own LM mean, and the group's router outputs."""
    kwargs = {"l2a_dense": dense, "doc_ids": part["doc_ids"]} if l2a_model else {}
    out = model.model(input_ids=part["input_ids"], position_ids=part["position_ids"], **kwargs)
    lm_sum, n = causal_lm_loss(out.last_hidden_state, model.lm_head.weight, part["shift_labels"],
                               reduction="sum", return_num_tokens=True, shifted=True)
    divisor = topo.dp_size
    total_targets = all_sum(n.double())
    loss = lm_sum * (divisor / float(total_targets))
    term = torch.zeros(())
    probs, routes = (), ()
    if l2a_model:
        probs, routes = sp_shard.gather_router_outputs(out.router_probs, out.routes, group)
        term = LAMBDA * router_regulariser(probs, part["router_mask"])
        loss = loss + term * (divisor / topo.dp_size)
    loss.backward()
    reported = float(all_sum(lm_sum.double()) / total_targets
                     + all_sum(term.double()) / topo.world_size)
    group_lm = float(all_sum(lm_sum.double(), group) / all_sum(n.double(), group))
    return reported, group_lm, float(term.detach()), probs, routes


def averaged_grads(model, topo: Topology) -> dict:
    """Every parameter's gradient summed over all ranks and divided by the data-parallel
    size, as DeepSpeed does under an SP mpu (ZeRO 1/2)."""
    return {name: all_sum(p.grad if p.grad is not None else torch.zeros_like(p)) / topo.dp_size
            for name, p in model.named_parameters() if p.requires_grad}


def compare(ref, spm, full, own, part, rows, topo, group, l2a_model, dense, wrap=None) -> dict:
    """`full`: the whole batch (all groups' rows); `own`: this group's rows alone, which
    are rows `rows` of `full`; `part`: this rank's slice of `own`. `wrap`: called between
    the references and the sliced run."""
    for m in (ref, spm):
        m.zero_grad(set_to_none=True)
    ref_loss, ref_lm, ref_p, ref_d = whole_rows(ref, full, l2a_model, dense)
    ref_loss.backward()
    ref_g = {k: p.grad.detach().clone() for k, p in ref.named_parameters() if p.requires_grad}
    with torch.no_grad():
        own_loss, own_lm, own_p, _ = whole_rows(ref, own, l2a_model, dense)
    if wrap is not None:
        wrap()
    before, calls = len(HALO_SENDERS), len(ROUTED_CALLS)
    loss, group_lm, term, p, d = sliced_rows(spm, part, topo, group, l2a_model, dense)
    g = averaged_grads(spm, topo)
    res = {
        "loss_err": abs(loss - float(ref_loss)),
        "group_lm": own_lm,
        "group_lm_err": abs(group_lm - own_lm),
        "grad_rel_err": grad_rel_err(g, ref_g),
        "grad_zero": sorted(k for k, v in ref_g.items() if not bool(v.abs().max() > 0)),
        "halo_senders": sorted({i for s in HALO_SENDERS[before:] for i in s}),
        "routed_core_calls": len(ROUTED_CALLS) - calls,
        "cores": sorted({type(m.attention_core).__name__ for m in spm.modules()
                         if hasattr(m, "attention_core")}),
        # A fingerprint of the reference's router gradient: the dense path's differs.
        "router_grad": [float(v.norm()) for k, v in sorted(ref_g.items()) if "router" in k],
    }
    if l2a_model:
        own_term = float(own_loss) - own_lm
        res.update({
            "group_term_err": abs(term - own_term),
            "probs_err": max(float((a - b).abs().max()) for a, b in zip(p, own_p)),
            "probs_vs_full_err": max(float((a - b[rows]).abs().max()) for a, b in zip(p, ref_p)),
            "routes_equal": all(bool((a == b[rows]).all()) for a, b in zip(d, ref_d)),
            "routed_fraction": [float(x.float().mean()) for x in d],
            "slices": slice_counts(d, topo.sp),
        })
    return res


def l2a_cases(layout: str):
    """(name, family, query heads, KV heads, local branch, window)."""
    if layout == "sp2dp2":
        return [("qwen3/halo/w20", "qwen3", 8, 2, "halo", 20),
                ("qwen2/ulysses/w4", "qwen2", 4, 1, "ulysses", 4)]
    return [("qwen3_kv2/halo/w4", "qwen3", 8, 2, "halo", 4),
            ("qwen3_kv2/halo/w9", "qwen3", 8, 2, "halo", 9),
            ("qwen3_kv2/halo/w20", "qwen3", 8, 2, "halo", 20),
            ("qwen2_kv1/halo/w20", "qwen2", 4, 1, "halo", 20),
            ("qwen3_kv4/ulysses/w20", "qwen3", 8, 4, "ulysses", 20)]


def main() -> int:
    out_dir, layout = Path(sys.argv[1]), sys.argv[2]
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    torch.set_num_threads(1)
    sp = {"sp4": 4, "sp2dp2": 2}[layout]
    topo = Topology.build(dist.get_world_size(), dist.get_rank(), sp, heads=(8, 2), seq_len=SEQ)
    record_halo_senders()
    count_routed_calls()
    batches = {g: batch(DOCS[g], SEQ, PAD_LAST[g], seed=1 + g) for g in range(topo.dp_size)}
    full = {k: torch.cat([batches[g][k] for g in range(topo.dp_size)]) for k in batches[0]}
    own = batches[topo.dp_rank]
    rows = slice(2 * topo.dp_rank, 2 * topo.dp_rank + 2)
    part = sp_shard.shard_batch(own, shift_labels(own["labels"]), topo.sp_rank, topo.sp)

    mpu = sp_groups.init_groups(sp)
    group = mpu.get_sequence_parallel_group()
    results = {"_group": {"ranks": dist.get_process_group_ranks(group),
                          "rank_in_group": dist.get_rank(group), "sp_rank": topo.sp_rank,
                          "dp_rank": topo.dp_rank}}
    for name, family, heads, kv, local, window in l2a_cases(layout):
        ref = tiny_l2a(family, kv, window, heads=heads, everything=True)
        spm = copy.deepcopy(ref)
        sp_apply.apply_to_model(spm, group, micro_batch_size=2, window=local)
        for path in ("normal", "dense", "routed"):
            for m in (ref, spm):
                m.l2a_runtime.routed_projections = path == "routed"
            results[f"{name}/{path}"] = compare(ref, spm, full, own, part, rows, topo, group,
                                                True, path == "dense")

    # The dense baseline, wrapped after its references are computed: DeepSpeed's
    # registration replaces the attention function of every model of its implementation.
    whole = {g: batch(WHOLE_ROWS, SEQ, PAD_LAST[g], seed=1 + g) for g in range(topo.dp_size)}
    full = {k: torch.cat([whole[g][k] for g in range(topo.dp_size)]) for k in whole[0]}
    own = whole[topo.dp_rank]
    part = sp_shard.shard_batch(own, shift_labels(own["labels"]), topo.sp_rank, topo.sp)
    ref = tiny_base("qwen3", 2, heads=8).train()
    spm = copy.deepcopy(ref)
    results["dense_baseline"] = compare(
        ref, spm, full, own, part, rows, topo, group, False, False,
        wrap=lambda: sp_apply.apply_to_dense_model(spm, sp, micro_batch_size=2))
    sp_groups.release_groups()

    return finish(out_dir / f"{layout}_rank{dist.get_rank()}.json", results)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
