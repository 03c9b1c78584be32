"""Operating the loop: the one admin check, promote, rollback, retrain, the dashboard, and the
background bootstrap's progress."""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from kindchat.config import Settings
from kindchat.feedback import run_records, statistics
from kindchat.feedback.db import session_scope
from kindchat.feedback.models import RetrainRunPublic
from kindchat.models.manager import ModelManager, ReloadReport
from kindchat.retrain import admin
from kindchat.retrain.background import BackgroundBootstrap
from kindchat.retrain.ppo_log import LOG_FILE as PPO_LOG_FILE
from kindchat.retrain.ppo_log import read_log as read_ppo_log
from kindchat.serve.errors import AdminDisabledError, AdminTokenError
from kindchat.serve.protocol import Dashboard
from kindchat.serve.services.arena import ArenaService

if TYPE_CHECKING:
    from kindchat.retrain.admin import AliasChange


class AdminService:
    """`settings` is handed whole to the retrain side (`admin.promote`, `trigger_retrain`: they
    read the registry, the lock and the cycle's configuration); this class itself reads
    `admin_token` and `metrics_open()` only."""

    def __init__(
        self,
        settings: Settings,
        manager: ModelManager,
        db: Engine,
        arena: ArenaService,
        background: BackgroundBootstrap | None = None,
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.db = db
        self.arena = arena
        self.background = background

    # ---- the one admin check (the API's admin routes and the dashboard's buttons) ----------
    def check_admin(self, token: str | None) -> None:
        """AdminDisabledError when no admin token is configured, AdminTokenError when `token`
        is missing or is not it (compared in constant time)."""
        expected = self.settings.admin_token
        if expected is None:
            raise AdminDisabledError(
                "admin routes are off; set KINDCHAT_ADMIN_TOKEN to enable them"
            )
        if not token or not secrets.compare_digest(
            token.encode(), expected.get_secret_value().encode()
        ):
            raise AdminTokenError("the admin token is wrong")

    def is_admin(self, token: str | None) -> bool:
        """Whether :meth:`check_admin` lets `token` through."""
        try:
            self.check_admin(token)
        except (AdminDisabledError, AdminTokenError):
            return False
        return True

    def check_metrics(self, token: str | None) -> None:
        """`/metrics` is open when configured so (`metrics_open()`), else admin-only."""
        if not self.settings.metrics_open():
            self.check_admin(token)

    # ---- actions ----------------------------------------------------------------------------
    async def promote(self, version: str, alias: str) -> tuple[AliasChange, ReloadReport]:
        """Point `alias` at `version` (:func:`kindchat.retrain.admin.promote`: kind checks,
        atomic) and hot-swap now; the change and what the swap loaded or failed to load."""
        change = await asyncio.to_thread(admin.promote, self.settings, version, alias)
        return change, await self.manager.reload("promote")

    async def rollback(self, alias: str) -> tuple[AliasChange, ReloadReport]:
        """Point `alias` back at its previous version and hot-swap now."""
        change = await asyncio.to_thread(admin.rollback, self.settings, alias)
        return change, await self.manager.reload("rollback")

    async def trigger_retrain(self, *, force: bool = False) -> RetrainRunPublic:
        """Queue one retrain cycle in a low-priority child process; the run (`queued`).
        `force` ignores the minimum of new feedback; a cycle already running -> 409."""
        return await asyncio.to_thread(
            admin.trigger_retrain, self.settings, engine=self.db, force=force
        )

    # ---- views ------------------------------------------------------------------------------
    def bootstrap(self) -> dict[str, Any]:
        """The background bootstrap (`GET /v1/bootstrap`, the chat banner, the dashboard): its
        stages with progress and an estimate of the time left, and the served versions."""
        served = self.manager.status()["aliases"]
        if self.background is None:
            return {"active": False, "status": "off", "served": served}
        return {**self.background.view(), "served": served}

    def dashboard(self) -> Dashboard:
        """Feedback per day and per version, retrain runs, versions and aliases, the newest PPO
        curves, the challenge (blocking: call it in a thread)."""
        with session_scope(self.db) as session:
            stats = statistics.feedback_stats(session=session)
            per_day = statistics.feedback_per_day(session=session)
            runs = run_records.list_runs(session=session, limit=50)
        registry = self.manager.registry
        versions = registry.versions()
        data = Dashboard(
            stats=stats,
            per_day=per_day,
            runs=runs,
            versions=versions,
            aliases=registry.aliases(),
            serving=dict(self.manager.status()["aliases"]),
            serving_failures=dict(self.manager.failures),
            challenger=self.arena.challenger(),
            bootstrap=self.bootstrap(),
        )
        for manifest in reversed([m for m in versions if m.kind == "policy"]):
            directory = registry.root / manifest.version
            if (directory / PPO_LOG_FILE).is_file():
                data.ppo_version, data.ppo_log = manifest.version, read_ppo_log(directory)
                break
        return data
