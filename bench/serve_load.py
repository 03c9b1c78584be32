"""Load test of `kindchat serve`: concurrent streaming clients, batching vs one at a time.

Starts the real HTTP server (uvicorn, in a subprocess) twice on the same registry: once with
continuous batching (`max_batch_size` = clients) and once generating one request at a time
(`max_batch_size` = 1, the others wait in the queue). Each of `--clients` clients streams
`--requests` answers of exactly `--max-tokens` tokens (`min_tokens` = `max_tokens`, so both runs
do the same work). Prints aggregate completion tokens/s and time to first token p50/p95.

    python bench/serve_load.py --home /tmp/kc_tiny --alias sft
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

logger = logging.getLogger("bench.serve_load")

SERVER = """
import sys, uvicorn
from kindchat.config import Settings
from kindchat.serve.app import create_app
home, alias = sys.argv[1], sys.argv[2]
batch, port, threads = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
settings = Settings(home=home, serve_aliases=[alias], max_batch_size=batch, max_queue=1024,
                    alias_poll_s=0, torch_threads=threads, log_level="WARNING")
uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
"""

PROMPTS = [
    "안녕하세요, 오늘 기분이 어때요?",
    "한국의 수도는 어디인가요?",
    "친구에게 생일 축하 메시지를 써 주세요.",
    "건강하게 사는 방법을 알려 주세요.",
]


@dataclass
class RunResult:
    mode: str
    batch_size: int
    requests: int
    tokens: int
    seconds: float
    ttft: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def ttft_pct(self, q: float) -> float:
        ordered = sorted(self.ttft)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def stream_one(
    client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int, seed: int
) -> tuple[float, int]:
    """(time to first token, completion tokens) of one streamed answer."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "temperature": 0.7,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (first if first is not None else time.perf_counter() - start), tokens


async def load(
    url: str, model: str, clients: int, requests: int, max_tokens: int
) -> tuple[int, float, list[float]]:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await stream_one(client, model, PROMPTS[0], 8, 0)  # warm-up

        async def user(index: int) -> list[tuple[float, int]]:
            return [
                await stream_one(
                    client, model, PROMPTS[(index + r) % len(PROMPTS)], max_tokens, index * 100 + r
                )
                for r in range(requests)
            ]

        start = time.perf_counter()
        results = await asyncio.gather(*(user(i) for i in range(clients)))
        seconds = time.perf_counter() - start
    flat = [item for per_user in results for item in per_user]
    return sum(t for _, t in flat), seconds, [ttft for ttft, _ in flat]


def run_mode(home: Path, alias: str, mode: str, batch: int, args: argparse.Namespace) -> RunResult:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(home), alias, str(batch), str(port), str(args.threads)]
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {mode} server did not start")
            time.sleep(0.2)
        logger.info("%s: %d clients x %d requests", mode, args.clients, args.requests)
        tokens, seconds, ttft = asyncio.run(
            load(url, f"kindchat-{alias}", args.clients, args.requests, args.max_tokens)
        )
    finally:
        server.terminate()
        server.wait(30)
    return RunResult(mode, batch, args.clients * args.requests, tokens, seconds, ttft)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("KINDCHAT_HOME", "var")))
    parser.add_argument("--alias", default="sft")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2, help="Answers per client.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads of the server (both runs)."
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    runs = [
        run_mode(args.home, args.alias, "batching", args.clients, args),
        run_mode(args.home, args.alias, "one at a time", 1, args),
    ]
    table = Table(
        title=f"{args.clients} streaming clients x {args.requests} answers x {args.max_tokens} "
        f"tokens ({args.home}, alias {args.alias}, {args.threads} torch thread(s))"
    )
    for column in (
        "mode",
        "max batch",
        "answers",
        "tokens",
        "seconds",
        "tokens/s",
        "TTFT p50 s",
        "TTFT p95 s",
    ):
        table.add_column(column, justify="right")
    for run in runs:
        table.add_row(
            run.mode,
            str(run.batch_size),
            str(run.requests),
            str(run.tokens),
            f"{run.seconds:.1f}",
            f"{run.tokens_per_s:.0f}",
            f"{statistics.median(run.ttft):.3f}",
            f"{run.ttft_pct(0.95):.3f}",
        )
    console = Console(width=120)
    console.print(table)
    console.print(f"batching speed-up: {runs[0].tokens_per_s / runs[1].tokens_per_s:.1f}x tokens/s")


if __name__ == "__main__":
    main()
