"""Kernel launch configs from a sweep: per pass, the fastest variant that is as accurate.

    python -m bench.attention --sweep <variants> --out sweep.json     # on the GPU
    python -m bench.pick_configs sweep.json --out tuned.json
    L2A_KERNEL_CONFIGS=tuned.json python -m bench.attention            # uses them

For each pass (fwd, dq, dkdv) the candidates are the variants that change that pass
(bench.attention.parse_variant) and ran without error, with every recorded error against
the fp32 reference at most `--err-slack` times the default's (plus 1e-3). The fastest
replaces the default only if it is at least `--min-gain` faster (timings of one config
spread by about 5% between runs). Writes the `L2A_KERNEL_CONFIGS` format of
kernels/flash/config.py, and prints why each pass got its config.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.attention import parse_variant

PASSES = ("fwd", "dq", "dkdv")
ERRS = ("err_out", "err_dq", "err_dk", "err_dv")


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

    for p in PASSES:
        key = f"{p}_ms"
        cands = []
        for spec, r in by_spec.items():
            if spec == "default" or "error" in r:
                continue
            changes = parse_variant(spec).get(p)
            if changes is None:
                continue
            if not accurate(r):
                notes.append(f"{p}: {spec} rejected: errors {[r.get(e) for e in ERRS]}")
                continue
            cands.append((r[key], spec, changes))
        if not cands:
            notes.append(f"{p}: no candidate; default kept ({base[key]} ms)")
            continue
        ms, spec, changes = min(cands, key=lambda c: c[0])
        if ms <= (1.0 - min_gain) * base[key]:
            overrides[f"{p}/{head_dim}"] = changes
            notes.append(f"{p}: {spec} {ms} ms vs default {base[key]} ms")
        else:
            notes.append(f"{p}: default kept ({base[key]} ms; best {spec} {ms} ms)")
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
        raise SystemExit(f"bench.pick_configs: {args.sweep}: {e}") from None
    for n in notes:
        print(f"[pick_configs] {n}")
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(overrides, indent=1) + "\n")
    tmp.replace(args.out)
    print(f"[pick_configs] wrote {args.out}: {json.dumps(overrides)}")


if __name__ == "__main__":
    main()
