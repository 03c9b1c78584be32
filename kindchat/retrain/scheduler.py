"""When to retrain: APScheduler 3 decides, :func:`kindchat.retrain.admin.trigger_retrain` does.

A `BackgroundScheduler` keeps one cron job (default nightly 03:00 Asia/Seoul) in a
`SQLAlchemyJobStore` in the feedback database (table `apscheduler_jobs`, created by APScheduler
itself), so the job and its next run time survive restarts; a run missed while the server was
down starts late within `retrain_misfire_grace_s`, several missed runs coalesce into one, and one
instance runs at a time. Two servers on one database both fire: the retrain lock lets one train
and the other logs that it is busy. The job runs the cycle in a niced child process and waits.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from sqlalchemy import Engine

from kindchat.config import Settings
from kindchat.feedback.db import init_db
from kindchat.retrain.errors import RetrainBusyError

logger = logging.getLogger(__name__)

JOB_ID = "kindchat-retrain"
JOB_TABLE = "apscheduler_jobs"
SECRET_FIELDS = ("admin_token", "judge_api_key")  # never pickled into the job store


def cron_trigger(settings: Settings) -> CronTrigger:
    """`settings.retrain_cron` (crontab syntax) in `settings.retrain_timezone`."""
    try:
        zone = ZoneInfo(settings.retrain_timezone)
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"retrain_timezone {settings.retrain_timezone!r} is not a time zone ({err})"
        ) from None
    try:
        return CronTrigger.from_crontab(settings.retrain_cron, timezone=zone)
    except ValueError as err:
        raise ValueError(
            f"retrain_cron {settings.retrain_cron!r} is not a crontab expression "
            f"(minute hour day month weekday, e.g. '0 3 * * *'): {err}"
        ) from None


def job_settings(settings: Settings) -> dict[str, Any]:
    """Settings for the stored job: JSON-ready, secrets left out (the environment has them)."""
    return settings.model_dump(mode="json", exclude=set(SECRET_FIELDS))


def scheduled_retrain(settings_data: dict[str, Any]) -> None:
    """The stored job: one cycle in a child process, waited for (a busy lock is only logged)."""
    from kindchat.retrain.admin import trigger_retrain

    settings = Settings(**settings_data)
    try:
        run = trigger_retrain(settings, wait=True)
    except RetrainBusyError as err:
        logger.info("scheduled retrain not started: %s", err)
        return
    logger.info("scheduled retrain run %s: %s %s", run.id, run.status, run.error or "")


class RetrainScheduler:
    """The server's retrain schedule; `start()` in the lifespan, `shutdown()` on exit."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine if engine is not None else init_db(settings)
        self.trigger = cron_trigger(settings)
        self.scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.engine, tablename=JOB_TABLE)},
            job_defaults={
                "max_instances": 1,
                "coalesce": True,
                "misfire_grace_time": settings.retrain_misfire_grace_s,
            },
            timezone=self.trigger.timezone,
        )

    def start(self) -> Job:
        """Start, keeping the stored job (and its next run time) when nothing about it changed."""
        self.scheduler.start(paused=True)
        kwargs = {"settings_data": job_settings(self.settings)}
        job = self.scheduler.get_job(JOB_ID)
        if job is None or str(job.trigger) != str(self.trigger) or job.kwargs != kwargs:
            job = self.scheduler.add_job(
                scheduled_retrain,
                self.trigger,
                id=JOB_ID,
                name="nightly retrain",
                kwargs=kwargs,
                replace_existing=True,
            )
        self.scheduler.resume()
        logger.info("retrain scheduled (%s); next run %s", self.trigger, self.next_run_time())
        return job

    def next_run_time(self) -> datetime | None:
        job = self.scheduler.get_job(JOB_ID)
        return job.next_run_time if job is not None else None

    def shutdown(self, wait: bool = False) -> None:
        """Stop; a job due at this very moment stays due in the store (it runs after restart).

        APScheduler 3 processes due jobs once more while shutting down and, failing to submit
        them, moves their next run time on; detaching the job store first prevents that.
        """
        if not self.scheduler.running:
            return
        self.scheduler.pause()
        self.scheduler.remove_jobstore("default")
        self.scheduler.shutdown(wait=wait)


def stored_next_run_time(settings: Settings, engine: Engine | None = None) -> datetime | None:
    """The next run time in the job store, read without starting a scheduler (CLI status)."""
    jobstore = SQLAlchemyJobStore(
        engine=engine if engine is not None else init_db(settings), tablename=JOB_TABLE
    )
    jobstore.start(BackgroundScheduler(), "default")  # creates the table if missing
    try:
        job = jobstore.lookup_job(JOB_ID)
    finally:
        jobstore.shutdown()
    return job.next_run_time if job is not None else None
