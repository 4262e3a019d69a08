"""How the shipped rules fare on the rule corpus (tests/fixtures/corpus), part by part.

For each part (tuning/, whose every line the unit tests assert, and heldout/, whose
sources the rules were never adjusted to) prints, kind by kind, how many lines the rules
recognise (a failure: some anomaly rule and no checkpoint rule; a checkpoint save: some
checkpoint rule and no anomaly; a throughput report: exactly one reading of the right
value and direction; a benign line: no anomaly and no checkpoint), how many of those
have the exact details too (the failure's category as root cause, the save's stage), the
failure categories one by one, the benign lines flagged (false positives), and the
lines missed.

Usage: python bench/corpus_report.py [--part heldout|tuning|all] [--rules DIR ...] [--markdown]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ajr_agent.detect.rules import RuleSet, default_rules_dir
from tests.unit.corpus import PARTS, Entry, Figures, Kind, figures, load, see

BARS = {Kind.FAILURE: 0.95, Kind.CHECKPOINT: 0.90, Kind.THROUGHPUT: 0.90, Kind.BENIGN: 1.0}


def percent(n: int, total: int) -> str:
    return f"{100 * n / total:.1f} %" if total else "-"


def kind_rows(fig: Figures) -> list[tuple[str, ...]]:
    rows = []
    for kind in Kind:
        total, good, exact = fig.total[kind], fig.recognised[kind], fig.exact[kind]
        flagged = total - good if kind is Kind.BENIGN else 0
        rows.append((kind.value, str(total), f"{good} ({percent(good, total)})", f"{exact} ({percent(exact, total)})",
                     str(flagged) if kind is Kind.BENIGN else "", f"{BARS[kind]:.0%}"))  # fmt: skip
    return rows


def show(rules: RuleSet, part: str, entries: list[Entry], markdown: bool) -> None:
    fig = figures(rules, entries)
    print(f"\n{part}: {len(entries)} lines from {len({e.source_key for e in entries})} sources")
    head = ("kind", "lines", "recognised", "exact", "benign flagged", "bar")
    rows = kind_rows(fig)
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        for row in [head, *rows]:
            print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
    print("  failures by category: " + ", ".join(f"{c} {n}/{t}" for c, (n, t) in fig.by_category.items()))
    for entry in fig.misses:
        seen = see(rules, entry.text)
        got = [m.rule.name for m in seen.anomalies + seen.checkpoints] + [
            f"{m.rule.name}={m.value}" for m in seen.readings
        ]
        print(f"  missed {entry.kind.value} ({entry.expect}): {entry.text[:150]!r}")
        print(f"      source {entry.source}; matched {got or 'nothing'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="heldout")
    parser.add_argument("--rules", type=Path, action="append", help="rule directories (default: the shipped rules)")
    parser.add_argument("--markdown", action="store_true", help="the per-kind table as Markdown")
    args = parser.parse_args()
    rules = RuleSet.load(args.rules or [default_rules_dir()])
    print(f"{len(rules.rules)} rules")
    for part in PARTS if args.part == "all" else (args.part,):
        show(rules, part, load(part), args.markdown)


if __name__ == "__main__":
    main()
