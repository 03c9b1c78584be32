"""Hot swap: an alias moved mid-traffic; no request fails, new requests get the new version."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from kindchat.config import Settings
from kindchat.models.registry import Registry

TOKENS = 30


def stream_once(url: str) -> tuple[str, float, float, int, str | None]:
    """One streamed answer: (version, start, end, content chunks, finish reason)."""
    import json

    body = {
        "model": "kindchat-sft",
        "messages": [{"role": "user", "content": "안녕하세요"}],
        "max_tokens": TOKENS,
        "min_tokens": TOKENS,
        "stream": True,
    }
    start = time.monotonic()
    version, finish, pieces = "", None, 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            version = chunk["model"]
            choice = chunk["choices"][0]
            pieces += bool(choice["delta"].get("content"))
            finish = choice.get("finish_reason") or finish
    return version, start, time.monotonic(), pieces, finish


def test_alias_moved_mid_traffic(micro_copy: Settings, serve: Any, new_version: Any) -> None:
    registry = Registry(micro_copy.models_dir)
    old = registry.version_of("sft")
    new = new_version(micro_copy, kind="sft")
    results: list[tuple[str, float, float, int, str | None]] = []
    errors: list[BaseException] = []
    switched = {"at": float("inf")}
    flowing = threading.Event()  # three answers came back (or a client failed)
    with serve(max_batch_size=4, serve_aliases=["sft"]) as api:

        def client() -> None:
            """Ask until one answer that started after the switch has come back."""
            while True:
                try:
                    result = stream_once(api.url)
                except BaseException as err:  # noqa: BLE001 - every failure is a test failure
                    errors.append(err)
                    flowing.set()
                    return
                results.append(result)
                if len(results) >= len(threads):
                    flowing.set()
                if result[1] > switched["at"]:
                    return

        threads = [threading.Thread(target=client) for _ in range(3)]
        for thread in threads:
            thread.start()
        # Move the alias under traffic: once answers come back, the clients are asking again.
        assert flowing.wait(120) and not errors, errors
        moved = time.monotonic()
        registry.set_alias("sft", new)  # the nightly job promotes a version
        deadline = time.monotonic() + 60
        while httpx.get(f"{api.url}/healthz").json()["aliases"]["sft"] != new:
            assert time.monotonic() < deadline, "the alias change was not picked up"
            time.sleep(0.05)
        switched["at"] = time.monotonic()
        for thread in threads:
            thread.join(120)
        health = httpx.get(f"{api.url}/healthz").json()

    assert not errors, errors
    assert all(finish == "length" and pieces > 0 for *_, pieces, finish in results)
    assert all(version == old for version, _, end, *_ in results if end < moved)
    assert any(version == old for version, *_ in results)
    after = [version for version, start, *_ in results if start > switched["at"]]
    assert len(after) == 3 and set(after) == {new}
    assert health["loaded"] == [new]  # the old version was freed after its requests finished
    assert health["status"] == "ok"


def test_version_that_fails_to_load_leaves_old_serving(
    micro_copy: Settings, serve: Any, new_version: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(micro_copy.models_dir)
    old = registry.version_of("sft")
    broken = new_version(micro_copy, kind="sft")
    weights = next(Path(registry.path(broken)).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-100])  # damaged after saving
    with serve(admin_token="t", serve_aliases=["sft"]) as api:
        # `set_alias` refuses a damaged version; this alias moves past that check (as one
        # written by hand or by an older kindchat would), and the server must cope.
        monkeypatch.setattr(registry, "verify", lambda version: registry.root / version)
        registry.set_alias("sft", broken)
        deadline = time.monotonic() + 30
        while httpx.get(f"{api.url}/healthz").json()["status"] != "degraded":
            assert time.monotonic() < deadline, "the failed load was not reported"
            time.sleep(0.05)
        health = httpx.get(f"{api.url}/healthz").json()
        assert health["aliases"]["sft"] == old and broken in health["failures"]["sft"]
        reply = httpx.post(
            f"{api.url}/v1/chat/completions",
            json={
                "model": "kindchat-sft",
                "messages": [{"role": "user", "content": "안녕"}],
                "max_tokens": 4,
            },
            timeout=60,
        )
        assert reply.status_code == 200 and reply.json()["model"] == old
        report = httpx.post(
            f"{api.url}/v1/admin/reload", headers={"Authorization": "Bearer t"}, timeout=60
        ).json()
        assert "checksum mismatch" in report["failed"]["sft"] and report["aliases"]["sft"] == old
        metrics = httpx.get(f"{api.url}/metrics").text
        assert "kindchat_model_load_failures_total 2.0" in metrics


def test_models_say_why_an_alias_whose_version_failed_falls_back(
    micro_copy: Settings, serve: Any
) -> None:
    """`rlhf` exists, but its version is damaged: `/v1/models` says that version failed to load
    (and why) and which model answers instead, not that the alias does not exist."""
    registry = Registry(micro_copy.models_dir)
    broken, sft = registry.version_of("rlhf"), registry.version_of("sft")
    assert broken is not None and sft is not None and broken != sft
    weights = next(Path(registry.path(broken)).glob("*.safetensors"))
    with weights.open("ab") as handle:
        handle.write(b"\x00" * 16)  # damaged after the alias moved there
    with serve(serve_aliases=["rlhf", "sft"]) as api:
        models = httpx.get(f"{api.url}/v1/models", timeout=30).json()["data"]
        card = next(m for m in models if m["id"] == "kindchat-rlhf")
        note = card["note"]
        assert card["version"] == sft and card["alias"] == "sft"
        assert "does not exist" not in note, note
        assert broken in note and "failed to load" in note and "checksum mismatch" in note, note
        assert "'sft'" in note and sft in note, note
