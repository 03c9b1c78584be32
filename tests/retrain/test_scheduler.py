"""The retrain schedule: cron from settings, the job in the database, a missed night made up."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import inspect

from kindchat.config import Settings
from kindchat.feedback.db import init_db
from kindchat.retrain import admin
from kindchat.retrain.scheduler import (
    JOB_ID,
    JOB_TABLE,
    RetrainScheduler,
    cron_trigger,
    job_settings,
    stored_next_run_time,
)

SEOUL = ZoneInfo("Asia/Seoul")


def test_default_is_nightly_at_three_in_seoul(settings: Settings) -> None:
    trigger = cron_trigger(settings)
    after = datetime(2025, 1, 31, 12, 0, tzinfo=SEOUL)
    fire = trigger.get_next_fire_time(None, after)
    assert fire == datetime(2025, 2, 1, 3, 0, tzinfo=SEOUL)
    assert fire.astimezone(UTC).hour == 18  # 03:00 KST is 18:00 UTC the day before


def test_bad_cron_or_time_zone_is_a_clear_error(settings: Settings) -> None:
    with pytest.raises(ValueError, match="crontab"):
        cron_trigger(settings.model_copy(update={"retrain_cron": "every night"}))
    with pytest.raises(ValueError, match="not a time zone"):
        cron_trigger(settings.model_copy(update={"retrain_timezone": "Mars/Olympus"}))


def test_stored_job_keeps_no_secrets(settings: Settings) -> None:
    secret = Settings.model_validate({**settings.model_dump(), "admin_token": "s3cret"})
    data = job_settings(secret)
    assert "admin_token" not in data and "judge_api_key" not in data
    assert Settings(**data).home == settings.home


def test_job_survives_a_restart_and_a_missed_night_runs_late(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    fired = threading.Event()
    calls: list[dict[str, Any]] = []

    def fake_trigger(s: Settings, **kwargs: Any) -> Any:
        calls.append({"home": s.home, **kwargs})
        fired.set()
        raise admin.RetrainBusyError("pretend another server is training")  # logged, not raised

    monkeypatch.setattr(admin, "trigger_retrain", fake_trigger)
    engine = init_db(settings)
    first = RetrainScheduler(settings, engine)
    job = first.start()
    assert job.id == JOB_ID and job.trigger.timezone == SEOUL
    next_run = first.next_run_time()
    assert next_run is not None and (next_run.hour, next_run.minute) == (3, 0)
    assert first.scheduler.get_job(JOB_ID).max_instances == 1  # type: ignore[union-attr]
    # The server was down at 03:00: the stored next run time lies 5 minutes in the past.
    first.scheduler.pause()
    first.scheduler.modify_job(JOB_ID, next_run_time=datetime.now(SEOUL) - timedelta(minutes=5))
    first.shutdown()
    assert JOB_TABLE in inspect(init_db(settings)).get_table_names()
    assert stored_next_run_time(settings) is not None
    assert not fired.is_set()

    second = RetrainScheduler(settings, init_db(settings))  # a restarted server
    try:
        second.start()
        assert fired.wait(20), "the missed run did not start within the misfire grace time"
        assert calls[0]["home"] == settings.home and calls[0]["wait"] is True
        later = second.next_run_time()
        assert later is not None and later > datetime.now(SEOUL)
    finally:
        second.shutdown()
    assert len(calls) == 1  # coalesced: one run for the missed night


def test_a_changed_schedule_replaces_the_stored_job(settings: Settings) -> None:
    scheduler = RetrainScheduler(settings)
    scheduler.start()
    scheduler.shutdown()
    hourly = settings.model_copy(update={"retrain_cron": "30 * * * *"})
    restarted = RetrainScheduler(hourly)
    try:
        restarted.start()
        next_run = restarted.next_run_time()
        assert next_run is not None and next_run.minute == 30
    finally:
        restarted.shutdown()
