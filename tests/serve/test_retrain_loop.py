"""The nightly loop end to end on micro models, against a real server on 127.0.0.1.

Users vote in the arena over HTTP → a cycle in a niced child process is killed with SIGKILL in
the middle of PPO (aliases and serving unchanged) → the next cycle succeeds, promotes, and the
running server answers with the new version.
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from kindchat.feedback import run_records
from kindchat.feedback.db import init_db, session_scope
from kindchat.models.registry import STAGING, Registry
from kindchat.retrain.admin import trigger_retrain
from kindchat.retrain.cycle import run_retrain_cycle
from kindchat.retrain.locks import lock_holder, lock_path
from kindchat.retrain.loop_config import RetrainConfig
from kindchat.retrain.recorder import run_dir
from kindchat.seed import read_rm
from tests.helpers import wait_for

pytestmark = pytest.mark.slow  # trains a night through the server

# Micro budgets, and gates any micro policy passes (the refusal is tested in test_cycle.py).
LENIENT = {
    "preset": "micro",
    "method": "ppo",
    "method_options": {"rm.max_steps": 5, "ppo.steps": 2, "rm_gate_margin": 1.0},
    "eval_max_new_tokens": 8,
    "promotion": "offline",
    "min_new_pairs": 5,
    "min_win_rate": 0.0,
    "require_ci_above_half": False,
    "max_kl": 1e9,
    "max_empty_rise": 1.0,
    "max_repetitive_rise": 1.0,
}


def answer_version(url: str) -> str:
    body = {
        "model": "kindchat-rlhf",
        "messages": [{"role": "user", "content": "안녕하세요"}],
        "max_tokens": 4,
    }
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
    response.raise_for_status()
    return str(response.json()["model"])


def vote_in_the_arena(url: str, prompts: list[str]) -> None:
    for i, prompt in enumerate(prompts):
        session_id = httpx.post(f"{url}/v1/sessions").json()["token"]  # a voter each
        battle = httpx.post(
            f"{url}/v1/arena/battles",
            json={"prompt": prompt, "session_id": session_id, "max_tokens": 16, "seed": i},
            timeout=120,
        )
        battle.raise_for_status()
        vote = httpx.post(
            f"{url}/v1/arena/battles/{battle.json()['id']}/vote",
            json={"winner": "a" if i % 3 else "b", "session_id": session_id},
            timeout=60,
        )
        vote.raise_for_status()


def ppo_started(settings: Any, run_id: str) -> bool:
    log = run_dir(settings, run_id) / "ppo" / "ppo_log.jsonl"
    return log.is_file() and bool(log.read_text(encoding="utf-8").strip())


@pytest.mark.parametrize(
    ("preset", "home"), [("micro", "micro_copy"), ("micro-llama", "micro_llama_copy")]
)
def test_nightly_loop_end_to_end(
    serve: Callable[..., Any], request: pytest.FixtureRequest, preset: str, home: str
) -> None:
    """GPT-NeoX (KULLM v2) and Llama (KULLM3) families alike."""
    lenient = {**LENIENT, "preset": preset}
    with serve(settings=request.getfixturevalue(home)) as server:
        settings, url = server.settings, server.url
        registry = Registry(settings.models_dir)
        before = registry.aliases()
        assert answer_version(url) == before["rlhf"]
        short = [p.prompt for p in read_rm(settings.data_dir, "train") if len(p.prompt) < 80]
        prompts = short[:8]  # micro models read 256 tokens
        vote_in_the_arena(url, prompts)

        # 1. A cycle in a child process, killed with SIGKILL in the middle of PPO.
        options = {**LENIENT["method_options"], "ppo.steps": 500, "ppo.checkpoint_every": 1}
        long_ppo = RetrainConfig(**{**lenient, "method_options": options})
        killed = trigger_retrain(settings, config=long_ppo)
        assert killed.status == "queued"
        wait_for("PPO to be under way", lambda: ppo_started(settings, killed.id), 180)
        pid = int(re.search(r"pid (\d+)", lock_path(settings).read_text(encoding="utf-8"))[1])
        niceness = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, niceness + settings.retrain_nice)
        os.kill(pid, signal.SIGKILL)
        wait_for("the lock to be released", lambda: lock_holder(settings) is None, 30)
        assert registry.aliases() == before
        assert answer_version(url) == before["rlhf"]  # serving never noticed
        engine = init_db(settings)
        with session_scope(engine) as session:
            dead = run_records.get_run(session=session, run_id=killed.id)
        assert dead.status == "running" and dead.stage == "ppo"  # nobody lived to record it

        # 2. The next cycle cleans up after the dead one, then trains, passes and promotes.
        run = run_retrain_cycle(settings, RetrainConfig(**lenient), engine=engine)
        assert run.status == "succeeded" and run.promoted, run.error
        new_rm, new_policy = run.produced_versions or []
        with session_scope(engine) as session:
            dead = run_records.get_run(session=session, run_id=killed.id)
        assert dead.status == "failed" and "interrupted" in (dead.error or "")
        dead_dir = run_dir(settings, killed.id)
        assert json.loads((dead_dir / "status.json").read_text())["status"] == "failed"
        assert not list(dead_dir.glob("ppo/*checkpoint*"))
        assert not any((settings.models_dir / STAGING).glob("*"))

        # 3. Feedback in the DB became new versions, promoted; the server answers with them.
        assert run.metrics["export"]["train"] >= 1 and run.metrics["feedback"]["pairs"] == 8
        aliases = registry.aliases()
        assert aliases["rlhf"] == new_policy and aliases["rm"] == new_rm
        assert aliases["sft"] == before["sft"] and aliases["gold-rm"] == before["gold-rm"]
        # from the serving policy, scored by the new RM, KL-anchored to SFT
        assert registry.manifest(new_policy).parents == [before["rlhf"], new_rm, before["sft"]]
        assert run.metrics["policy_gate"]["baseline"] == before["rlhf"]
        assert run.metrics["promote"]["previous"] == before["rlhf"]
        wait_for("the server to hot-swap", lambda: answer_version(url) == new_policy, 60)
