"""One night end to end on a real vLLM (its CPU build): kindchat serves through vLLM, simulated
users chat, rate and vote over HTTP, the nightly cycle trains a LoRA adapter, vLLM serves the
challenger in the arena as an adapter loaded at run time, and the users' votes decide it. Promoted,
vLLM serves it as `rlhf`; retired, it leaves vLLM, and an admin promotion then serves it as
`rlhf` the same way (which way a micro night goes is the users' call: both ways have been seen).
Either way the same vLLM process serves throughout, a rollback goes back to the base, and a full
checkpoint that vLLM does not serve is refused in one line while the alias keeps serving.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from kindchat.config import Settings
from kindchat.feedback import challenges
from kindchat.feedback.db import init_db, session_scope
from kindchat.models.loading import load_causal_lm, writer
from kindchat.models.registry import Registry
from kindchat.retrain.loop_config import RetrainConfig
from kindchat.simulate import SimulateConfig, simulate
from kindchat.users import load_users
from tests.helpers import wait_for

pytestmark = pytest.mark.slow  # a night through vLLM: feedback, training, the arena

VllmServer = Any  # tests/conftest.py's VllmServer (conftest modules are not importable)


def vllm_models(server: VllmServer) -> dict[str, str | None]:
    """What vLLM serves now: served name -> its parent (None for the base model)."""
    data = httpx.get(f"{server.url}/models", timeout=10).json()["data"]
    return {m["id"]: m.get("parent") for m in data}


def answered_by(url: str, token: str) -> str:
    reply = httpx.post(
        f"{url}/v1/chat/completions",
        json={
            "model": "kindchat-rlhf",
            "messages": [{"role": "user", "content": "안녕하세요, 오늘 기분이 어때요?"}],
            "max_tokens": 8,
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    return str(reply.json()["model"])


def test_one_night_on_vllm_promotes_an_adapter_without_a_restart(
    vllm_server: VllmServer, micro_llama_copy: Settings, serve: Callable[..., Any]
) -> None:
    settings = micro_llama_copy
    registry = Registry(settings.models_dir)
    base = registry.aliases()["rlhf"]
    assert base == vllm_server.base_version
    pid = vllm_server.pid
    on_vllm = {
        "backend": "openai",
        "openai_base_url": vllm_server.url,
        "openai_lora": True,
        "serve_aliases": ["rlhf"],
        "trusted_proxies": ["127.0.0.1"],  # the simulated people's own addresses
        "challenger_share": 1.0,
        "challenger_min_votes": 16,
        "challenger_min_sessions": 16,
        "challenger_min_origins": 4,
        "admin_token": "night-admin",
    }
    retrain = RetrainConfig(
        preset="micro",
        method="kto",
        method_options={"learning_rate": 2e-3, "epochs": 2.0},
        adapter="lora",
        promotion="arena",
        min_new_pairs=5,
        eval_max_new_tokens=8,
        max_kl=1e9,
        max_empty_rise=1.0,
        max_repetitive_rise=1.0,
    )
    with serve(settings=settings, **on_vllm) as server:
        token = httpx.post(f"{server.url}/v1/sessions").json()["token"]
        assert answered_by(server.url, token) == base  # kindchat → vLLM's base model
        night_settings = server.settings
        [_, night] = simulate(
            night_settings,
            load_users("polite"),
            SimulateConfig(
                votes=240,
                max_tokens=24,
                concurrency=4,
                read_chars_per_s=0,
                score_samples=1,
                # the arena's prompts (fixed by the seed) fit the micro context up to the 557th
                challenger_max_battles=400,
            ),
            retrain,
            url=server.url,
        )
        run, decided = night.run, night.challenger
        assert run["status"] in ("succeeded", "refused"), (run, night.feedback)
        assert decided is not None and decided.get("action") in ("promote", "retire"), str(
            (run, decided)
        )
        adapter = decided["version"]
        manifest = registry.manifest(adapter)
        # the night registered an adapter over vLLM's base, not a copy of the model
        assert manifest.base == base and manifest.config["format"] == "lora"
        with session_scope(init_db(settings)) as session:
            record = challenges.get_challenge(session=session, challenge_id=decided["challenge_id"])
        assert record.champion_version == base and record.challenger_version == adapter
        assert record.run_id == run["id"] and record.min_votes == 16
        admin = {"Authorization": "Bearer night-admin"}
        if decided["action"] == "promote":  # the users promoted it
            assert record.status == "promoted" and run["status"] == "succeeded"
            assert registry.aliases()["rlhf"] == adapter
        else:  # the users retired it: it left vLLM; an admin promotes it, as an operator may
            assert record.status == "retired" and run["status"] == "refused"
            assert registry.aliases()["rlhf"] == base
            wait_for(
                "the retired adapter's unload", lambda: adapter not in vllm_models(vllm_server), 120
            )
            promoted = httpx.post(
                f"{server.url}/v1/admin/promote", json={"version": adapter}, headers=admin
            )
            assert promoted.status_code == 200, promoted.text
        wait_for(
            "the hot swap",
            lambda: httpx.get(f"{server.url}/healthz").json()["aliases"].get("rlhf") == adapter,
            120,
        )
        assert vllm_models(vllm_server).get(adapter) == base  # vLLM serves it over its base
        assert answered_by(server.url, token) == adapter

        # rollback: the base answers again, and the adapter no alias needs leaves vLLM
        rolled = httpx.post(
            f"{server.url}/v1/admin/rollback", json={"alias": "rlhf"}, headers=admin
        )
        assert rolled.status_code == 200, rolled.text
        wait_for("the rollback", lambda: answered_by(server.url, token) == base, 120)
        wait_for("the unload", lambda: adapter not in vllm_models(vllm_server), 120)

        # a full checkpoint vLLM does not serve: refused in one line, the base keeps serving
        model, tokenizer = load_causal_lm(registry.path(base))
        full = registry.save("policy", writer(model, tokenizer)).version
        registry.set_alias("rlhf", full)
        failure = wait_for(
            "the refusal",
            lambda: httpx.get(f"{server.url}/healthz").json().get("failures", {}).get("rlhf"),
            120,
        )
        assert "restart vLLM" in failure and full in failure
        assert answered_by(server.url, token) == base
    # one vLLM process served every version: never restarted
    os.kill(pid, 0)
    assert vllm_server.log.read_text(errors="replace").count("Started server process") == 1
