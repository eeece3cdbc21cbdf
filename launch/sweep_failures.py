"""The end of a sweep in which some jobs failed: one line per failed job (which, why, where),
and the sweep's exit code, after every job has had its turn.

Used by `python -m train -m ...` with Hydra's in-process launcher (train/__main__.py) and
by `hydra/launcher=local` (launch/local_launcher.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class SweepFailures:
    jobs: int = 0
    failed: list[tuple[int, str, int]] = field(default_factory=list)  # (job, why, exit code)

    def add(self, job: int, overrides: list[str], code: int, why: str) -> None:
        self.failed.append((job, f"job #{job} ({' '.join(overrides)}): {why}", code))

    def exit_code(self) -> int:
        """0 when every job ran; 2 when every failure was a bad config, data or checkpoint
        (their code), else the first other failure's code."""
        codes = [c for _, _, c in self.failed]
        if not codes:
            return 0
        return 2 if all(c == 2 for c in codes) else next(c for c in codes if c != 2)

    def report(self, file=None) -> int:
        """Print the failures (stderr) and return the sweep's exit code."""
        if self.failed:
            out = file or sys.stderr
            print(f"error: {len(self.failed)} of {self.jobs or '?'} sweep job(s) failed "
                  f"(the others ran):", file=out)
            for _, line, _ in sorted(self.failed):
                print(f"  {line}", file=out)
            out.flush()
        return self.exit_code()
