"""A retrain run's record as the cycle goes: stages, metrics and produced versions in the
feedback store (:mod:`kindchat.feedback.run_records`), `status.json` in its run directory, and
the cleanup of runs a killed process left behind."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import col, select

from kindchat.config import Settings
from kindchat.feedback import run_records
from kindchat.feedback.db import session_scope
from kindchat.feedback.models import RetrainRun, RetrainRunPublic, as_utc, utcnow
from kindchat.models.registry import Registry
from kindchat.retrain.challenger import recover_challenges

logger = logging.getLogger(__name__)

RUN_DIR_PREFIX = "retrain-"
STATUS_FILE = "status.json"
STALE_QUEUED = timedelta(minutes=10)  # a queued run whose worker never started is given up
StageHook = Callable[[str], None]


class RunRecorder:
    """Writes a run's stage, metrics and produced versions to the store as the cycle goes."""

    def __init__(self, engine: Engine, run_id: str, on_stage: StageHook | None = None) -> None:
        self.engine = engine
        self.run_id = run_id
        self.on_stage = on_stage
        self.stage: str | None = None
        self.metrics: dict[str, Any] = {}
        self.produced: list[str] = []
        self._started = time.perf_counter()

    def _update(self, **changes: Any) -> RetrainRunPublic:
        with session_scope(self.engine) as session:
            return run_records.update_run(session=session, run_id=self.run_id, **changes)

    def enter(self, stage: str) -> None:
        self._close_stage()
        self.stage = stage
        self._started = time.perf_counter()
        logger.info("retrain run %s: stage %s", self.run_id, stage)
        self._update(stage=stage)
        if self.on_stage is not None:
            self.on_stage(stage)

    def _close_stage(self) -> None:
        if self.stage is not None:
            entry = self.metrics.setdefault(self.stage, {})
            entry.setdefault("seconds", round(time.perf_counter() - self._started, 1))

    def record(self, stage: str, values: dict[str, Any]) -> None:
        self.metrics.setdefault(stage, {}).update(json.loads(json.dumps(values, default=str)))
        self._update(metrics=self.metrics)

    def produced_version(self, version: str) -> None:
        self.produced.append(version)
        self._update(produced_versions=self.produced)

    def finish(
        self, status: str, *, error: str | None = None, promoted: bool = False
    ) -> RetrainRunPublic:
        self._close_stage()
        return self._update(status=status, metrics=self.metrics, error=error, promoted=promoted)


def start_run(engine: Engine, run_id: str | None) -> RetrainRunPublic:
    """Move a queued run (made by `trigger_retrain`) to running, or create a running one."""
    with session_scope(engine) as session:
        if run_id is None:
            return run_records.create_run(session=session, status="running", stage="feedback")
        return run_records.update_run(
            session=session, run_id=run_id, status="running", stage="feedback"
        )


def fail_stale_runs(
    settings: Settings, engine: Engine, registry: Registry, keep: str | None
) -> int:
    """With the lock held, runs still `running` belong to a dead process: mark them failed.

    Also gives up `queued` runs older than 10 minutes, removes half-written registry versions
    (`.staging`), and clears what a dead process left of a challenge
    (:func:`kindchat.retrain.challenger.recover_challenges`: an open challenge of a run now
    over is abandoned, its `challenger` alias removed). Returns how many runs were marked.
    """
    removed = registry.prune_staging()
    if removed:
        logger.warning("removed %d half-written model version(s) of an interrupted run", removed)
    now = utcnow()
    with session_scope(engine) as session:
        rows = session.exec(
            select(RetrainRun).where(col(RetrainRun.status).in_(["running", "queued"]))
        ).all()
        stale = [
            r
            for r in rows
            if r.id != keep and (r.status == "running" or now - as_utc(r.created_at) > STALE_QUEUED)
        ]
        for row in stale:
            reason = (
                f"interrupted: the process running stage {row.stage!r} died (no promotion)"
                if row.status == "running"
                else "its worker never started"
            )
            run_records.update_run(session=session, run_id=row.id, status="failed", error=reason)
            mark_run_dir(run_dir(settings, row.id), "failed", reason)
            logger.warning("retrain run %s marked failed: %s", row.id, reason)
    recover_challenges(settings, engine, registry)
    return len(stale)


def run_dir(settings: Settings, run_id: str) -> Path:
    return settings.runs_dir / f"{RUN_DIR_PREFIX}{run_id}"


def mark_run_dir(path: Path, status: str, error: str | None) -> None:
    """Write `status.json` in a cycle's directory; drop its PPO checkpoints (resume-only data)."""
    if not path.is_dir():
        return
    for checkpoint in path.glob("ppo/*checkpoint*"):
        shutil.rmtree(checkpoint, ignore_errors=True)
    data = {"status": status, "error": error, "at": utcnow().isoformat()}
    (path / STATUS_FILE).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
