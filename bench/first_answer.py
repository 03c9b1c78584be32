"""Fresh clone → first answer, in phases, as a new user meets kindchat.

    python bench/first_answer.py --runs 3                # uv, its cache warm (a second user)
    python bench/first_answer.py --runs 1 --cold         # uv with an empty cache
    python bench/first_answer.py --runs 1 --installer pip
    python bench/first_answer.py --runs 3 --rev 3ab5e73  # an older commit, for before/after

Each run: `git clone` this checkout (its HEAD, or --rev) into a temporary folder (with
`../shared` beside it, as CI has) and a fresh venv (the new user's Python: `venv`, timed apart,
as `scripts/run` installs into the Python it is given), then what `scripts/run` does, timed step
by step — install (`scripts/setup`), then `kindchat serve --background-preset tiny` until
`POST /v1/chat/completions` answers (asked as soon as `GET /healthz` stops saying `starting`,
watched every 0.1 s): the server starts while its child trains the micro base LM
and SFT. In brackets, from the child's state file, inside "serve → answer": when the server
had started the child and the child had imported what it trains with ("ready"), then the
seconds of the base and SFT stages. Prints one row per run and the median. Run by
hand on a quiet machine: it is a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table
from serve_load import free_port  # bench/ is the script's path

ROOT = Path(__file__).resolve().parent.parent


def one_run(
    installer: str, cold: bool, keep: bool, compile_bytecode: bool, rev: str | None
) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="kindchat-first-"))
    try:
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(work / "kindchat")], check=True)
        if rev is not None:
            subprocess.run(["git", "checkout", "--quiet", rev], cwd=work / "kindchat", check=True)
        (work / "shared").symlink_to((ROOT.parent / "shared").resolve())
        repo, venv = work / "kindchat", work / "venv"
        env = {
            **os.environ,
            "PYTHON": str(venv / "bin" / "python"),
            "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
            "KINDCHAT_INSTALLER": installer,
            "KINDCHAT_HOME": str(repo / "var"),
        }
        env.pop("VIRTUAL_ENV", None)
        # a user's Python writes .pyc at the first import (this machine's environment says not to)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        if compile_bytecode:
            env["KINDCHAT_COMPILE_BYTECODE"] = "1"
        if cold:
            env["UV_CACHE_DIR"] = str(work / "uv-cache")
        phases: dict[str, float] = {}
        mark = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        phases["venv"] = time.perf_counter() - mark
        start = time.perf_counter()  # scripts/run from here: setup, then serve
        subprocess.run(["scripts/setup"], cwd=repo, env=env, check=True)
        phases["install"] = time.perf_counter() - start
        mark, served_at = time.perf_counter(), time.time()
        port = free_port()
        server = subprocess.Popen(
            ["kindchat", "serve", "--port", str(port), "--background-preset",
             os.environ.get("KINDCHAT_PRESET", "tiny")],
            cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        # One client, one kept-alive connection. `httpx.get` makes a client (an SSL context) per
        # call: ~28 ms of CPU here, 10 times a second, taken from the child it was waiting for
        # (1.4 ms with one client).
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        try:
            body = {"model": "kindchat-rlhf", "messages": [{"role": "user", "content": "안녕"}]}
            limited = 0
            while True:
                # Watch /healthz (not rate-limited) every 0.1 s and ask once it is no longer
                # `starting`: asking the chat itself 10 times a second spends the address's
                # 120 chats a minute before the first model lands, and the 429s that follow
                # (Retry-After up to a minute) were timed as the wait for the first answer.
                try:
                    if client.get("/healthz").json()["status"] != "starting":
                        answer = client.post("/v1/chat/completions", json=body)
                        if answer.status_code == 200:
                            break
                        limited += answer.status_code == 429
                except httpx.HTTPError:
                    pass  # not listening yet
                if server.poll() is not None:
                    raise RuntimeError("kindchat serve exited before answering")
                time.sleep(0.1)
            if limited:
                raise RuntimeError(f"{limited} chats were rate-limited: the timing is not valid")
        finally:
            client.close()
            server.terminate()
            server.wait(30)
        phases["serve → answer"] = time.perf_counter() - mark
        phases["scripts/run"] = time.perf_counter() - start
        phases["+ venv"] = phases["scripts/run"] + phases["venv"]
        state = json.loads((repo / "var" / "bootstrap" / "micro.json").read_text())
        phases["(ready)"] = float(state["started_at"]) - served_at
        for stage in ("base", "sft"):  # inside serve → answer, beside the server's own start
            phases[f"({stage})"] = float(state["seconds"].get(stage, "nan"))
        return phases
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--installer", choices=("uv", "pip"), default="uv")
    parser.add_argument("--cold", action="store_true", help="uv with an empty cache")
    parser.add_argument(
        "--compile", action="store_true", help="KINDCHAT_COMPILE_BYTECODE=1: .pyc at install"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    parser.add_argument("--rev", help="clone this commit instead of HEAD")
    args = parser.parse_args()
    rows = [
        one_run(args.installer, args.cold, args.keep, args.compile, args.rev)
        for _ in range(args.runs)
    ]
    columns = list(rows[0])
    table = Table(
        title=f"fresh clone{' of ' + args.rev if args.rev else ''} → first answer "
        f"({args.installer}{', cold cache' if args.cold else ''}"
        f"{', .pyc at install' if args.compile else ''})"
    )
    for column in ("run", *columns):
        table.add_column(column, justify="right")
    for i, row in enumerate(rows, 1):
        table.add_row(str(i), *(f"{row[c]:.1f}" for c in columns))
    table.add_row("median", *(f"{statistics.median(r[c] for r in rows):.1f}" for c in columns))
    Console().print(table)


if __name__ == "__main__":
    main()
