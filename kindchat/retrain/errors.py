"""Typed errors of the retrain loop; the HTTP layer maps them once (kindchat/serve/errors.py)."""

from __future__ import annotations


class RetrainError(Exception):
    """Base of every error the retrain loop raises on purpose."""


class RetrainBusyError(RetrainError):
    """Another retrain cycle (this or another process) holds the lock (HTTP 409)."""


class PromotionError(RetrainError, ValueError):
    """A promotion or rollback the registry state forbids: wrong model kind, nothing to roll
    back to, or the served alias moved while a cycle was training (HTTP 409)."""


class RetrainFailedError(RetrainError):
    """A cycle stage raised; the run is recorded as failed and the aliases are untouched."""

    def __init__(self, message: str, *, run_id: str, stage: str | None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.stage = stage
