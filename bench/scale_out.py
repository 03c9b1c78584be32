"""Two kindchat servers, one database, one of them killed with SIGKILL under 8 feedback clients;
rate limits on against off.

    python bench/scale_out.py [--seconds 20] [--rounds 2]

Runs the scale-out durability test (`tests/serve/test_scale_out.py`) for longer, on SQLite (two
servers, one host) and on PostgreSQL (two hosts' homes, one database; needs the PostgreSQL 15
server binaries), with the rate limits on (each client one honest person behind the trusted
proxy, under its own limits) and off, in ABBA order (off, on, on, off, …) so that drift cancels.
Prints acknowledged writes, those present afterwards, the lost ones, acknowledged writes/s
through HTTP, and the ratio on/off with its range over rounds. The test's own assertions hold
here too: nothing acknowledged is lost, and the surviving server never fails a request.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/serve/test_scale_out.py::test_kill_9_of_one_of_two_servers_under_feedback_load"
DATABASES = ("sqlite", "postgresql")


def run(seconds: float, limits: str) -> dict[str, dict[str, float]]:
    env = {
        **os.environ,
        "KINDCHAT_SCALE_OUT_SECONDS": str(seconds),
        "KINDCHAT_SCALE_OUT_LIMITS": limits,
    }
    for database in DATABASES:  # no figures from an earlier run
        (ROOT / "test-artifacts" / f"scale_out-{database}-limits-{limits}.json").unlink(
            missing_ok=True
        )
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST], cwd=ROOT, env=env
    )
    out = {}
    for database in DATABASES:
        path = ROOT / "test-artifacts" / f"scale_out-{database}-limits-{limits}.json"
        if path.is_file():
            out[database] = json.loads(path.read_text(encoding="utf-8"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="Least load time per run (each half also waits for its writes).",
    )
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds of off/on.")
    args = parser.parse_args()
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for round_ in range(args.rounds):
        order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
        for limits in order:
            for database, figures in run(args.seconds, limits).items():
                results.setdefault((database, limits), []).append(figures)
    table = Table(
        title=f"kill -9 of one of two servers, 8 clients, {args.seconds:g} s, "
        f"{args.rounds} round(s) per setting"
    )
    for column in (
        "database",
        "rate limits",
        "acknowledged",
        "present",
        "lost",
        "acked writes/s",
        "survivor failures",
        "on / off",
    ):
        table.add_column(column, justify="right")
    failed = False
    for database in DATABASES:
        off = [f["writes_per_s"] for f in results.get((database, "off"), [])]
        on = [f["writes_per_s"] for f in results.get((database, "on"), [])]
        for limits in ("off", "on"):
            runs = results.get((database, limits), [])
            if not runs:
                table.add_row(database, limits, "-", "-", "-", "-", "-", "-")
                failed = True
                continue
            ratio = ""
            if limits == "on" and off and on:
                pairs = [a / b for a, b in zip(on, off, strict=False)]
                ratio = f"{statistics.mean(on) / statistics.mean(off):.3f}"
                if len(pairs) > 1:
                    ratio += f" [{min(pairs):.3f}, {max(pairs):.3f}]"
            rates = [f["writes_per_s"] for f in runs]
            table.add_row(
                database,
                limits,
                " / ".join(str(f["acknowledged"]) for f in runs),
                " / ".join(str(f["present"]) for f in runs),
                " / ".join(str(f["lost"]) for f in runs),
                f"{statistics.mean(rates):.0f} ({', '.join(f'{r:.0f}' for r in rates)})",
                " / ".join(str(f["survivor_failures"]) for f in runs),
                ratio,
            )
    Console().print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
