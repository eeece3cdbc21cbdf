"""docs/RESULTS.md from the study's JSON (bench/results/study/): the recipe, the commands,
the tables (arm x length: retrieval, perplexity, sparsity, KV bytes, GPU time), the plots
and the headline check, computed from what the files hold and nothing else.

    python -m bench.study report [--results bench/results/study] [--out docs/RESULTS.md]

Inputs: `pretrain-seed<s>.json` and `run-<arm>-<length>-seed<s>.json` as written by
bench/study.py; a run's `evals` maps the pruned fraction ("0.0", "0.25", ...) to the
parsed evaluation, or to {"skipped": reason} / {"failed": reason}.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ARM_ORDER = ["dense", "l2a", "l2a_s08", "l2a_s09"]
ARM_NAMES = {"dense": "dense", "l2a": "L2A paper", "l2a_s08": "L2A target 0.8",
             "l2a_s09": "L2A target 0.9"}
BAR = (0.8, 0.97)  # L2A at >= 80% sparsity keeps >= 97% of dense retrieval


def load(results_dir: Path) -> tuple[list[dict], list[dict]]:
    pre = [json.loads(p.read_text()) for p in sorted(results_dir.glob("pretrain-seed*.json"))]
    runs = [json.loads(p.read_text()) for p in sorted(results_dir.glob("run-*.json"))]
    return pre, runs


def spread(values: list[float]) -> tuple[float, float, int]:
    """(mean, half the range, n): with two seeds the half-range is the distance of each
    seed from the mean."""
    n = len(values)
    mean = sum(values) / n
    return mean, (max(values) - min(values)) / 2, n


def _fmt(s: tuple[float, float, int] | None, digits: int = 3) -> str:
    if s is None:
        return "-"
    mean, half, n = s
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if n > 1 else "") + f" (n={n})"


def _usable(ev: dict | None) -> bool:
    return bool(ev) and "skipped" not in ev and "failed" not in ev


def summarize(runs: list[dict]) -> dict:
    """(arm, train_length, pruned) -> metrics over seeds."""
    groups: dict[tuple, list[tuple[dict, dict | None]]] = {}
    for r in runs:
        evals = r.get("evals") or {}
        for frac in sorted(set(evals) | {"0.0"}, key=float):
            key = (r["arm"], r["train_length"], float(frac))
            groups.setdefault(key, []).append((r, evals.get(frac)))
    out = {}
    for key, items in groups.items():
        trains = [r["train"] for r, _ in items if key[2] == 0.0]
        evs = [e for _, e in items if _usable(e)]
        notes = sorted({e.get("skipped") or e.get("failed") for _, e in items
                        if e and not _usable(e)})
        lengths = sorted({int(n) for e in evs for n in e.get("retrieval", {})}
                         | {int(n) for e in evs for n in e.get("perplexity", {})})
        row = {"seeds": len(items), "notes": notes, "by_length": {}}
        for n in lengths:
            cell = {}
            for metric in ("retrieval", "perplexity", "kv_bytes"):
                vals = [float(e[metric][str(n)]) for e in evs if str(n) in e.get(metric, {})]
                cell[metric] = spread(vals) if vals else None
            row["by_length"][n] = cell
        prunes = [e["prune"] for _, e in items if e and e.get("prune")]
        if prunes:
            kv = [p["kv_bytes"] for p in prunes]
            row["prune"] = {"kept": sorted({len(p["kept_global_layers"]) for p in prunes}),
                            "context": sorted({k["context"] for k in kv}),
                            "before": spread([k["before"] for k in kv]),
                            "after": spread([k["after"] for k in kv])}
        layer = [e["layer_sparsity"] for e in evs if e.get("layer_sparsity")]
        row["heldout_layer_sparsity"] = ([sum(c) / len(c) for c in zip(*layer)] if layer else None)
        row["heldout_sparsity"] = (spread([sum(x) / len(x) for x in layer]) if layer else None)
        if trains:
            row["train_sparsity"] = spread([t["sparsity"] or 0.0 for t in trains])
            row["train_layer_sparsity"] = ([sum(c) / len(c) for c in
                                            zip(*[t["layer_sparsity"] for t in trains])]
                                           if all(t["layer_sparsity"] for t in trains) else None)
            row["lm_loss"] = spread([t["final_lm_loss"] for t in trains
                                     if t["final_lm_loss"] is not None] or [float("nan")])
            row["gpu_time_s"] = spread([t["gpu_time_s"] for t in trains])
            row["steps"] = sorted({t["steps"] for t in trains})
            row["completed"] = all(t["completed"] for t in trains)
        out[key] = row
    return out


def headline(rows: dict) -> list[str]:
    """The bar, per train length and L2A arm, from the numbers present."""
    lines = []
    for length in sorted({k[1] for k in rows}):
        dense = rows.get(("dense", length, 0.0), {}).get("by_length", {}).get(length, {})
        d = (dense.get("retrieval") or (None,))[0]
        for arm in ARM_ORDER[1:]:
            row = rows.get((arm, length, 0.0))
            if row is None:
                continue
            cell = row["by_length"].get(length, {}).get("retrieval")
            s = row.get("heldout_sparsity") or row.get("train_sparsity")
            where = "held-out" if row.get("heldout_sparsity") else "training"
            if cell is None or d is None:
                lines.append(f"- {ARM_NAMES[arm]} at {length}: no retrieval score at {length} "
                             "for it or for the dense arm: not evaluated.")
                continue
            if d == 0:
                lines.append(f"- {ARM_NAMES[arm]} at {length}: the dense arm scores 0; no ratio.")
                continue
            ratio = cell[0] / d
            sparse_enough = s is not None and s[0] >= BAR[0]
            verdict = ("meets the bar" if ratio >= BAR[1] and sparse_enough else
                       "misses the bar" + ("" if sparse_enough else
                                           f" (sparsity {s[0]:.2f} < {BAR[0]})" if s else ""))
            lines.append(f"- {ARM_NAMES[arm]} at {length}: retrieval {cell[0]:.3f} vs dense "
                         f"{d:.3f} = {ratio:.1%} of dense, sparsity "
                         f"{'n/a' if s is None else f'{s[0]:.3f}'} ({where}): {verdict}.")
    return lines


def plots(rows: dict, out_dir: Path) -> list[Path]:
    """PNGs of what exists: retrieval against length per arm, sparsity per layer, retrieval
    against the pruned fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    lengths = sorted({k[1] for k in rows})
    have_scores = any(c.get("retrieval") for r in rows.values() for c in r["by_length"].values())
    if have_scores:
        fig, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 3.6), squeeze=False)
        for ax, length in zip(axes[0], lengths):
            for arm in ARM_ORDER:
                row = rows.get((arm, length, 0.0))
                pts = [(n, c["retrieval"]) for n, c in sorted((row or {}).get("by_length", {}).items())
                       if c.get("retrieval")]
                if pts:
                    ax.errorbar([p[0] for p in pts], [p[1][0] for p in pts],
                                yerr=[p[1][1] for p in pts], marker="o", capsize=3,
                                label=ARM_NAMES[arm])
            ax.axvline(length, color="grey", lw=0.8, ls="--")
            ax.set_xscale("log", base=2)
            ax.set(title=f"extended to {length}", xlabel="context length (tokens)",
                   ylabel="retrieval score", ylim=(0, 1.05))
            ax.legend(fontsize=7)
        made.append(_save(fig, out_dir / "retrieval_by_length.png"))
    sparse = {k: r.get("heldout_layer_sparsity") or r.get("train_layer_sparsity")
              for k, r in rows.items() if k[0] != "dense" and k[2] == 0.0}
    sparse = {k: v for k, v in sparse.items() if v}
    if sparse:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for (arm, length, _), v in sorted(sparse.items()):
            ax.plot(range(len(v)), v, marker="o", label=f"{ARM_NAMES[arm]}, {length}")
        ax.set(xlabel="layer", ylabel="sparsity (tokens skipping global)", ylim=(0, 1.02),
               title="sparsity per layer")
        ax.legend(fontsize=7)
        made.append(_save(fig, out_dir / "sparsity_per_layer.png"))
    pruned = {}
    for (arm, length, frac), r in rows.items():
        cell = r["by_length"].get(length, {}).get("retrieval")
        if arm != "dense" and cell:
            pruned.setdefault((arm, length), []).append((frac, cell[0]))
    if any(len(v) > 1 for v in pruned.values()):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for (arm, length), pts in sorted(pruned.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    label=f"{ARM_NAMES[arm]}, {length}")
        ax.set(xlabel="fraction of layers pruned to local-only",
               ylabel="retrieval at the trained length", ylim=(0, 1.05))
        ax.legend(fontsize=7)
        made.append(_save(fig, out_dir / "retrieval_vs_pruned.png"))
    return made


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _key_sort(k):
    return (k[1], ARM_ORDER.index(k[0]) if k[0] in ARM_ORDER else 99, k[2])


