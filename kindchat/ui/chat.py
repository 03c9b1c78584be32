"""The 채팅 tab: multi-turn streamed chat, 👍/👎 with an optional reason, regenerate, clear."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import gradio as gr

from kindchat.models.backends.base import GenerationOptions
from kindchat.serve.protocol import ChatMessage
from kindchat.serve.service import AnswerRequest, ChatService
from kindchat.ui import strings
from kindchat.ui.common import (
    OnLoad,
    ServiceRef,
    model_choices,
    run_blocking,
    stream_text,
    user_error,
)
from kindchat.ui.state import ChatSession, Turn

logger = logging.getLogger(__name__)

Update = tuple[Any, ...]


def chatbot_update(state: ChatSession) -> Any:
    return gr.Chatbot(value=state.chatbot(), feedback_value=state.feedback())


async def answer(
    service: ChatService, state: ChatSession, model: str, regenerate: str | None = None
) -> AsyncIterator[ChatSession]:
    """Stream an answer to `state`'s conversation into a new last turn (or over the last
    answer, which `regenerate` names: the new one is stored as its sibling)."""
    context = state.turns[:-1] if regenerate else state.turns
    messages = service.check_messages(
        [ChatMessage(role=t.role, content=t.content) for t in context]
    )
    request = AnswerRequest(
        model=model or service.manager.default_name(),
        messages=messages,
        params=service.sampling(max_tokens=None, temperature=None, top_p=None),
        options=GenerationOptions(),
        session_id=state.session_id or None,
        regenerate=regenerate,
    )
    opened = await service.open(request)
    turn = Turn(role="assistant", content="", model=opened.version)
    state.turns = [*context, turn]
    async for text in stream_text(service, opened):
        turn.content = text
        yield state
    turn.message_id = opened.id
    yield state


async def send(
    service: ChatService, state: ChatSession, text: str, model: str
) -> AsyncIterator[Update]:
    """Add the user's message and stream the answer; on an error keep what they typed."""
    before = list(state.turns)
    state.turns = [*before, Turn(role="user", content=text)]
    state.awaiting_reason = None
    try:
        yield "", chatbot_update(state), state, gr.update(visible=False)
        async for current in answer(service, state, model):
            yield "", chatbot_update(current), current, gr.update()
    except Exception as err:
        state.turns = before
        yield text, chatbot_update(state), state, gr.update()
        raise user_error(err) from err


async def regenerate(service: ChatService, state: ChatSession, model: str) -> AsyncIterator[Update]:
    """Answer the last user message again; the earlier answer stays stored as a sibling."""
    last = state.last_answer()
    if last is None:
        gr.Info(strings.NOTHING_TO_REGENERATE, duration=3)
        yield chatbot_update(state), state, gr.update()
        return
    before = list(state.turns)
    state.awaiting_reason = None
    try:
        async for current in answer(service, state, model, regenerate=last.message_id):
            yield chatbot_update(current), current, gr.update(visible=False)
    except Exception as err:
        state.turns = before
        yield chatbot_update(state), state, gr.update()
        raise user_error(err) from err


async def like(service: ChatService, state: ChatSession, data: gr.LikeData) -> Update:
    """👍/👎 on an answer (clicking the other thumb changes the vote); 👎 asks for a reason."""
    index = data.index if isinstance(data.index, int) else data.index[0]
    turn = state.turns[index] if 0 <= index < len(state.turns) else None
    if turn is None or turn.role != "assistant" or turn.message_id is None:
        gr.Warning(strings.NOT_RATABLE)
        return state, gr.update()
    if data.liked not in (True, False):  # the thumb was clicked off: the store keeps votes
        gr.Info(strings.RATING_KEPT, duration=3)
        return state, gr.update()
    value = 1 if data.liked else -1
    try:
        await run_blocking(
            service.rate, message_id=turn.message_id, value=value, session_id=state.session_id
        )
    except Exception as err:
        raise user_error(err) from err
    turn.rating = value
    state.awaiting_reason = turn.message_id if value < 0 else None
    gr.Info(strings.THANKS_UP if value > 0 else strings.THANKS_DOWN, duration=3)
    return state, gr.update(visible=value < 0)


