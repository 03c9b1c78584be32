"""What an operator does to the loop — the one API behind the CLI, HTTP admin routes and the UI.

* :func:`trigger_retrain` — queue a cycle and run it in a low-priority child process;
* :func:`retrain_runs` — the recorded runs, newest first, and :func:`retrain_state`;
* :func:`promote` / :func:`rollback` — move an alias (atomically; serving hot-swaps).

Every function takes the settings and, optionally, an open database engine (the server passes
its own); none needs the caller to hold anything else.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlmodel import col, select

from kindchat.config import Settings
from kindchat.feedback import run_records
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.models import RetrainRun, RetrainRunPublic, as_utc, utcnow
from kindchat.models.registry import DamagedVersionError, Registry, RegistryError
from kindchat.retrain.errors import PromotionError, RetrainBusyError
from kindchat.retrain.locks import lock_holder, queue_lock
from kindchat.retrain.loop_config import RetrainConfig
from kindchat.retrain.recorder import STALE_QUEUED
from kindchat.retrain.worker import spawn_cycle

logger = logging.getLogger(__name__)

RM_KINDS = frozenset({"rm"})


@dataclass(frozen=True)
class AliasChange:
    alias: str
    version: str
    previous: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"alias": self.alias, "version": self.version, "previous": self.previous}


def _engine(settings: Settings, engine: Engine | None) -> Engine:
    return engine if engine is not None else init_db(settings)


def _check_idle(settings: Settings, engine: Engine) -> None:
    holder = lock_holder(settings)
    if holder is not None:
        raise RetrainBusyError(holder)
    fresh = utcnow() - STALE_QUEUED
    with session_scope(engine) as session:
        queued = session.exec(select(RetrainRun).where(col(RetrainRun.status) == "queued")).all()
    waiting = [r.id for r in queued if as_utc(r.created_at) > fresh]
    if waiting:
        raise RetrainBusyError(f"retrain run {waiting[0]} is queued and about to start")


def trigger_retrain(
    settings: Settings,
    *,
    engine: Engine | None = None,
    force: bool = False,
    config: RetrainConfig | None = None,
    wait: bool = False,
) -> RetrainRunPublic:
    """Queue a retrain cycle and start it in a child process (`os.nice`); return the run.

    The run comes back `queued` (poll :func:`retrain_runs` for its stage and outcome), or
    finished when `wait`. `force` ignores the minimum of new feedback. Raises
    :class:`RetrainBusyError` when a cycle is running or queued already.
    """
    engine = _engine(settings, engine)
    config = config or RetrainConfig.from_settings(settings)
    if force:
        config = RetrainConfig.from_json({**config.to_json(), "min_new_pairs": 0})
    with queue_lock(settings):  # two servers triggered at once queue one run
        _check_idle(settings, engine)
        with session_scope(engine) as session:
            run = run_records.create_run(session=session, status="queued")

    process = spawn_cycle(settings, config, run.id)
    if wait:
        process.wait()
        with session_scope(engine) as session:
            return run_records.get_run(session=session, run_id=run.id)
    # Reap the child when it ends (no zombie), without holding up the caller.
    threading.Thread(target=process.wait, name=f"retrain-{run.id}", daemon=True).start()
    return run


def retrain_runs(
    settings: Settings,
    *,
    engine: Engine | None = None,
    limit: int = 20,
    status: str | None = None,
) -> list[RetrainRunPublic]:
    """Recorded retrain runs, newest first (optionally of one status)."""
    with session_scope(_engine(settings, engine)) as session:
        return run_records.list_runs(session=session, status=status, limit=limit)


def retrain_state(settings: Settings) -> dict[str, Any]:
    """Whether a cycle holds the lock now, and the served aliases."""
    return {
        "running": lock_holder(settings),
        "aliases": Registry.for_settings(settings).aliases(),
    }


def promote(settings: Settings, version: str, alias: str) -> AliasChange:
    """Point `alias` at `version` (atomic; the server hot-swaps). An RM alias takes RMs only,
    a policy alias language models only, and a version whose files no longer match its
    manifest's checksums is refused (:class:`PromotionError`; the alias stays put)."""
    registry = Registry.for_settings(settings)
    manifest = registry.manifest(version)  # UnknownModelError when there is no such version
    current = registry.aliases().get(alias)
    if current is not None and registry.is_version(current):
        was_rm = registry.manifest(current).kind in RM_KINDS
        if was_rm != (manifest.kind in RM_KINDS):
            raise PromotionError(
                f"alias {alias!r} points at a {registry.manifest(current).kind} model; "
                f"{version} is a {manifest.kind} model"
            )
    try:
        previous = registry.set_alias(alias, version)  # verifies the checksums first
    except DamagedVersionError as err:
        kept = f"{alias!r} stays at {current}" if current else f"{alias!r} stays unset"
        raise PromotionError(f"refusing to promote {version}: {err}; {kept}") from err
    logger.info("promoted %s to %s (was %s)", version, alias, previous)
    return AliasChange(alias, version, previous)


def rollback(settings: Settings, alias: str) -> AliasChange:
    """Point `alias` back at the version it had before its last change."""
    registry = Registry.for_settings(settings)
    current = registry.aliases().get(alias)
    if current is None:
        raise PromotionError(f"there is no alias {alias!r} to roll back")
    try:
        version = registry.rollback_alias(alias)
    except RegistryError as err:
        raise PromotionError(str(err)) from None
    logger.info("rolled %s back from %s to %s", alias, current, version)
    return AliasChange(alias, version, current)
