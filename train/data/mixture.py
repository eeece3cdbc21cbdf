"""Long-context mixtures: token shares per source, a share of short data, and per-source
upsampling of long documents (the per-source length upsampling of Fu et al. 2024, used by
ProLong-style recipes): long documents are drawn ``factor`` times more often than short
ones of the same source while the source keeps its token share.

The plan is a seeded, shuffled list of ``(source, document)`` draws; a document may be
drawn several times (upsampling or a source smaller than its share of ``num_tokens``) or
not at all (subsampling).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from train.data.config import DataConfig
from train.data.errors import DataError


@dataclass
class SourcePlan:
    name: str
    share: float  # target share of the mixture's tokens
    docs_available: int
    tokens_available: int  # including one EOS per document
    draws: int = 0
    unique_docs: int = 0
    tokens: int = 0
    unique_tokens: int = 0  # of the documents drawn at least once (EOS included)
    long_docs_drawn: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _systematic_counts(expected: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer draws per document with the given expectations and (nearly) their exact total:
    systematic sampling (one uniform offset) over a random order of the documents, so a
    source's tokens land within about one document of its target."""
    order = rng.permutation(len(expected))
    cum = np.concatenate([[0.0], np.cumsum(expected[order])])
    picks = np.floor(cum + rng.random())
    counts = np.empty(len(expected), dtype=np.int64)
    counts[order] = np.diff(picks).astype(np.int64)
    return counts


def target_shares(cfg: DataConfig, names: list[str]) -> dict[str, float]:
    weights = cfg.source_weights()
    short = cfg.source_short()
    if cfg.short_share is None:
        total = sum(weights[n] for n in names)
        return {n: weights[n] / total for n in names}
    groups = {True: cfg.short_share, False: 1.0 - cfg.short_share}
    sums = {g: sum(weights[n] for n in names if short[n] == g) for g in groups}
    return {
        n: groups[short[n]] * weights[n] / sums[short[n]] if sums[short[n]] else 0.0 for n in names
    }


def plan_mixture(
    cfg: DataConfig, lengths: dict[str, np.ndarray], seed: int
) -> tuple[np.ndarray, np.ndarray, list[SourcePlan], int]:
    """-> (source ids, doc ids) of every draw in training order, per-source plans, and the
    token budget. ``lengths`` maps source name -> document lengths including EOS."""
    names = list(lengths)
    shares = target_shares(cfg, names)
    plans = [SourcePlan(n, shares[n], len(lengths[n]), int(lengths[n].sum())) for n in names]
    for p in plans:
        if p.share > 0 and p.docs_available == 0:
            raise DataError(f"data source '{p.name}': no usable documents (weight {p.share:.3g})")
    up = cfg.upsample_long
    doc_weights = {
        n: np.where(lengths[n] >= up.min_tokens, up.factor, 1.0)
        if up.active
        else np.ones(len(lengths[n]))
        for n in names
    }
    if cfg.num_tokens is not None:
        budget = cfg.num_tokens
    else:
        # Largest mixture in which no source repeats as a whole.
        budget = min(p.tokens_available / p.share for p in plans if p.share > 0)
    rng = np.random.default_rng([seed, 0x6D6978])
    src_ids, doc_ids = [], []
    for si, p in enumerate(plans):
        if p.share <= 0:
            continue
        lens, w = lengths[p.name], doc_weights[p.name]
        target = budget * p.share
        rate = target / float((w * lens).sum())
        expected = rate * w
        draws = _systematic_counts(expected, rng)
        docs = np.repeat(np.arange(len(lens)), draws)
        src_ids.append(np.full(len(docs), si, dtype=np.int32))
        doc_ids.append(docs)
        p.draws = int(draws.sum())
        p.unique_docs = int((draws > 0).sum())
        p.tokens = int((draws * lens).sum())
        p.unique_tokens = int(lens[draws > 0].sum())
        if up.active:
            p.long_docs_drawn = int(draws[lens >= up.min_tokens].sum())
    src = np.concatenate(src_ids) if src_ids else np.zeros(0, dtype=np.int32)
    doc = np.concatenate(doc_ids) if doc_ids else np.zeros(0, dtype=np.int64)
    order = rng.permutation(len(src))
    return src[order], doc[order], plans, int(round(budget))


UNUSED_WARN = 0.5  # warn when a source's drawn documents hold less than this of its tokens


def unused_source_warnings(cfg: DataConfig, plans: list[SourcePlan]) -> list[str]:
    """One line per source whose documents the mixture mostly leaves out: a large source
    beside a small one with the default sizing (the largest mixture in which no source
    repeats is sized by the smallest), or a ``num_tokens`` below what the source holds."""
    sized = [p for p in plans if p.share > 0 and p.tokens_available > 0]
    if not sized:
        return []
    smallest = min(sized, key=lambda p: p.tokens_available / p.share)
    out = []
    for p in sized:
        used = p.unique_tokens / p.tokens_available
        if used >= UNUSED_WARN:
            continue
        if cfg.num_tokens is not None:
            why = f"its share {p.share:.3g} of data.num_tokens={cfg.num_tokens:,}"
        elif p is smallest:  # long documents upsampled in the source that sizes the mixture
            why = (f"data.upsample_long draws its long documents {cfg.upsample_long.factor:g}x "
                   f"in their place")
        else:
            why = (f"the mixture is sized by the smallest source, '{smallest.name}' (set "
                   f"data.num_tokens for a larger one, in which '{smallest.name}' repeats, or "
                   f"change the sources' weights)")
        out.append(f"data source '{p.name}': the mixture uses {p.unique_docs:,} of its "
                   f"{p.docs_available:,} documents ({100 * used:.0f}% of its tokens): {why}")
    return out

