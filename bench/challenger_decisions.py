"""When a challenger is decided, and how often wrongly: the fixed rule vs the sequential one.

    python bench/challenger_decisions.py                 # 1,000 challenges per scenario
    python bench/challenger_decisions.py --challenges 4000 --max-votes 800

Each simulated challenge draws votes one at a time (win 1, loss 0, tie ½) until a rule decides
or the deadline (`--max-votes` counted votes) passes; the rule is checked after every vote, as
the server does. Rules:

* `fixed` (before): from `--fixed-min` (200) votes on, the 95% interval of the win rate (normal
  approximation of the percentile bootstrap the server uses) lying above ½ promotes, below ½
  retires — checked again after every vote, so its error grows with the looks;
* `sequential` (now, :func:`kindchat.stats.betting_test`): from `--min-votes` (40) on, a
  capital that crossed 2/α promotes or retires once the interval agrees (on the server the
  interval resamples origins, so one origin's burst of votes cannot carry the test alone).

At the deadline both fall back to the fixed interval (promote only if above ½, else retire).
Wrong: retiring a better challenger, promoting an equal or a worse one. The quorum of sessions
and origins is taken as met (both rules keep it). Votes are independent here; in the arena
one person's votes are capped (5 per session, 20 per origin) but not independent.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from kindchat.stats import betting_test, proportion_cell

# name, P(win), P(loss), P(tie): mean = win + tie/2
SCENARIOS = (
    ("clearly worse (0.30)", 0.25, 0.65, 0.10),
    ("worse (0.40)", 0.35, 0.55, 0.10),
    ("equal (0.50)", 0.45, 0.45, 0.10),
    ("better (0.60)", 0.55, 0.35, 0.10),
    ("clearly better (0.80)", 0.75, 0.15, 0.10),
)


@dataclass
class Outcome:
    action: str  # promote | retire
    votes: int


def interval(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = statistics.pstdev(values) if n > 1 else 0.5
    half = 1.96 * sd / math.sqrt(n)
    return mean - half, mean + half


def at_deadline(values: list[float]) -> Outcome:
    low, _ = interval(values)
    return Outcome("promote" if low > 0.5 else "retire", len(values))


def fixed_rule(values: list[float], start: int) -> Outcome:
    n = len(values)
    total = sum(values[:start])
    squares = sum(v * v for v in values[:start])
    for t in range(start, n + 1):
        if t > start:
            total += values[t - 1]
            squares += values[t - 1] ** 2
        mean = total / t
        sd = math.sqrt(max(squares / t - mean * mean, 0.0))
        half = 1.96 * sd / math.sqrt(t)
        if mean - half > 0.5:
            return Outcome("promote", t)
        if mean + half < 0.5:
            return Outcome("retire", t)
    return at_deadline(values)


def sequential_rule(values: list[float], start: int, alpha: float) -> Outcome:
    """The server's rule: the betting test's crossing, confirmed by the interval (which there
    resamples origins; here every vote is its own origin)."""
    test = betting_test(values, alpha=alpha)
    crossings = [at for at in (test.up_at, test.down_at) if at]
    if crossings:
        first = max(min(crossings), start)
        total = sum(values[:first])
        squares = sum(v * v for v in values[:first])
        for t in range(first, len(values) + 1):
            if t > first:
                total += values[t - 1]
                squares += values[t - 1] ** 2
            mean = total / t
            half = 1.96 * math.sqrt(max(squares / t - mean * mean, 0.0)) / math.sqrt(t)
            if test.up_at and test.up_at <= t and mean - half > 0.5:
                return Outcome("promote", t)
            if test.down_at and test.down_at <= t and mean + half < 0.5:
                return Outcome("retire", t)
    return at_deadline(values)


def wrong(truth: float, action: str) -> bool:
    return action == "retire" if truth > 0.5 else action == "promote"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--challenges", type=int, default=1000)
    parser.add_argument("--max-votes", type=int, default=600, help="votes by the deadline")
    parser.add_argument("--fixed-min", type=int, default=200, help="the fixed rule's votes")
    parser.add_argument("--min-votes", type=int, default=40, help="the sequential rule's floor")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    table = Table(
        title=f"{args.challenges} challenges per scenario, deadline at {args.max_votes} votes"
    )
    for column in ("challenger", "rule", "promoted", "wrong [95% CI]", "median votes", "p90"):
        table.add_column(column)
    for name, win, loss, tie in SCENARIOS:
        truth = win + tie / 2
        rng = random.Random(args.seed)
        runs = []
        for _ in range(args.challenges):
            values = rng.choices([1.0, 0.0, 0.5], weights=[win, loss, tie], k=args.max_votes)
            runs.append(
                (
                    fixed_rule(values, args.fixed_min),
                    sequential_rule(values, args.min_votes, args.alpha),
                )
            )
        for i, rule in enumerate(("fixed (before)", "sequential (now)")):
            outcomes = [run[i] for run in runs]
            votes = sorted(o.votes for o in outcomes)
            table.add_row(
                name,
                rule,
                f"{sum(o.action == 'promote' for o in outcomes) / len(outcomes):.3f}",
                proportion_cell(sum(wrong(truth, o.action) for o in outcomes), len(outcomes)),
                str(int(statistics.median(votes))),
                str(votes[int(0.9 * (len(votes) - 1))]),
            )
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
