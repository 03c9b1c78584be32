"""Typed errors of the feedback store, judge and augmentation.

Each error carries the HTTP `status_code` the API answers with and, where one input is at
fault, the `field` it names; the HTTP layer maps :class:`FeedbackError` once, e.g.::

    @app.exception_handler(FeedbackError)
    def _(request, err):
        return JSONResponse({"error": {"message": str(err), "type": err.code,
                                       "param": err.field}}, status_code=err.status_code)
"""

from __future__ import annotations


class FeedbackError(Exception):
    """Base of every error this package raises on purpose."""

    status_code = 400
    code = "invalid_request_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidValueError(FeedbackError, ValueError):
    """An argument has the right type but a value the store cannot accept (422)."""

    status_code = 422
    code = "invalid_value"


class NotFoundError(FeedbackError, LookupError):
    """An id names no stored conversation, message, battle or run (404)."""

    status_code = 404
    code = "not_found"

    def __init__(self, kind: str, id_: str, *, field: str | None = None) -> None:
        super().__init__(f"no {kind} with id {id_!r}", field=field)
        self.kind = kind
        self.id = id_


class ForbiddenError(FeedbackError):
    """The caller's session may not act on this object, e.g. vote on another's battle (403)."""

    status_code = 403
    code = "forbidden"


class ConflictError(FeedbackError):
    """The action clashes with the stored state, e.g. a second vote on a battle (409)."""

    status_code = 409
    code = "conflict"


class JudgeError(FeedbackError):
    """The judge endpoint refused a request (bad key, unknown model, bad request)."""

    status_code = 502
    code = "judge_error"


class JudgeUnavailableError(JudgeError):
    """The judge endpoint could not be reached or kept failing after every retry (503)."""

    status_code = 503
    code = "judge_unavailable"


class JudgeReplyError(JudgeError):
    """The judge's reply held no usable scores, even after re-asking."""

    code = "judge_reply_unparseable"