def tables(pre: list[dict], rows: dict) -> list[str]:
    out = []
    if pre:
        out += ["### Base pretraining", "",
                "| seed | scale | steps | tokens | final lm loss (nats/byte) | GPU s | completed |",
                "|---:|---|---:|---:|---:|---:|---|"]
        for p in pre:
            t = p["train"]
            loss = "-" if t["final_lm_loss"] is None else f"{t['final_lm_loss']:.4f}"
            out.append(f"| {p['seed']} | {p.get('scale', 'full')} | {t['steps']} | {t['tokens']:,} | "
                       f"{loss} | {t['gpu_time_s']} | {t['completed']} |")
        out.append("")
    train_rows = [(k, r) for k, r in sorted(rows.items(), key=lambda kv: _key_sort(kv[0]))
                  if k[2] == 0.0 and "gpu_time_s" in r]
    if train_rows:
        out += ["### Extension runs (training)", "",
                "| arm | length | seeds | steps | final lm loss | sparsity (training, last step) | GPU s per run | all completed |",
                "|---|---:|---:|---|---|---|---|---|"]
        for (arm, length, _), r in train_rows:
            out.append(f"| {ARM_NAMES.get(arm, arm)} | {length} | {r['seeds']} | "
                       f"{','.join(map(str, r['steps']))} | {_fmt(r['lm_loss'], 4)} | "
                       f"{_fmt(r['train_sparsity'])} | {_fmt(r['gpu_time_s'], 1)} | {r['completed']} |")
        out.append("")
    pruned = [(k, r["prune"]) for k, r in sorted(rows.items(), key=lambda kv: _key_sort(kv[0]))
              if r.get("prune")]
    if pruned:
        out += ["### Pruning (python -m l2a.prune)", "",
                "| arm | trained at | pruned | global branches kept | KV MiB before | KV MiB after | after / before | at context |",
                "|---|---:|---:|---|---:|---:|---:|---|"]
        for (arm, length, frac), p in pruned:
            b, a = p["before"][0] / 2**20, p["after"][0] / 2**20
            out.append(f"| {ARM_NAMES.get(arm, arm)} | {length} | {frac:g} | "
                       f"{','.join(map(str, p['kept']))} | {b:.1f} | {a:.1f} | {a / b:.3f} | "
                       f"{','.join(map(str, p['context']))} |")
        out.append("")
    eval_rows = [(k, r) for k, r in sorted(rows.items(), key=lambda kv: _key_sort(kv[0]))]
    lines = []
    for (arm, length, frac), r in eval_rows:
        for n, c in sorted(r["by_length"].items()):
            kv = c.get("kv_bytes")
            kv_s = "-" if kv is None else f"{kv[0] / 2**20:.1f}"
            lines.append(f"| {ARM_NAMES.get(arm, arm)} | {length} | {frac:g} | {n} | "
                         f"{_fmt(c.get('retrieval'))} | {_fmt(c.get('perplexity'), 2)} | "
                         f"{_fmt(r.get('heldout_sparsity'))} | {kv_s} |")
        if not r["by_length"]:
            why = "; ".join(r["notes"]) or "no evaluation recorded"
            lines.append(f"| {ARM_NAMES.get(arm, arm)} | {length} | {frac:g} | - | "
                         f"not evaluated: {why} | - | - | - |")
    if lines:
        out += ["### Evaluation (arm x length)", "",
                "Mean over seeds ± half the range between them, n = seeds.", "",
                "| arm | trained at | pruned | eval length | retrieval | perplexity | sparsity (held-out) | KV MiB |",
                "|---|---:|---:|---:|---|---|---|---:|", *lines, ""]
    return out


