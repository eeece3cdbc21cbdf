"""Human-readable statistics of prepared data."""

from __future__ import annotations


def _si(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}" if float(n).is_integer() else f"{n:.3g}"


def format_stats(stats: dict) -> str:
    seq_len = stats["seq_len"]
    lines = []
    p = stats["packing"]
    lines.append(
        f"documents {p['documents']:,} ({_si(p['document_tokens'])} tokens) -> "
        f"{p['sequences']:,} sequences x {seq_len:,} tokens; "
        f"padding {100 * p['padding_fraction']:.2f}%; "
        f"{p['segments'] / max(1, p['sequences']):.2f} segments/sequence; "
        f"strategy {stats['strategy']}"
    )
    lines.append(
        f"long documents ({stats['long_doc_policy']}): split {p['split_documents']:,}, "
        f"truncated {p['truncated_documents']:,} (-{_si(p['truncated_tokens'])} tokens), "
        f"dropped {p['dropped_documents']:,} (-{_si(p['dropped_tokens'])} tokens)"
        + (
            f", lone EOS remainders dropped {p['dropped_remainders']:,}"
            if p.get("dropped_remainders")
            else ""
        )
    )
    bad = stats["bad_records"]
    if bad["count"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(bad["reasons"].items()))
        lines.append(
            f"bad records skipped: {bad['count']} of at most {bad['limit']} ({reasons}); "
            f"first: {bad['first'][0]}"
        )
    else:
        lines.append("bad records: 0")
    header = (
        f"  {'source':<20} {'read':>9} {'bad':>6} {'docs':>9} {'draws':>9} "
        f"{'tokens':>9} {'share':>7} {'target':>7}"
    )
    lines.append(header)
    total = max(1, sum(s["tokens_packed"] for s in stats["sources"]))
    for s in stats["sources"]:
        lines.append(
            f"  {s['name']:<20} {s['rows_read']:>9,} {s['bad_records']:>6,} "
            f"{s['docs_available']:>9,} {s['draws']:>9,} {_si(s['tokens_packed']):>9} "
            f"{100 * s['tokens_packed'] / total:>6.1f}% {100 * s['share']:>6.1f}%"
        )
    lines.append("  document length (tokens incl. EOS)     docs   tokens")
    edges = p["histogram_edges"]
    top = max(1, max(p["histogram_tokens"]))
    labels = [f"<= {e:,}" for e in edges] + [f"> {seq_len:,}"]
    for label, n_docs, n_tok in zip(labels, p["histogram"], p["histogram_tokens"]):
        if n_docs == 0:
            continue
        bar = "#" * max(1, round(24 * n_tok / top))
        lines.append(f"  {label:>12} {bar:<24} {n_docs:>8,} {_si(n_tok):>8}")
    return "\n".join(lines)
