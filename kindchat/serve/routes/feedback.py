"""`POST /v1/feedback`: 👍/👎 on an answer, by its completion id."""

from __future__ import annotations

from fastapi import APIRouter

from kindchat.feedback import store
from kindchat.serve.deps import DbSessionDep
from kindchat.serve.protocol import FeedbackRequest, FeedbackResponse

router = APIRouter(prefix="/v1", tags=["feedback"])

ANONYMOUS_SESSION = "api"


@router.post("/feedback")
def create_feedback(body: FeedbackRequest, session: DbSessionDep) -> FeedbackResponse:
    """One rating per (answer, session); rating again replaces it."""
    session_id = body.session_id
    if session_id is None:  # default: whoever asked for the answer
        message = store.get_message(session=session, message_id=body.message_id)
        session_id = message.session_id or ANONYMOUS_SESSION
    rating = store.rate(
        session=session,
        message_id=body.message_id,
        session_id=session_id,
        value=body.rating,
        reason=body.reason,
        comment=body.comment,
    )
    return FeedbackResponse(
        id=str(rating.id), message_id=body.message_id, rating=rating.value, session_id=session_id
    )
