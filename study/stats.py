"""The study's statistics: an arm against a reference (an L2A arm against dense; a pruned
model against its unpruned one) as a ratio of mean scores with a 95% confidence interval
from a paired, nested bootstrap; the verdict on the bar; and, where undecided, the sample
size that would decide it.

Units. A *seed unit* is one (base seed, extension seed): one extended model per arm. A
*sample* is one evaluation prompt, named by its sample id (task, evaluation length, needle
depth, sample index). The evaluation seeds its prompts with the extension seed
(`eval.seed`), so within a seed unit every arm reads the same prompts.

Pairing. A sample of the arm is paired with the reference's sample of the same base seed,
the same extension seed and the same sample id; only pairs where both exist are used (the
count of those left unpaired is returned). Units present for one side only are left out.

Resampling (one replicate; `reps` replicates, default 10,000):
1. draw the base seeds with replacement (as many as there are);
2. within each drawn base, draw its seed units with replacement (as many as it has);
3. within each drawn seed unit, draw its paired samples with replacement (as many as it
   has): one draw of sample ids, applied to both sides of every pair.
The replicate's statistic is the ratio of the arm's mean to the reference's mean over every
drawn sample (each drawn unit weighs its sample count; with equal counts, the mean of the
unit means). Samples are not stratified by task: a replicate may hold more of one task than
another, which adds the spread between tasks and so errs on the wide side for a design with
equal counts per task. A unit drawn twice gets two independent draws of its samples.

Interval: the percentile interval of the replicates, by the inverted empirical CDF
(lower = the ceil(0.025 B)-th smallest of B replicates, upper = the ceil(0.975 B)-th). A
replicate whose reference mean is 0 has ratio +inf when the arm's mean is above 0, and
none when both are 0 (left out, counted in `undefined`).

Verdict against the bar b = 0.97: *met* if the lower bound >= b, *missed* if the upper
bound < b, else *undecided*.

Sample size that would decide an undecided ratio (delta method, normal approximation):
with R the ratio, D the reference's mean, and per paired sample z = (a - R d) / D (so that
the estimate's error is about the mean of z), let s_w^2 be the pooled within-unit variance
of z and s_b^2 = max(0, var(unit means of z) - s_w^2 / n) the variance between seed units
(n: the mean samples per unit; var with ddof 1; 0 with one unit: not measured). At S seed
units of n samples each the interval's half-width is about

    h(S, n) = 1.96 * sqrt(s_b^2 / S + s_w^2 / (S n)),

and it decides once h <= |R - b|, assuming R stays where it is: n >= s_w^2 / (S d^2 - s_b^2)
with d = |R - b| / 1.96, possible only if S d^2 > s_b^2; else more seed units are needed:
S >= (s_b^2 + s_w^2 / n) / d^2. Deterministic: every bootstrap draws from
numpy.random.default_rng(seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

BAR = 0.97
Z95 = 1.959963984540054
REPS = 10_000
SEED = 0

class PairingError(ValueError):
    """Records that cannot be paired as they are (one line)."""


# A unit's paired scores: (arm, reference), aligned by sample id.
Unit = tuple[np.ndarray, np.ndarray]


@dataclass
class Paired:
    """Paired scores by base seed: {base seed: {extension seed: (arm, reference)}}."""

    bases: dict[int, dict[int, Unit]]
    unpaired: int = 0  # samples of either side without their pair

    @property
    def units(self) -> list[Unit]:
        return [u for seeds in self.bases.values() for u in seeds.values()]

    @property
    def samples(self) -> int:
        return sum(len(a) for a, _ in self.units)


def pair(arm: list[dict], ref: list[dict], value) -> Paired:
    """Pair two sides' per-sample records (dicts with base_seed, seed, sample_id) on (base
    seed, seed, sample id); `value(record)` is the score (None: not scored, left out)."""
    def index(records):
        out: dict[tuple, dict[str, float]] = {}
        for r in records:
            v = value(r)
            if v is None:
                continue
            unit = out.setdefault((int(r.get("base_seed", 0)), int(r["seed"])), {})
            if r["sample_id"] in unit:  # two models' records mixed up: never average them
                raise PairingError(f"sample {r['sample_id']} of base seed {r.get('base_seed', 0)}, "
                                 f"seed {r['seed']} appears twice on one side")
            unit[r["sample_id"]] = float(v)
        return out

    a_by, d_by = index(arm), index(ref)
    bases: dict[int, dict[int, Unit]] = {}
    paired = 0
    for key in sorted(set(a_by) & set(d_by)):
        ids = sorted(set(a_by[key]) & set(d_by[key]))
        if ids:
            bases.setdefault(key[0], {})[key[1]] = (np.array([a_by[key][i] for i in ids]),
                                                    np.array([d_by[key][i] for i in ids]))
            paired += len(ids)
    total = sum(len(v) for v in a_by.values()) + sum(len(v) for v in d_by.values())
    return Paired(bases, unpaired=total - 2 * paired)


def resample_means(p: Paired, reps: int = REPS, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(arm means, reference means), one per replicate of the nested paired bootstrap
    (module docstring)."""
    rng = np.random.default_rng(seed)
    bases = [list(seeds.values()) for _, seeds in sorted(p.bases.items())]
    sum_a, sum_d, count = np.zeros(reps), np.zeros(reps), np.zeros(reps)
    base_draw = rng.integers(0, len(bases), size=(reps, len(bases)))
    for slot in range(len(bases)):
        for b, units in enumerate(bases):
            rows = np.flatnonzero(base_draw[:, slot] == b)
            if not rows.size:
                continue
            unit_draw = rng.integers(0, len(units), size=(rows.size, len(units)))
            for uslot in range(len(units)):
                for u, (a, d) in enumerate(units):
                    picked = rows[unit_draw[:, uslot] == u]
                    if not picked.size:
                        continue
                    n = len(a)
                    ids = rng.integers(0, n, size=(picked.size, n))  # the same ids for a and d
                    sum_a[picked] += a[ids].sum(1)
                    sum_d[picked] += d[ids].sum(1)
                    count[picked] += n
    return sum_a / count, sum_d / count


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The inverted-CDF percentile interval (module docstring) of finite or infinite values."""
    v = np.sort(values)
    b = len(v)

    def kth(q: float) -> float:  # rounded first: (1 - 0.95) / 2 * 40 is 1.0000000000000009
        return float(v[max(math.ceil(round(q * b, 9)) - 1, 0)])

    return kth((1 - level) / 2), kth((1 + level) / 2)


def ratio_replicates(a: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, int]:
    """a / d per replicate: +inf where d = 0 < a; 0 / 0 left out. -> (ratios, left out)."""
    undefined = (d == 0) & (a == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(d == 0, np.inf, a / np.where(d == 0, 1.0, d))
    return r[~undefined], int(undefined.sum())


def verdict(lo: float, hi: float, bar: float = BAR) -> str:
    if lo >= bar:
        return "met"
    if hi < bar:
        return "missed"
    return "undecided"


@dataclass
class SampleSize:
    """What would decide an undecided ratio (module docstring): at `seed_units` units,
    `samples` per unit (None: not by samples alone), else `seed_units_needed` at `at_samples`."""

    seed_units: int
    samples: int | None
    seed_units_needed: int | None
    at_samples: int
    between_measured: bool  # False with one seed unit: s_b^2 taken as 0
    s_w2: float = 0.0
    s_b2: float = 0.0

    def half_width(self, seed_units: int, samples: int) -> float:
        """h(S, n) of the module docstring, from this measurement's variances."""
        return Z95 * math.sqrt(self.s_b2 / seed_units + self.s_w2 / (seed_units * samples))


