"""Fixtures: a migrated SQLite file per test, and a real OpenAI-compatible HTTP server.

`openai_server` listens on a free port of 127.0.0.1 and answers `POST /v1/chat/completions`
from a script: markers in the last user message choose the behaviour, e.g. `[[5xx-twice]]`
(503, 503, then success), `[[5xx]]` (always 500), `[[429-once]]`, `[[slow-once]]` (a reply
slower than the client's timeout, then a fast one), `[[malformed-once]]`, `[[malformed]]`, and
for judge prompts `[[numbered]]`, `[[fenced]]`, `[[tie]]`, `[[low]]`, `[[second]]`. The fake
judge scores the answers, not their places: the longer one wins (see `judge_reply`), so both
orders of a pair agree; `server.judge_script(score)` scores with another rule, e.g. one that
prefers whatever is shown first. Self-Instruct requests are answered from
`server.instruction_batches`; anything else gets `답변: <text>`. Tests may replace
`server.script` with their own `(text, n) -> Reply`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from kindchat.config import Settings
from kindchat.feedback.db import init_db
from kindchat.feedback.judge import CRITERIA, TRUTHFULNESS
from kindchat.feedback.llm import ChatClient, EndpointConfig


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def fb_settings(tmp_path: Path, data_dir: Path, request: pytest.FixtureRequest) -> Settings:
    """Settings with an empty home and an empty database: every store test runs on SQLite (the
    file lives in the home) and on a real PostgreSQL server."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    return Settings(home=tmp_path / "home", data_dir=data_dir, db_url=url)


@pytest.fixture
def engine(fb_settings: Settings) -> Iterator[Engine]:
    eng = init_db(fb_settings)
    yield eng
    eng.dispose()


@pytest.fixture
def db(engine: Engine) -> Iterator[Session]:
    with Session(engine) as session:
        yield session


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAI]:
    server = FakeOpenAI()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@dataclass
class Reply:
    content: str = ""
    status: int = 200
    delay: float = 0.0


_SHOWN = re.compile(r"\[응답 1\]\n(.*?)\n\n\[응답 2\]\n(.*?)\n\n다른 설명", re.DOTALL)


def shown_answers(text: str) -> tuple[str, str]:
    """The two answers of a G-Eval prompt, in the order shown."""
    found = _SHOWN.search(text)
    assert found is not None, f"not a judge prompt: {text[:80]!r}"
    return found.group(1), found.group(2)


def judge_reply(text: str, score: Callable[[str, int], int] | None = None) -> str:
    """Scores for a judge prompt, every criterion alike. `score(answer, shown)` (shown: 1 or 2)
    gives an answer's score; by default the longer answer gets 5 and the shorter 3 wherever
    they stand (equal lengths or `[[tie]]`: 4 and 4; `[[low]]`: 3 and 2; `[[second]]`: the
    shorter is better, 4 against 2)."""
    names = [*CRITERIA, TRUTHFULNESS[0]] if TRUTHFULNESS[0] in text else list(CRITERIA)
    answers = shown_answers(text)
    if score is not None:
        first, second = score(answers[0], 1), score(answers[1], 2)
    elif "[[tie]]" in text or len(answers[0]) == len(answers[1]):
        first = second = 4
    else:
        better, worse = (3, 2) if "[[low]]" in text else (4, 2) if "[[second]]" in text else (5, 3)
        first_is_better = (len(answers[0]) > len(answers[1])) != ("[[second]]" in text)
        first, second = (better, worse) if first_is_better else (worse, better)
    if "[[numbered]]" in text:
        lines = [f"{i}. {n}: {first}" for i, n in enumerate(names, 1)]
        lines += [f"{i}. {n}: {second}점" for i, n in enumerate(names, 1)]
        return "평가 결과입니다.\n" + "\n".join(lines)
    data = {"응답1": dict.fromkeys(names, first), "응답2": dict.fromkeys(names, second)}
    body = json.dumps(data, ensure_ascii=False)
    return f"```json\n{body}\n```" if "[[fenced]]" in text else body


class FakeOpenAI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.seen: Counter[str] = Counter()
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.instruction_batches: list[str] = []
        self.script: Callable[[str, int], Reply] = self.default_script

    @staticmethod
    def reply(content: str = "", status: int = 200, delay: float = 0.0) -> Reply:
        return Reply(content, status, delay)

    shown_answers = staticmethod(shown_answers)

    @staticmethod
    def judge_script(score: Callable[[str, int], int]) -> Callable[[str, int], Reply]:
        """A script whose judge scores each answer by `score(answer, shown)`."""
        return lambda text, n: Reply(content=judge_reply(text, score))

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def default_script(self, text: str, n: int) -> Reply:
        if "[[5xx-twice]]" in text and n <= 2:
            return Reply(status=503)
        if "[[5xx]]" in text:
            return Reply(status=500)
        if "[[429-once]]" in text and n == 1:
            return Reply(status=429)
        if "[[slow-once]]" in text and n == 1:
            return Reply(content="너무 늦은 답", delay=1.5)
        if "[[malformed]]" in text or ("[[malformed-once]]" in text and n == 1):
            return Reply(content="두 응답 모두 괜찮아 보입니다.")
        if "평가 기준" in text:
            return Reply(content=judge_reply(text), delay=0.05)
        if "새로운 과제" in text:
            with self.lock:
                batch = self.instruction_batches.pop(0) if self.instruction_batches else ""
            return Reply(content=batch)
        return Reply(content=f"답변: {text}")

    def handle_chat(self, body: dict[str, Any]) -> Reply:
        text = body["messages"][-1]["content"]
        with self.lock:
            self.seen[text] += 1
            n = self.seen[text]
            self.requests.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            reply = self.script(text, n)
            if reply.delay:
                time.sleep(reply.delay)
            return reply
        finally:
            with self.lock:
                self.in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (quiet)
        pass

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("content-length", 0))
        body = json.loads(self.rfile.read(length))
        if not self.path.endswith("/chat/completions"):
            self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            return
        reply = self.server.handle_chat(body)
        if reply.status != 200:
            error = {"message": f"scripted {reply.status}", "type": "server_error"}
            self._send(reply.status, {"error": error})
            return
        self._send(
            200,
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "test"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            if status == 429:
                self.send_header("retry-after", "0")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass


@pytest.fixture
def make_client() -> Callable[..., ChatClient]:
    """`make_client(base_url, **EndpointConfig overrides)`: fast retries for tests."""
    return _make_client


def _make_client(base_url: str, **overrides: Any) -> ChatClient:
    values: dict[str, Any] = {
        "model": "judge-test",
        "base_url": base_url,
        "api_key": "test-key",
        "timeout_s": 5.0,
        "max_retries": 3,
        "backoff_s": 0.01,
        "backoff_max_s": 0.05,
    }
    values.update(overrides)
    return ChatClient(EndpointConfig(**values))
