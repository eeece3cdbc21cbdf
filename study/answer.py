"""The answer at the top of study/RESULTS.md: for one study run, every L2A arm against dense
at its trained length (the bar), beyond it (extrapolation) and pruned against unpruned,
each as a ratio with its 95% interval and verdict (study.stats), from the per-sample records
(study.samples) and the run records (sparsity, perplexity, KV bytes).

Exact match (RULER's score, the `em` of a record) is the headline metric; the teacher-forced
token accuracy and answer log-likelihood, where recorded, are shown beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from study.arms import ARM_NAMES, ARM_ORDER
from study.design import BASE_SEEDS, EVAL_SAMPLES, RETRIEVAL_TASKS, SEEDS, trained_seq_len
from study.plotting import save_figure
from study.stats import BAR, Comparison, compare, mean_interval, mean_interval_bootstrap, pair

SPARSITY_BAR = 0.8
# A share of the dense arm's score says something only where the dense arm has the skill:
# below half the samples right, 97% of it is a share of partial credit and chance.
MIN_DENSE_SCORE = 0.5
# What the study's defaults will hold: seed units per arm and length, generated samples per
# model and length (the sample size that would decide is computed for this many units).
PLAN_UNITS = len(SEEDS) * len(BASE_SEEDS)
PLAN_SAMPLES = EVAL_SAMPLES * len(RETRIEVAL_TASKS)


def em(r: dict):
    return r.get("em") if r.get("generated", True) else None


def token_acc(r: dict):
    return r.get("token_acc")


def loglik_per_token(r: dict):
    n = r.get("answer_tokens")
    return r["answer_loglik"] / n if n and r.get("answer_loglik") is not None else None


def side(records: list[dict], arm: str, train_length: int, eval_length: int,
         pruned: float = 0.0) -> list[dict]:
    return [r for r in records if r["arm"] == arm and r["train_length"] == train_length
            and r["eval_length"] == eval_length and float(r["pruned"]) == pruned]


def _runs(runs, arm, train_length):
    return [r for r in runs if r["arm"] == arm and r["train_length"] == train_length]


def trained_at(runs: list[dict]) -> list[tuple[int, int]]:
    """(length group, the sequence length its runs trained on): the group's name is the
    trained length of the study's runs; the CPU smoke test's tiny runs train on 512 tokens
    whatever their group."""
    return sorted({(r["train_length"], trained_seq_len(r)) for r in runs})


def _ev(run: dict, frac: str = "0.0") -> dict | None:
    ev = (run.get("evals") or {}).get(frac)
    return ev if ev and "skipped" not in ev and "failed" not in ev else None


def per_run(runs, arm, train_length, pick) -> list[float]:
    """One value per seed unit of (arm, train_length): `pick(run)` (None: left out)."""
    return [v for v in (pick(r) for r in _runs(runs, arm, train_length)) if v is not None]


def heldout_sparsity(run):
    ev = _ev(run)
    layers = (ev or {}).get("layer_sparsity")
    return sum(layers) / len(layers) if layers else None


def perplexity_at(length):
    return lambda run: ((_ev(run) or {}).get("perplexity") or {}).get(str(length))


def kv_pruned(frac: str):
    """KV bytes after / before pruning `frac` at the run's context, from the pruning report."""
    def pick(run):
        kv = ((_ev(run, frac) or {}).get("prune") or {}).get("kv_bytes")
        return kv["after"] / kv["before"] if kv else None
    return pick


def kv_unpruned(length):
    return lambda run: ((_ev(run) or {}).get("kv_bytes") or {}).get(str(length))


@dataclass
class Row:
    arm: str
    train_length: int
    eval_length: int
    cmp: Comparison | None
    arm_ci: tuple[float, float] | None
    sparsity: tuple | None
    perplexity: tuple | None
    kv_half: float | None
    kv_bytes: float | None
    verdict: str


def _verdict(c: Comparison | None, dense_mean: float | None, sparsity, bar_checks: bool) -> str:
    if c is None:
        return "no paired per-sample records"
    if bar_checks and dense_mean is not None and dense_mean < MIN_DENSE_SCORE:
        return f"not testable: dense scores {dense_mean:.3f} < {MIN_DENSE_SCORE}"
    if bar_checks and sparsity is not None and sparsity[0] < SPARSITY_BAR:
        return f"missed: sparsity {sparsity[0]:.2f} < {SPARSITY_BAR}"
    return c.verdict


