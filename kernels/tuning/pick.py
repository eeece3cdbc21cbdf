"""Kernel launch configs from a sweep: per pass, the fastest variant that is as accurate.

    python -m bench.attention --sweep <variants> --out sweep.json     # on the GPU
    python -m kernels.tuning.pick sweep.json --out tuned.json
    L2A_KERNEL_CONFIGS=tuned.json python -m bench.attention            # uses them

The forward is picked by its time, the backward (dq and dk/dv together, see GROUPS) by the
sum of both passes' times. The candidates are the variants that change the group's passes
(kernels.tuning.variants.parse_variant) and ran without error, with every recorded error against
the fp32 reference at most `--err-slack` times the default's (plus 1e-3). The fastest
replaces the default only if it is at least `--min-gain` faster (timings of one config
spread by about 5% between runs). Writes the `L2A_KERNEL_CONFIGS` format of
kernels/flash/config.py, and prints why each pass got its config.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kernels.tuning.variants import parse_variant

ERRS = ("err_out", "err_dq", "err_dk", "err_dv")
# Picked separately: the forward by its own time; the backward as one unit by dq + dk/dv
# time, because the dk/dv flags `compact` and `atomic_dq` move work between the two passes
# (the dq pass writes the compacted copies; with atomic_dq it shrinks to a prologue and an
# epilogue while dk/dv computes dq), so a dk/dv variant must be judged with the dq time it
# causes, and a dq variant with the dk/dv config it ran beside.
GROUPS = {"fwd": ("fwd",), "bwd": ("dq", "dkdv")}


def pick(
    records: list[dict], head_dim: int = 128, min_gain: float = 0.05, err_slack: float = 1.5
) -> tuple[dict, list[str]]:
    by_spec = {r["variant"]: r for r in records}
    if "default" not in by_spec or "error" in by_spec["default"]:
        raise ValueError("sweep has no successful 'default' record to compare with")
    base = by_spec["default"]
    overrides: dict[str, dict] = {}
    notes: list[str] = []

    def accurate(r: dict) -> bool:
        return all(r.get(e, 0.0) <= err_slack * base.get(e, 0.0) + 1e-3 for e in ERRS)

    def total(r: dict, passes: tuple) -> float:
        return round(sum(r[f"{p}_ms"] for p in passes), 3)

    for group, passes in GROUPS.items():
        cands = []
        for spec, r in by_spec.items():
            if spec == "default" or "error" in r:
                continue
            changes = {p: ch for p, ch in parse_variant(spec).items() if p in passes}
            if not changes:
                continue
            if not accurate(r):
                notes.append(f"{group}: {spec} rejected: errors {[r.get(e) for e in ERRS]}")
                continue
            cands.append((total(r, passes), spec, changes))
        ref = total(base, passes)
        if not cands:
            notes.append(f"{group}: no candidate; default kept ({ref} ms)")
            continue
        ms, spec, changes = min(cands, key=lambda c: c[0])
        if ms <= (1.0 - min_gain) * ref:
            for p, ch in changes.items():
                overrides[f"{p}/{head_dim}"] = ch
            notes.append(f"{group}: {spec} {ms} ms vs default {ref} ms")
        else:
            notes.append(f"{group}: default kept ({ref} ms; best {spec} {ms} ms)")
    return overrides, notes


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("sweep", type=Path, help="JSON written by bench.attention --sweep")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--min-gain", type=float, default=0.05)
    ap.add_argument("--err-slack", type=float, default=1.5)
    args = ap.parse_args(argv)
    try:
        records = json.loads(args.sweep.read_text())["sweep"]
        overrides, notes = pick(records, args.head_dim, args.min_gain, args.err_slack)
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"kernels.tuning.pick: {args.sweep}: {e}") from None
    for n in notes:
        print(f"[kernels.tuning.pick] {n}")
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(overrides, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"[kernels.tuning.pick] wrote {args.out}: {json.dumps(overrides)}")


if __name__ == "__main__":
    main()
