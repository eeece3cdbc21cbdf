"""Packing documents into rows of exactly ``seq_len`` tokens.

A row is a list of segments ``(source, doc, start, length)``: ``length`` tokens of document
``doc`` from token ``start`` on, where a document's tokens end with its EOS. Every segment
starts a new attention span (position ids restart at 0), so a document split across rows
continues without its earlier context.

Strategies:
- ``bfd``: best-fit decreasing over a buffer of ``buffer_sequences * seq_len`` tokens;
  documents that leave a row underfilled are carried once into the next buffer, where
  smaller documents may complete it. Documents are split only when longer than a row.
- ``greedy``: next-fit in arrival order (pad and start a new row when a document does not fit).
- ``concat``: the classic concatenate-and-chunk: no padding, documents cut at row ends.

Documents longer than a row follow ``long_doc_policy``: ``split`` (full rows plus a
remainder that is packed like any document), ``truncate`` (keep the first row), ``drop``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

Segment = tuple[int, int, int, int]  # (source, doc, start, length)
CARRY_BELOW_FILL = 0.98


def length_bins(seq_len: int) -> list[int]:
    """Upper edges of the length histogram: powers of two below ``seq_len``, then ``seq_len``."""
    edges, e = [], 16
    while e < seq_len:
        edges.append(e)
        e *= 2
    return [*edges, seq_len]


@dataclass
class PackStats:
    seq_len: int
    num_sources: int
    documents: int = 0  # documents drawn (with repetition)
    document_tokens: int = 0  # their tokens, EOS included
    sequences: int = 0
    tokens: int = 0  # tokens placed in rows
    padding_tokens: int = 0
    segments: int = 0
    split_documents: int = 0
    truncated_documents: int = 0
    truncated_tokens: int = 0
    dropped_documents: int = 0
    dropped_tokens: int = 0
    dropped_remainders: int = 0  # lone EOS left over when splitting; it predicts nothing
    source_tokens: list[int] = field(default_factory=list)
    source_documents: list[int] = field(default_factory=list)
    histogram: list[int] = field(default_factory=list)  # documents per length_bins, then > seq_len
    histogram_tokens: list[int] = field(default_factory=list)

    def __post_init__(self):
        self._edges = np.array(length_bins(self.seq_len))
        n = len(self._edges) + 1
        self.source_tokens = self.source_tokens or [0] * self.num_sources
        self.source_documents = self.source_documents or [0] * self.num_sources
        self.histogram = self.histogram or [0] * n
        self.histogram_tokens = self.histogram_tokens or [0] * n

    def count_document(self, src: int, length: int) -> None:
        self.documents += 1
        self.document_tokens += length
        self.source_documents[src] += 1
        b = int(np.searchsorted(self._edges, length, side="left"))
        self.histogram[b] += 1
        self.histogram_tokens[b] += length

    def count_row(self, row: list[Segment]) -> None:
        n = 0
        for src, _, _, length in row:
            self.source_tokens[src] += length
            n += length
        self.sequences += 1
        self.segments += len(row)
        self.tokens += n
        self.padding_tokens += self.seq_len - n

    @property
    def padding_fraction(self) -> float:
        total = self.sequences * self.seq_len
        return self.padding_tokens / total if total else 0.0

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        d["padding_fraction"] = self.padding_fraction
        d["histogram_edges"] = self._edges.tolist()
        return d


class Packer:
    def __init__(
        self,
        seq_len: int,
        strategy: str = "bfd",
        long_doc_policy: str = "split",
        buffer_sequences: int = 64,
        stats: PackStats | None = None,
    ):
        self.seq_len = seq_len
        self.strategy = strategy
        self.policy = long_doc_policy
        self.buffer_tokens = buffer_sequences * seq_len
        self.stats = stats or PackStats(seq_len, 1)

    def pack(self, items: Iterable[tuple[int, int, int]]) -> Iterator[list[Segment]]:
        """``items``: (source, doc, length with EOS) in mixture order -> rows."""
        run = {"bfd": self._bfd, "greedy": self._greedy, "concat": self._concat}[self.strategy]
        for row in run(self._apply_policy(items)):
            self.stats.count_row(row)
            yield row

    def _apply_policy(self, items) -> Iterator[tuple[int, int, int, int] | list[Segment]]:
        """Yields packable segments, or ready full rows (as lists) for long documents."""
        n, st = self.seq_len, self.stats
        for src, doc, length in items:
            st.count_document(src, length)
            if length <= n or self.strategy == "concat" and self.policy == "split":
                yield (src, doc, 0, length)
            elif self.policy == "drop":
                st.dropped_documents += 1
                st.dropped_tokens += length
            elif self.policy == "truncate":
                st.truncated_documents += 1
                st.truncated_tokens += length - n
                yield (src, doc, 0, n) if self.strategy == "concat" else [(src, doc, 0, n)]
            else:
                st.split_documents += 1
                full = length // n
                for k in range(full):
                    yield [(src, doc, k * n, n)]
                rest = length - full * n
                if rest >= 2:
                    yield (src, doc, full * n, rest)
                elif rest == 1:
                    # A lone EOS predicts nothing (its label is masked); don't spend a slot on it.
                    st.dropped_remainders += 1

    def _greedy(self, segs) -> Iterator[list[Segment]]:
        row: list[Segment] = []
        free = self.seq_len
        for seg in segs:
            if isinstance(seg, list):
                yield seg
                continue
            if seg[3] > free:
                yield row
                row, free = [], self.seq_len
            row.append(seg)
            free -= seg[3]
        if row:
            yield row

    def _concat(self, segs) -> Iterator[list[Segment]]:
        row: list[Segment] = []
        free = self.seq_len
        for seg in segs:
            src, doc, start, length = seg
            counted = False
            while length > 0:
                take = min(length, free)
                row.append((src, doc, start, take))
                start, length, free = start + take, length - take, free - take
                if free == 0:
                    yield row
                    row, free = [], self.seq_len
                    if length > 0 and not counted:
                        self.stats.split_documents += 1
                        counted = True
        if row:
            yield row

    def _bfd(self, segs) -> Iterator[list[Segment]]:
        buffer: list[tuple[int, int, int, int, bool]] = []
        tokens = 0
        for seg in segs:
            if isinstance(seg, list):
                yield seg
                continue
            buffer.append((*seg, False))
            tokens += seg[3]
            if tokens >= self.buffer_tokens:
                rows, buffer = self._bfd_flush(buffer, final=False)
                tokens = sum(s[3] for s in buffer)
                yield from rows
        rows, _ = self._bfd_flush(buffer, final=True)
        yield from rows

    def _bfd_flush(self, buffer, final: bool):
        n = self.seq_len
        order = sorted(range(len(buffer)), key=lambda i: -buffer[i][3])  # stable: ties by arrival
        bins: list[list] = []  # [free, segments, has_carried]
        free_sorted: list[tuple[int, int]] = []  # (free, bin index), ascending
        for i in order:
            src, doc, start, length, carried = buffer[i]
            k = bisect.bisect_left(free_sorted, (length, -1))
            if k < len(free_sorted):
                free, b = free_sorted.pop(k)
            else:
                b = len(bins)
                bins.append([n, [], False])
                free = n
            bins[b][0] = free - length
            bins[b][1].append((src, doc, start, length))
            bins[b][2] |= carried
            bisect.insort(free_sorted, (free - length, b))
        rows, carry = [], []
        for free, segs, has_carried in bins:
            if not final and not has_carried and n - free < CARRY_BELOW_FILL * n:
                carry.extend((*s, True) for s in segs)
            else:
                rows.append(segs)
        return rows, carry
