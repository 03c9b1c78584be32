"""Generation backends behind one interface (:class:`GenerationBackend`): hf, deepspeed, openai, tgi."""

from __future__ import annotations

from kindchat.models.backends.base import (
    BackendError,
    BackendName,
    BackendUnavailableError,
    GenerationBackend,
    GenerationOptions,
    InputTooLongError,
    QueueFullError,
    TextDelta,
)

__all__ = [
    "BackendError",
    "BackendName",
    "BackendUnavailableError",
    "GenerationBackend",
    "GenerationOptions",
    "InputTooLongError",
    "QueueFullError",
    "TextDelta",
]
