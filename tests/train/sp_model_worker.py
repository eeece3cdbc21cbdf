"""Run under torchrun (2 processes, gloo) by test_sequence_parallel.py: tiny Qwen3 and Qwen2
L2A models on packed rows, once whole on every rank (the reference: what sequence
parallelism 1 computes) and once with sequence parallelism 2 (each rank a slice). Writes
`<out>/model_rank<r>.json`: per family and path (normal, dense, routed: normal steps with
routed-only global projections, `l2a_routed_projections`) the largest differences of loss,
router probabilities, decisions and every trainable parameter's gradient; for `routed` also
against SP=2 with full projections, and each slice's routed count per layer.

    torchrun --nproc_per_node=2 tests/train/sp_model_worker.py <out dir> [cuda]

`cuda`: on 2 GPUs with NCCL and the Triton kernels (fp32 inputs: TF32 matmuls).
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import l2a  # noqa: F401
from l2a.convert import convert_model
from l2a.losses import layer_sparsity, router_regulariser
from train.losses import causal_lm_loss, shift_labels
from train.parallel import apply as sp_apply
from train.parallel import groups as sp_groups
from train.parallel import routed as sp_routed
from train.parallel import shard as sp_shard

LAMBDA = 0.05  # regulariser weight: large enough that its gradient shows
# Packed rows of 24 tokens, cut at 12 under SP=2: the second document of each row crosses
# the cut; the last row ends in padding (labels -100 there, its own segment).
DOCS = [[5, 10, 9], [3, 15, 4, 2]]
PAD_LAST = 2
SEQ = 24
DEVICE = torch.device("cpu")


def tiny_base(family: str, kv_heads: int, heads: int = 4):
    """A tiny random Qwen3 or Qwen2 causal LM (fp32, seed 0)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    kw = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256,
              rms_norm_eps=1e-6, head_dim=16)
    base = (Qwen3ForCausalLM(Qwen3Config(**kw)) if family == "qwen3"
            else Qwen2ForCausalLM(Qwen2Config(**kw)))
    return base.float()


def tiny_l2a(family: str, kv_heads: int, window: int = 4, heads: int = 4, everything: bool = False):
    """`everything`: every parameter trainable (embeddings and MLPs too), not the method's set."""
    model = convert_model(tiny_base(family, kv_heads, heads), init="paper", window=window)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("router.weight"):
                p.normal_(0.0, 0.3)  # about half the tokens routed: the decisions matter
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    model.l2a_runtime.attn_backend = "torch" if DEVICE.type == "cpu" else "auto"
    from l2a.trainable import mark_trainable

    mark_trainable(model, everything=everything)
    return model.to(DEVICE).train()


def batch(docs_per_row=DOCS, seq: int = SEQ, pad_last: int = PAD_LAST, seed: int = 1):
    """Packed rows of `seq` tokens: row i holds documents of the lengths `docs_per_row[i]`
    (the rest of the row, and the last `pad_last` tokens of the last row: padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 97, (len(docs_per_row), seq), generator=g)
    pos = torch.zeros_like(ids)
    labels = ids.clone()
    for row, docs in enumerate(docs_per_row):
        t = 0
        for n in docs:
            pos[row, t:t + n] = torch.arange(n)
            labels[row, t] = -100  # the first token of a document predicts nothing
            t += n
    if pad_last:
        labels[-1, -pad_last:] = -100
    return {"input_ids": ids.to(DEVICE), "position_ids": pos.to(DEVICE), "labels": labels.to(DEVICE)}


def objective(model, b, dense, group=None):
    """LM loss (token mean over the whole row) + LAMBDA * R, as the trainer weighs them; under
    SP each rank returns its part (the parts' gradients add up)."""
    if group is None:
        out = model.model(input_ids=b["input_ids"], position_ids=b["position_ids"], l2a_dense=dense)
        lm_sum, n = causal_lm_loss(out.last_hidden_state, model.lm_head.weight, b["labels"],
                                   reduction="sum", return_num_tokens=True)
        probs, routes, mask = out.router_probs, out.routes, b["labels"] != -100
        lm_total = lm_sum.detach()
    else:
        out = model.model(input_ids=b["input_ids"], position_ids=b["position_ids"],
                          doc_ids=b["doc_ids"], l2a_dense=dense)
        lm_sum, n = causal_lm_loss(out.last_hidden_state, model.lm_head.weight, b["shift_labels"],
                                   reduction="sum", return_num_tokens=True, shifted=True)
        n = n.clone()
        dist.all_reduce(n, group=group)
        lm_total = lm_sum.detach().clone()
        dist.all_reduce(lm_total, group=group)
        probs, routes = sp_shard.gather_router_outputs(out.router_probs, out.routes, group)
        mask = b["router_mask"]
    loss = lm_sum / n + LAMBDA * router_regulariser(probs, mask)
    return loss, float(lm_total / n), probs, routes, layer_sparsity(routes, mask)


def grads(model, group=None):
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            g = p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            if group is not None:
                dist.all_reduce(g, group=group)
            out[name] = g
    return out


def grad_rel_err(g, ref_g):
    return {k: float((g[k] - ref_g[k]).abs().max() / ref_g[k].abs().max().clamp_min(1e-12))
            for k in ref_g}


def slice_counts(routes, n):
    """Per layer, the routed rows each rank's slice compacts to (its rows' largest count),
    and whether some row of a slice routes fewer (padding rows)."""
    out = []
    for d in routes:
        per = d.view(d.shape[0], n, -1).sum(-1)  # (B, n)
        out.append({"counts": per.amax(0).tolist(), "padding": bool((per != per.amax(0)).any())})
    return out


def compare(ref_model, sp_model, full, part, dense, group):
    ref_model.zero_grad(set_to_none=True)
    sp_model.zero_grad(set_to_none=True)
    ref_loss, ref_lm, ref_p, ref_d, ref_s = objective(ref_model, full, dense)
    ref_loss.backward()
    loss, lm, p, d, s = objective(sp_model, part, dense, group)
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total, group=group)
    # Each rank's objective holds the whole regulariser: subtract the (N-1) extra copies.
    reg = LAMBDA * router_regulariser(p, part["router_mask"]).detach()
    total = total - (dist.get_world_size(group) - 1) * reg
    ref_g, g = grads(ref_model), grads(sp_model, group)
    return {
        "_loss": float(total),
        "_grads": g,
        "_routes": ref_d,
        "loss_err": abs(float(total) - float(ref_loss)),
        "lm_err": abs(lm - ref_lm),
        "ref_loss": float(ref_loss),
        "probs_err": max(float((a - b).abs().max()) for a, b in zip(p, ref_p)),
        "routes_equal": all(bool((a == b).all()) for a, b in zip(d, ref_d)),
        "routes_mismatch": max(float((a != b).float().mean()) for a, b in zip(d, ref_d)),
        "routed_fraction": [float(x.float().mean()) for x in ref_d],
        "sparsity_err": float((s - ref_s).abs().max()),
        "grad_rel_err": grad_rel_err(g, ref_g),
        "grad_nonzero": {k: bool(v.abs().max() > 0) for k, v in ref_g.items()},
        "router_grad": [ref_g[k].flatten()[:8].tolist() for k in sorted(ref_g) if "router" in k],
    }


