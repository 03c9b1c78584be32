"""FastAPI dependencies as `Annotated` aliases; everything comes from `app.state` (lifespan)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from kindchat.config import Settings
from kindchat.models.manager import ModelManager
from kindchat.serve.errors import AdminTokenError, AuthenticationError
from kindchat.serve.gate import Gate, bearer
from kindchat.serve.metrics import Metrics
from kindchat.serve.services import (
    AdminService,
    AnswerService,
    ArenaService,
    ConversationService,
    FeedbackService,
    Services,
)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.manager
    return manager


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_answers(request: Request) -> AnswerService:
    return get_services(request).answers


def get_conversations(request: Request) -> ConversationService:
    return get_services(request).conversations


def get_feedback(request: Request) -> FeedbackService:
    return get_services(request).feedback


def get_arena(request: Request) -> ArenaService:
    return get_services(request).arena


def get_admin(request: Request) -> AdminService:
    return get_services(request).admin


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_gate(request: Request) -> Gate:
    gate: Gate = request.app.state.gate
    return gate


def require_admin(request: Request) -> None:
    """`Authorization: Bearer <token>` through the admin service's one check: 403 when admin
    routes are off or the token is wrong, 401 when no token is sent."""
    sent = bearer(request)
    try:
        get_admin(request).check_admin(sent)
    except AdminTokenError:
        if sent is None:
            raise AuthenticationError(
                "send the admin token as `Authorization: Bearer <token>`"
            ) from None
        raise


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[ModelManager, Depends(get_manager)]
AnswersDep = Annotated[AnswerService, Depends(get_answers)]
ConversationsDep = Annotated[ConversationService, Depends(get_conversations)]
FeedbackDep = Annotated[FeedbackService, Depends(get_feedback)]
ArenaDep = Annotated[ArenaService, Depends(get_arena)]
AdminDep = Annotated[AdminService, Depends(get_admin)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
GateDep = Annotated[Gate, Depends(get_gate)]
