"""When to retrain: APScheduler 3 decides, :func:`kindchat.retrain.admin.trigger_retrain` does.

A `BackgroundScheduler` keeps one cron job (default nightly 03:00 Asia/Seoul) in a
`SQLAlchemyJobStore` in the feedback database (table `apscheduler_jobs`, created by APScheduler
itself), so the job and its next run time survive restarts; a run missed while the server was
down starts late within `retrain_misfire_grace_s`, several missed runs coalesce into one, and one
instance runs at a time. Several servers on one database elect one leader through it (see
:class:`RetrainScheduler`): the night fires once. The job runs the cycle in a niced child
process and waits; should a cycle run already (an admin trigger), it logs that it is busy.

With `retention_days` set, the leader also runs the retention job (`kindchat-retention`: at
start, then every `retention_check_s`), which removes conversations whose last message is older
than that, with their ratings and battles (:func:`kindchat.feedback.store.purge_expired`).
"""

from __future__ import annotations

import logging
import shutil
import threading
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from kindchat.config import Settings
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.models import utcnow
from kindchat.feedback.store import purge_expired
from kindchat.locks import Lease, postgres_url
from kindchat.retrain import admin
from kindchat.retrain.errors import RetrainBusyError

logger = logging.getLogger(__name__)

JOB_ID = "kindchat-retrain"
RETENTION_JOB_ID = "kindchat-retention"
JOB_TABLE = "apscheduler_jobs"
LEADER_LOCK = "retrain-scheduler"
LEADER_FILE = "scheduler.lock"
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


def purge_files(settings: Settings, before: datetime) -> int:
    """Training files older than `before`: each retrain run's exported data (`runs/*/data`,
    with placeholders for personal data, but still users' words) and the judge's cache. What
    stays of a run is its record (counts and the data's fingerprint). Returns files removed."""
    cutoff = before.timestamp()
    removed = 0
    for data in settings.runs_dir.glob("*/data"):
        if data.is_dir() and data.stat().st_mtime < cutoff:
            removed += sum(1 for p in data.rglob("*") if p.is_file())
            shutil.rmtree(data, ignore_errors=True)
    cache = settings.home / "cache" / "judge"
    for path in cache.rglob("*") if cache.is_dir() else ():
        if path.is_file() and path.stat().st_mtime < cutoff:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def scheduled_purge(settings_data: dict[str, Any]) -> None:
    """The retention job: remove conversations (with their ratings and battles) and training
    files older than `retention_days`."""
    settings = Settings(**settings_data)
    if not settings.retention_days:
        return
    before = utcnow() - timedelta(days=settings.retention_days)
    engine = init_db(settings)
    try:
        with session_scope(engine) as session:
            removed = purge_expired(session=session, before=before)
    finally:
        engine.dispose()
    files = purge_files(settings, before)
    logger.info(
        "retention (%s days): removed %s and %d training file(s)",
        settings.retention_days,
        dict(removed),
        files,
    )


def scheduled_retrain(settings_data: dict[str, Any]) -> None:
    """The stored job: one cycle in a child process, waited for (a busy lock is only logged)."""

    settings = Settings(**settings_data)
    try:
        run = admin.trigger_retrain(settings, wait=True)
    except RetrainBusyError as err:
        logger.info("scheduled retrain not started: %s", err)
        return
    logger.info("scheduled retrain run %s: %s %s", run.id, run.status, run.error or "")


