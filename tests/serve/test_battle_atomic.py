"""One arena battle is stored in one transaction: a server killed between its writes leaves the
whole battle or none of it (never a conversation with one answer, or answers without a battle).

The server runs in its own process through a launcher that kills it (SIGKILL, no cleanup) right
after the second answer's row was sent to the database, before the battle row: the moment a
write-per-commit store would have left half a battle behind.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlmodel import func, select

import kindchat
from kindchat.config import Settings
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.models import Battle, Conversation, Message

from .conftest import ServerProcess  # type: ignore[import-not-found]

pytestmark = pytest.mark.slow  # two server processes

LAUNCHER = """
import os, signal
from sqlalchemy import event
from kindchat.feedback.models import Message

seen = {"assistant": 0}

@event.listens_for(Message, "after_insert")
def crash_after_two_answers(mapper, connection, target):
    if target.role == "assistant":
        seen["assistant"] += 1
        if seen["assistant"] == 2:  # both answers flushed, the battle not yet written
            os.kill(os.getpid(), signal.SIGKILL)

from kindchat.cli import app
app()
"""


def counts(settings: Settings) -> dict[str, int]:
    engine = init_db(settings)
    try:
        with session_scope(engine) as session:
            return {
                table.__name__: int(session.exec(select(func.count()).select_from(table)).one())
                for table in (Conversation, Message, Battle)
            }
    finally:
        engine.dispose()


def battle(url: str, token: str, prompt: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/arena/battles",
        json={"prompt": prompt, "max_tokens": 8, "seed": 1},
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )


def test_a_server_killed_inside_a_battle_leaves_none_of_it(
    micro_copy: Settings, tmp_path: Path, new_session: object
) -> None:
    launcher = tmp_path / "crash_in_battle.py"
    launcher.write_text(LAUNCHER, encoding="utf-8")
    before = counts(micro_copy)
    root = str(Path(kindchat.__file__).resolve().parents[1])  # the launcher imports this copy
    crashing = ServerProcess(micro_copy, tmp_path / "crash.log", launcher=launcher, PYTHONPATH=root)
    with crashing as server:
        token = new_session(server.url)  # type: ignore[operator]
        with pytest.raises(httpx.TransportError):  # the server died mid-request
            battle(server.url, token, "전쟁 중에 죽은 서버")
        assert server.process is not None and server.process.wait(30) == -9
    assert counts(micro_copy) == before, "a killed battle left rows behind"

    # the same request on a server that is not killed stores the whole battle
    with ServerProcess(micro_copy, tmp_path / "serve.log") as server:
        token = new_session(server.url)  # type: ignore[operator]
        made = battle(server.url, token, "끝까지 가는 대결")
        assert made.status_code == 200, made.text
    after = counts(micro_copy)
    assert after == {
        "Conversation": before["Conversation"] + 1,
        "Message": before["Message"] + 3,  # the prompt and both answers
        "Battle": before["Battle"] + 1,
    }
