"""Typed errors of the retrain loop: :class:`RetrainError`s of the kinds in :mod:`kindchat.errors`
(the API and the CLI map the kinds once)."""

from __future__ import annotations

from kindchat.errors import ConflictError, KindchatError


class RetrainError(KindchatError):
    """Base of every error the retrain loop raises on purpose."""


class RetrainBusyError(RetrainError, ConflictError):
    """Another retrain cycle (this or another process or host) holds the lock."""

    code = "retrain_busy"


class PromotionError(RetrainError, ConflictError):
    """A promotion or rollback the registry state forbids: wrong model kind, nothing to roll
    back to, or the served alias moved while a cycle was training."""

    code = "invalid_promotion"


class RetrainFailedError(RetrainError):
    """A cycle stage raised; the run is recorded as failed and the aliases are untouched."""

    def __init__(self, message: str, *, run_id: str, stage: str | None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.stage = stage
