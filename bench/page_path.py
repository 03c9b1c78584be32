"""The page's door with its checks on against off: page events per second through Gradio's queue.

    python bench/page_path.py [--home var] [--pages 8] [--seconds 15] [--rounds 2]

Starts the product app (API + Gradio page) on 127.0.0.1 twice per round, in ABBA order (off,
on, on, off, …), on the micro models of `--home` (bootstrapped there when missing, ~30 s):
once with the page checks of `kindchat/ui/guard.py` (the session-hash binding in front of
Gradio, the cookie-against-state check and the API's rate limits in every handler) and once
without. `--pages` clients behave as browsers do: each opens the page (its signed cookie),
picks a session hash, and sends the history event through `/gradio_api/queue/join`, reading
its result from `/gradio_api/queue/data` (server-sent events), as fast as the server answers.
Limits are set high (the check runs, nobody is refused). Prints events/s per run and the ratio
on/off with its range over rounds.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kindchat.app import create_product_app  # noqa: E402
from kindchat.config import Settings  # noqa: E402


class Server:
    def __init__(self, app: Any, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def fn_index(url: str, name: str) -> int:
    config = httpx.get(f"{url}/config", timeout=30).json()
    for dep in config["dependencies"]:
        if dep.get("api_name") == name:
            return int(dep["id"])
    raise SystemExit(f"no event named {name!r} in the page's config")


def one_event(client: httpx.Client, index: int, session_hash: str) -> None:
    joined = client.post(
        "/gradio_api/queue/join",
        json={
            "data": [None],
            "event_data": None,
            "fn_index": index,
            "trigger_id": None,
            "session_hash": session_hash,
        },
    )
    joined.raise_for_status()
    event_id = joined.json()["event_id"]
    with client.stream("GET", f"/gradio_api/queue/data?session_hash={session_hash}") as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                if not message.get("success", True):
                    raise RuntimeError(f"the event failed: {message}")
                return


def page_client(url: str, index: int, deadline: float) -> int:
    done = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        client.get("/").raise_for_status()  # the page's signed cookie
        session_hash = secrets.token_hex(6)
        while time.monotonic() < deadline:
            one_event(client, index, session_hash)
            done += 1
    return done


def run(settings: Settings, checks: bool, pages: int, seconds: float, port: int) -> float:
    app = create_product_app(settings, page_checks=checks)
    with Server(app, port) as server:
        index = fn_index(server.url, "on_history")
        page_client(server.url, index, time.monotonic() + 1.0)  # warm up
        deadline = time.monotonic() + seconds
        start = time.monotonic()
        with ThreadPoolExecutor(pages) as pool:
            total = sum(pool.map(lambda _: page_client(server.url, index, deadline), range(pages)))
        return total / (time.monotonic() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=ROOT / "var" / "bench-page")
    parser.add_argument("--pages", type=int, default=8, help="Concurrent pages (clients).")
    parser.add_argument("--seconds", type=float, default=15.0, help="Load time per run.")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds of off/on.")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    settings = Settings(
        home=args.home,
        torch_threads=1,
        rate_limit_session="1000000/minute",
        rate_limit_address="1000000/minute",
        rate_limit_new_sessions="1000000/hour",
    )
    if not (settings.models_dir / "aliases.json").is_file():
        from kindchat.models.presets import get_preset
        from kindchat.retrain.bootstrap import run_bootstrap

        run_bootstrap(settings, get_preset("micro"))
    run(settings, False, args.pages, 3.0, args.port)  # a first, cold run: not counted
    rates: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.rounds):
        for checks in (False, True) if round_ % 2 == 0 else (True, False):
            rates[checks].append(run(settings, checks, args.pages, args.seconds, args.port))
    table = Table(title=f"page events/s, {args.pages} pages, {args.seconds:.0f} s a run")
    table.add_column("page checks")
    table.add_column("runs")
    table.add_column("events/s (mean)", justify="right")
    for checks in (False, True):
        table.add_row(
            "on" if checks else "off",
            ", ".join(f"{r:.1f}" for r in rates[checks]),
            f"{statistics.mean(rates[checks]):.1f}",
        )
    Console().print(table)
    ratios = [on / off for on, off in zip(rates[True], rates[False], strict=True)]
    print(
        f"ratio on/off: {statistics.mean(rates[True]) / statistics.mean(rates[False]):.3f} "
        f"(per round {min(ratios):.3f}–{max(ratios):.3f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
