"""Can a study base learn a retrieval task quickly? Fine-tune it on one synthetic task and
watch `study.probe`'s scores.

`study.probe` says whether a base copies a value out of its context. When it does
not, this says whether the skill is one short fine-tune away (the base lacks retrieval
examples) or not (it lacks capacity): the base trains on `--task` samples only (data seed
100, which neither the study's mixes, seed 0, nor the probe, 7919, use), every parameter,
AdamW at a constant `--lr`, and is probed on unseen samples every `--probe-every` steps.
It runs on the CPU (minutes for a few hundred 512-token steps of the 24M base) or a GPU.

    python -m study.skill_check <model dir> --task passkey --length 512 --steps 160 \\
        --out study/results/<run>/skill-passkey.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

TRAIN_SEED = 100


def train_batch(tokenizer, task: str, length: int, step: int, batch: int) -> torch.Tensor:
    """`batch` samples of `task` (prompt + answer), cut to the shortest so they stack."""
    from train.data.synthetic import generate_sample

    rows = []
    for b in range(batch):
        s = generate_sample(task, length, tokenizer, seed=TRAIN_SEED, index=step * batch + b)
        rows.append(tokenizer(s.prompt + s.answer, add_special_tokens=False)["input_ids"][:length])
    n = min(map(len, rows))
    return torch.tensor([r[:n] for r in rows])


def skill_check(model_dir: str | Path, task: str, length: int, steps: int, batch: int = 4,
                lr: float = 3e-4, probe_every: int = 40, probe_lengths: list[int] | None = None,
                samples: int = 8, device: str | None = None, seed: int = 0) -> dict:
    from study.probe import answer_scores, load

    torch.manual_seed(seed)
    model, tok = load(model_dir, device, torch.float32)  # fp32: it trains
    device = str(next(model.parameters()).device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    probe_lengths = probe_lengths or [length]
    rows, t0 = [], time.perf_counter()

    def probe(step: int, loss: float | None) -> None:
        model.eval()
        for n in probe_lengths:
            r = answer_scores(model, tok, task, n, samples)
            rows.append({"step": step, "train_loss": loss, "seconds": round(time.perf_counter() - t0, 1), **r})
            print(f"step {step:>4} {task} at {n}: answer nll {r['nll']:.3f}, token accuracy "
                  f"{r['token_accuracy']:.2f}, exact {r['exact']:.2f}", flush=True)
        model.train()

    probe(0, None)
    model.train()
    loss = None
    for step in range(1, steps + 1):
        x = train_batch(tok, task, length, step - 1, batch).to(device)
        out = model(x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = round(out.loss.item(), 4)
        if step % probe_every == 0 or step == steps:
            probe(step, loss)
    return {"model": str(model_dir), "task": task, "train_length": length, "steps": steps,
            "batch": batch, "lr": lr, "train_seed": TRAIN_SEED, "device": device,
            "torch": torch.__version__, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("--task", default="passkey")
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--probe-every", type=int, default=40)
    p.add_argument("--probe-lengths", default=None, help="comma-separated (default: --length)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if not (Path(a.model_dir) / "config.json").exists():
        print(f"study.skill_check: {a.model_dir}: no config.json (not a saved model)",
              file=sys.stderr)
        return 2
    lengths = [int(x) for x in a.probe_lengths.split(",")] if a.probe_lengths else None
    try:
        from study.probe import check_task

        check_task(a.task)
        res = skill_check(a.model_dir, a.task, a.length, a.steps, a.batch, a.lr, a.probe_every,
                          lengths, a.samples)
    except ValueError as e:  # an unknown task, a length too short for it
        print(f"study.skill_check: {e}", file=sys.stderr)
        return 2
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