STATIC = """# Results: dense vs L2A context extension, in miniature

Does a model extended with this framework's L2A layers keep up with dense extension? The
study below reproduces the method's claim at small scale, end to end through the
framework's own entry points. **Bar:** L2A at >= 80% sparsity keeps >= 97% of the dense
arm's retrieval score at the extended length.

## Recipe

- **Corpus** (`conf/data/study.yaml`, docs/DATA.md "The study corpus"): the running
  Python's standard library (`*.py`, tests left out) and its site-packages (`*.py`, `*.md`,
  `*.rst`, `*.txt`, tests and `.dist-info` left out), one document per file, identical
  files read once, 5% of the files held out by a hash of their path; mixed with the
  pipeline's RULER-style synthetic tasks (passkey, NIAH single / multi-key / multi-value,
  key-value retrieval, variable tracking). Weights 0.15 / 0.7 / 0.15. Byte tokens (the
  offline byte tokenizer: nothing to train, identical on every machine).
- **Base** (`conf/model/study_base.yaml`, `experiment=study_base`): Qwen3-shaped, 8 layers,
  hidden 512, 8 query heads over 2 KV heads of 64, MLP 1536, QK-norm, tied embeddings;
  24.1M parameters outside the 320 x 512 embedding. Random init, dense, every parameter
  trained (`train.trainable=all`), 2048-token rows, rope theta 10,000; 600 steps x 64 rows
  = 78.6M tokens; AdamW LR 1e-3, 5% warm-up, cosine to 1e-4, weight decay 0.1.
- **Extension arms**, each from that base, to 8192 and 16384 tokens (`study_length=8k|16k`),
  rope theta 500,000, 150 steps x 131,072 tokens = 19.7M tokens for every arm and length,
  LR 2e-4 cosine with 5% warm-up, trainable set: attention (+ router) and norms:
  (a) `study_dense`: full attention (SDPA); (b) `study_l2a`: the paper's recipe scaled to
  a 2K base (paper init, window 255, tau 0.1, dense path on 10% of steps, regulariser
  lambda ramped linearly to 1e-8 x 131072 / length); (c) `study_l2a_s08`, `study_l2a_s09`:
  requested sparsity 0.8 / 0.9 (target mode). Seeds 0 and 1 of each (same base).
- **Evaluation** (`python -m eval`, docs/EVAL.md): the retrieval tasks (NIAH single,
  multi-key, multi-value, multi-query; variable tracking; NIAH at depths 0, 0.5 and 1, one
  sample per cell) at 2K, 8K, 16K and 32K (beyond both trained lengths: extrapolation),
  scored as RULER does; perplexity on the held-out files' rows at the lengths they cover
  (up to the trained length); sparsity per layer on those rows; KV cache bytes per
  sequence from the model's config (`l2a.cache.kv_cache_bytes`; dense: every layer, every
  token), bf16. **Pruning** (`python -m l2a.prune`): a quarter and
  a half of each L2A model's layers (the least used) made local-only, then evaluated again
  with their KV bytes.

## Commands

```bash
python -m bench.study prepare     # data: 2K, 8K, 16K rows and the held-out files
python -m bench.study pretrain    # base -> .cache/study/base (safetensors shards < 16 MiB)
python -m bench.study extend      # 4 arms x {8k,16k} x seeds {0,1}; or one Hydra multirun:
#   python -m train -m experiment=study_dense,study_l2a,study_l2a_s08,study_l2a_s09 \\
#       study_length=8k,16k train.seed=0,1
python -m bench.study eval        # python -m eval on every extended model
python -m bench.study prune       # python -m l2a.prune (1/4, 1/2 of the layers), eval again
#   (eval and prune take --arms/--lengths/--seeds too: one process per GPU)
python -m bench.study report      # this page and the plots, from bench/results/study/*.json
```

`--arms`, `--lengths`, `--seeds` pick a part (the device calls below run the arms of one
length at once, see "Sizing"); `--max-minutes` stops a run in time (checkpoint, export,
recorded as not completed); `--scale tiny` runs the chain on CPU in about a minute
(`tests/study/test_study_smoke.py`).

## On a GPU machine without the data pipeline's packages

The device this study is sized for has torch and transformers; `scripts/device_wheels.sh`
brings DeepSpeed and Hydra, not the data pipeline's `datasets` / `pyarrow` (which, with
pandas, would not fit beside the base in the 64 MiB a call carries). So the data are
prepared on a CPU machine and travel packed:
`python -m bench.study prepare && python -m bench.study pack-data` writes
`.cache/study/data/study-{2048,8192,16384}.tar.xz`, each with its held-out rows (measured
here: 15.3, 5.0 and 5.0 MiB; xz preset 6, about 3 CPU-minutes in all).
`--data-archives .cache/study/data` then unpacks the one a run needs and trains through
`python -m bench.study_train`, which opens the prepared rows as they are and hands the
trainer the loader `python -m train` would build (same batches, same losses: tested on
CPU with `datasets` blocked). The corpus is then the preparing machine's
(`bench/results/study/corpus.json` records it).

The device calls run `scripts/study_device.sh` (`python -m bench.study_device`, after
installing the carried wheels into /tmp/site); its deadline counts from its start, and
whatever it brings back is written by then.

```bash
# 1. pretraining on GPU 0 (the other GPU stays free); carry .whl and
#    .cache/study/data/study-2048.tar.xz. Back: $OUT/base/ = 4 safetensors shards and
#    base-files.tar (config, tokenizer, the run's record and log): 5 files, ~47 MiB.
scripts/study_device.sh pretrain --gpus 0 --max-minutes 6 --out $OUT
# 2. the four arms at 16K, seeds 0 and 1: 8 runs at once, 4 per GPU, each trained for
#    train.max_steps=N (the LR schedule follows N), then evaluated and pruned; training stops
#    --reserve-minutes (3) before the deadline, evaluation and pruning at it. Carry .whl,
#    .cache/study/data/study-16384.tar.xz and the base of call 1 as .cache/study/base.
#    Back: $OUT/study-arms.tar.gz (every record, summary, metrics, evaluation report, log).
scripts/study_device.sh arms --lengths 16k --seeds 0,1 --per-gpu 4 --max-steps N \\
    --deadline-minutes 9 --out $OUT
# 3. (optional) the arms at 8K, seed 0: carry study-8192.tar.xz instead of the 16K one
scripts/study_device.sh arms --lengths 8k --seeds 0 --per-gpu 2 --max-steps N \\
    --deadline-minutes 9 --out $OUT
# here: the base into place, the records beside the corpus manifest, the page
rm -rf .cache/study/base && cp -r <call 1 files>/base .cache/study/base
mkdir -p /tmp/study && tar xzf <call 2 files>/study-arms.tar.gz -C /tmp/study
cp /tmp/study/results/*.json bench/results/study/
python -m bench.study report
```

A run stopped by the deadline is exported from its checkpoint and recorded as not
completed; a run that never started, or whose evaluation or pruning did not fit, says so
in its record and in `results/device-summary.json`. The call ends with one line per run:
steps, tokens/s, final loss, sparsity, retrieval by length for each pruned fraction.
The steps of one arm alone, without the concurrency: `python -m bench.study extend|eval|prune
--arms A --lengths L --seeds S --data-archives .cache/study/data --max-minutes M`.

## Sizing (estimates, not measurements)

No part of this study has run on a GPU yet; these are the budgets it is sized to:

- FLOPs per token (training, 6 x 24.1M parameters + causal attention 3.5 x 4 x T/2 x 512
  per layer): 204M at 2K, 380M at 8K, 615M at 16K (dense attention).
- docs/BENCHMARKS.md: the Qwen3-1.7B shape trains at 14,302 tokens/s per H200 at 32K,
  about 336 TFLOP/s of model FLOPs. A 512-wide model uses the GPU less well; at a third
  of that (110 TFLOP/s) pretraining runs at ~540K tokens/s (78.6M tokens: ~2.5 min) and a
  16K dense arm at ~180K tokens/s (19.7M tokens: ~1.8 min); 8K faster. At a sixth, twice
  that (pretraining ~5 min, a 16K dense arm ~3.7 min): every run still fits in one
  10-minute device call on one H200 with the wheels' install, unpacking the data (seconds)
  and start-up.
- Risk to these numbers: rows pack several files each, and the dense arm's SDPA then
  runs with a document mask (not the flash path the benchmarks timed).
- L2A arms: at 32K the 1.7B L2A step took 1.16x the dense step (unfused element-wise
  work); at 16K with window 255 its attention is smaller, the overhead similar: budget
  1.5x the dense arm: ~3 min at 16K, ~5.5 min at the slower estimate.
- Evaluation (not measured): 13 generations per length at 4 lengths per model, greedy,
  at most 128 new tokens, on a 24M model: estimated well under a minute per model; the
  L2A arm's call evaluates three models per seed (unpruned, a quarter and a half pruned).
  At the slower training estimate (~5.5 min at 16K) training, evaluation and pruning may
  not all fit in one call; `--max-minutes` then bounds the training, and a shorter
  evaluation (`EVAL_LENGTHS` in bench/study.py) or one seed per call makes room.
- A 24M-parameter model leaves most of an H200 idle: the arms run 4 at a time per GPU
  (`--per-gpu`), each slower than alone; `--max-steps` is picked from the pretraining's
  measured throughput so that training ends before the deadline less the reserve, and a
  run stopped by the deadline is exported from its last checkpoint and marked not
  completed in the tables.
- The base comes back from its call as 4 safetensors shards (bf16, 24.29M parameters:
  11.5-11.8 MiB each, 46.4 MiB in all, measured on a random base of the shape) and one
  tar of its config and tokenizer: 5 of the 8 files a call returns. It travels into the
  extension calls (carried with the wheels and one archive: 46.4 + 7.6 + 5.0 MiB plus the
  repository, about 1.5 MiB: about 61 of the 64 MiB a call carries, so one length per
  call); it is not re-created in each call (pretraining takes minutes and is not bitwise
  reproducible on GPU). The extension runs
  are evaluated and pruned in the call that trains them; only their JSON comes back.

## Status

"""


