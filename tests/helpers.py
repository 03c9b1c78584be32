"""Helpers the test modules share (`from tests.helpers import …`; pyproject puts the repository
root on the path). conftest modules are not importable under `--import-mode=importlib`, so what
several modules call lives here rather than in a conftest."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from kindchat.models.backends.base import GenerationBackend, GenerationOptions, TextDelta
from kindchat.models.generation import SamplingParams


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def heavy_imports(imports: str, heavy: set[str]) -> list[str]:
    """Which of the top-level packages `heavy` a fresh interpreter has loaded after running
    `imports` (import statements): what a process pays for before its first real work."""
    code = (
        f"import sys\n{imports}\n"
        f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({sorted(heavy)!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [name for name in out.stdout.strip().split(",") if name]


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll `predicate` until it returns something true; that value (fails after `timeout`)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


@contextlib.contextmanager
def server_process(
    name: str,
    command: Sequence[str],
    ready_url: str,
    log: Path,
    env: Mapping[str, str],
    timeout: float,
) -> Iterator[subprocess.Popen[bytes]]:
    """A server started in its own process group (its children too), output to `log`, once
    `ready_url` answers 200; the test fails if it exits or is not up after `timeout` s. Stopped
    with SIGTERM (SIGKILL after 30 s) on the way out."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            list(command),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{name} exited ({proc.returncode}) while starting; see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"{name} did not come up in {timeout:.0f} s; see {log}")
            time.sleep(0.5)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def collect(
    backend: GenerationBackend,
    messages: list[dict[str, str]],
    params: SamplingParams,
    options: GenerationOptions | None = None,
) -> list[TextDelta]:
    """Start `backend`, stream one answer to the end, close it; the deltas."""

    async def run() -> list[TextDelta]:
        await backend.start()
        try:
            return [d async for d in backend.stream(messages, params, options)]
        finally:
            await backend.close()

    return asyncio.run(run())
