"""FastAPI dependencies as `Annotated` aliases; everything comes from `app.state` (lifespan)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from kindchat.config import Settings
from kindchat.models.manager import ModelManager
from kindchat.serve.errors import AdminTokenError, AuthenticationError
from kindchat.serve.gate import Gate, bearer
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


def get_gate(request: Request) -> Gate:
    gate: Gate = request.app.state.gate
    return gate


def require_admin(request: Request) -> None:
    """`Authorization: Bearer <token>` through the service's one admin check: 403 when admin
    routes are off or the token is wrong, 401 when no token is sent."""
    sent = bearer(request)
    try:
        get_service(request).check_admin(sent)
    except AdminTokenError:
        if sent is None:
            raise AuthenticationError(
                "send the admin token as `Authorization: Bearer <token>`"
            ) from None
        raise


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[ModelManager, Depends(get_manager)]
ServiceDep = Annotated[ChatService, Depends(get_service)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
GateDep = Annotated[Gate, Depends(get_gate)]
