"""`POST /v1/sessions`: a signed session for an API client; `GET /v1/sessions/me`: who am I."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from pydantic import BaseModel

from kindchat.serve.deps import GateDep

router = APIRouter(prefix="/v1", tags=["sessions"])


class SessionResponse(BaseModel):
    session_id: str
    token: str  # send as `Authorization: Bearer <token>` (or an OpenAI client's api_key)
    expires_at: datetime
    key: str | None = None  # the API key it was minted with


class Whoami(BaseModel):
    session_id: str | None
    key: str | None
    via: str
    address: str
    mode: str


@router.post("/sessions", status_code=201)
def create_session(request: Request, gate: GateDep) -> SessionResponse:
    """A new anonymous session (open mode), or one minted with an API key (keyed mode needs
    the key). Limited per client address, or per key."""
    issued = gate.new_session(request)
    caller = gate.identify(request)
    return SessionResponse(
        session_id=issued.session_id,
        token=issued.token,
        expires_at=issued.expires_at,
        key=caller.key,
    )


@router.get("/sessions/me")
def whoami(request: Request, gate: GateDep) -> Whoami:
    """The caller as the server sees it (credential checked, nothing counted)."""
    caller = gate.identify(request)
    return Whoami(
        session_id=caller.session_id,
        key=caller.key,
        via=caller.via,
        address=caller.address,
        mode=gate.mode,
    )
