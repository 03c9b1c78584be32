"""Typed API errors, and the one place every error becomes OpenAI-style error JSON.

Body: ``{"error": {"message", "type", "param", "code"}}``. Every :class:`~kindchat.errors.KindchatError`
of the layers below (registry, template, backends, feedback store, retrain loop) gets its status
here, by kind, with a few named exceptions; routes and the service just raise. HTTP-only errors
(authentication, request shape) are the :class:`ApiError`s below.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kindchat.errors import (
    BusyError,
    ConflictError,
    ForbiddenError,
    InvalidError,
    KindchatError,
    NotFoundError,
    TooLongError,
    UnavailableError,
)
from kindchat.feedback.errors import JudgeError, JudgeUnavailableError
from kindchat.models.backends.base import BackendError, BackendUnavailableError, QueueFullError
from kindchat.models.manager import ModelsStartingError
from kindchat.models.registry import RegistryError, UnknownModelError
from kindchat.models.template import ConversationError
from kindchat.serve.protocol import ErrorBody, ErrorResponse

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the API answers with `status_code`; `param` names the field at fault."""

    status_code = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code
        self.retry_after = retry_after


class InvalidRequestError(ApiError):
    status_code = 400


class AuthenticationError(ApiError):
    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(ApiError):
    status_code = 403
    type = "permission_error"


class PayloadTooLargeError(ApiError):
    status_code = 413
    code = "context_length_exceeded"


class OverloadedError(ApiError):
    status_code = 429
    type = "rate_limit_error"
    code = "server_busy"


@dataclass(frozen=True)
class Mapping:
    status_code: int
    type: str
    code: str | None = None
    param: str | None = None


class AdminDisabledError(ForbiddenError):
    """An admin action while no admin token is configured."""

    code = "admin_disabled"


class AdminTokenError(ForbiddenError):
    """An admin action with a wrong admin token."""

    code = "invalid_admin_token"


# Statuses of the layers' errors: a few named ones first, then by kind (first match wins).
BY_TYPE: list[tuple[type[Exception], Mapping]] = [
    (ModelsStartingError, Mapping(503, "service_unavailable", "model_starting", "model")),
    (UnknownModelError, Mapping(404, "not_found_error", "model_not_found", "model")),
    (RegistryError, Mapping(503, "service_unavailable", "model_unavailable", "model")),
    (TooLongError, Mapping(413, "invalid_request_error", "context_length_exceeded", "messages")),
    (ConversationError, Mapping(400, "invalid_request_error", "invalid_messages", "messages")),
    (QueueFullError, Mapping(429, "rate_limit_error", "server_busy")),
    (BackendUnavailableError, Mapping(503, "service_unavailable", "backend_unavailable")),
    (BackendError, Mapping(503, "service_unavailable", "backend_error")),
    (JudgeUnavailableError, Mapping(503, "service_unavailable")),
    (JudgeError, Mapping(502, "service_unavailable")),
    # the kinds
    (InvalidError, Mapping(422, "invalid_request_error")),
    (NotFoundError, Mapping(404, "not_found_error")),
    (ForbiddenError, Mapping(403, "permission_error")),
    (ConflictError, Mapping(409, "conflict_error")),
    (BusyError, Mapping(429, "rate_limit_error")),
    (UnavailableError, Mapping(503, "service_unavailable")),
    (KindchatError, Mapping(400, "invalid_request_error")),
]


def error_response(
    status_code: int,
    message: str,
    type_: str,
    *,
    param: str | None = None,
    code: str | None = None,
    retry_after: int | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=type_, param=param, code=code))
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse(body.model_dump(), status_code=status_code, headers=headers)


def to_api_error(err: BaseException, default_retry_after: int = 2) -> ApiError | None:
    """The :class:`ApiError` for a known error of a lower layer, else None."""
    if isinstance(err, ApiError):
        return err
    for kind, mapping in BY_TYPE:
        if isinstance(err, kind):
            retry = None
            if mapping.status_code in (429, 503):
                retry = max(int(getattr(err, "retry_after", 0) or 0), default_retry_after)
            field = getattr(err, "field", None)
            code = mapping.code or getattr(err, "code", None)
            api = ApiError(str(err), param=field or mapping.param, code=code, retry_after=retry)
            api.status_code = mapping.status_code
            api.type = mapping.type
            return api
    return None


def install_error_handlers(app: FastAPI, default_retry_after: int = 2) -> None:
    """Map every error to OpenAI-style JSON with the right status (the only place that does)."""

    def handle_known(request: Request, err: Exception) -> JSONResponse:
        api = to_api_error(err, default_retry_after)
        if api is None:
            logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=err)
            return error_response(500, "internal server error; see the server log", "server_error")
        if api.status_code >= 500:
            logger.warning(
                "%s %s -> %d: %s", request.method, request.url.path, api.status_code, api
            )
        return error_response(
            api.status_code,
            str(api),
            api.type,
            param=api.param,
            code=api.code,
            retry_after=api.retry_after,
        )

    def handle_validation(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, RequestValidationError)
        first = err.errors()[0] if err.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = first.get("msg", "invalid request")
        if param:
            message = f"{param}: {message}"
        return error_response(
            422, message, "invalid_request_error", param=param, code="invalid_value"
        )

    def handle_http(request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, StarletteHTTPException)
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return error_response(err.status_code, str(err.detail), kind)

    handlers: list[tuple[type[Exception], Callable[[Request, Exception], JSONResponse]]] = [
        (RequestValidationError, handle_validation),
        (StarletteHTTPException, handle_http),
        (ApiError, handle_known),
        (KindchatError, handle_known),
        (Exception, handle_known),  # anything else: 500, logged with its traceback
    ]
    for kind, handler in handlers:
        app.add_exception_handler(kind, handler)