def render(pre: list[dict], runs: list[dict], rows: dict, made: list[Path], page: Path) -> str:
    text = STATIC
    if not pre and not runs:
        text += ("**Not run yet.** No training or evaluation results exist in "
                 "`bench/results/study/` (`corpus.json` there is the manifest of the corpus "
                 "the data were prepared from): the study has not been run on a GPU, and "
                 "the tables and plots appear here once it has (`python -m bench.study "
                 "report`).\n")
        return text
    scales = sorted({p.get("scale", "full") for p in pre} | {r.get("scale", "full") for r in runs})
    if scales != ["full"]:
        text += (f"**These results are from `--scale {'/'.join(scales)}` runs** (the CPU smoke "
                 "test's tiny model), not the study.\n\n")
    text += f"Result files: {len(pre)} pretraining, {len(runs)} extension runs.\n\n"
    text += "## Headline\n\n" + ("\n".join(headline(rows)) or "No evaluated runs yet.") + "\n\n"
    text += "## Tables\n\n" + "\n".join(tables(pre, rows)) + "\n"
    if made:
        text += "## Plots\n\n" + "\n".join(
            f"![{p.stem}]({os.path.relpath(p, page.parent)})" for p in made) + "\n"
    return text


def write_report(results_dir: Path, out: Path) -> Path:
    pre, runs = load(results_dir)
    rows = summarize(runs)
    made = plots(rows, results_dir) if rows else []
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render(pre, runs, rows, made, out))
    os.replace(tmp, out)
    print(f"wrote {out}" + (f" and {len(made)} plot(s) in {results_dir}" if made else ""))
    return out
