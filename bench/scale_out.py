"""Two kindchat servers, one database, one of them killed with SIGKILL under 8 feedback clients.

    python bench/scale_out.py [--seconds 20]

Runs the scale-out durability test (`tests/serve/test_scale_out.py`) for longer, on SQLite (two
servers, one host) and on PostgreSQL (two hosts' homes, one database; needs the PostgreSQL 15
server binaries), then prints acknowledged writes, those present afterwards, the lost ones, and
acknowledged writes/s through HTTP. The test's own assertions hold here too: nothing
acknowledged is lost, and the surviving server never fails a request.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
TEST = "tests/serve/test_scale_out.py::test_kill_9_of_one_of_two_servers_under_feedback_load"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="Load time per database.")
    args = parser.parse_args()
    env = {**os.environ, "KINDCHAT_SCALE_OUT_SECONDS": str(args.seconds)}
    for database in ("sqlite", "postgresql"):  # no figures from an earlier run
        (ROOT / "test-artifacts" / f"scale_out-{database}.json").unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST], cwd=ROOT, env=env
    )
    table = Table(title=f"kill -9 of one of two servers, 8 clients, {args.seconds:g} s")
    for column in (
        "database",
        "acknowledged",
        "present",
        "lost",
        "acked writes/s",
        "survivor failures",
    ):
        table.add_column(column, justify="right")
    for database in ("sqlite", "postgresql"):
        path = ROOT / "test-artifacts" / f"scale_out-{database}.json"
        if not path.is_file():
            table.add_row(database, "-", "-", "-", "-", "-")
            continue
        f = json.loads(path.read_text(encoding="utf-8"))
        table.add_row(
            database,
            str(f["acknowledged"]),
            str(f["present"]),
            str(f["lost"]),
            f"{f['writes_per_s']:.0f}",
            str(f["survivor_failures"]),
        )
    Console().print(table)
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
