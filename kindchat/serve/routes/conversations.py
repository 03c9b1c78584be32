"""Conversation history: `/v1/conversations…` (per session) and read-only share links.

The caller's signed session (its token as `Authorization: Bearer …`; the browser's cookie in
the UI) lists, reads, renames, deletes and shares its own conversations; another session gets
404, as for an unknown id.
Deleting hides a conversation but keeps it as training data; `forget=true` removes it for good.
A share link (`/shared/<token>`) shows the conversation read-only to anyone holding it.
"""

from __future__ import annotations

import html
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from kindchat.feedback.models import ConversationPublic, MessagePublic
from kindchat.serve.deps import ConversationsDep, GateDep
from kindchat.serve.gate import Gate

router = APIRouter(prefix="/v1", tags=["conversations"])
pages = APIRouter(tags=["conversations"])

SHARE_PATH = "/shared/"
Session = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=512,
        description="A session token (default: the caller's signed session).",
    ),
]


class ConversationSummary(BaseModel):
    id: str
    title: str | None
    system_prompt: str | None
    created_at: Any
    updated_at: Any
    shared: bool


class MessageView(BaseModel):
    id: str
    role: str
    content: str
    model: str | None
    finish_reason: str | None
    flagged: bool
    created_at: Any


class ConversationDetail(ConversationSummary):
    messages: list[MessageView]


class Rename(BaseModel):
    user: str | None = Field(None, min_length=1, max_length=512)
    title: str = Field(min_length=1, max_length=200)


class Share(BaseModel):
    user: str | None = Field(None, min_length=1, max_length=512)


class ShareLink(BaseModel):
    token: str
    url: str


def own(request: Request, gate: Gate, named: str | None) -> str:
    """The caller's signed session (a `user` given must be its token or its id)."""
    return str(gate.caller(request, "history", named=named).session_id)


def summary(conversation: ConversationPublic) -> ConversationSummary:
    return ConversationSummary(
        id=conversation.id,
        title=conversation.title,
        system_prompt=conversation.system_prompt,
        created_at=conversation.created_at,
        updated_at=conversation.updated_at or conversation.created_at,
        shared=conversation.share_token is not None,
    )


def detail(conversation: ConversationPublic, messages: list[MessagePublic]) -> ConversationDetail:
    return ConversationDetail(
        **summary(conversation).model_dump(),
        messages=[
            MessageView(
                id=m.id,
                role=m.role,
                content=m.content,
                model=m.model_version,
                finish_reason=m.finish_reason,
                flagged=m.flagged,
                created_at=m.created_at,
            )
            for m in messages
        ],
    )


@router.get("/conversations")
def list_conversations(
    request: Request,
    conversations: ConversationsDep,
    gate: GateDep,
    user: Session = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    q: Annotated[str | None, Query(max_length=128, description="Words to find")] = None,
) -> list[ConversationSummary]:
    """The session's conversations, most recently active first; with `q`, those whose title or
    messages contain it."""
    return [summary(c) for c in conversations.list(own(request, gate, user), limit, q)]


@router.get("/conversations/{conversation_id}")
def get_conversation(
    conversation_id: str,
    request: Request,
    conversations: ConversationsDep,
    gate: GateDep,
    user: Session = None,
) -> ConversationDetail:
    """The conversation with its messages as last seen (its latest branch): also its export."""
    return detail(*conversations.get(conversation_id, own(request, gate, user)))


@router.patch("/conversations/{conversation_id}")
def rename_conversation(
    conversation_id: str,
    body: Rename,
    request: Request,
    conversations: ConversationsDep,
    gate: GateDep,
) -> ConversationSummary:
    session_id = own(request, gate, body.user)
    return summary(conversations.rename(conversation_id, session_id, body.title))


@router.delete("/conversations/{conversation_id}", status_code=204)
def delete_conversation(
    conversation_id: str,
    request: Request,
    conversations: ConversationsDep,
    gate: GateDep,
    user: Session = None,
    forget: bool = False,
) -> None:
    """Delete it: out of the history, its share link and training, restorable
    (`POST …/restore`) until retention removes it; `forget=true`: removed for good at once."""
    conversations.delete(conversation_id, own(request, gate, user), forget)


@router.post("/conversations/{conversation_id}/restore", status_code=204)
def restore_conversation(
    conversation_id: str,
    body: Share,
    request: Request,
    conversations: ConversationsDep,
    gate: GateDep,
) -> None:
    """Undo a delete of the caller's (404 for a forgotten one, or another session's)."""
    conversations.restore(conversation_id, own(request, gate, body.user))


@router.post("/conversations/{conversation_id}/share")
def share_conversation(
    conversation_id: str,
    body: Share,
    conversations: ConversationsDep,
    request: Request,
    gate: GateDep,
) -> ShareLink:
    token = conversations.share(conversation_id, own(request, gate, body.user))
    return ShareLink(token=token, url=conversations.share_url(token))


class SharedMessage(BaseModel):
    role: str
    content: str
    finish_reason: str | None
    created_at: Any


class SharedConversation(BaseModel):
    """What a share link shows: the words and times, no ids (nothing to rate or act on)."""

    title: str | None
    system_prompt: str | None
    created_at: Any
    messages: list[SharedMessage]


@router.get("/shared/{token}")
def get_shared(token: str, conversations: ConversationsDep) -> SharedConversation:
    """A shared conversation, read-only, for anyone holding the link."""
    conversation, messages = conversations.shared(token)
    return SharedConversation(
        title=conversation.title,
        system_prompt=conversation.system_prompt,
        created_at=conversation.created_at,
        messages=[
            SharedMessage(
                role=m.role,
                content=m.content,
                finish_reason=m.finish_reason,
                created_at=m.created_at,
            )
            for m in messages
            if m.role != "system"
        ],
    )


@pages.get(SHARE_PATH + "{token}", response_class=HTMLResponse)
def shared_page(token: str, conversations: ConversationsDep) -> HTMLResponse:
    """The read-only page a share link opens (no session, no buttons)."""
    conversation, messages = conversations.shared(token)
    return HTMLResponse(render_shared(conversation, messages))


def render_shared(conversation: ConversationPublic, messages: list[MessagePublic]) -> str:
    title = html.escape(conversation.title or "kindchat 대화")
    rows = []
    if conversation.system_prompt:
        rows.append(
            f'<div class="persona">페르소나: {html.escape(conversation.system_prompt)}</div>'
        )
    for m in messages:
        if m.role == "system":
            continue
        who = "나" if m.role == "user" else "kindchat"
        note = " <em>(중간에 멈춤)</em>" if m.finish_reason == "stop_by_user" else ""
        rows.append(
            f'<div class="msg {m.role}"><b>{who}</b>{note}'
            f"<p>{html.escape(m.content).replace(chr(10), '<br>')}</p></div>"
        )
    body = "\n".join(rows)
    return f"""<!doctype html>
<html lang="ko"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: NanumGothic, "Nanum Gothic", "Noto Sans CJK KR", sans-serif;
  max-width: 760px; margin: 0 auto; padding: 16px; background: #f7f7fb; }}
.msg {{ border-radius: 12px; padding: 10px 14px; margin: 10px 0; background: #fff; }}
.msg.user {{ background: #e8edff; }}
.persona {{ color: #555; font-size: 14px; }}
.readonly {{ color: #777; font-size: 13px; }}
</style></head>
<body id="shared-view"><h1>{title}</h1>
<p class="readonly">공유된 대화 (읽기 전용)</p>
{body}
</body></html>"""
