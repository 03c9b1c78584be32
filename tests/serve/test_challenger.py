"""The challenger phase over real HTTP: users' votes promote a better model and retire a worse
one, whatever the serving order; the challenger never serves outside the arena; the deadline; a
restart keeps the record; stale-run recovery abandons what a dead process left.

The two contestants are real micro models. One of them is made *mute* (its output layer always
says EOS: every answer is empty), so that a plug-in user who dislikes empty answers (the
built-in `concise`, without noise) prefers the other side whenever it says anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from sqlmodel import select

import kindchat
from kindchat.config import Settings
from kindchat.feedback import challenges, run_records
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.models import Challenge
from kindchat.models.loading import load_causal_lm, writer
from kindchat.models.registry import CHALLENGER_ALIAS, Registry
from kindchat.retrain.challenger import challenge_version, current_challenge
from kindchat.retrain.recorder import fail_stale_runs
from kindchat.users import ScoredUser, concise_score
from tests.helpers import wait_for

pytestmark = pytest.mark.slow  # dozens of votes through real apps, restarts


def mute_copy(registry: Registry, alias: str) -> str:
    """A policy that only ever says EOS: a constant final hidden state, EOS its only logit."""
    model, tokenizer = load_causal_lm(registry.resolve(alias))
    with torch.no_grad():
        norm = model.gpt_neox.final_layer_norm
        norm.weight.zero_()
        norm.bias.fill_(1.0)
        head = model.get_output_embeddings()
        head.weight.zero_()
        head.weight[tokenizer.eos_token_id].fill_(1.0)
    return registry.save("policy", writer(model, tokenizer)).version


def plain_copy(registry: Registry, alias: str) -> str:
    model, tokenizer = load_causal_lm(registry.resolve(alias))
    return registry.save("policy", writer(model, tokenizer)).version


def battle(client: httpx.Client, user: ScoredUser, i: int) -> dict[str, Any]:
    """One battle and its vote, by a new voter (a session of its own)."""
    sid = client.post("/v1/sessions").json()["token"]
    prompt = f"오늘 {i}번째로 묻는 건데, 주말에 뭐 하면 좋을까요?"
    made = client.post(
        "/v1/arena/battles",
        json={"prompt": prompt, "session_id": sid, "max_tokens": 12, "seed": i},
    )
    assert made.status_code == 200, made.text
    body = made.json()
    winner = user.vote(prompt, body["a"]["content"], body["b"]["content"])
    voted = client.post(
        f"/v1/arena/battles/{body['id']}/vote", json={"winner": winner, "session_id": sid}
    )
    assert voted.status_code == 200, voted.text
    return voted.json()


def setup_challenge(
    settings: Settings, challenger_mute: bool, min_votes: int = 12, min_origins: int = 1
) -> tuple[Registry, str, str]:
    """Champion `rlhf` and a challenger; one of them mute. Returns (registry, champ, chall).
    The decision rule (`min_votes` votes of as many sessions, from `min_origins` client
    addresses: these tests' voters all come from 127.0.0.1) is fixed when the challenge opens,
    as a cycle fixes it."""
    registry = Registry(settings.models_dir)
    mute, talker = mute_copy(registry, "sft"), plain_copy(registry, "sft")
    champion, challenger = (talker, mute) if challenger_mute else (mute, talker)
    registry.set_alias("rlhf", champion)
    engine = init_db(settings)
    opened_with = settings.model_copy(
        update={
            "challenger_min_votes": min_votes,
            "challenger_min_sessions": min_votes,
            "challenger_min_origins": min_origins,
            "challenger_votes_per_origin": 1000,
        }
    )
    challenge_version(opened_with, engine, registry, challenger)
    engine.dispose()
    return registry, champion, challenger


def test_users_promote_a_better_challenger(serve: Callable[..., Any], micro_copy: Settings) -> None:
    registry, champion, challenger = setup_challenge(micro_copy, challenger_mute=False)
    user = ScoredUser(concise_score, temperature=0, noise=0)
    with serve(challenger_share=1.0, challenger_min_votes=12) as server:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            state = client.get("/v1/challenger").json()
            assert state["active"]["version"] == challenger
            assert state["active"]["champion"] == champion
            for i in range(40):
                result = battle(client, user, i)
                assert {result["model_a"], result["model_b"]} == {CHALLENGER_ALIAS, "rlhf"}
                if registry.aliases().get("rlhf") == challenger:
                    break
            assert registry.aliases()["rlhf"] == challenger  # the users promoted it
            assert CHALLENGER_ALIAS not in registry.aliases()
            wait_for(
                "the hot swap",
                lambda: client.get("/healthz").json()["aliases"].get("rlhf") == challenger,
            )
            after = client.get("/v1/challenger").json()
            assert after["active"] is None
            [decided] = after["history"][:1]
            assert decided["action"] == "promote" and decided["win_rate_low"] > 0.5
            assert decided["votes"] >= 12
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'kindchat_challenger_decisions_total{action="promote"} 1.0' in metrics
    with session_scope(init_db(micro_copy)) as s:
        [run] = run_records.list_runs(session=s, limit=1)
    assert run.status == "succeeded" and run.promoted


def test_users_retire_a_worse_challenger(serve: Callable[..., Any], micro_copy: Settings) -> None:
    registry, champion, challenger = setup_challenge(micro_copy, challenger_mute=True)
    user = ScoredUser(concise_score, temperature=0, noise=0)
    with serve(challenger_share=1.0, challenger_min_votes=12) as server:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            for i in range(40):
                battle(client, user, i)
                if CHALLENGER_ALIAS not in registry.aliases():
                    break
            assert CHALLENGER_ALIAS not in registry.aliases()
            assert registry.aliases()["rlhf"] == champion  # nothing moved
            [decided] = client.get("/v1/challenger").json()["history"][:1]
            assert decided["action"] == "retire" and decided["win_rate_high"] < 0.5
            # once retired, battles go back to the served aliases
            again = battle(client, user, 99)
            assert CHALLENGER_ALIAS not in (again["model_a"], again["model_b"])
    with session_scope(init_db(micro_copy)) as s:
        [run] = run_records.list_runs(session=s, limit=1)
    assert run.status == "refused" and "retired" in (run.error or "")


def test_a_challenger_never_serves_outside_its_arena_share(
    serve: Callable[..., Any], micro_copy: Settings
) -> None:
    registry, _, challenger = setup_challenge(micro_copy, challenger_mute=False)
    user = ScoredUser(concise_score, temperature=0, noise=0)
    with serve(challenger_share=0.0) as server:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            assert client.get("/healthz").json()["aliases"].get(CHALLENGER_ALIAS) == challenger
            for i in range(10):
                result = battle(client, user, i)
                assert CHALLENGER_ALIAS not in (result["model_a"], result["model_b"])
                assert challenger not in (result["version_a"], result["version_b"])
            listed = {m["id"] for m in client.get("/v1/models").json()["data"]}
            assert not any(CHALLENGER_ALIAS in m or m == challenger for m in listed)
            for name in ("kindchat-challenger", "challenger", challenger):
                chat = client.post(
                    "/v1/chat/completions",
                    json={"model": name, "messages": [{"role": "user", "content": "안녕"}]},
                )
                assert chat.status_code == 404, (name, chat.text)
            asked = client.post(
                "/v1/arena/battles",
                json={
                    "prompt": "안녕",
                    "session_id": client.post("/v1/sessions").json()["token"],
                    "models": ["kindchat-challenger", "kindchat-rlhf"],
                },
            )
            assert asked.status_code == 404  # nor can a client pick it into a battle


def test_the_deadline_retires_an_undecided_challenger(
    serve: Callable[..., Any], micro_copy: Settings
) -> None:
    registry, champion, _ = setup_challenge(micro_copy, challenger_mute=False)
    engine = init_db(micro_copy)
    with serve(challenger_check_s=0.2) as server:
        assert current_challenge(engine, registry) is not None  # deadline 24 h away: waits
        # The clock moves past the deadline: the server's periodic check retires it.
        with session_scope(engine) as s:
            row = s.exec(select(Challenge).where(Challenge.status == "open")).one()
            row.deadline = datetime(2000, 1, 1, tzinfo=timezone.utc)
            s.add(row)
            s.commit()
        wait_for("the deadline check", lambda: CHALLENGER_ALIAS not in registry.aliases())
        history = httpx.get(f"{server.url}/v1/challenger").json()["history"]
        assert history[0]["action"] == "retire" and "deadline" in history[0]["reason"]
    assert registry.aliases()["rlhf"] == champion


def test_a_restart_keeps_the_challengers_votes_and_state(
    serve: Callable[..., Any], micro_copy: Settings, tmp_path: Path
) -> None:
    registry, _, challenger = setup_challenge(micro_copy, challenger_mute=False, min_votes=10)
    user = ScoredUser(concise_score, temperature=0, noise=0)
    overrides = {"challenger_share": 1.0}
    with serve(**overrides) as first:
        with httpx.Client(base_url=first.url, timeout=120) as client:
            for i in range(6):
                battle(client, user, i)
            before = client.get("/v1/challenger").json()["active"]
    assert before["version"] == challenger
    votes_before = before["wins"] + before["losses"] + before["ties"]
    assert votes_before == 6
    with serve(**overrides) as second:  # a new process would read the same files and rows
        with httpx.Client(base_url=second.url, timeout=120) as client:
            after = client.get("/v1/challenger").json()["active"]
            assert after is not None and after["version"] == challenger
            assert after["wins"] + after["losses"] + after["ties"] == votes_before
            for i in range(6, 30):
                battle(client, user, i)
                if registry.aliases().get("rlhf") == challenger:
                    break
    assert registry.aliases()["rlhf"] == challenger  # the votes of both lives counted


@pytest.mark.parametrize("served", ["sft,rlhf", "sft"])
def test_a_challenger_is_decided_by_votes_whatever_the_serving_order(
    serve: Callable[..., Any],
    micro_copy: Settings,
    monkeypatch: pytest.MonkeyPatch,
    served: str,
) -> None:
    """KINDCHAT_SERVE_ALIASES=sft,rlhf (the champion alias not first), or `sft` alone (the
    champion alias not served at all): the challenger still faces the champion recorded on its
    challenge (`rlhf`'s version), never the first served alias, and the votes promote it."""
    registry, champion, challenger = setup_challenge(micro_copy, challenger_mute=False)
    assert registry.aliases()["sft"] not in (champion, challenger)
    monkeypatch.setenv("KINDCHAT_SERVE_ALIASES", served)
    aliases = Settings().serve_aliases
    assert aliases == served.split(",")
    user = ScoredUser(concise_score, temperature=0, noise=0)
    with serve(serve_aliases=aliases, challenger_share=1.0) as server:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            assert client.get("/v1/challenger").json()["active"]["champion"] == champion
            for i in range(40):
                result = battle(client, user, i)
                assert {result["version_a"], result["version_b"]} == {challenger, champion}
                if registry.aliases().get("rlhf") == challenger:
                    break
            assert registry.aliases()["rlhf"] == challenger  # the users promoted it
            assert CHALLENGER_ALIAS not in registry.aliases()
            [decided] = client.get("/v1/challenger").json()["history"][:1]
            assert decided["action"] == "promote" and decided["votes"] >= 12
            assert decided["champion"] == champion and decided["win_rate_low"] > 0.5
            # the champion is no arena side of its own any more: ordinary battles again
            again = battle(client, user, 99)
            assert {again["version_a"], again["version_b"]} <= {
                registry.aliases()["sft"],
                challenger,
            }
            listed = {m["id"] for m in client.get("/v1/models").json()["data"]}
            assert champion not in listed  # never served outside the arena


OPEN_AND_DIE = """
import os, sys
from kindchat.config import Settings
from kindchat.feedback import run_records
from kindchat.feedback.db import init_db
from kindchat.models.registry import Registry
from kindchat.retrain.challenger import ChallengerConfig, open_challenge

settings = Settings.model_validate_json(sys.argv[1])
registry = Registry(settings.models_dir)
def die(**_):  # the process is killed after the alias moved, before the run is updated
    os._exit(3)
run_records.update_run = die
open_challenge(
    engine=init_db(settings), registry=registry, run_id=sys.argv[2], version=sys.argv[3],
    champion=registry.aliases()["rlhf"], champion_alias="rlhf",
    champion_alias_target=registry.aliases()["rlhf"], promote_with={}, config=ChallengerConfig(),
)
"""


def test_stale_run_recovery_abandons_the_challenge_of_a_dead_process(
    micro_copy: Settings,
) -> None:
    registry = Registry(micro_copy.models_dir)
    champion, challenger = plain_copy(registry, "sft"), plain_copy(registry, "sft")
    registry.set_alias("rlhf", champion)
    engine = init_db(micro_copy)
    with session_scope(engine) as s:
        run = run_records.create_run(session=s, status="running", stage="challenger")
    root = Path(kindchat.__file__).resolve().parent.parent
    died = subprocess.run(
        [sys.executable, "-c", OPEN_AND_DIE, micro_copy.model_dump_json(), run.id, challenger],
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert died.returncode == 3, died.stderr[-3000:]
    # What the dead process left: the record open, the alias moved, the run `running`.
    assert registry.aliases()[CHALLENGER_ALIAS] == challenger
    left = current_challenge(engine, registry)
    assert left is not None and left.run_id == run.id and left.champion == champion

    assert fail_stale_runs(micro_copy, engine, registry, keep=None) == 1

    assert CHALLENGER_ALIAS not in registry.aliases() and registry.aliases()["rlhf"] == champion
    assert current_challenge(engine, registry) is None
    with session_scope(engine) as s:
        [record] = challenges.list_challenges(session=s, run_id=run.id)
        failed = run_records.get_run(session=s, run_id=run.id)
    assert record.status == "abandoned" and "interrupted" in (record.reason or "")
    assert record.decided_at is not None
    assert failed.status == "failed" and not failed.promoted
    # nothing is left to block the next challenge
    again = challenge_version(micro_copy, engine, registry, challenger)
    assert registry.aliases()[CHALLENGER_ALIAS] == challenger
    with session_scope(engine) as s:
        assert run_records.get_run(session=s, run_id=again).status == "challenging"
    engine.dispose()


def test_recovery_removes_a_challenger_alias_no_challenge_accounts_for(
    micro_copy: Settings,
) -> None:
    registry = Registry(micro_copy.models_dir)
    stray = plain_copy(registry, "sft")
    registry.set_alias(CHALLENGER_ALIAS, stray)  # set by hand, or by a pre-record server
    engine = init_db(micro_copy)
    assert fail_stale_runs(micro_copy, engine, registry, keep=None) == 0
    assert CHALLENGER_ALIAS not in registry.aliases()
    engine.dispose()


def test_a_challenge_whose_alias_cannot_move_is_abandoned(
    micro_copy: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(micro_copy.models_dir)
    challenger = plain_copy(registry, "sft")
    engine = init_db(micro_copy)

    def refuse(alias: str, version: str) -> str | None:
        raise OSError("disk full")

    monkeypatch.setattr(registry, "set_alias", refuse)
    with pytest.raises(OSError, match="disk full"):
        challenge_version(micro_copy, engine, registry, challenger)
    assert CHALLENGER_ALIAS not in registry.aliases()
    with session_scope(engine) as s:
        [record] = challenges.list_challenges(session=s)
        run = run_records.get_run(session=s, run_id=record.run_id)
    assert record.status == "abandoned" and "disk full" in (record.reason or "")
    assert run.status == "failed"
    engine.dispose()
