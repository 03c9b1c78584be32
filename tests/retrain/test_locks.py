"""The retrain lock across hosts: two kindchat homes (two hosts' local disks) sharing one
PostgreSQL run one cycle at a time; on SQLite, the file lock within one home."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from kindchat.config import Settings
from kindchat.retrain.errors import RetrainBusyError
from kindchat.retrain.locks import cycle_lock, lock_holder


def _hold(home: str, url: str, seconds: float, ready: object) -> None:
    with cycle_lock(Settings(home=Path(home), db_url=url)):
        ready.set()  # type: ignore[attr-defined]
        time.sleep(seconds)


def test_two_hosts_on_one_postgresql_take_turns(tmp_path: Path, postgres_url: str) -> None:
    host_a = Settings(home=tmp_path / "a", db_url=postgres_url)
    host_b = Settings(home=tmp_path / "b", db_url=postgres_url)
    with cycle_lock(host_a):
        with pytest.raises(RetrainBusyError, match="kindchat pid"):
            with cycle_lock(host_b):
                pass
        assert "running already" in (lock_holder(host_b) or "")
    with cycle_lock(host_b):  # free again once a is done
        pass
    # A holder that dies (SIGKILL) frees the lock: the server drops its connection.
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_hold, args=(str(tmp_path / "c"), postgres_url, 60.0, ready))
    child.start()
    assert ready.wait(60)
    assert lock_holder(host_a) is not None
    child.kill()
    child.join(30)
    deadline = time.monotonic() + 30
    while lock_holder(host_a) is not None:
        assert time.monotonic() < deadline, "the dead holder's lock was never freed"
        time.sleep(0.2)


def test_sqlite_homes_lock_by_file(tmp_path: Path) -> None:
    one = Settings(home=tmp_path / "a")
    with cycle_lock(one):
        with pytest.raises(RetrainBusyError):
            with cycle_lock(Settings(home=tmp_path / "a")):
                pass
        with cycle_lock(Settings(home=tmp_path / "b")):  # another host's disk: its own lock
            pass


def test_alias_moves_take_turns_across_hosts(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two hosts' registries (their file locks differ) sharing one PostgreSQL: while one moves
    aliases, the other waits for the advisory lock."""
    import threading

    from kindchat import locks
    from kindchat.models.registry import Registry

    host_a = Registry(tmp_path / "a", lock_url=postgres_url)
    host_b = Registry(tmp_path / "b", lock_url=postgres_url)
    entered = threading.Event()
    refused_b = threading.Event()  # b asked PostgreSQL for the lock and was refused
    try_advisory = locks._try_advisory

    def watched(connection: object, key: int) -> bool:
        got = try_advisory(connection, key)  # type: ignore[arg-type]
        if not got and threading.current_thread().name == "host-b":
            refused_b.set()
        return got

    monkeypatch.setattr(locks, "_try_advisory", watched)

    def move_on_b() -> None:
        with host_b.aliases_locked():
            entered.set()

    with host_a.aliases_locked():
        waiter = threading.Thread(target=move_on_b, name="host-b")
        waiter.start()
        assert refused_b.wait(30), "host b never asked for the advisory lock"
        assert not entered.is_set()  # refused, so still waiting on the other host's lock
    assert entered.wait(30), "host b did not get the lock once host a let it go"
    waiter.join(30)
