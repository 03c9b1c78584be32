"""One retrain cycle (or challenger decision) at a time, across processes on this host.

An exclusive non-blocking `flock` on `$KINDCHAT_HOME/retrain.lock`, released by the kernel if
the holder dies; the file names the holder (`pid …`).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kindchat.config import Settings
from kindchat.retrain.errors import RetrainBusyError

LOCK_FILE = "retrain.lock"


def lock_path(settings: Settings) -> Path:
    return settings.home / LOCK_FILE


@contextmanager
def cycle_lock(settings: Settings) -> Iterator[None]:
    """Hold the retrain lock, or raise :class:`RetrainBusyError` at once if someone else does."""
    settings.home.mkdir(parents=True, exist_ok=True)
    with lock_path(settings).open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RetrainBusyError(
                f"a retrain cycle is running already ({holder}); wait for it to finish"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lock_holder(settings: Settings) -> str | None:
    """Who holds the retrain lock now (`pid …`), or None when it is free."""
    try:
        with cycle_lock(settings):
            return None
    except RetrainBusyError as err:
        return str(err)
