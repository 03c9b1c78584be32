"""A full queue answers 429 with Retry-After; a client that goes away stops its generation."""

from __future__ import annotations

import json
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

LONG = {
    "model": "kindchat-sft",
    "messages": [{"role": "user", "content": "안녕하세요"}],
    "max_tokens": 200,
    "min_tokens": 200,
}


def generated_tokens(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(
        float(m) for m in re.findall(r"^kindchat_tokens_generated_total\{.*\} (\S+)$", text, re.M)
    )


def wait_idle(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while (health := httpx.get(f"{url}/healthz").json())["running"] or health["queued"]:
        assert time.monotonic() < deadline, f"generation did not stop: {health}"
        time.sleep(0.02)


def test_full_queue_answers_429_with_retry_after(serve: Any) -> None:
    """One sequence at a time and no waiting room: concurrent requests beyond it get 429."""
    with serve(max_batch_size=1, max_queue=0, retry_after_s=3) as api:
        with ThreadPoolExecutor(8) as pool:
            responses = list(
                pool.map(
                    lambda _: httpx.post(f"{api.url}/v1/chat/completions", json=LONG, timeout=60),
                    range(8),
                )
            )
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 429} and statuses.count(200) >= 1, statuses
        busy = next(r for r in responses if r.status_code == 429)
        assert busy.headers["Retry-After"] == "3"
        assert busy.json()["error"]["type"] == "rate_limit_error"
        assert "retry" in busy.json()["error"]["message"]
        wait_idle(api.url)
        after = httpx.post(
            f"{api.url}/v1/chat/completions", json={**LONG, "max_tokens": 3}, timeout=60
        )
        assert after.status_code == 200


def test_disconnect_stops_generation(serve: Any) -> None:
    with serve() as api:
        with httpx.stream(
            "POST",
            f"{api.url}/v1/chat/completions",
            json={**LONG, "max_tokens": 250, "min_tokens": 250, "stream": True},
            timeout=60,
        ) as stream:
            lines = stream.iter_lines()
            for _ in range(6):
                next(lines)
        # the client closed the connection after a few tokens
        wait_idle(api.url)
        streamed = generated_tokens(api.url)
        assert 0 < streamed < 50, streamed  # stopped within a few steps of the disconnect

        # A non-streaming client that hangs up once its answer is being generated.
        body = json.dumps({**LONG, "max_tokens": 250, "min_tokens": 250}).encode()
        with socket.create_connection(("127.0.0.1", api.port)) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            deadline = time.monotonic() + 10
            while not httpx.get(f"{api.url}/healthz").json()["running"]:
                assert time.monotonic() < deadline, "generation never started"
        wait_idle(api.url)
        hung_up = generated_tokens(api.url) - streamed
        assert hung_up < 100, hung_up  # not run on to the 128-token cap