def headline_rows(runs: list[dict], records: list[dict], value=em) -> list[Row]:
    """Dense, then each L2A arm, per trained length, at the trained length (unpruned)."""
    rows = []
    for length, at in trained_at(runs):
        dense = side(records, "dense", length, at)
        for arm in ARM_ORDER:
            mine = side(records, arm, length, at)
            if not mine and not _runs(runs, arm, length):
                continue
            c = compare(pair(mine, dense, value), plan_units=PLAN_UNITS, plan_samples=PLAN_SAMPLES)
            own = pair(mine, mine, value)
            sparsity = mean_interval(per_run(runs, arm, length, heldout_sparsity))
            rows.append(Row(arm, length, at, c,
                            mean_interval_bootstrap(own) if own.units else None,
                            sparsity if arm != "dense" else None,
                            mean_interval(per_run(runs, arm, length, perplexity_at(at))),
                            _mean(per_run(runs, arm, length, kv_pruned("0.5"))),
                            _mean(per_run(runs, arm, length, kv_unpruned(at))),
                            "reference" if arm == "dense" else
                            _verdict(c, c.ref_mean if c else None, sparsity, True)))
    return rows


def extrapolation_rows(runs: list[dict], records: list[dict], value=em) -> list[Row]:
    """Each L2A arm against dense at every evaluation length above its trained length."""
    rows = []
    for length, at in trained_at(runs):
        beyond = sorted({r["eval_length"] for r in records
                         if r["train_length"] == length and r["eval_length"] > at})
        for n in beyond:
            dense = side(records, "dense", length, n)
            for arm in ARM_ORDER[1:]:
                mine = side(records, arm, length, n)
                if not mine:
                    continue
                c = compare(pair(mine, dense, value), plan_units=PLAN_UNITS,
                            plan_samples=PLAN_SAMPLES)
                if c is None:  # no dense records to pair with at this length
                    continue
                own = pair(mine, mine, value)
                rows.append(Row(arm, length, n, c, mean_interval_bootstrap(own), None, None,
                                None, None, _verdict(c, None, None, False)))
    return rows


@dataclass
class PruneRow:
    arm: str
    train_length: int
    fraction: float
    cmp: Comparison | None
    means: tuple[float, float] | None  # (pruned, unpruned) means over seeds, run records
    seeds: int
    kv_ratio: float | None
    verdict: str


def prune_rows(runs: list[dict], records: list[dict], value=em) -> list[PruneRow]:
    """Each pruned L2A model against its own unpruned model at the trained length: from
    per-sample records where the pruned evaluation has them, else the means in the run
    records (no interval)."""
    rows = []
    fracs = sorted({float(f) for r in runs for f in (r.get("evals") or {}) if float(f) > 0})
    for length, at in trained_at(runs):
        for arm in ARM_ORDER[1:]:
            for frac in fracs:
                key = f"{frac:g}"
                pairs = [(_ev(r, key), _ev(r)) for r in _runs(runs, arm, length)]
                pairs = [(p, u) for p, u in pairs if p and u and str(at) in p["retrieval"]
                         and str(at) in u["retrieval"]]
                if not pairs:
                    continue
                pruned = side(records, arm, length, at, frac)
                c = (compare(pair(pruned, side(records, arm, length, at), value),
                             plan_units=PLAN_UNITS, plan_samples=PLAN_SAMPLES) if pruned else None)
                means = (_mean([p["retrieval"][str(at)] for p, _ in pairs]),
                         _mean([u["retrieval"][str(at)] for _, u in pairs]))
                kv = _mean(per_run(runs, arm, length, kv_pruned(key)))
                rows.append(PruneRow(arm, length, frac, c, means, len(pairs), kv,
                                     c.verdict if c else "undecided: no per-sample records"))
    return rows


def _mean(v: list[float]) -> float | None:
    return sum(v) / len(v) if v else None


# ----------------------------------------------------------------------------- formatting
def f_num(x: float, digits: int = 2) -> str:
    return "∞" if math.isinf(x) else f"{x:.{digits}f}"


def f_ci(lo: float, hi: float, digits: int = 2) -> str:
    return f"[{f_num(lo, digits)}, {f_num(hi, digits)}]"


def f_n(c: Comparison) -> str:
    per = set(c.per_unit)
    shape = f"{c.seed_units} seed unit{'s' if c.seed_units > 1 else ''}" + (
        f" × {per.pop()}" if len(per) == 1 else "")
    return f"{c.samples} ({shape})"


def f_interval(m) -> str:
    if m is None:
        return "-"
    mean, lo, hi, n = m
    return f"{mean:.3f}" + ("" if n < 2 else f" {f_ci(lo, hi, 3)}") + f" (n={n})"