def variance_components(units_z: list[np.ndarray]) -> tuple[float, float, float]:
    """(s_w^2, s_b^2, mean samples per unit) of the linearized scores per unit."""
    n_bar = float(np.mean([len(z) for z in units_z]))
    dof = sum(len(z) - 1 for z in units_z)
    s_w = (sum(float(((z - z.mean()) ** 2).sum()) for z in units_z) / dof) if dof > 0 else 0.0
    means = np.array([z.mean() for z in units_z])
    s_b = max(0.0, float(means.var(ddof=1)) - s_w / n_bar) if len(units_z) > 1 else 0.0
    return s_w, s_b, n_bar


def sample_size(p: Paired, ratio: float, seed_units: int, bar: float = BAR,
                at_samples: int | None = None) -> SampleSize | None:
    """The samples per seed unit that would decide the ratio at `seed_units` units (module
    docstring), or, if samples alone cannot, the seed units needed at `at_samples` samples
    per unit (default: as many as now); None where the ratio sits on the bar or the
    reference's mean is 0."""
    d_all = np.concatenate([d for _, d in p.units])
    dmean = float(d_all.mean())
    if dmean == 0 or ratio == bar or not math.isfinite(ratio):
        return None
    units_z = [(a - ratio * d) / dmean for a, d in p.units]
    s_w, s_b, n_bar = variance_components(units_z)
    target = (abs(ratio - bar) / Z95) ** 2
    at = at_samples or max(1, round(n_bar))
    if seed_units * target > s_b:
        n = max(1, math.ceil(s_w / (seed_units * target - s_b)))
        return SampleSize(seed_units, n, None, at, len(units_z) > 1, s_w, s_b)
    need = math.ceil((s_b + s_w / at) / target)
    return SampleSize(seed_units, None, need, at, len(units_z) > 1, s_w, s_b)


