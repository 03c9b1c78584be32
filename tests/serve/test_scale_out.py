"""Several kindchat servers, one database, one registry: what an SRE running three hosts needs.

- Two servers sharing one PostgreSQL and one registry directory: feedback given on either lands
  once, and an alias moved in the registry hot-swaps both.
- `kill -9` of one of two server processes under feedback load from 8 clients loses no
  acknowledged write, the other answers throughout and takes over the nightly schedule (one
  leader, elected through the database) — on SQLite (one host, one home) and PostgreSQL (two
  hosts' homes). Figures go to `test-artifacts/scale_out-<db>.json`; `bench/scale_out.py` runs
  this longer and prints them as a table.
- Retrain triggered on both servers at the same moment queues one run.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from kindchat.config import Settings
from kindchat.feedback import store
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.models import TERMINAL_RUN_STATUSES, Conversation, Message, Rating
from kindchat.models.registry import Registry
from kindchat.serve.auth import Sessions

from .conftest import ServerProcess  # type: ignore[import-not-found]
from .test_retrain_loop import answer_version, wait_for  # type: ignore[import-not-found]

pytestmark = pytest.mark.slow  # several server processes, PostgreSQL

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TOKEN = "scale-out-admin"
CLIENTS = 8
# Acknowledged writes each server must have given under load before the kill, and the survivor
# after it: proof that the load ran on both, and on past the kill, whatever the machine's speed.
MIN_ACKED = 40
# The bench (`bench/scale_out.py`) also holds each half of the load at least this long.
LOAD_S = float(os.environ.get("KINDCHAT_SCALE_OUT_SECONDS", "0"))
# Rate limits on (the default) or off: `bench/scale_out.py` compares the two. With them on,
# each client is one honest person behind the trusted proxy (its own address), under its limit.
LIMITS = os.environ.get("KINDCHAT_SCALE_OUT_LIMITS", "on")
LIMITS_ENV = (
    {
        "KINDCHAT_RATE_LIMITS": "true",
        "KINDCHAT_TRUSTED_PROXIES": "127.0.0.1",
        "KINDCHAT_RATE_LIMIT_ADDRESS": "100000/minute",  # load-test people: fast, but
        "KINDCHAT_RATE_LIMIT_SESSION": "100000/minute",  # each under its own limits
    }
    if LIMITS == "on"
    else {"KINDCHAT_RATE_LIMITS": "false"}
)


SECRET = "scale-out-shared-session-secret-0123456789"  # hosts behind one balancer share it


def two_hosts(micro_copy: Settings, tmp_path: Path, db_url: str | None) -> list[Settings]:
    """SQLite (`db_url` None): two servers on one host, one home. PostgreSQL: two hosts, each
    with its own home, sharing the database and the registry directory."""
    if db_url is None:
        return [micro_copy, micro_copy]
    return [
        Settings(
            home=tmp_path / name,
            data_dir=micro_copy.data_dir,
            db_url=db_url,
            registry_dir=micro_copy.models_dir,
        )
        for name in ("host-a", "host-b")
    ]


@pytest.fixture(params=["sqlite", "postgresql"])
def hosts(request: pytest.FixtureRequest, micro_copy: Settings, tmp_path: Path) -> list[Settings]:
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else None
    return two_hosts(micro_copy, tmp_path, url)


def test_two_servers_one_database_one_registry(
    serve: Any, micro_copy: Settings, postgres_url: str, new_session: Any
) -> None:
    shared = micro_copy.model_copy(update={"db_url": postgres_url})
    with serve(settings=shared) as a, serve(settings=shared) as b:
        s1 = new_session(a.url)  # one home: one secret, good on both
        sid = httpx.get(f"{b.url}/v1/sessions/me", headers={"Authorization": f"Bearer {s1}"})
        assert sid.status_code == 200, sid.text
        reply = httpx.post(
            f"{a.url}/v1/chat/completions",
            json={
                "model": "kindchat-rlhf",
                "messages": [{"role": "user", "content": "안녕하세요"}],
                "max_tokens": 6,
                "user": s1,
            },
            timeout=120,
        ).json()
        for server, value in ((b, 1), (a, -1), (b, -1)):  # rated on both: one rating, the last
            rated = httpx.post(
                f"{server.url}/v1/feedback",
                json={"message_id": reply["id"], "rating": value, "session_id": s1},
            )
            assert rated.status_code == 200, rated.text
        with session_scope(init_db(shared)) as session:
            ratings = store.list_ratings(session=session, message_id=reply["id"])
        assert [(r.session_id, r.value) for r in ratings] == [(sid.json()["session_id"], -1)]
        history = httpx.get(f"{b.url}/v1/conversations", params={"user": s1}).json()
        assert [c["id"] for c in history] == [reply["conversation_id"]]  # seen from the other

        registry = Registry.for_settings(shared)
        target = registry.aliases()["sft"]
        assert answer_version(a.url) == answer_version(b.url) == registry.aliases()["rlhf"]
        registry.set_alias("rlhf", target)  # e.g. a promotion by the retrain job
        wait_for("server a to hot-swap", lambda: answer_version(a.url) == target, 60)
        wait_for("server b to hot-swap", lambda: answer_version(b.url) == target, 60)


SESSIONS_PER_CLIENT = 4  # each rates its own ANSWERS answers, then the client takes the next
ANSWERS = 400


def owned_answers(settings: Settings, owners: list[str], count: int) -> dict[str, list[str]]:
    """`count` assistant messages in a conversation of each owner (a session rates only its
    own answers), written straight into the shared store in one transaction."""
    out: dict[str, list[str]] = {}
    with session_scope(init_db(settings)) as session:
        for owner in owners:
            conversation = Conversation(session_id=owner)
            session.add(conversation)
            session.flush()
            rows = [
                Message(
                    conversation_id=conversation.id,
                    role="assistant",
                    content=f"답변 {i}",
                    session_id=owner,
                )
                for i in range(count)
            ]
            session.add_all(rows)
            session.flush()
            out[owner] = [row.id for row in rows]
        session.commit()
    return out


class FeedbackLoad:
    """`CLIENTS` threads, each one person (its own address) rating its answers in turn over
    HTTP as fast as replies come back, with its next session when it has rated them all;
    even clients call server a, odd ones server b. Every 200 is an acknowledged write. The
    sessions are signed with the servers' shared secret, as POST /v1/sessions signs them."""

    def __init__(self, urls: list[str], settings: Settings) -> None:
        self.urls = urls
        minter = Sessions(Settings(home=Path("unused"), session_secret=SECRET))
        self.sessions = [
            [minter.issue(address=self.address(i)) for _ in range(SESSIONS_PER_CLIENT)]
            for i in range(CLIENTS)
        ]
        self.answers = owned_answers(
            settings, [s.session_id for mine in self.sessions for s in mine], ANSWERS
        )
        self.stop = threading.Event()
        self.acknowledged: list[list[tuple[str, str, int]]] = [[] for _ in range(CLIENTS)]
        self.failed = [0] * CLIENTS
        self.threads = [threading.Thread(target=self.client, args=(i,)) for i in range(CLIENTS)]

    @staticmethod
    def address(index: int) -> str:
        return f"10.40.0.{index + 1}"  # one person per client

    def client(self, index: int) -> None:
        url = self.urls[index % len(self.urls)]
        with httpx.Client(timeout=10, headers={"X-Forwarded-For": self.address(index)}) as http:
            for sent in range(SESSIONS_PER_CLIENT * ANSWERS):
                if self.stop.is_set():
                    return
                issued = self.sessions[index][sent // ANSWERS]
                message = self.answers[issued.session_id][sent % ANSWERS]
                session_id, value = issued.session_id, 1 if sent % 3 else -1
                try:
                    reply = http.post(
                        f"{url}/v1/feedback",
                        json={"message_id": message, "rating": value},
                        headers={"Authorization": f"Bearer {issued.token}"},
                    )
                except httpx.TransportError:
                    self.failed[index] += 1
                    time.sleep(0.05)
                    continue
                if reply.status_code == 200:
                    self.acknowledged[index].append((message, session_id, value))
                else:
                    self.failed[index] += 1

    def __enter__(self) -> FeedbackLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def acked(self, server: int) -> list[tuple[str, str, int]]:
        return [row for i, rows in enumerate(self.acknowledged) if i % 2 == server for row in rows]

    def failures(self, server: int) -> int:
        return sum(n for i, n in enumerate(self.failed) if i % 2 == server)


def servers(stack: ExitStack, hosts: list[Settings], tmp_path: Path, **env: str) -> Iterator[Any]:
    for name, settings in zip("ab", hosts, strict=True):
        yield stack.enter_context(
            ServerProcess(
                settings, tmp_path / f"serve-{name}.log", KINDCHAT_SESSION_SECRET=SECRET, **env
            )
        )


def leaders(*running: ServerProcess) -> list[str]:
    return [server.health()["scheduler"] for server in running]


def test_kill_9_of_one_of_two_servers_under_feedback_load(
    hosts: list[Settings], tmp_path: Path
) -> None:
    database = "postgresql" if hosts[0].db_url else "sqlite"
    schedule = {
        "KINDCHAT_RETRAIN_SCHEDULE": "1",
        "KINDCHAT_RETRAIN_LEADER_CHECK_S": "0.5",
        **LIMITS_ENV,
    }
    with ExitStack() as stack:
        started = servers(stack, hosts, tmp_path, **schedule)
        a = next(started)
        wait_for("server a to lead the schedule", lambda: a.health()["scheduler"] == "leader", 30)
        b = next(started)
        assert leaders(a, b) == ["leader", "follower"]  # one leader through the database

        with FeedbackLoad([a.url, b.url], hosts[0]) as load:
            started = time.monotonic()

            def served(server: int, since: int, at: float) -> bool:
                """`MIN_ACKED` writes acknowledged by `server` past `since`, `LOAD_S / 2` s on."""
                more = len(load.acked(server)) - since
                return more >= MIN_ACKED and time.monotonic() - at >= LOAD_S / 2

            wait_for(
                "both servers to acknowledge writes",
                lambda: served(0, 0, started) and served(1, 0, started),
                120,
            )
            a.kill()  # SIGKILL under load: no shutdown handler runs
            killed, killed_at, survivor_at = (
                time.monotonic(),
                len(load.acked(0)),
                len(load.acked(1)),
            )
            wait_for("server b to go on alone", lambda: served(1, survivor_at, killed), 120)
            seconds = time.monotonic() - started
        # The other server answered throughout, and took the schedule over.
        assert load.failures(1) == 0, b.log()[-3000:]
        wait_for(
            "server b to take the schedule over", lambda: b.health()["scheduler"] == "leader", 30
        )

    acknowledged = load.acked(0) + load.acked(1)
    with session_scope(init_db(hosts[0])) as session:
        stored = {(r.message_id, r.session_id, r.value) for r in session.exec(select(Rating)).all()}
    lost = [row for row in acknowledged if row not in stored]
    figures = {
        "database": database,
        "rate_limits": LIMITS,
        "clients": CLIENTS,
        "seconds": round(seconds, 2),
        "acknowledged": len(acknowledged),
        "acknowledged_by_killed_server": killed_at,
        "acknowledged_by_survivor": len(load.acked(1)),
        "present": len(stored),
        "lost": len(lost),
        "writes_per_s": round(len(acknowledged) / seconds, 1),
        "survivor_failures": load.failures(1),
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"scale_out-{database}-limits-{LIMITS}.json").write_text(
        json.dumps(figures), encoding="utf-8"
    )
    print(figures)
    assert killed_at > 0 and len(load.acked(1)) > 0
    assert lost == []
    # Writes the killed server committed but could not acknowledge: at most one per client.
    assert len(stored) - len(acknowledged) <= CLIENTS // 2


def test_retrain_triggered_on_two_servers_at_once_runs_once(
    micro_copy: Settings, tmp_path: Path, postgres_url: str
) -> None:
    hosts = two_hosts(micro_copy, tmp_path, postgres_url)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with ExitStack() as stack:
        a, b = servers(stack, hosts, tmp_path, KINDCHAT_ADMIN_TOKEN=TOKEN)
        for _ in range(2):
            barrier = threading.Barrier(2)
            replies: dict[str, httpx.Response] = {}

            def trigger(
                server: ServerProcess,
                barrier: threading.Barrier = barrier,
                replies: dict[str, httpx.Response] = replies,
            ) -> None:
                barrier.wait()
                replies[server.url] = httpx.post(
                    f"{server.url}/v1/admin/retrain", headers=headers, timeout=60
                )

            threads = [threading.Thread(target=trigger, args=(s,)) for s in (a, b)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(90)
            codes = sorted(reply.status_code for reply in replies.values())
            assert codes == [202, 409], {u: r.text for u, r in replies.items()}
            refused = next(r for r in replies.values() if r.status_code == 409)
            assert "retrain" in refused.json()["error"]["message"]
            run = next(r for r in replies.values() if r.status_code == 202).json()

            def finished(run_id: str = run["id"]) -> bool:
                runs = httpx.get(f"{b.url}/v1/admin/retrain-runs", headers=headers).json()
                return next(r for r in runs if r["id"] == run_id)["status"] in TERMINAL_RUN_STATUSES

            wait_for("the queued run to finish", finished, 180)
        runs = httpx.get(f"{a.url}/v1/admin/retrain-runs", headers=headers).json()
        assert len(runs) == 2  # one per round, whichever server took it
