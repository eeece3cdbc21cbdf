"""Errors and bad-record accounting of the data pipeline.

Every problem with user data ends as one line that says what is wrong and where
(``file:line: reason``), either raised at once or counted under ``data.max_bad_records``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# A bad ``data.*`` setting raises the one ConfigError of every config (l2a/errors.py).
from l2a.errors import ConfigError

__all__ = ["BadRecord", "BadRecordLog", "ConfigError", "DataError"]


class DataError(ValueError):
    """Bad data; the message is one line naming the place."""


@dataclass
class BadRecord:
    where: str  # "path/to/file.jsonl:17" or "hub/id[train] row 3"
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class BadRecordLog:
    """Counts bad records across sources and enforces ``data.max_bad_records``."""

    limit: int
    keep: int = 1000  # records listed in bad_records.txt; the count is always exact
    count: int = 0
    reasons: Counter = field(default_factory=Counter)
    records: list[BadRecord] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        self.count += 1
        # The reason's first words name the kind ("corrupt JSON (...)" -> "corrupt JSON").
        self.reasons[reason.split(" (")[0]] += 1
        if len(self.records) < self.keep:
            self.records.append(BadRecord(where, reason))
        if self.count > self.limit:
            first = self.records[0]
            if self.limit == 0:
                raise DataError(f"{first} (set data.max_bad_records to skip and count bad records)")
            raise DataError(
                f"{self.count} bad records, more than data.max_bad_records={self.limit}; "
                f"first: {first}"
            )

    def summary(self) -> dict:
        return {
            "count": self.count,
            "limit": self.limit,
            "reasons": dict(self.reasons),
            "first": [str(r) for r in self.records[:20]],
        }
