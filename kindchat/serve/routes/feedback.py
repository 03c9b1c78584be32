"""`POST /v1/feedback`: 👍/👎 on an answer, by its completion id."""

from __future__ import annotations

from fastapi import APIRouter, Request

from kindchat.serve.deps import FeedbackDep, GateDep
from kindchat.serve.protocol import FeedbackRequest, FeedbackResponse

router = APIRouter(prefix="/v1", tags=["feedback"])


@router.post("/feedback")
def create_feedback(
    body: FeedbackRequest, request: Request, feedback: FeedbackDep, gate: GateDep
) -> FeedbackResponse:
    """One rating per (answer, session); rating again replaces it. The caller's signed session
    rates (a `session_id` in the body must be a session token, or that same session).
    `better_answer` (optional) is the reply the user would have liked: it trains as preferred
    over this answer, and as an SFT example."""
    caller = gate.caller(request, "feedback", named=body.session_id)
    rating = feedback.rate(
        message_id=body.message_id,
        value=body.rating,
        session_id=caller.session_id,
        reason=body.reason,
        comment=body.comment,
        better_answer=body.better_answer,
    )
    return FeedbackResponse(
        id=str(rating.id),
        message_id=body.message_id,
        rating=rating.value,
        session_id=rating.session_id,
    )
