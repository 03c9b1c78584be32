"""One person, one voice, over real HTTP on 127.0.0.1: the attacker is an HTTP client.

* sessions: forged, damaged and expired tokens are refused; old secrets verify while rotating;
  a body's unsigned session id is refused;
* keyed mode: 5,000 invented session ids get 401/403, a key and its sessions pass;
* open mode: 5,000 new sessions from one address get 429 after the limit (with Retry-After);
  X-Forwarded-For counts only from a trusted proxy; one session's flood gets 429;
* the arena: one session's 5,000 tries do not promote a worse challenger, and do not stop 60
  honest people from promoting a better one;
* the export: what one flooding session got in is left out or capped.

The figures go to `test-artifacts/security-*.json` (and are printed).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from kindchat.config import Settings
from kindchat.feedback import store
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.export import ExportConfig, export_reward_data
from kindchat.feedback.influence import InfluenceConfig
from kindchat.models.registry import CHALLENGER_ALIAS
from kindchat.serve.auth import Sessions
from kindchat.users import ScoredUser, concise_score

from .test_challenger import setup_challenge  # type: ignore[import-not-found]

pytestmark = pytest.mark.slow  # hundreds of requests and arena battles each (15-25 s)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ATTEMPTS = 5000
KEY = "team-a:kc-0123456789abcdef0123"


class PastSigner(TimestampSigner):
    """Signs as if 31 days ago (the default session lifetime is 30)."""

    def get_timestamp(self) -> int:
        return int(time.time()) - 31 * 86400


def record(name: str, figures: dict[str, Any]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"security-{name}.json").write_text(
        json.dumps(figures, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    print(name, figures)


def flood(n: int, send: Callable[[httpx.Client, int], httpx.Response]) -> Counter[int]:
    """`n` requests from one client (8 connections); their status codes."""
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(8) as pool:
        return Counter(pool.map(lambda i: send(client, i).status_code, range(n)))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def session_of(url: str, token: str) -> str:
    """The session id a token speaks for (GET /v1/sessions/me)."""
    me = httpx.get(f"{url}/v1/sessions/me", headers=bearer(token))
    me.raise_for_status()
    return str(me.json()["session_id"])


def an_answer(settings: Settings, n: int = 1, owner: str = "earlier") -> list[str]:
    """Stored answers to rate (as if served earlier to `owner`: a session rates only its own
    answers), each to its own question."""
    ids = []
    with session_scope(init_db(settings)) as session:
        for i in range(n):
            conversation = store.create_conversation(session=session, session_id=owner)
            store.record_message(
                session=session,
                conversation_id=conversation.id,
                role="user",
                content=f"{i}번째 질문: 안녕하세요 ({owner[-6:]})",
            )
            ids.append(
                store.record_message(
                    session=session,
                    conversation_id=conversation.id,
                    role="assistant",
                    content=f"안녕하세요! 반가워요. 오늘 무엇을 도와드릴까요? ({i}, {owner[-6:]})",
                ).id
            )
    return ids


def test_forged_damaged_expired_and_rotated_tokens(
    serve: Any, micro_copy: Settings, new_session: Any
) -> None:
    old_secret = "the-secret-before-rotation-0123456789abcdef"
    with serve(session_secrets_old=[old_secret]) as api:
        url, settings = api.url, api.settings
        token = new_session(url)
        [message] = an_answer(settings, owner=session_of(url, token))

        def feedback(headers: dict[str, str], **body: Any) -> httpx.Response:
            return httpx.post(
                f"{url}/v1/feedback",
                json={"message_id": message, "rating": 1, **body},
                headers=headers,
            )

        assert feedback(bearer(token)).status_code == 200
        forged = URLSafeTimedSerializer("not-the-servers-secret", salt="kindchat.session.v1")
        cases = {
            "forged": bearer(str(forged.dumps({"s": "s-admin", "k": None}))),
            "damaged": bearer(token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")),
            "no session": {},
        }
        secret = (settings.home / "session_secret").read_text().strip()
        past = URLSafeTimedSerializer(secret, salt="kindchat.session.v1", signer=PastSigner)
        cases["expired"] = bearer(str(past.dumps({"s": "s-old", "k": None})))
        for name, headers in cases.items():
            refused = feedback(headers)
            assert refused.status_code == 401, (name, refused.text)
            assert refused.json()["error"]["type"] == "authentication_error", name
        assert "expired" in feedback(cases["expired"]).json()["error"]["message"]

        # An unsigned session id in the body: 403, also next to a valid credential.
        for headers in ({}, bearer(token)):
            spoof = feedback(headers, session_id="someone-else")
            assert spoof.status_code == 403 and "not signed" in spoof.text
            assert spoof.json()["error"]["code"] == "unsigned_session"

        # Rotation: tokens signed with the old secret still verify …
        rotated = Settings.model_validate(
            {**settings.model_dump(), "session_secret": old_secret, "session_secrets_old": []}
        )
        old_session = Sessions(rotated).issue()
        old_token = old_session.token
        [old_message] = an_answer(settings, owner=old_session.session_id)
        assert feedback(bearer(old_token), message_id=old_message).status_code == 200
    # … until the old secret is dropped from the list.
    with serve(settings=settings, session_secrets_old=[]) as api:
        response = httpx.post(
            f"{api.url}/v1/feedback",
            json={"message_id": old_message, "rating": -1},
            headers=bearer(old_token),
        )
        assert response.status_code == 401
        assert (
            httpx.post(  # the current secret's tokens survive a restart
                f"{api.url}/v1/feedback",
                json={"message_id": message, "rating": -1},
                headers=bearer(token),
            ).status_code
            == 200
        )
        metrics = httpx.get(f"{api.url}/metrics").text
        assert 'kindchat_auth_rejected_total{reason="invalid_session"} 1.0' in metrics


def test_keyed_mode_refuses_invented_sessions(serve: Any, micro_copy: Settings) -> None:
    with serve(access_mode="keyed", api_keys=[KEY]) as api:
        url = api.url
        [message] = an_answer(api.settings)
        key = bearer(KEY.partition(":")[2])
        chat = {"model": "kindchat-sft", "messages": [{"role": "user", "content": "안녕"}]}
        assert httpx.post(f"{url}/v1/chat/completions", json=chat).status_code == 401
        assert httpx.post(f"{url}/v1/sessions").status_code == 401  # minting needs the key
        answered = httpx.post(
            f"{url}/v1/chat/completions", json={**chat, "max_tokens": 4}, headers=key, timeout=60
        )
        assert answered.status_code == 200, answered.text
        minted = httpx.post(f"{url}/v1/sessions", headers=key)
        assert minted.status_code == 201 and minted.json()["key"] == "team-a"
        me = httpx.get(f"{url}/v1/sessions/me", headers=bearer(minted.json()["token"])).json()
        assert me["key"] == "team-a" and me["session_id"] == minted.json()["session_id"]

        start = time.perf_counter()
        codes = flood(
            ATTEMPTS,
            lambda client, i: client.post(
                f"{url}/v1/feedback",
                json={"message_id": message, "rating": 1, "session_id": f"voter-{i}"},
                headers=key if i % 2 else {},  # with the key, or with nothing at all
            ),
        )
        seconds = time.perf_counter() - start
        assert codes == {401: ATTEMPTS // 2, 403: ATTEMPTS // 2}, codes
        with session_scope(init_db(api.settings)) as session:
            assert store.list_ratings(session=session, message_id=message) == []
        record(
            "keyed",
            {
                "mode": "keyed",
                "tried": ATTEMPTS,
                "accepted": codes.get(200, 0),
                "rejected": dict(sorted(codes.items())),
                "ratings_stored": 0,
                "seconds": round(seconds, 1),
            },
        )


def test_open_mode_limits_new_sessions_and_floods(serve: Any, micro_copy: Settings) -> None:
    limits = {
        "rate_limits": True,
        "rate_limit_strategy": "moving-window",  # exact counts (the default approximates)
        "rate_limit_new_sessions": "20/hour",
        "rate_limit_session": "30/minute",
        "rate_limit_address": "1000/minute",
        "trusted_proxies": ["127.0.0.1"],  # this test's client is its own proxy
        "metrics_public": True,  # (behind a proxy /metrics is admin-only by default)
    }
    with serve(**limits) as api:
        url = api.url
        [message] = an_answer(api.settings)
        attacker = {"X-Forwarded-For": "203.0.113.7"}
        minted: list[str] = []

        def mint(client: httpx.Client, i: int) -> httpx.Response:
            response = client.post(f"{url}/v1/sessions", headers=attacker)
            if response.status_code == 201:
                minted.append(response.json()["token"])
            else:
                assert response.status_code == 429
                assert int(response.headers["retry-after"]) > 0
            return response

        codes = flood(ATTEMPTS, mint)
        assert codes == {201: 20, 429: ATTEMPTS - 20}, codes
        # Every minted session may rate its own answer: 20 voices, not 5,000; nobody else's.
        owned = {t: an_answer(api.settings, owner=session_of(url, t))[0] for t in minted}
        voted = Counter(
            httpx.post(
                f"{url}/v1/feedback", json={"message_id": owned[t], "rating": 1}, headers=bearer(t)
            ).status_code
            for t in minted
        )
        assert voted == {200: 20}
        strangers = Counter(
            httpx.post(
                f"{url}/v1/feedback", json={"message_id": message, "rating": 1}, headers=bearer(t)
            ).status_code
            for t in minted
        )
        assert strangers == {404: 20}  # the answer is someone else's
        # Another person (another address, through the proxy) is not locked out …
        other = httpx.post(f"{url}/v1/sessions", headers={"X-Forwarded-For": "198.51.100.4"})
        assert other.status_code == 201
        # … and one session's flood of ratings stops at its limit.
        token = other.json()["token"]
        [mine] = an_answer(api.settings, owner=session_of(url, token))
        flooded = flood(
            200,
            lambda client, i: client.post(
                f"{url}/v1/feedback",
                json={"message_id": mine, "rating": 1},
                headers=bearer(token),
            ),
        )
        assert flooded == {200: 30, 429: 170}, flooded
        metrics = httpx.get(f"{url}/metrics").text
        assert 'kindchat_rate_limited_total{group="sessions",scope="address"} 4980.0' in metrics
        assert 'kindchat_rate_limited_total{group="feedback",scope="session"} 170.0' in metrics
        with session_scope(init_db(api.settings)) as session:
            stored = store.list_ratings(session=session, limit=10_000)
        assert len(stored) == 21  # one per session, each on its own answer
        assert all(r.message_id != message for r in stored)
        record(
            "open",
            {
                "mode": "open",
                "new_sessions_tried": ATTEMPTS,
                "new_sessions_accepted": codes[201],
                "new_sessions_429": codes[429],
                "one_session_ratings_tried": 200,
                "one_session_ratings_accepted": flooded[200],
                "ratings_stored": len(stored),
            },
        )

    # Without a trusted proxy, X-Forwarded-For is ignored: changing it buys nothing.
    with serve(**{**limits, "trusted_proxies": [], "rate_limit_new_sessions": "3/hour"}) as api:
        codes = Counter(
            httpx.post(
                f"{api.url}/v1/sessions", headers={"X-Forwarded-For": f"10.0.0.{i}"}
            ).status_code
            for i in range(10)
        )
        assert codes == {201: 3, 429: 7}
        me = httpx.get(f"{api.url}/v1/sessions/me", headers={"X-Forwarded-For": "10.9.9.9"})
        assert me.json()["address"] == "127.0.0.1"


ARENA = {
    "rate_limits": True,
    "rate_limit_strategy": "moving-window",  # exact counts (the default approximates)
    "rate_limit_session": "30/minute",
    "rate_limit_address": "1000/minute",
    "trusted_proxies": ["127.0.0.1"],
    "challenger_share": 1.0,
}


def honest_battle(client: httpx.Client, user: ScoredUser, person: int) -> dict[str, Any]:
    """Person `person` (own address, own session) asks, reads and votes once."""
    address = {"X-Forwarded-For": f"10.20.{person // 250}.{person % 250 + 1}"}
    token = client.post("/v1/sessions", headers=address).json()["token"]
    headers = {**address, **bearer(token)}
    prompt = f"{person}번째 사람이 묻습니다. 주말에 뭐 하면 좋을까요?"
    made = client.post(
        "/v1/arena/battles",
        json={"prompt": prompt, "max_tokens": 8, "seed": person},
        headers=headers,
    )
    assert made.status_code == 200, made.text
    body = made.json()
    winner = user.vote(prompt, body["a"]["content"], body["b"]["content"])
    voted = client.post(
        f"/v1/arena/battles/{body['id']}/vote", json={"winner": winner}, headers=headers
    )
    assert voted.status_code == 200, voted.text
    return dict(voted.json())


def attack(client: httpx.Client, for_challenger: bool, attempts: int = ATTEMPTS) -> Counter[str]:
    """One session tries `attempts` battle+vote rounds, voting for (or against) the challenger
    (it tells the sides apart: the mute model answers nothing)."""
    address = {"X-Forwarded-For": "203.0.113.66"}
    outcome: Counter[str] = Counter()
    minted = client.post("/v1/sessions", headers=address)
    outcome[f"session_{minted.status_code}"] += 1
    if minted.status_code != 201:
        return outcome
    headers = {**address, **bearer(minted.json()["token"])}
    for i in range(attempts):
        made = client.post(
            "/v1/arena/battles", json={"prompt": f"공격 {i}", "max_tokens": 4}, headers=headers
        )
        outcome[f"battle_{made.status_code}"] += 1
        if made.status_code != 200:
            continue
        body = made.json()
        empty = "a" if not body["a"]["content"].strip() else "b"
        talker = "b" if empty == "a" else "a"
        # the mute side is the challenger when voting for a worse one, the champion otherwise
        pick = empty if for_challenger else talker
        voted = client.post(
            f"/v1/arena/battles/{body['id']}/vote", json={"winner": pick}, headers=headers
        )
        outcome[f"vote_{voted.status_code}"] += 1
    return outcome


def decision_figures(client: httpx.Client) -> dict[str, Any]:
    state = client.get("/v1/challenger").json()
    if state["active"] is not None:
        active = state["active"]
        keys = ("sessions", "origins", "raw_votes", "excluded_sessions", "wins", "losses")
        rate = ("now_action", "now_win_rate", "now_win_rate_low", "now_win_rate_high")
        return {k: active.get(k) for k in (*rate, *keys)}
    decided = state["history"][0]
    keys = ("action", "win_rate", "win_rate_low", "win_rate_high", "sessions", "origins")
    more = ("raw_votes", "excluded_sessions", "wins", "losses")
    return {k: decided.get(k) for k in (*keys, *more)}


def test_one_session_cannot_promote_a_worse_challenger(serve: Any, micro_copy: Settings) -> None:
    registry, champion, challenger = setup_challenge(
        micro_copy, challenger_mute=True, min_votes=60, min_origins=60
    )
    user = ScoredUser(concise_score, temperature=0, noise=0)
    with serve(**ARENA) as api, httpx.Client(base_url=api.url, timeout=120) as client:
        tried = attack(client, for_challenger=True)
        alone = decision_figures(client)
        assert registry.aliases().get(CHALLENGER_ALIAS) == challenger  # not promoted
        assert registry.aliases()["rlhf"] == champion
        assert alone["now_action"] == "continue" and alone["sessions"] <= 1
        assert tried["battle_200"] + tried["vote_200"] <= 30  # the session's arena limit
        # The same client as many: more sessions from its address, one vote each.
        sybils = sum(
            (attack(client, for_challenger=True, attempts=1) for _ in range(25)), Counter()
        )
        assert sybils["session_201"] == 19 and sybils["session_429"] == 6  # 20 an hour
        many = decision_figures(client)
        assert many["now_action"] == "continue" and many["origins"] <= 1
        assert registry.aliases().get(CHALLENGER_ALIAS) == challenger
        people = 0
        while people < 60 and CHALLENGER_ALIAS in registry.aliases():
            honest_battle(client, user, people)
            people += 1
        assert CHALLENGER_ALIAS not in registry.aliases() and registry.aliases()["rlhf"] == champion
        final = decision_figures(client)
        assert final["action"] == "retire" and final["origins"] >= people
    record(
        "arena-worse",
        {
            "attacker_tried": ATTEMPTS,
            "attacker_accepted": {k: v for k, v in tried.items() if k.endswith("_200")},
            "attacker_rejected": {k: v for k, v in tried.items() if not k.endswith("_200")},
            "decision_attacker_alone": alone,
            "sybil_sessions_tried": 25,
            "sybil_outcome": dict(sybils),
            "decision_after_sybils": many,
            "honest_people": people,
            "decision_with_honest_people": final,
        },
    )


def test_sixty_honest_people_promote_a_better_challenger_despite_an_attacker(
    serve: Any, micro_copy: Settings
) -> None:
    registry, champion, challenger = setup_challenge(
        micro_copy, challenger_mute=False, min_votes=60, min_origins=60
    )
    user = ScoredUser(concise_score, temperature=0, noise=0)
    with serve(**ARENA) as api, httpx.Client(base_url=api.url, timeout=120) as client:
        tried = attack(client, for_challenger=False)  # votes for the (mute) champion
        before = decision_figures(client)
        assert before["now_action"] == "continue"
        people = 0
        while people < 60 and CHALLENGER_ALIAS in registry.aliases():
            honest_battle(client, user, people)
            people += 1
        assert registry.aliases()["rlhf"] == challenger  # the people promoted it
        final = decision_figures(client)
        assert final["action"] == "promote" and final["origins"] >= people == 60
        assert final["losses"] <= 5  # the attacker's votes count 5 at most (or not at all)
    record(
        "arena-better",
        {
            "attacker_tried": ATTEMPTS,
            "attacker_accepted": {k: v for k, v in tried.items() if k.endswith("_200")},
            "attacker_rejected": {k: v for k, v in tried.items() if not k.endswith("_200")},
            "decision_attacker_alone": before,
            "honest_people": people,
            "decision_with_attacker": final,
        },
    )


@pytest.mark.parametrize("anomaly_filter", [True, False])
def test_what_a_flooding_session_got_in_is_left_out_or_capped(
    serve: Any, micro_copy: Settings, tmp_path: Path, anomaly_filter: bool
) -> None:
    settings_in = {
        "rate_limits": True,
        "rate_limit_strategy": "moving-window",  # exact counts (the default approximates)
        "rate_limit_session": "60/minute",
        "trusted_proxies": ["127.0.0.1"],
    }
    with serve(**settings_in) as api:
        url = api.url
        people = [
            httpx.post(
                f"{url}/v1/sessions", headers={"X-Forwarded-For": f"10.30.0.{p + 1}"}
            ).json()["token"]
            for p in range(10)
        ]
        for token in people:  # 10 people, 2 answers each
            for message in an_answer(api.settings, 2, owner=session_of(url, token)):
                httpx.post(
                    f"{url}/v1/feedback",
                    json={"message_id": message, "rating": 1},
                    headers=bearer(token),
                ).raise_for_status()
        attacker = httpx.post(f"{url}/v1/sessions").json()["token"]
        answers = an_answer(api.settings, 180, owner=session_of(url, attacker))
        codes = flood(
            ATTEMPTS,
            lambda client, i: client.post(
                f"{url}/v1/feedback",
                json={"message_id": answers[i % 180], "rating": 1 if i % 2 else -1},
                headers=bearer(attacker),
            ),
        )
        assert codes[200] == 60 and codes[429] == ATTEMPTS - 60, codes
        out = tmp_path / "export"
        config = ExportConfig(
            test_fraction=0.0,
            include_seed=False,
            influence=InfluenceConfig(anomaly_filter=anomaly_filter),
        )
        with session_scope(init_db(api.settings)) as session:
            export_reward_data(
                session=session, data_dir=api.settings.data_dir, out_dir=out, config=config
            )
    manifest = json.loads((out / "manifest.json").read_text())
    rows = json.loads((out / "unpaired.json").read_text())
    influence = manifest["influence"]
    if anomaly_filter:  # 60 votes in a second, none read: left out whole
        assert influence["anomalous"]["sessions"] == 1
        assert influence["anomalous"]["by_reason"]["burst"] == 1
        assert len(rows) == 20  # the people's
    else:  # judged as a person: capped
        assert influence["cap"] == max(math.ceil(0.02 * 80), 20) == 20
        assert influence["capped_sessions"] == 1 and len(rows) == 20 + 20
    record(
        f"export-filter-{'on' if anomaly_filter else 'off'}",
        {
            "attacker_ratings_tried": ATTEMPTS,
            "attacker_ratings_accepted": codes[200],
            "exported_rows": len(rows),
            "influence": influence,
        },
    )
