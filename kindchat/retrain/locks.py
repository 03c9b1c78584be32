"""The retrain loop's locks, on :mod:`kindchat.locks` (advisory on PostgreSQL, plus a file).

- `cycle_lock`: one retrain cycle (or challenger decision) at a time, across the hosts that
  share the database; held by the cycle's process for the whole cycle.
- `queue_lock`: held for the moment a trigger checks that nothing runs and records its queued
  run, so two servers triggered at once queue one run, not two.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kindchat.config import Settings
from kindchat.locks import LockBusyError, held, postgres_url
from kindchat.retrain.errors import RetrainBusyError

LOCK_FILE = "retrain.lock"
QUEUE_LOCK_FILE = "retrain-queue.lock"
QUEUE_WAIT_S = 30.0  # a trigger waits this long for another trigger's check-and-queue


def lock_path(settings: Settings) -> Path:
    return settings.home / LOCK_FILE


@contextmanager
def cycle_lock(settings: Settings) -> Iterator[None]:
    """Hold the retrain lock, or raise :class:`RetrainBusyError` at once if someone else does."""
    try:
        with held("retrain-cycle", lock_path(settings), url=postgres_url(settings)):
            yield
    except LockBusyError as err:
        raise RetrainBusyError(
            f"a retrain cycle is running already ({err.holder}); wait for it to finish"
        ) from None


@contextmanager
def queue_lock(settings: Settings) -> Iterator[None]:
    """Serialise triggers (check idle, record the queued run) across servers."""
    try:
        with held(
            "retrain-queue",
            settings.home / QUEUE_LOCK_FILE,
            url=postgres_url(settings),
            wait=QUEUE_WAIT_S,
        ):
            yield
    except LockBusyError as err:
        raise RetrainBusyError(f"another retrain trigger is being queued ({err.holder})") from None


def lock_holder(settings: Settings) -> str | None:
    """Who holds the retrain lock now (`pid …`), or None when it is free."""
    try:
        with cycle_lock(settings):
            return None
    except RetrainBusyError as err:
        return str(err)