class RetrainScheduler:
    """The server's retrain schedule; `start()` in the lifespan, `shutdown()` on exit.

    Only the leader runs the scheduler: the server holding the `retrain-scheduler` lease (an
    advisory lock on PostgreSQL, so one leader across hosts; a file lock in the home on
    SQLite). The others check every `retrain_leader_check_s` and take over when the leader's
    lease goes (its process or connection died); a night missed meanwhile still runs within
    the misfire grace time, from the stored job.
    """

    def __init__(
        self, settings: Settings, engine: Engine | None = None, *, retrain: bool = True
    ) -> None:
        self.settings = settings
        self.retrain = retrain  # the nightly job (off: only retention, when retention_days)
        self.engine = engine if engine is not None else init_db(settings)
        self.trigger = cron_trigger(settings)
        self.lease = Lease(LEADER_LOCK, settings.home / LEADER_FILE, url=postgres_url(settings))
        self.scheduler: BackgroundScheduler | None = None
        self._stop = threading.Event()
        self._watch: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def is_leader(self) -> bool:
        return self.retrain and self.scheduler is not None and self.scheduler.running

    def start(self) -> Job | None:
        """Lead at once if nobody else does (the job, else None), and keep watching. Without
        the nightly job (`retrain=False`), only retention runs: on every server, in memory, no
        lease (removing what expired twice removes nothing more), and the stored nightly job —
        another server's — is left alone."""
        if not self.retrain:
            self._start_retention_only()
            return None
        job = self._step()
        self._watch = threading.Thread(
            target=self._watch_leader, name="retrain-leader", daemon=True
        )
        self._watch.start()
        return job

    def _watch_leader(self) -> None:
        while not self._stop.wait(self.settings.retrain_leader_check_s):
            try:
                self._step()
            except Exception:  # a database hiccup must not end the watch
                logger.exception("retrain scheduler: leadership check failed")

    def _step(self) -> Job | None:
        with self._lock:
            if self._stop.is_set():
                return None
            if self.lease.holding:
                if not self.lease.alive():
                    logger.warning("retrain scheduler: lost the leader lease; following now")
                    self._stop_scheduler()
                return None
            if not self.lease.acquire():
                return None
            logger.info("retrain scheduler: this server leads the schedule")
            try:
                return self._start_scheduler()
            except Exception:
                self.lease.release()
                raise

    def _start_scheduler(self) -> Job:
        """Start, keeping the stored job (and its next run time) when nothing about it changed."""
        scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.engine, tablename=JOB_TABLE)},
            job_defaults={
                "max_instances": 1,
                "coalesce": True,
                "misfire_grace_time": self.settings.retrain_misfire_grace_s,
            },
            timezone=self.trigger.timezone,
        )
        scheduler.start(paused=True)
        kwargs = {"settings_data": job_settings(self.settings)}
        job = scheduler.get_job(JOB_ID)
        if job is None or str(job.trigger) != str(self.trigger) or job.kwargs != kwargs:
            job = scheduler.add_job(
                scheduled_retrain,
                self.trigger,
                id=JOB_ID,
                name="nightly retrain",
                kwargs=kwargs,
                replace_existing=True,
            )
        if self.settings.retention_days:
            self._add_retention(scheduler, kwargs)
        elif scheduler.get_job(RETENTION_JOB_ID) is not None:
            scheduler.remove_job(RETENTION_JOB_ID)
        scheduler.resume()
        self.scheduler = scheduler
        logger.info("retrain scheduled (%s); next run %s", self.trigger, self.next_run_time())
        return job

    def _start_retention_only(self) -> None:
        scheduler = BackgroundScheduler(
            job_defaults={"max_instances": 1, "coalesce": True}, timezone=self.trigger.timezone
        )
        self._add_retention(scheduler, {"settings_data": job_settings(self.settings)})
        scheduler.start()
        self.scheduler = scheduler
        logger.info("retention every %ss", self.settings.retention_check_s)

    def _add_retention(self, scheduler: BackgroundScheduler, kwargs: dict[str, Any]) -> None:
        """The retention job: at once, then every `retention_check_s`."""
        scheduler.add_job(
            scheduled_purge,
            IntervalTrigger(seconds=self.settings.retention_check_s),
            id=RETENTION_JOB_ID,
            name="retention",
            kwargs=kwargs,
            replace_existing=True,
            next_run_time=datetime.now(self.trigger.timezone),
        )

    def next_run_time(self) -> datetime | None:
        if self.scheduler is None:
            return stored_next_run_time(self.settings, self.engine)
        job = self.scheduler.get_job(JOB_ID)
        return job.next_run_time if job is not None else None

    def _stop_scheduler(self, wait: bool = False) -> None:
        """Stop; a job due at this very moment stays due in the store (it runs after restart).

        APScheduler 3 processes due jobs once more while shutting down and, failing to submit
        them, moves their next run time on; detaching the job store first prevents that.
        """
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is None or not scheduler.running:
            return
        scheduler.pause()
        scheduler.remove_jobstore("default")
        scheduler.shutdown(wait=wait)

    def shutdown(self, wait: bool = False) -> None:
        """Stop scheduling and give up the lease (another server takes over)."""
        self._stop.set()
        with self._lock:
            self._stop_scheduler(wait)
            self.lease.release()
        if self._watch is not None and self._watch is not threading.current_thread():
            self._watch.join(5)


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
