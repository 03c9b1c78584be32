"""A fresh machine, as `scripts/run` meets it: `kindchat serve --background-preset micro` with no
model at all starts at once, says `starting`, and answers 503 `model_starting` (with
Retry-After) while its child trains the micro base LM and SFT at full priority; then it answers
with that SFT model, and the child lowers its own priority for the rest of the preset. Stopping
the server stops the child. A real `kindchat serve` process on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from kindchat.config import Settings
from kindchat.models.registry import Registry
from kindchat.retrain.bootstrap_state import process_alive, read_state
from tests.helpers import free_port, wait_for

pytestmark = pytest.mark.slow  # a real server whose child trains micro (~40 s on 2 cores)

CHAT = {
    "model": "kindchat-rlhf",
    "messages": [{"role": "user", "content": "안녕"}],
    "max_tokens": 4,
}


def get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=10)
    except httpx.TransportError:
        return None  # not listening yet


def test_fresh_machine_answers_as_soon_as_its_first_model_lands(
    settings: Settings, tmp_path: Path
) -> None:
    assert not Registry.for_settings(settings).aliases()  # nothing to serve
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "KINDCHAT_HOME": str(settings.home),
        "KINDCHAT_DATA_DIR": str(settings.data_dir),
        "KINDCHAT_ALIAS_POLL_S": "2",
    }
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "kindchat", "serve", "--port", str(port)]
        + ["--background-preset", "micro"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    child = None
    try:
        health = wait_for("the server listens", lambda: get(f"{url}/healthz"), 120)
        assert health.json()["status"] == "starting", health.text
        early = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=30)
        assert early.status_code == 503, early.text
        assert early.json()["error"]["code"] == "model_starting"
        assert int(early.headers["retry-after"]) >= 1
        progress = httpx.get(f"{url}/v1/bootstrap").json()
        assert progress["first"] is True and progress["preset"] == "micro"

        def answer() -> httpx.Response | None:
            reply = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=60)
            if reply.status_code == 503 and reply.json()["error"]["code"] == "model_starting":
                time.sleep(min(int(reply.headers["retry-after"]), 2))  # a polite client waits
                return None
            return reply

        reply = wait_for("the first answer", answer, 240)
        assert reply.status_code == 200, reply.text
        state = read_state(settings, "micro")
        assert state is not None and "sft" in state.versions and state.pid is not None
        assert reply.json()["model"] == state.versions["sft"]
        assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
        child = state.pid
        # the rest of the preset trains niced: the server answers meanwhile
        wait_for("the child nices itself", lambda: os.getpriority(os.PRIO_PROCESS, child) == 10)
    finally:
        server.terminate()
        server.wait(90)
        log.close()
    # uvicorn shuts down in order, then re-raises the SIGTERM it caught
    output = (tmp_path / "serve.log").read_text()
    assert server.returncode in (0, -15) and "Application shutdown complete" in output, output
    if child is not None:
        wait_for("the child stops with the server", lambda: not process_alive(child), 30)