ROUTED_CALLS: list = []


def count_routed_calls():
    """Count the calls of the SP routed core (so that a path silently not taken shows)."""
    call = sp_routed.RoutedUlyssesCore.__call__

    def counted(self, *args, **kwargs):
        ROUTED_CALLS.append(1)
        return call(self, *args, **kwargs)

    sp_routed.RoutedUlyssesCore.__call__ = counted


def main() -> int:
    global DEVICE
    out_dir = Path(sys.argv[1])
    import deepspeed

    if sys.argv[2:] == ["cuda"]:
        DEVICE = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(DEVICE)
    deepspeed.init_distributed(dist_backend="gloo" if DEVICE.type == "cpu" else "nccl",
                               auto_mpi_discovery=False)
    torch.set_num_threads(1)
    mpu = sp_groups.init_groups(dist.get_world_size())
    group = mpu.get_sequence_parallel_group()
    rank, n = dist.get_rank(group), dist.get_world_size(group)
    count_routed_calls()
    full = batch()
    part = sp_shard.shard_batch(full, shift_labels(full["labels"]), rank, n)
    results = {}
    # Qwen3 with GQA 4/2 (2 KV heads: split); Qwen2 with MQA 4/1 (KV replicated to 2). The
    # local branch by halo exchange (window 4, and 16: wider than a 12-token slice) and by
    # Ulysses all-to-all.
    for family, kv, local, window in (("qwen3", 2, "halo", 4), ("qwen2", 1, "halo", 4),
                                      ("qwen3", 2, "halo", 16), ("qwen3", 2, "ulysses", 4)):
        ref = tiny_l2a(family, kv, window)
        spm = copy.deepcopy(ref)
        wrapped = sp_apply.apply_to_model(spm, group, micro_batch_size=full["input_ids"].shape[0],
                                        window=local)
        cores = sorted({type(m.attention_core).__name__ for m in spm.modules()
                        if hasattr(m, "attention_core")})
        key = f"{family}/{local}/w{window}"
        for path in ("normal", "dense", "routed"):
            for m in (ref, spm):
                m.l2a_runtime.routed_projections = path == "routed"
            before = len(ROUTED_CALLS)
            results[f"{key}/{path}"] = {
                **compare(ref, spm, full, part, path == "dense", group), "wrapped": wrapped,
                "cores": cores, "routed_core_calls": len(ROUTED_CALLS) - before}
        # Routed-only projections under SP=2 against full projections under SP=2.
        routed, normal = results[f"{key}/routed"], results[f"{key}/normal"]
        routed["vs_full_loss_err"] = abs(routed["_loss"] - normal["_loss"])
        routed["vs_full_grad_rel_err"] = grad_rel_err(routed["_grads"], normal["_grads"])
        routed["slices"] = slice_counts(routed["_routes"], n)
        for r in (results[f"{key}/{p}"] for p in ("normal", "dense", "routed")):
            for k in ("_loss", "_grads", "_routes"):
                r.pop(k, None)
    return finish(out_dir / f"model_rank{dist.get_rank()}.json", results)


def finish(path: Path, results: dict) -> int:
    """Write this rank's results, leave the process group; the worker's exit code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    raise SystemExit(main())
