"""`POST /v1/admin/reload`: reload the served aliases now (hot swap), behind a bearer token."""

from __future__ import annotations

from fastapi import APIRouter

from kindchat.serve.deps import AdminDep, ManagerDep
from kindchat.serve.protocol import ReloadResponse

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post("/reload")
async def reload_models(_: AdminDep, manager: ManagerDep) -> ReloadResponse:
    """Load what the aliases point at now; failures are listed and the old versions keep serving."""
    report = await manager.reload("admin")
    return ReloadResponse(
        aliases=report.aliases,
        loaded=report.loaded,
        retired=report.retired,
        failed=report.failed,
        reason=report.reason,
    )