@dataclass
class Comparison:
    """An arm against its reference on one metric (means over the paired samples)."""

    arm_mean: float
    ref_mean: float
    ratio: float
    ratio_ci: tuple[float, float]
    diff: float
    diff_ci: tuple[float, float]
    samples: int  # paired samples per side
    seed_units: int
    base_seeds: int
    unpaired: int
    undefined: int  # replicates with both means 0
    verdict: str
    needed: SampleSize | None = None
    reps: int = REPS
    per_unit: list[int] = field(default_factory=list)


def mean_interval_bootstrap(p: Paired, reps: int = REPS, seed: int = SEED) -> tuple[float, float]:
    """The 95% interval of one side's mean (the arm's of `p`) by the same resampling."""
    return percentile_interval(resample_means(p, reps, seed)[0])


def compare(p: Paired, bar: float = BAR, reps: int = REPS, seed: int = SEED,
            plan_units: int | None = None, plan_samples: int | None = None) -> Comparison | None:
    """The ratio and difference with their intervals, the verdict, and when undecided the
    sample size at max(seed units, `plan_units`) seed units (seed units needed at
    `plan_samples` samples each where samples alone cannot). None: nothing paired."""
    if not p.units:
        return None
    a_all = np.concatenate([a for a, _ in p.units])
    d_all = np.concatenate([d for _, d in p.units])
    am, dm = float(a_all.mean()), float(d_all.mean())
    ratio = am / dm if dm else (math.inf if am > 0 else math.nan)
    ra, rd = resample_means(p, reps, seed)
    ratios, undefined = ratio_replicates(ra, rd)
    lo, hi = percentile_interval(ratios) if len(ratios) else (math.nan, math.nan)
    units = len(p.units)
    v = verdict(lo, hi, bar) if len(ratios) else "undecided"
    needed = (sample_size(p, ratio, max(units, plan_units or 0), bar, plan_samples)
              if v == "undecided" else None)
    return Comparison(am, dm, ratio, (lo, hi), am - dm, percentile_interval(ra - rd), len(a_all),
                      units, len(p.bases), p.unpaired, undefined, v, needed, reps,
                      [len(a) for a, _ in p.units])


# Student's t 0.975 quantiles for 1..30 degrees of freedom (beyond: a Cornish-Fisher series).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(dof: int) -> float:
    if dof <= len(_T975):
        return _T975[dof - 1]
    z = Z95
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def mean_interval(values: list[float]) -> tuple[float, float, float, int] | None:
    """(mean, lower, upper, n): Student's t 95% interval over per-model values (perplexity,
    sparsity: one number per seed unit, no per-sample records); n = 1: no interval."""
    if not values:
        return None
    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if len(v) == 1:
        return m, math.nan, math.nan, 1
    h = t975(len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return m, m - h, m + h, len(v)
