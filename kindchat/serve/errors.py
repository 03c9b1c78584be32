"""Typed API errors, and the one place every error becomes OpenAI-style error JSON.

Body: ``{"error": {"message", "type", "param", "code"}}``. Errors from the layers below (registry,
template, backends, feedback store) are mapped here once, by type; routes just raise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kindchat.feedback.errors import FeedbackError
from kindchat.models.backends.base import (
    BackendError,
    BackendUnavailableError,
    InputTooLongError,
    QueueFullError,
)
from kindchat.models.registry import RegistryError, UnknownModelError
from kindchat.models.template import ConversationError, PromptTooLongError
from kindchat.retrain.errors import PromotionError, RetrainBusyError
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


class NotFoundError(ApiError):
    status_code = 404
    type = "not_found_error"


class ConflictError(ApiError):
    status_code = 409
    type = "conflict_error"


class PayloadTooLargeError(ApiError):
    status_code = 413
    code = "context_length_exceeded"


class OverloadedError(ApiError):
    status_code = 429
    type = "rate_limit_error"
    code = "server_busy"


class ServiceUnavailableError(ApiError):
    status_code = 503
    type = "service_unavailable"


@dataclass(frozen=True)
class Mapping:
    status_code: int
    type: str
    code: str | None = None
    param: str | None = None


# Errors of the layers below, by type (first match wins, so subclasses come first).
FOREIGN: list[tuple[type[Exception], Mapping]] = [
    (RetrainBusyError, Mapping(409, "conflict_error", "retrain_busy")),
    (PromotionError, Mapping(409, "conflict_error", "invalid_promotion")),
    (UnknownModelError, Mapping(404, "not_found_error", "model_not_found", "model")),
    (RegistryError, Mapping(503, "service_unavailable", "model_unavailable", "model")),
    (
        InputTooLongError,
        Mapping(413, "invalid_request_error", "context_length_exceeded", "messages"),
    ),
    (
        PromptTooLongError,
        Mapping(413, "invalid_request_error", "context_length_exceeded", "messages"),
    ),
    (ConversationError, Mapping(400, "invalid_request_error", "invalid_messages", "messages")),
    (QueueFullError, Mapping(429, "rate_limit_error", "server_busy")),
    (BackendUnavailableError, Mapping(503, "service_unavailable", "backend_unavailable")),
    (BackendError, Mapping(503, "service_unavailable", "backend_error")),
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
    if isinstance(err, FeedbackError):
        api = ApiError(str(err), param=err.field, code=err.code)
        api.status_code = err.status_code
        api.type = "invalid_request_error" if err.status_code < 500 else "service_unavailable"
        return api
    for kind, mapping in FOREIGN:
        if isinstance(err, kind):
            retry = None
            if mapping.status_code in (429, 503):
                retry = max(getattr(err, "retry_after", 0) or 0, default_retry_after)
            api = ApiError(str(err), param=mapping.param, code=mapping.code, retry_after=retry)
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
        (FeedbackError, handle_known),
        *((kind, handle_known) for kind, _ in FOREIGN),
        (Exception, handle_known),  # anything else: 500, logged with its traceback
    ]
    for kind, handler in handlers:
        app.add_exception_handler(kind, handler)
