"""Real servers on 127.0.0.1: the kindchat app under uvicorn in a thread, per test."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from kindchat.config import Settings
from kindchat.serve.app import create_app
from tests.helpers import free_port


class ServerThread:
    """uvicorn serving `app` on a free port in a daemon thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="on",
            proxy_headers=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server failed to start; see the log above")
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start in 120 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(60)


ServeFactory = Callable[..., Any]


@contextmanager
def serving(base: Settings, loader: Any = None, **overrides: Any) -> Iterator[ServerThread]:
    """The app on `base` (plus `overrides`) under uvicorn on a free port; `server.settings` is
    the configuration it runs with. Module-scoped fixtures use it to share one server."""
    port = free_port()
    configured = Settings.model_validate(
        # rate limits off unless a test turns them on (tests/serve/test_security.py)
        {
            **base.model_dump(),
            "alias_poll_s": 0.2,
            "rate_limits": False,
            "port": port,  # share links name the server the test talks to
            **overrides,
        }
    )
    with ServerThread(create_app(configured, loader=loader), port) as server:
        server.settings = configured  # type: ignore[attr-defined]
        yield server


@pytest.fixture
def serve(request: pytest.FixtureRequest) -> Iterator[ServeFactory]:
    """`with serve(**settings_overrides) as server:` starts the app (default: on a private copy
    of the micro registry)."""

    def start(settings: Settings | None = None, loader: Any = None, **overrides: Any) -> Any:
        return serving(settings or request.getfixturevalue("micro_copy"), loader, **overrides)

    yield start


class ServerProcess:
    """`python -m kindchat serve` in its own process (so that it can be killed with SIGKILL),
    configured through the environment as an operator would; its log in `log_path`."""

    def __init__(
        self, settings: Settings, log_path: Path, launcher: Path | None = None, **env: str
    ) -> None:
        self.launcher = launcher  # a script run instead of `-m kindchat` (it calls the CLI)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = settings
        self.log_path = log_path
        self.env = {
            **os.environ,
            "KINDCHAT_HOME": str(settings.home),
            "KINDCHAT_DATA_DIR": str(settings.data_dir),
            "KINDCHAT_ALIAS_POLL_S": "0.2",
            "KINDCHAT_LOG_LEVEL": "INFO",
            "KINDCHAT_RATE_LIMITS": "false",
            **({"KINDCHAT_DB_URL": settings.db_url} if settings.db_url else {}),
            **(
                {"KINDCHAT_REGISTRY_DIR": str(settings.registry_dir)}
                if settings.registry_dir
                else {}
            ),
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        start = [str(self.launcher)] if self.launcher else ["-m", "kindchat"]
        command = [sys.executable, *start, "serve", "--host", "127.0.0.1"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*command, "--port", str(self.port)], env=self.env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 180
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"kindchat serve exited: {self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"kindchat serve did not start in 180 s: {self.log()[-3000:]}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/healthz", timeout=10).json()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)


# ---- a TGI-protocol server ----------------------------------------------------------------------
TGI_ANSWER = ["안녕", "하세요", "!", " 무엇", "을", " 도와", "드릴", "까요", "?"]


def tgi_app(received: list[dict[str, Any]]) -> Any:
    """Text Generation Inference's HTTP API, answering every prompt with `TGI_ANSWER`.

    `/info`, `/generate`, `/generate_stream` (SSE, `details` on the last event) and the `/`
    route that dispatches on `stream`, as TGI does; 422 with TGI's error body when the input is
    over `max_input_tokens` (counted as whitespace-split words here).
    """
    app = FastAPI()
    max_input = 400

    @app.get("/info")
    def info() -> dict[str, Any]:
        return {
            "model_id": "test/kullm-tgi",
            "max_input_tokens": max_input,
            "max_total_tokens": 512,
            "version": "3.0.0",
        }

    def tokens(parameters: dict[str, Any]) -> list[tuple[int, str]]:
        limit = int(parameters.get("max_new_tokens") or 20)
        return list(enumerate(TGI_ANSWER[:limit]))

    def finish(parameters: dict[str, Any]) -> str:
        return (
            "length" if (parameters.get("max_new_tokens") or 20) < len(TGI_ANSWER) else "eos_token"
        )

    def too_long(inputs: str) -> JSONResponse | None:
        if len(inputs.split()) > max_input:
            return JSONResponse(
                {
                    "error": f"`inputs` must have less than {max_input} tokens",
                    "error_type": "validation",
                },
                status_code=422,
            )
        return None

    @app.post("/generate")
    async def generate(request: Request) -> Any:
        body = await request.json()
        received.append(body)
        if (error := too_long(body["inputs"])) is not None:
            return error
        parameters = body.get("parameters") or {}
        toks = tokens(parameters)
        return {
            "generated_text": "".join(t for _, t in toks),
            "details": {
                "finish_reason": finish(parameters),
                "generated_tokens": len(toks),
                "seed": None,
                "prefill": [],
                "tokens": [
                    {"id": i, "text": t, "logprob": -0.1, "special": False} for i, t in toks
                ],
            },
        }

    @app.post("/generate_stream")
    async def generate_stream(request: Request) -> Any:
        body = await request.json()
        received.append(body)
        if (error := too_long(body["inputs"])) is not None:
            return error
        parameters = body.get("parameters") or {}
        toks = tokens(parameters)

        async def events() -> Any:
            import json

            for index, (i, text) in enumerate(toks):
                last = index == len(toks) - 1
                event: dict[str, Any] = {
                    "index": index,
                    "token": {"id": i, "text": text, "logprob": -0.1, "special": False},
                    "generated_text": "".join(t for _, t in toks) if last else None,
                    "details": {
                        "finish_reason": finish(parameters),
                        "generated_tokens": len(toks),
                        "input_length": len(body["inputs"].split()),
                        "seed": None,
                    }
                    if last
                    else None,
                }
                yield f"data:{json.dumps(event, ensure_ascii=False)}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/")
    async def compat(request: Request) -> Any:
        body = await request.json()
        return await (generate_stream if body.get("stream") else generate)(request)

    return app


@pytest.fixture
def tgi_server() -> Iterator[tuple[ServerThread, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    with ServerThread(tgi_app(received)) as server:
        yield server, received


def register_copy(settings: Settings, of: str = "sft", kind: str = "policy") -> str:
    """Register a copy of alias `of`'s files as a new version (a stand-in for a retrained model)."""
    import shutil

    from kindchat.models.registry import MANIFEST, Registry

    registry = Registry(settings.models_dir)
    source = registry.resolve(of)

    def write(target: Any) -> None:
        shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MANIFEST))

    return registry.save(kind, write, parents=[registry.version_of(of) or of]).version  # type: ignore[arg-type]


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def new_version() -> Callable[..., str]:
    """`new_version(settings)` registers a copy of `sft` as another version; its id."""
    return register_copy