async def send_reason(
    service: ChatService, state: ChatSession, reason: str | None, comment: str, better: str = ""
) -> Update:
    """Attach a reason, a comment and the answer the user would have liked to the 👎 just
    given (rating again replaces it)."""
    if state.awaiting_reason is None:
        return state, gr.update(visible=False), None, "", ""
    try:
        await run_blocking(
            service.rate,
            message_id=state.awaiting_reason,
            value=-1,
            session_id=state.session_id,
            reason=reason or None,
            comment=comment.strip() or None,
            better_answer=better.strip() or None,
        )
    except Exception as err:
        raise user_error(err) from err
    state.awaiting_reason = None
    gr.Info(strings.THANKS_REASON, duration=3)
    return state, gr.update(visible=False), None, "", ""


def clear(state: ChatSession) -> Update:
    fresh = ChatSession(session_id=state.session_id)
    return chatbot_update(fresh), fresh, gr.update(visible=False), ""


def build_chat_tab(service: ServiceRef) -> OnLoad:
    """The chat tab's components and events; what it needs when a page opens."""
    state = gr.State(ChatSession())
    with gr.Row():
        with gr.Column(scale=4):
            chatbot = gr.Chatbot(
                label=strings.CHAT_LABEL,
                placeholder=strings.CHAT_PLACEHOLDER,
                height=460,
                sanitize_html=True,  # and `safe()` escapes: HTML shows as text
                allow_tags=False,
                feedback_options=("Like", "Dislike"),
                buttons=["copy"],
                elem_id="chat-bot",
            )
            with gr.Group(visible=False, elem_id="chat-reason") as reason_box:
                gr.Markdown(strings.REASON_TITLE)
                with gr.Row():
                    reason = gr.Radio(strings.REASON_CHOICES, label=strings.REASON_LABEL, scale=3)
                    comment = gr.Textbox(
                        label=strings.COMMENT_LABEL, scale=2, elem_id="chat-comment"
                    )
                    send_reason_button = gr.Button(
                        strings.REASON_SEND, scale=1, elem_id="chat-reason-send"
                    )
                better = gr.Textbox(
                    label=strings.BETTER_ANSWER_LABEL,
                    placeholder=strings.BETTER_ANSWER_PLACEHOLDER,
                    lines=2,
                    max_length=4000,
                    elem_id="chat-better-answer",
                )
            with gr.Row():
                text = gr.Textbox(
                    label=strings.INPUT_LABEL,
                    placeholder=strings.INPUT_PLACEHOLDER,
                    show_label=False,
                    scale=5,
                    elem_id="chat-input",
                )
                send_button = gr.Button(
                    strings.SEND, variant="primary", scale=1, elem_id="chat-send"
                )
        with gr.Column(scale=1, min_width=220):
            model = gr.Dropdown(
                label=strings.MODEL_LABEL,
                info=strings.MODEL_INFO,
                choices=[],
                elem_id="chat-model",
            )
            regenerate_button = gr.Button(strings.REGENERATE, elem_id="chat-regenerate")
            clear_button = gr.Button(strings.CLEAR, elem_id="chat-clear")

    async def on_send(state: ChatSession, text: str, model: str) -> AsyncIterator[Update]:
        async for update in send(service(), state, text, model):
            yield update

    async def on_regenerate(state: ChatSession, model: str) -> AsyncIterator[Update]:
        async for update in regenerate(service(), state, model):
            yield update

    async def on_like(state: ChatSession, data: gr.LikeData) -> Update:
        return await like(service(), state, data)

    async def on_reason(
        state: ChatSession, reason: str | None, comment: str, better: str
    ) -> Update:
        return await send_reason(service(), state, reason, comment, better)

    send_outputs = [text, chatbot, state, reason_box]
    gr.on(
        [text.submit, send_button.click],
        on_send,
        [state, text, model],
        send_outputs,
        concurrency_id="generate",
    )
    regenerate_button.click(
        on_regenerate, [state, model], [chatbot, state, reason_box], concurrency_id="generate"
    )
    chatbot.like(on_like, [state], [state, reason_box])
    send_reason_button.click(
        on_reason, [state, reason, comment, better], [state, reason_box, reason, comment, better]
    )
    gr.on([clear_button.click, chatbot.clear], clear, [state], [chatbot, state, reason_box, text])

    def on_load(session_id: str) -> Update:
        served = service()
        choices = model_choices(served)
        return ChatSession(session_id=session_id), gr.Dropdown(
            choices=choices, value=served.manager.default_name()
        )

    return OnLoad(on_load, [], [state, model])
