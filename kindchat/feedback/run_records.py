"""Retrain-run records: one row per retrain cycle (or challenger decision), its status, stage,
metrics, error and produced versions — what `kindchat retrain status`, `/v1/admin/retrain-runs`
and the dashboard show. Written by the retrain loop's run recorder."""

from __future__ import annotations

import enum
from typing import Any

from sqlmodel import Session, col, select

from kindchat.feedback.errors import InvalidValueError, StateConflictError
from kindchat.feedback.models import (
    RUN_STATUSES,
    TERMINAL_RUN_STATUSES,
    RetrainRun,
    RetrainRunPublic,
    utcnow,
)
from kindchat.feedback.validation import (
    MAX_CONTENT_CHARS,
    check_json,
    check_limit,
    check_optional_str,
    check_str,
    get_row,
    to_public,
)


class _Unset(enum.Enum):
    UNSET = "UNSET"


UNSET = _Unset.UNSET  # "leave this field as it is" in update_run


def _check_status(status: Any) -> str:
    if status not in RUN_STATUSES:
        raise InvalidValueError(
            f"status must be one of {list(RUN_STATUSES)}, got {status!r}", field="status"
        )
    return str(status)


def create_run(
    *, session: Session, status: str = "queued", stage: str | None = None
) -> RetrainRunPublic:
    """Record a retrain run (issue 8's `run_retrain_cycle` creates one per cycle)."""
    row = RetrainRun(status=_check_status(status), stage=check_optional_str(stage, "stage"))
    now = utcnow()
    if row.status != "queued":
        row.started_at = now
    if row.status in TERMINAL_RUN_STATUSES:
        row.finished_at = now
    public = to_public(RetrainRunPublic, row)
    session.add(row)
    session.flush()
    return public


def update_run(
    *,
    session: Session,
    run_id: str,
    status: str | _Unset = UNSET,
    stage: str | None | _Unset = UNSET,
    metrics: dict[str, Any] | None | _Unset = UNSET,
    error: str | None | _Unset = UNSET,
    produced_versions: list[str] | None | _Unset = UNSET,
    promoted: bool | _Unset = UNSET,
) -> RetrainRunPublic:
    """Change the given fields of a run (omitted ones stay). `metrics` replaces the old dict.

    Moving to `running` stamps `started_at`; to a final status (succeeded, failed, refused,
    skipped) stamps `finished_at`. A finished run cannot change status again (StateConflictError).
    """
    row = get_row(session, RetrainRun, run_id, "retrain run", "run_id")
    now = utcnow()
    if not isinstance(status, _Unset):
        status = _check_status(status)
        if row.status in TERMINAL_RUN_STATUSES and status != row.status:
            raise StateConflictError(
                f"run {run_id!r} finished as {row.status!r}; it cannot become {status!r}",
                field="status",
            )
        if status != "queued" and row.started_at is None:
            row.started_at = now
        if status in TERMINAL_RUN_STATUSES and row.finished_at is None:
            row.finished_at = now
        row.status = status
    if not isinstance(stage, _Unset):
        row.stage = check_optional_str(stage, "stage")
    if not isinstance(metrics, _Unset):
        if metrics is not None and not isinstance(metrics, dict):
            raise InvalidValueError("metrics must be an object (dict) or null", field="metrics")
        row.metrics = check_json(metrics, "metrics")
    if not isinstance(error, _Unset):
        if error is not None:
            check_str(error, "error", max_len=MAX_CONTENT_CHARS, allow_empty=True)
        row.error = error
    if not isinstance(produced_versions, _Unset):
        if produced_versions is not None and (
            not isinstance(produced_versions, list)
            or not all(isinstance(v, str) and v for v in produced_versions)
        ):
            raise InvalidValueError(
                "produced_versions must be a list of version ids", field="produced_versions"
            )
        row.produced_versions = None if produced_versions is None else list(produced_versions)
    if not isinstance(promoted, _Unset):
        if not isinstance(promoted, bool):
            raise InvalidValueError(
                f"promoted must be true or false, got {promoted!r}", field="promoted"
            )
        row.promoted = promoted
    session.add(row)
    public = to_public(RetrainRunPublic, row)
    session.flush()
    return public


def get_run(*, session: Session, run_id: str) -> RetrainRunPublic:
    """The run, or :class:`UnknownIdError`."""
    return to_public(
        RetrainRunPublic, get_row(session, RetrainRun, run_id, "retrain run", "run_id")
    )


def list_runs(
    *, session: Session, status: str | None = None, limit: int = 50, offset: int = 0
) -> list[RetrainRunPublic]:
    """Runs, newest first, optionally of one status."""
    check_limit(limit, offset)
    query = select(RetrainRun)
    if status is not None:
        query = query.where(RetrainRun.status == _check_status(status))
    query = (
        query.order_by(col(RetrainRun.created_at).desc(), col(RetrainRun.id))
        .offset(offset)
        .limit(limit)
    )
    return [to_public(RetrainRunPublic, row) for row in session.exec(query)]
