"""How well the moderation lexicon reads Korean as people type it, and how fast.

    python bench/moderation.py
    python bench/moderation.py --lexicon my_lexicon.json --repeat 20
    python bench/moderation.py --corpus data/sft/conversation.jsonl --field instruction

Per category of `tests/data/moderation_variants.jsonl` (lines that must be flagged: spacing,
punctuation, digits, invisible characters, separate jamo, Latin-mode keystrokes, self-harm
intent and method, dangerous instructions): n, how many were flagged, the recall with its 95%
Wilson interval, and how many got the expected category. On
`tests/data/moderation_lookalikes.jsonl` (harmless lines that look close: 시발점, 수박 씨 발라
먹기, 자살률 통계, 폭탄주, 한남동 …): the false-positive rate with its interval, and each false
positive. Then the time of one `check` (µs per text: mean, median, p99) over both sets.
`--corpus` adds the share of real texts flagged (a JSON-lines file, `--field` of each row).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kindchat.stats import wilson

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


@dataclass(frozen=True)
class Rate:
    n: int
    hits: int

    @property
    def value(self) -> float:
        return self.hits / self.n if self.n else float("nan")

    def wilson(self, z: float = 1.96) -> tuple[float, float]:
        """The 95% Wilson score interval of hits / n."""
        return wilson(self.hits, self.n, z)

    def cell(self) -> str:
        low, high = self.wilson()
        return f"{self.value:.3f} [{low:.3f}, {high:.3f}]"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def time_checks(check: Any, texts: list[str], repeat: int) -> list[float]:
    """µs per check of each text, the best of `repeat` runs (least disturbed by other load)."""
    for text in texts:  # warm up: caches, compiled tables
        check(text)
    best = [math.inf] * len(texts)
    for _ in range(repeat):
        for i, text in enumerate(texts):
            started = time.perf_counter()
            check(text)
            best[i] = min(best[i], (time.perf_counter() - started) * 1e6)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--variants", type=Path, default=DATA / "moderation_variants.jsonl")
    parser.add_argument("--lookalikes", type=Path, default=DATA / "moderation_lookalikes.jsonl")
    parser.add_argument("--lexicon", type=Path, default=None, help="a lexicon instead of ours")
    parser.add_argument("--repeat", type=int, default=5, help="timing runs over both sets")
    parser.add_argument("--corpus", type=Path, action="append", default=[], help="JSON lines")
    parser.add_argument("--field", default="instruction", help="the text field of --corpus rows")
    parser.add_argument("--show", type=int, default=20, help="misses and false positives shown")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from kindchat.feedback.moderation import LexiconModerator, refusal

    console = Console(width=110)
    moderator = LexiconModerator.from_file(args.lexicon)
    variants = read_jsonl(args.variants)
    lookalikes = read_jsonl(args.lookalikes)

    flagged: dict[str, int] = defaultdict(int)
    right: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    misses: list[str] = []
    crisis_line = 0
    for row in variants:
        category = row["category"]
        verdict = moderator.check(row["text"])
        total[category] += 1
        flagged[category] += verdict.flagged
        right[category] += verdict.category == category
        if category == "self_harm":
            crisis_line += verdict.category == "self_harm" and "109" in refusal(verdict)
        if not verdict.flagged or verdict.category != category:
            misses.append(f"{row['text']!r}: {category} -> {verdict.category}")

    table = Table(title=f"moderation recall (lexicon version {moderator.version})")
    for column in ("category", "n", "flagged", "recall [95% Wilson]", "right category"):
        table.add_column(column, justify="left" if column == "category" else "right")
    for category in sorted(total, key=lambda c: -total[c]):
        rate = Rate(total[category], flagged[category])
        table.add_row(category, str(rate.n), str(rate.hits), rate.cell(), str(right[category]))
    overall = Rate(sum(total.values()), sum(flagged.values()))
    table.add_row(
        "all", str(overall.n), str(overall.hits), overall.cell(), str(sum(right.values()))
    )
    console.print(table)
    console.print(f"self-harm lines answered with the 109 line: {crisis_line}/{total['self_harm']}")
    for line in misses[: args.show]:
        console.print(f"  missed or miscategorised: {line}")

    false_positives = [
        (row["text"], verdict)
        for row in lookalikes
        if (verdict := moderator.check(row["text"])).flagged
    ]
    fp = Rate(len(lookalikes), len(false_positives))
    table = Table(title="false positives on look-alikes")
    for column in ("set", "n", "flagged", "FP rate [95% Wilson]"):
        table.add_column(column, justify="left" if column == "set" else "right")
    table.add_row(args.lookalikes.name, str(fp.n), str(fp.hits), fp.cell())
    for path in args.corpus:
        texts = [str(r[args.field]) for r in read_jsonl(path) if r.get(args.field)]
        rate = Rate(len(texts), sum(moderator.check(text).flagged for text in texts))
        table.add_row(f"corpus {path.name}:{args.field}", str(rate.n), str(rate.hits), rate.cell())
    console.print(table)
    for text, verdict in false_positives[: args.show]:
        console.print(f"  false positive: {text!r} -> {verdict.category} ({verdict.evidence!r})")

    texts = [row["text"] for row in variants + lookalikes]
    micros = sorted(time_checks(moderator.check, texts, max(1, args.repeat)))
    table = Table(title=f"check time, µs per text ({len(texts)} texts, best of {args.repeat})")
    for column in ("mean", "median", "p99", "max"):
        table.add_column(column, justify="right")
    p99 = micros[min(len(micros) - 1, math.ceil(0.99 * len(micros)) - 1)]
    table.add_row(
        f"{statistics.fmean(micros):.1f}",
        f"{statistics.median(micros):.1f}",
        f"{p99:.1f}",
        f"{micros[-1]:.1f}",
    )
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
