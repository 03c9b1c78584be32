"""`GET /healthz`, `GET /metrics` (Prometheus text format) and `GET /v1/bootstrap`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from kindchat.serve.deps import AdminDep, ManagerDep, MetricsDep
from kindchat.serve.gate import bearer
from kindchat.serve.protocol import Health

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(manager: ManagerDep, request: Request) -> Health:
    """`degraded` when a model version failed to load (the previous one is still serving);
    `starting` while the first models of a fresh machine train."""
    status = manager.status()
    scheduler = getattr(request.app.state, "scheduler", None)
    queue = manager.queue_stats()
    return Health(
        status="starting" if manager.starting else "degraded" if status["failures"] else "ok",
        backend=status["backend"],
        aliases=status["aliases"],
        loaded=sorted(status["loaded"]),
        queued=queue["queued"],
        running=queue["running"],
        failures=status["failures"],
        scheduler="off" if scheduler is None else "leader" if scheduler.is_leader else "follower",
    )


@router.get("/metrics")
def metrics(metrics: MetricsDep, admin: AdminDep, request: Request) -> Response:
    """Prometheus text; behind the admin token (`Authorization: Bearer`) unless
    `KINDCHAT_METRICS_PUBLIC` (default: public on a loopback bind only)."""
    admin.check_metrics(bearer(request))
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/bootstrap")
def bootstrap(admin: AdminDep) -> dict[str, Any]:
    """The background training of better models: each stage's status and progress, the time
    left (an estimate), and the versions served now (`active` false when none runs)."""
    return admin.bootstrap()
