"""How well kindchat finds personal data in chat turns, per kind, and how fast.

    python bench/privacy.py                                  # tests/data/privacy_turns.jsonl
    python bench/privacy.py --corpus tests/data/privacy_heldout.jsonl --show

Each line of a corpus: `{"text": …, "pii": [{"kind": …, "value": …}]}` (`pii` empty for a
turn without personal data that looks close: dates, prices, order numbers, versions …). Per
kind (:data:`kindchat.feedback.privacy.KIND_NAMES`): the values labelled and the recall with
its 95% Wilson interval, the findings and their precision with its interval; then overall, and
the time of one `find` per turn. `--show` prints every miss and every wrong finding.
Targets (issue #27): recall ≥ 0.99 for phone, rrn, card, email; ≥ 0.9 for address and name;
precision ≥ 0.95 overall.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from kindchat.feedback.privacy import KIND_NAMES, KindScore, find, score_corpus
from kindchat.stats import proportion_cell as cell

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=DATA / "privacy_turns.jsonl")
    parser.add_argument("--show", action="store_true", help="print misses and wrong findings")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.corpus.read_text("utf-8").splitlines() if line]
    find("warm up 010-1234-5678")
    times = []
    for row in rows:
        start = time.perf_counter()
        find(row["text"])
        times.append((time.perf_counter() - start) * 1e6)
    scores = score_corpus(rows)
    with_pii = sum(1 for row in rows if row["pii"])
    console = Console()
    table = Table(
        title=f"{args.corpus.name}: {len(rows)} turns, {with_pii} with personal data, "
        f"{len(rows) - with_pii} without"
    )
    for column in ("kind", "labelled", "recall [95% CI]", "findings", "precision [95% CI]"):
        table.add_column(column)
    total = KindScore()
    for kind in KIND_NAMES:
        s = scores[kind]
        table.add_row(
            kind, str(s.labelled), cell(s.found, s.labelled), str(s.findings),
            cell(s.correct, s.findings),
        )  # fmt: skip
        total.labelled += s.labelled
        total.found += s.found
        total.findings += s.findings
        total.correct += s.correct
    table.add_row(
        "all", str(total.labelled), cell(total.found, total.labelled), str(total.findings),
        cell(total.correct, total.findings), style="bold",
    )  # fmt: skip
    console.print(table)
    console.print(
        f"find(): {statistics.mean(times):.0f} µs per turn (median "
        f"{statistics.median(times):.0f}, max {max(times):.0f})"
    )
    if args.show:
        for kind in KIND_NAMES:
            for miss in scores[kind].missed:
                console.print(f"[red]missed {kind}[/red] {miss}", highlight=False)
            for wrong in scores[kind].wrong:
                console.print(f"[yellow]wrong {kind}[/yellow] {wrong}", highlight=False)


if __name__ == "__main__":
    main()
