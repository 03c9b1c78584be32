"""Admin over real HTTP: the bearer token guards every route; promote, roll back, retrain runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from kindchat.models.registry import Registry
from kindchat.retrain.locks import cycle_lock

TOKEN = "s3cret-admin"
ADMIN_CALLS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/admin/reload", None),
    ("POST", "/v1/admin/retrain", {}),
    ("POST", "/v1/admin/promote", {"version": "x", "alias": "rlhf"}),
    ("POST", "/v1/admin/rollback", {"alias": "rlhf"}),
    ("GET", "/v1/admin/retrain-runs", None),
    ("GET", "/v1/admin/dashboard", None),
]


def call(url: str, method: str, path: str, body: Any, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.request(method, url + path, json=body, headers=headers, timeout=60)


def served_version(url: str, alias: str = "rlhf") -> str:
    return httpx.get(f"{url}/healthz", timeout=30).json()["aliases"][alias]


def test_admin_calls_without_or_with_a_wrong_token_are_refused(serve: Callable[..., Any]) -> None:
    with serve(admin_token=TOKEN) as server:
        for method, path, body in ADMIN_CALLS:
            missing = call(server.url, method, path, body, None)
            assert missing.status_code == 401, path
            assert missing.json()["error"]["type"] == "authentication_error"
            wrong = call(server.url, method, path, body, "not-the-token")
            assert wrong.status_code == 403, path
            assert wrong.json()["error"]["code"] == "invalid_admin_token"
        bogus = call(server.url, "GET", "/v1/admin/retrain-runs?status=bogus", None, TOKEN)
        assert bogus.status_code == 422 and bogus.json()["error"]["param"] == "status"
        # The dashboard's data, as the UI tab gets it from the same service method.
        board = call(server.url, "GET", "/v1/admin/dashboard", None, TOKEN)
        assert board.status_code == 200, board.text
        data = board.json()
        registry = Registry(server.settings.models_dir)
        assert data["aliases"] == registry.aliases()
        assert {v["version"] for v in data["versions"]} == {m.version for m in registry.versions()}
        assert data["ppo_version"] in data["aliases"].values() and data["ppo_log"]
        assert data["stats"]["messages"] == 0 and data["runs"] == []


def test_admin_is_off_without_a_configured_token(serve: Callable[..., Any]) -> None:
    with serve(admin_token=None) as server:
        for method, path, body in ADMIN_CALLS:
            response = call(server.url, method, path, body, TOKEN)
            assert response.status_code == 403, path
            assert response.json()["error"]["code"] == "admin_disabled"


@pytest.mark.slow  # runs a retrain in a child process
def test_promote_rollback_and_retrain_through_the_admin_api(
    serve: Callable[..., Any], new_version: Callable[..., str]
) -> None:
    with serve(admin_token=TOKEN, retrain_min_new_pairs=1000, retrain_preset="micro") as server:
        settings, url = server.settings, server.url
        registry = Registry(settings.models_dir)
        old = registry.aliases()["rlhf"]
        candidate = new_version(settings)

        promoted = call(url, "POST", "/v1/admin/promote", {"version": candidate}, TOKEN)
        assert promoted.status_code == 200, promoted.text
        assert promoted.json() == {"alias": "rlhf", "version": candidate, "previous": old}
        assert served_version(url) == candidate  # reloaded before the answer came back

        wrong_kind = call(
            url, "POST", "/v1/admin/promote", {"version": registry.aliases()["rm"]}, TOKEN
        )
        assert wrong_kind.status_code == 409
        assert wrong_kind.json()["error"]["code"] == "invalid_promotion"
        unknown = call(url, "POST", "/v1/admin/promote", {"version": "policy-nope"}, TOKEN)
        assert unknown.status_code == 404

        rolled = call(url, "POST", "/v1/admin/rollback", {"alias": "rlhf"}, TOKEN)
        assert rolled.json() == {"alias": "rlhf", "version": old, "previous": candidate}
        assert served_version(url) == old
        nothing_left = call(url, "POST", "/v1/admin/rollback", {"alias": "rlhf"}, TOKEN)
        assert nothing_left.status_code == 409

        with cycle_lock(settings):  # a cycle is running (here: this test holds the lock)
            busy = call(url, "POST", "/v1/admin/retrain", {}, TOKEN)
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "retrain_busy"

        queued = call(url, "POST", "/v1/admin/retrain", None, TOKEN)
        assert queued.status_code == 202 and queued.json()["status"] == "queued"
        run_id = queued.json()["id"]

        def finished() -> dict[str, Any] | None:
            runs = call(url, "GET", "/v1/admin/retrain-runs?limit=5", None, TOKEN).json()
            run = next(r for r in runs if r["id"] == run_id)
            return run if run["status"] not in ("queued", "running") else None

        deadline = time.monotonic() + 180
        while (run := finished()) is None:
            assert time.monotonic() < deadline, "the retrain worker did not finish"
            time.sleep(0.5)
        # The niced child process ran the cycle: too little feedback, so it skipped.
        assert run["status"] == "skipped" and "1000 needed" in run["error"]
        assert registry.aliases()["rlhf"] == old


def test_promoting_a_damaged_version_through_the_admin_api_is_refused(
    serve: Callable[..., Any], new_version: Callable[..., str]
) -> None:
    with serve(admin_token=TOKEN) as server:
        registry = Registry(server.settings.models_dir)
        old = registry.aliases()["rlhf"]
        candidate = new_version(server.settings)
        weights = next(registry.path(candidate).glob("*.safetensors"))
        with weights.open("ab") as handle:
            handle.write(b"\x00" * 16)  # damaged after saving
        refused = call(server.url, "POST", "/v1/admin/promote", {"version": candidate}, TOKEN)
        assert 400 <= refused.status_code < 500, refused.text
        message = refused.json()["error"]["message"]
        assert "checksum mismatch" in message and candidate in message
        assert registry.aliases()["rlhf"] == old and served_version(server.url) == old
