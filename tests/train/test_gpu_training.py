"""Training on CUDA as a real run does: bf16, the Triton attention kernels, DeepSpeed ZeRO-2,
and each of the two LM-loss paths (the chunked PyTorch loss, and Liger's fused linear
cross-entropy, which `auto` picks on CUDA when installed).

The reference is the same run in fp32 with the PyTorch attention and loss (the paths the CPU
suite checks against first principles): same weights, data and dense-path draws, so every
step's loss and gradient norm must agree up to bf16 rounding. Which paths ran is recorded,
not assumed: the Triton kernels in bf16 for both branches, Liger only where asked.

Batches come from a loader here, not the data pipeline (the GPU image has no `datasets`):
packed rows of documents that repeat a short random motif over 16 token ids, so the loss
falls within a few steps (measured in fp32 on CPU: 5.82 -> 4.83 in 4 steps), by far more
than the tolerances below.
"""

from __future__ import annotations

import pytest
import torch
from train_helpers import compose_run, read_metrics

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

STEPS = 4
# A head dim the production kernels see (64), GQA 4:2, 512-token packed rows of the tiny data.
MODEL = ["model.random_base.hidden_size=256", "model.random_base.intermediate_size=512",
         "model.random_base.head_dim=64", "model.random_base.num_attention_heads=4",
         "model.random_base.num_key_value_heads=2"]
RUNS = {
    "fp32-torch": ["train.precision=fp32", "l2a.attn_backend=torch"],
    "bf16-triton-chunked": ["train.precision=auto", "l2a.attn_backend=auto"],
    "bf16-triton-liger": ["train.precision=auto", "l2a.attn_backend=auto"],
}


class MotifLoader:
    """Rows of `seq_len` tokens packing documents of 40..200 tokens, each a random 6..12
    token motif over ids 0..vocab-1 repeated; position ids restart per document, labels -100 on document
    starts (the data pipeline's contract). Deterministic per step."""

    def __init__(self, seq_len: int, micro_batch_size: int, vocab: int):
        self.seq_len, self.mb, self.vocab, self.step = seq_len, micro_batch_size, vocab, 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        g = torch.Generator().manual_seed(self.step)
        self.step += 1
        ids = torch.empty(self.mb, self.seq_len, dtype=torch.long)
        pos, labels = torch.empty_like(ids), torch.empty_like(ids)
        for b in range(self.mb):
            start = 0
            while start < self.seq_len:
                n = min(int(torch.randint(40, 201, (1,), generator=g)), self.seq_len - start)
                motif = torch.randint(0, self.vocab, (int(torch.randint(6, 13, (1,), generator=g)),),
                                      generator=g)
                ids[b, start:start + n] = motif.repeat(n // len(motif) + 1)[:n]
                pos[b, start:start + n] = torch.arange(n)
                start += n
        labels.copy_(ids)
        labels[pos == 0] = -100
        return {"input_ids": ids, "position_ids": pos, "labels": labels}

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def _counting(fn, calls: list, tag: str):
    def wrapper(*args, **kwargs):
        calls.append((tag, args[0].dtype if args and torch.is_tensor(args[0]) else None))
        return fn(*args, **kwargs)
    return wrapper


def _fit(overrides: list[str], run_dir):
    from train.trainer import Trainer

    cfg = compose_run(overrides)
    loader = MotifLoader(cfg.data.seq_len, cfg.train.micro_batch_size, vocab=16)
    trainer = Trainer(cfg, run_dir, overrides, loader=loader)
    try:
        return trainer.fit(), trainer
    finally:
        trainer.close()


@pytest.fixture(scope="module")
def runs(base_overrides, tmp_path_factory):
    import kernels.sliding_window.gpu as sw_gpu
    import kernels.token_sparse.triton_op as ts_triton
    import train.losses as losses

    liger = "bf16-triton-liger"
    if not losses._liger_available():
        pytest.fail("liger_kernel is not installed: `pip install -r requirements-gpu.txt` "
                    "(make test-gpu does) or the liger wheel of scripts/offline_wheels.sh")
    overrides = base_overrides + MODEL + [
        f"train.max_steps={STEPS}", "train.ckpt_every=0", "train.save_final=false",
        "deepspeed=zero2", "optim.lr=1e-3",
        "l2a.dense_prob=0.5",  # steps 1 and 4 dense, 2 and 3 sparse
    ]
    out = {}
    for name, extra in RUNS.items():
        calls: list = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(losses, "_liger_available", lambda use=(name == liger): use)
            mp.setattr(losses, "_liger_sum", _counting(losses._liger_sum, calls, "liger"))
            mp.setattr(ts_triton, "routed_attention",
                       _counting(ts_triton.routed_attention, calls, "token_sparse"))
            mp.setattr(sw_gpu, "routed_attention",
                       _counting(sw_gpu.routed_attention, calls, "window"))
            run_dir = tmp_path_factory.mktemp(name)
            code, trainer = _fit(overrides + extra, run_dir)
        assert code == 0, name
        out[name] = {"rows": read_metrics(run_dir), "calls": calls,
                     "precision": trainer.precision, "stage": trainer.cfg.deepspeed.stage}
    return out


def test_paths_that_ran(runs):
    ref = runs["fp32-torch"]
    assert ref["precision"] == "fp32" and ref["calls"] == []
    for name in ("bf16-triton-chunked", "bf16-triton-liger"):
        run = runs[name]
        assert run["precision"] == "bf16" and run["stage"] == 2
        kinds = {tag for tag, _ in run["calls"]}
        assert {"token_sparse", "window"} <= kinds, (name, kinds)
        assert all(dtype == torch.bfloat16 for tag, dtype in run["calls"] if tag != "liger")
        assert ("liger" in kinds) == (name == "bf16-triton-liger"), (name, kinds)


@pytest.mark.parametrize("name", ["bf16-triton-chunked", "bf16-triton-liger"])
def test_bf16_steps_follow_the_fp32_run(runs, name):
    ref, got = runs["fp32-torch"]["rows"], runs[name]["rows"]
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert [r["dense"] for r in got] == [r["dense"] for r in ref]
    assert any(r["dense"] for r in got) and not all(r["dense"] for r in got)
    for a, b in zip(got, ref):
        assert not a.get("skipped"), (name, a)
        # Step 1 starts from the same weights: only bf16 rounding separates the runs. Later
        # steps also carry bf16 updates (Adam's first step is about sign(g) for every
        # element, so elements with near-zero gradients may move the other way).
        first = a["step"] == 1
        assert a["lm_loss"] == pytest.approx(b["lm_loss"], rel=5e-3 if first else 2e-2), (
            name, a["step"], a["lm_loss"], b["lm_loss"])
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=3e-2 if first else 1.5e-1), (
            name, a["step"], a["grad_norm"], b["grad_norm"])
        # Router decisions near the threshold flip with the updates' rounding: loose after step 1.
        assert a["sparsity"] == pytest.approx(b["sparsity"], abs=1e-3 if first else 0.1), (
            name, a["step"], a["sparsity"], b["sparsity"])
    # The updates did something, far beyond the tolerances above.
    assert ref[-1]["lm_loss"] < 0.9 * ref[0]["lm_loss"]
    assert got[-1]["lm_loss"] < 0.9 * got[0]["lm_loss"]
