"""FastAPI dependencies as `Annotated` aliases; everything comes from `app.state` (lifespan)."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from kindchat.config import Settings
from kindchat.feedback.db import session_scope
from kindchat.models.manager import ModelManager
from kindchat.serve.errors import AuthenticationError, PermissionDeniedError
from kindchat.serve.metrics import Metrics
from kindchat.serve.service import ChatService


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.manager
    return manager


def get_service(request: Request) -> ChatService:
    service: ChatService = request.app.state.service
    return service


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_db_session(request: Request) -> Iterator[Session]:
    with session_scope(request.app.state.db) as session:
        yield session


def require_admin(request: Request) -> None:
    """Bearer `settings.admin_token`; admin routes answer 403 when no token is configured."""
    settings = get_settings(request)
    if settings.admin_token is None:
        raise PermissionDeniedError(
            "admin routes are off; set KINDCHAT_ADMIN_TOKEN to enable them", code="admin_disabled"
        )
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("send the admin token as `Authorization: Bearer <token>`")
    if not hmac.compare_digest(token.encode(), settings.admin_token.get_secret_value().encode()):
        raise PermissionDeniedError("the admin token is wrong", code="invalid_admin_token")


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[ModelManager, Depends(get_manager)]
ServiceDep = Annotated[ChatService, Depends(get_service)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
DbSessionDep = Annotated[Session, Depends(get_db_session)]
AdminDep = Annotated[None, Depends(require_admin)]
