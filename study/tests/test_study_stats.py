"""study.stats against cases computed by hand: bootstrap distributions enumerated over every
possible draw, closed-form variances of the nested resampling, the verdict's boundaries, the
sample-size formula worked on paper, the t interval, and pairing by (base, seed, sample id)."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from study.stats import (
    Paired,
    compare,
    mean_interval,
    pair,
    percentile_interval,
    ratio_replicates,
    resample_means,
    sample_size,
    verdict,
)


def _one_unit(a, d) -> Paired:
    return Paired({0: {0: (np.array(a, float), np.array(d, float))}})


A, D = [1, 0, 1, 1], [1, 1, 0, 1]


def _enumerated(a, d) -> dict:
    """The exact bootstrap distribution of sum(a) / sum(d) over the n^n equally likely
    ordered draws of n sample ids, the same ids on both sides."""
    n = len(a)
    counts = Counter()
    for ids in itertools.product(range(n), repeat=n):
        sa, sd = sum(a[i] for i in ids), sum(d[i] for i in ids)
        counts[Fraction(sa, sd) if sd else math.inf] += 1
    return {r: Fraction(c, n**n) for r, c in counts.items()}


def test_replicate_ratios_follow_the_enumerated_paired_distribution():
    exact = _enumerated(A, D)
    reps = 40_000
    ra, rd = resample_means(_one_unit(A, D), reps=reps, seed=1)
    ratios, undefined = ratio_replicates(ra, rd)
    assert undefined == 0 and len(ratios) == reps
    seen = Counter(math.inf if math.isinf(r) else Fraction(r).limit_denominator(12) for r in ratios)
    assert set(seen) == set(exact)  # no value the paired draws cannot produce
    for r, p in exact.items():
        se = math.sqrt(float(p) * (1 - float(p)) / reps)
        assert abs(seen[r] / reps - float(p)) < 5 * se + 1e-9, (r, seen[r] / reps, float(p))


def test_interval_is_the_enumerated_distributions_percentiles():
    # Exact CDF: F(0) = 1/256, F(1/4) = 9/256 >= 0.025 -> lower 1/4; F(3) = 247/256 < 0.975,
    # F(4) = 255/256 -> upper 4. (Both steps are 10 standard errors from the 2.5% marks.)
    c = compare(_one_unit(A, D), reps=20_000, seed=3)
    assert c.ratio_ci == (0.25, 4.0)
    assert c.ratio == pytest.approx(3 / 3) and c.samples == 4 and c.seed_units == 1


def test_identical_arms_have_ratio_one_in_every_defined_replicate():
    """a = d: every replicate's ratio is 1, except the draws of sample 1 alone (0 / 0,
    probability 4^-4), which carry no ratio. Unpaired draws would spread the ratio."""
    c = compare(_one_unit(A, A), reps=20_000, seed=0)
    assert c.ratio_ci == (1.0, 1.0) and c.verdict == "met"
    p = 4.0**-4
    assert abs(c.undefined / 20_000 - p) < 5 * math.sqrt(p * (1 - p) / 20_000)


def test_proportional_scores_give_a_degenerate_interval_at_every_level():
    """The arm scores exactly half the reference on every sample of every seed and base: a
    paired replicate is 0.5 whatever it draws."""
    rng = np.random.default_rng(5)
    bases = {}
    for b in (0, 1):
        bases[b] = {}
        for s in (0, 1, 2):
            d = rng.uniform(0.2, 1.0, size=7)
            bases[b][s] = (0.5 * d, d)
    c = compare(Paired(bases), reps=5_000, seed=2)
    assert c.ratio == pytest.approx(0.5)
    assert c.ratio_ci == pytest.approx((0.5, 0.5), abs=1e-12) and c.verdict == "missed"
    assert c.seed_units == 6 and c.base_seeds == 2 and c.samples == 42


def _nested(base_means, seed_offsets, sample_devs):
    """Scores (arm side; the reference is 0) with chosen base, seed and sample parts."""
    bases = {}
    for b, m in enumerate(base_means):
        bases[b] = {s: (m + off + np.array(sample_devs, float), np.zeros(len(sample_devs)))
                    for s, off in enumerate(seed_offsets)}
    return Paired(bases)


def test_variance_of_the_nested_resampling_matches_its_closed_form():
    """One replicate of K bases, S units each, n samples each (equal sizes): the arm's mean
    is the mean of K independent base draws, each the mean of S unit draws, each the mean of
    n sample draws. So Var = (v_base + (v_seed + v_sample / n) / S) / K with the population
    (ddof 0) variances of base means, unit means within a base and samples within a unit."""
    devs, offsets = [0.0, 1.0, 0.0, 1.0], [-0.3, 0.3, 0.0]
    for base_means in ([0.0], [0.0, 2.0]):
        p = _nested(base_means, offsets, devs)
        k, s, n = len(base_means), len(offsets), len(devs)
        v_base = float(np.var(base_means))
        v_seed = float(np.var(offsets))
        v_sample = float(np.var(devs))
        want = (v_base + (v_seed + v_sample / n) / s) / k
        ra, rd = resample_means(p, reps=40_000, seed=7)
        assert not rd.any()
        # the variance estimate of 40,000 replicates: relative error ~ sqrt(2 / 40,000) = 0.7%
        assert np.var(ra) == pytest.approx(want, rel=0.04), (base_means, np.var(ra), want)


def test_verdict_boundaries():
    assert verdict(0.97, 1.2) == "met"  # lower bound at the bar: met
    assert verdict(0.5, 0.9699) == "missed"
    assert verdict(0.5, 0.97) == "undecided"  # upper bound at the bar is not below it
    assert verdict(0.96, 1.01) == "undecided"


def test_sample_size_worked_by_hand():
    """Dense right on every sample (d = 1), the arm on 2 of 4 (seed 0) and 3 of 4 (seed 1):
    R = 5/8, z = a - R. Seed 0: z = .375, -.625, .375, -.625 (mean -.125, squares about the
    mean 4 x .25 = 1); seed 1: .375, .375, .375, -.625 (mean .125; .0625 x 3 + .5625 = .75).
    s_w^2 = 1.75 / 6; var of the unit means = 2 x .125^2 / 1 = .03125 < s_w^2 / 4, so
    s_b^2 = 0. d^2 = (.345 / 1.96)^2 = .030985; at 2 units n >= s_w^2 / (2 d^2) = 4.707 -> 5;
    at 6 units: 1.569 -> 2."""
    p = Paired({0: {0: (np.array([1, 0, 1, 0.]), np.ones(4)),
                    1: (np.array([1, 1, 1, 0.]), np.ones(4))}})
    at2 = sample_size(p, 5 / 8, seed_units=2)
    assert (at2.samples, at2.seed_units, at2.seed_units_needed) == (5, 2, None)
    assert sample_size(p, 5 / 8, seed_units=6).samples == 2
    assert sample_size(p, 0.97, seed_units=2) is None  # on the bar: nothing decides it


def test_sample_size_asks_for_seeds_when_seeds_differ_more_than_samples():
    """Seed 0 scores 0.5 on every sample and seed 1 0.9: no spread within a seed, so
    s_w^2 = 0 and only seed units can narrow the interval. R = 0.7, D = 1: z = -0.2 and 0.2,
    s_b^2 = var(-0.2, 0.2) = 0.08 (ddof 1). d^2 = (0.27 / 1.96)^2 = 0.018977: at 2 units
    2 d^2 < s_b^2; S >= (0.08 + 0) / 0.018977 = 4.216 -> 5 seed units."""
    p = Paired({0: {0: (np.full(5, 0.5), np.ones(5)), 1: (np.full(5, 0.9), np.ones(5))}})
    need = sample_size(p, 0.7, seed_units=2)
    assert need.samples is None and need.seed_units_needed == 5 and need.between_measured


def test_pair_matches_base_seed_and_sample_id():
    def rec(base, seed, sid, v):
        return {"base_seed": base, "seed": seed, "sample_id": sid, "em": v}

    arm = [rec(0, 0, "x", 1.0), rec(0, 0, "y", 0.0), rec(1, 0, "x", 0.5), rec(0, 1, "x", 1.0),
           rec(0, 0, "z", None)]
    ref = [rec(0, 0, "y", 1.0), rec(0, 0, "x", 0.25), rec(1, 0, "x", 1.0), rec(0, 2, "x", 1.0)]
    p = pair(arm, ref, lambda r: r["em"])
    assert sorted((b, s) for b, seeds in p.bases.items() for s in seeds) == [(0, 0), (1, 0)]
    a, d = p.bases[0][0]
    assert a.tolist() == [1.0, 0.0] and d.tolist() == [0.25, 1.0]  # x, y in id order
    assert p.bases[1][0][0].tolist() == [0.5] and p.bases[1][0][1].tolist() == [1.0]
    assert p.unpaired == 2 and p.samples == 3  # (0, 1, x) and (0, 2, x); z has no score


def test_a_sample_twice_on_one_side_is_an_error():
    recs = [{"base_seed": 0, "seed": 0, "sample_id": "x", "em": v} for v in (1.0, 0.0)]
    with pytest.raises(ValueError, match="sample x of base seed 0, seed 0 appears twice"):
        pair(recs, recs[:1], lambda r: r["em"])


def test_same_seed_same_replicates():
    p = _one_unit(A, D)
    assert np.array_equal(resample_means(p, 500, 4)[0], resample_means(p, 500, 4)[0])
    assert not np.array_equal(resample_means(p, 500, 4)[0], resample_means(p, 500, 5)[0])


def test_percentile_interval_inverted_cdf():
    # 40 values 1..40: ceil(0.025 x 40) = 1st and ceil(0.975 x 40) = 39th smallest.
    assert percentile_interval(np.arange(40, 0, -1.0)) == (1.0, 39.0)


def test_t_interval_over_seed_units():
    m, lo, hi, n = mean_interval([1.0, 3.0])  # sd sqrt 2, t(1) = 12.706: 2 +- 12.706
    assert (m, n) == (2.0, 2) and lo == pytest.approx(2 - 12.706) and hi == pytest.approx(2 + 12.706)
    m, lo, hi, n = mean_interval([2.0, 4.0, 6.0])  # sd 2, t(2) = 4.303: 4 +- 4.303 x 2 / sqrt 3
    assert lo == pytest.approx(4 - 4.303 * 2 / math.sqrt(3))
    assert mean_interval([5.0])[3] == 1 and math.isnan(mean_interval([5.0])[1])