def f_needed(c: Comparison | None) -> str:
    """What would decide an undecided ratio, in samples per model and length (all tasks)."""
    need = c.needed if c else None
    if need is None:
        return ""
    note = "" if need.between_measured else "; seed-to-seed spread not measured (one seed unit)"
    plan = (f"; the study's defaults ({PLAN_UNITS} x {PLAN_SAMPLES}) would give about "
            f"±{need.half_width(PLAN_UNITS, PLAN_SAMPLES):.3f}")
    if need.samples is not None:
        return (f"; deciding needs about {need.samples} generated samples per model and length "
                f"at {need.seed_units} seed units{plan}{note}")
    return (f"; samples alone cannot decide it: about {need.seed_units_needed} seed units at "
            f"{need.at_samples} samples per model and length{plan}{note}")


def f_verdict(verdict: str, c: Comparison | None) -> str:
    text = f"**{verdict}**" if verdict in ("met", "missed", "undecided") else verdict
    return text + (f_needed(c) if verdict == "undecided" else "")


def header(*columns: str) -> list[str]:
    """A Markdown table's first two lines; a column named with a trailing ">" is right-aligned."""
    names = [c.rstrip(">") for c in columns]
    return ["| " + " | ".join(names) + " |",
            "|" + "|".join("---:" if c.endswith(">") else "---" for c in columns) + "|"]


def headline_table(rows: list[Row]) -> list[str]:
    out = header("arm", "trained at>", "sparsity (held-out), 95% CI",
                 "retrieval (exact match), 95% CI", "n (samples)", "ratio to dense, 95% CI",
                 "perplexity at the trained length", "KV after pruning half",
                 "verdict (bar: ratio >= 0.97 at sparsity >= 0.8)")
    for r in rows:
        c = r.cmp
        if r.arm == "dense":
            dense_p = r.arm_ci
            mean = c.ref_mean if c else None
            out.append(f"| {ARM_NAMES['dense']} | {r.train_length} | - | "
                       f"{'-' if mean is None else f'{mean:.3f} {f_ci(*dense_p, 3)}'} | "
                       f"{f_n(c) if c else '-'} | 1 (reference) | {f_interval(r.perplexity)} | "
                       f"{_kv(r.kv_bytes, None)} | reference |")
            continue
        retr = "-" if c is None else f"{c.arm_mean:.3f} {f_ci(*r.arm_ci, 3)}"
        ratio = "-" if c is None else f"{f_num(c.ratio, 3)} {f_ci(*c.ratio_ci)}"
        out.append(f"| {ARM_NAMES.get(r.arm, r.arm)} | {r.train_length} | {f_interval(r.sparsity)} | "
                   f"{retr} | {f_n(c) if c else '-'} | {ratio} | {f_interval(r.perplexity)} | "
                   f"{_kv(r.kv_bytes, r.kv_half)} | {f_verdict(r.verdict, c)} |")
    return out


def _kv(full: float | None, half: float | None) -> str:
    if full is None:
        return "-"
    mib = full / 2**20
    return f"{mib:.1f} MiB" if half is None else f"{mib * half:.1f} MiB ({half:.2f} of {mib:.1f})"


def extrapolation_table(rows: list[Row]) -> list[str]:
    out = header("arm", "trained at>", "evaluated at>", "retrieval, 95% CI", "dense>",
                 "n (samples)", "ratio to dense, 95% CI", "difference, 95% CI",
                 "verdict (ratio >= 0.97)")
    for r in rows:
        c = r.cmp
        out.append(f"| {ARM_NAMES.get(r.arm, r.arm)} | {r.train_length} | {r.eval_length} | "
                   f"{c.arm_mean:.3f} {f_ci(*r.arm_ci, 3)} | {c.ref_mean:.3f} | {f_n(c)} | "
                   f"{f_num(c.ratio)} {f_ci(*c.ratio_ci)} | {c.diff:+.3f} {f_ci(*c.diff_ci, 3)} | "
                   f"{f_verdict(r.verdict, c)} |")
    return out


def prune_table(rows: list[PruneRow]) -> list[str]:
    out = header("arm", "trained at>", "pruned>", "retrieval pruned / unpruned", "n",
                 "ratio, 95% CI", "KV after / before>", "verdict (ratio >= 0.97)")
    for r in rows:
        c = r.cmp
        if c is not None:
            means, n, ratio = (f"{c.arm_mean:.3f} / {c.ref_mean:.3f}", f_n(c),
                               f"{f_num(c.ratio, 3)} {f_ci(*c.ratio_ci)}")
        else:
            p, u = r.means
            means = f"{p:.3f} / {u:.3f} (means of {r.seeds} seeds)"
            n, ratio = "-", f"{p / u:.3f} (no interval)" if u else "-"
        kv = "-" if r.kv_ratio is None else f"{r.kv_ratio:.3f}"
        out.append(f"| {ARM_NAMES.get(r.arm, r.arm)} | {r.train_length} | {r.fraction:g} | {means} "
                   f"| {n} | {ratio} | {kv} | {f_verdict(r.verdict, c)} |")
    return out


