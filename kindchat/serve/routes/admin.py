"""`/v1/admin/*`: reload, retrain, promote, roll back, retrain runs, the dashboard — all behind
the bearer token.

The token check is the router's one dependency (`require_admin`), so no route can forget it.
The routes only translate HTTP to the service (`AdminService.promote`, …), the path the UI uses
too; it calls :mod:`kindchat.retrain.admin`, which the CLI shares.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query, Request

from kindchat.feedback.models import RetrainRunPublic
from kindchat.retrain import admin as retrain_admin
from kindchat.serve.deps import AdminDep, ManagerDep, SettingsDep, require_admin
from kindchat.serve.protocol import (
    AliasChangeResponse,
    Dashboard,
    PromoteRequest,
    ReloadResponse,
    RetrainRequest,
    RollbackRequest,
)

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.post("/reload")
async def reload_models(manager: ManagerDep) -> ReloadResponse:
    """Load what the aliases point at now; failures are listed and the old versions keep serving."""
    report = await manager.reload("admin")
    return ReloadResponse(
        aliases=report.aliases,
        loaded=report.loaded,
        retired=report.retired,
        failed=report.failed,
        reason=report.reason,
    )


@router.post("/retrain", status_code=202)
async def retrain(admin: AdminDep, body: RetrainRequest | None = None) -> RetrainRunPublic:
    """Queue a retrain cycle in a low-priority child process; 409 while one runs."""
    return await admin.trigger_retrain(force=body.force if body is not None else False)


@router.get("/retrain-runs")
async def retrain_runs(
    request: Request,
    settings: SettingsDep,
    limit: int = Query(20, ge=1, le=1000),
    status: str | None = Query(None, description="Only runs of this status."),
) -> list[RetrainRunPublic]:
    """Recorded retrain runs, newest first, with stage, metrics, error and produced versions."""
    return await asyncio.to_thread(
        retrain_admin.retrain_runs,
        settings,
        engine=request.app.state.db,
        limit=limit,
        status=status,
    )


@router.post("/promote")
async def promote(body: PromoteRequest, admin: AdminDep) -> AliasChangeResponse:
    """Point an alias at a version; the new version serves when this returns."""
    change, _ = await admin.promote(body.version, body.alias)
    return AliasChangeResponse(**change.as_dict())


@router.post("/rollback")
async def rollback(body: RollbackRequest, admin: AdminDep) -> AliasChangeResponse:
    """Point an alias back at its previous version; it serves when this returns."""
    change, _ = await admin.rollback(body.alias)
    return AliasChangeResponse(**change.as_dict())


@router.get("/dashboard")
async def dashboard(admin: AdminDep) -> Dashboard:
    """What the UI's dashboard shows: feedback per day and version, retrain runs, versions and
    aliases, the newest PPO curves, the challenge."""
    return await asyncio.to_thread(admin.dashboard)
