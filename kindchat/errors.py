"""One error family. Every error kindchat raises on purpose is a :class:`KindchatError` of one
of a few kinds; each room raises its own subclasses (``RegistryError``, ``FeedbackError``,
``RetrainError``, ``BackendError``…), named for what went wrong.

The kinds say how a caller should react, not which protocol reports it:

=====================  ====================================================================
kind                   meaning
=====================  ====================================================================
:class:`InvalidError`  the input is wrong; fix it and retry (also a ``ValueError``)
:class:`NotFoundError` an id or name refers to nothing (also a ``LookupError``)
:class:`ForbiddenError` the caller may not act on this object
:class:`ConflictError` the stored state forbids it now (a second vote, a running cycle)
:class:`BusyError`     try again in a moment (`retry_after` seconds)
:class:`UnavailableError` a dependency is down or broken (a model, a backend, the judge)
=====================  ====================================================================

HTTP statuses are assigned in one place, ``kindchat/serve/errors.py``; exit codes in one place,
``kindchat/cli/common.py``. Nothing below them knows either.
"""

from __future__ import annotations


class KindchatError(Exception):
    """Base of every error kindchat raises on purpose; `field` names the input at fault and
    `code` is a stable machine-readable name (OpenAI-style error `code` in the API)."""

    code = "error"

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        if code is not None:
            self.code = code


class InvalidError(KindchatError, ValueError):
    """The input cannot be accepted as it is."""

    code = "invalid_value"


class TooLongError(InvalidError):
    """The input is over a length limit (a prompt over the model's context)."""

    code = "context_length_exceeded"


class NotFoundError(KindchatError, LookupError):
    """An id or name refers to nothing stored."""

    code = "not_found"


class ForbiddenError(KindchatError):
    """The caller may not act on this object, e.g. vote on another session's battle."""

    code = "forbidden"


class ConflictError(KindchatError):
    """The stored state forbids the action now, e.g. a second vote on a battle."""

    code = "conflict"


class BusyError(KindchatError):
    """Too much work right now; try again after `retry_after` seconds."""

    code = "busy"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: str) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class UnavailableError(KindchatError):
    """A dependency (a model version, a generation backend, the judge) is down or broken."""

    code = "unavailable"