def continuous_table(runs: list[dict], records: list[dict]) -> list[str]:
    """Teacher-forced scores at the trained length: token accuracy as a ratio to dense, answer
    log-likelihood per token as a difference (nats); [] where none are recorded."""
    if not any(token_acc(r) is not None for r in records):
        return []
    out = header("arm", "trained at>", "token accuracy, ratio to dense, 95% CI", "n",
                 "answer loglik per token, L2A - dense (nats), 95% CI")
    for length, at in trained_at(runs):
        dense = side(records, "dense", length, at)
        for arm in ARM_ORDER[1:]:
            mine = side(records, arm, length, at)
            t = compare(pair(mine, dense, token_acc))
            ll = compare(pair(mine, dense, loglik_per_token))
            if t is None:
                continue
            ll_s = "-" if ll is None else f"{ll.diff:+.3f} {f_ci(*ll.diff_ci, 3)}"
            out.append(f"| {ARM_NAMES.get(arm, arm)} | {length} | {f_num(t.ratio, 3)} "
                       f"{f_ci(*t.ratio_ci)} | {f_n(t)} | {ll_s} |")
    return out


def summary_lines(rows: list[Row]) -> list[str]:
    """One sentence per L2A arm at its trained length."""
    out = []
    for r in rows:
        if r.arm == "dense" or r.cmp is None:
            continue
        c = r.cmp
        out.append(f"- {ARM_NAMES.get(r.arm, r.arm)} at {r.train_length}: "
                   f"{f_num(c.ratio, 3)} of dense (95% CI {f_ci(*c.ratio_ci, 3)}, "
                   f"{c.samples} paired samples): {f_verdict(r.verdict, c)}.")
    return out


def answer_plot(rows: list[Row], beyond: list[Row], path: Path) -> Path | None:
    """Ratio to dense with its 95% CI per L2A arm: at the trained length (left, the bar at
    0.97) and at every evaluation length (right), log scale."""
    pts = [r for r in rows + beyond if r.arm != "dense" and r.cmp is not None]
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    lengths = sorted({r.train_length for r in pts})
    arms = [a for a in ARM_ORDER[1:] if any(r.arm == a for r in pts)]
    # An infinite upper bound (dense at 0 in some replicates) is drawn up to `cap`, with "^".
    cap = 2 * max(x for r in pts for x in (r.cmp.ratio, r.cmp.ratio_ci[1], 1.0) if math.isfinite(x))
    labels, x = [], 0
    for length in lengths:
        evals = sorted({r.eval_length for r in pts if r.train_length == length})
        for n in evals:
            for k, arm in enumerate(arms):
                r = next((r for r in pts if (r.arm, r.train_length, r.eval_length) == (arm, length, n)), None)
                if r is None:
                    continue
                ratio = r.cmp.ratio
                if not (math.isfinite(ratio) and ratio > 0):
                    continue  # dense or the arm at 0 on every sample: no point on a log scale
                lo, hi = max(r.cmp.ratio_ci[0], ratio / cap), min(r.cmp.ratio_ci[1], cap)
                ax.errorbar([x + 0.2 * (k - 1)], [ratio],
                            # a percentile interval need not hold the point estimate
                            yerr=[[max(ratio - lo, 0)], [max(hi - ratio, 0)]], fmt="o", capsize=3,
                            color=f"C{k}", label=ARM_NAMES[arm] if x == 0 else None,
                            mfc="white" if n != length else f"C{k}")
                if math.isinf(r.cmp.ratio_ci[1]):
                    ax.plot([x + 0.2 * (k - 1)], [cap], marker="^", color=f"C{k}")
            labels.append(f"{length // 1024}K→{n // 1024}K")
            x += 1
    ax.axhline(BAR, color="red", lw=0.9, ls="--", label="bar 0.97")
    ax.axhline(1.0, color="grey", lw=0.6)
    ax.set_yscale("log")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set(ylabel="retrieval / dense (95% CI)", title="L2A against dense (▲: no upper bound)",
           xlabel="trained → evaluated length (filled: at the trained length)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)
