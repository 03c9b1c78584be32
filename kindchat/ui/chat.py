"""The 채팅 tab: multi-turn streamed chat with a stop button, edit and resend (branches),
👍/👎 with an optional reason, regenerate, personas, and the history of the browser's
conversations (reopen, rename, delete, export, share). All of it goes through serve's
services: answers, conversations and feedback."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gradio as gr

from kindchat.errors import InvalidError, NotFoundError
from kindchat.feedback.models import ConversationPublic, as_utc, new_id
from kindchat.models.backends.base import GenerationOptions
from kindchat.serve.protocol import ChatMessage
from kindchat.serve.routes.conversations import detail
from kindchat.serve.services import (
    AnswerRequest,
    ConversationService,
    FeedbackService,
    Services,
)
from kindchat.ui import personas, strings
from kindchat.ui.common import (
    OnLoad,
    ServicesRef,
    UserError,
    error_line,
    info,
    model_choices,
    run_blocking,
    safe,
    stream_text,
    user_error,
    user_message,
    warning,
)
from kindchat.ui.guard import action
from kindchat.ui.state import ChatSession, Turn

logger = logging.getLogger(__name__)

Update = tuple[Any, ...]
UNDO_S = 10  # seconds a deleted conversation can be brought back from the page
# The page's URL names the open conversation: written after each change, read when it opens.
URL_OF_CONVERSATION = """(id) => {
  const url = new URL(window.location.href);
  if (id) url.searchParams.set("c", id); else url.searchParams.delete("c");
  if (url.href !== window.location.href) window.history.replaceState(null, "", url);
}"""
# A message sent before the page has opened (its session and model known) waits for that, then
# goes: never an error, and the opening step never blanks a chat that has begun (the page's
# script resolves `kindchatReady` after the first tab's opening step, or after 15 s)
AFTER_PAGE_OPENED = """async (...inputs) => {
  await window.kindchatReady;
  return inputs;
}"""
CONVERSATION_IN_URL = """(...inputs) => {
  inputs[inputs.length - 1] = new URLSearchParams(window.location.search).get("c") || "";
  return inputs;
}"""
# On a phone the history is a drawer over the chat (the page's CSS: `#chat-sidebar.kc-open`).
OPEN_DRAWER = """() => {
  document.querySelector("#chat-sidebar")?.classList.add("kc-open");
  document.querySelector("#chat-search input, #chat-search textarea")?.focus();
}"""
# After an item of ⋯'s menu: the focus where that item goes on (the title to rename, the
# question of a delete, the files, the link)
FOCUS_MENU_ITEM = """(pick) => {
  const action = (pick || "").split(":")[1];
  const where = {
    rename: "#chat-title input, #chat-title textarea",
    delete: "#chat-delete-yes",
    export: "#chat-export-file a[download]",
    share: "#chat-share-link button",
  }[action];
  let tries = 0;
  const focus = () => {
    const el = where && [...document.querySelectorAll(where)].find((e) => e.offsetParent !== null);
    if (el) {
      el.scrollIntoView({ block: "nearest" });
      el.focus();
      if (action === "rename") el.select?.();
    } else if (++tries < 40) setTimeout(focus, 50);
  };
  focus();
}"""
CLOSE_DRAWER = '() => { document.querySelector("#chat-sidebar")?.classList.remove("kc-open"); }'
# After a 👎, the focus goes to the better-answer box once the form has appeared.
FOCUS_BETTER_ANSWER = """() => {
  let tries = 0;
  const focus = () => {
    const box = [...document.querySelectorAll('#chat-better-answer textarea')]
      .find((el) => el.offsetParent !== null);
    if (box) { box.focus(); box.scrollIntoView({block: 'nearest'}); }
    else if (++tries < 20) setTimeout(focus, 50);
  };
  focus();
}"""


def chatbot_update(state: ChatSession) -> Any:
    return gr.Chatbot(
        value=state.chatbot(),
        feedback_value=state.feedback(),
        elem_classes=state.branch_classes(),  # ‹k/n›, drawn by the page's script
    )


def stored_turns(
    conversations: ConversationService,
    session_id: str,
    conversation_id: str,
    through: str | None = None,
) -> tuple[ConversationPublic, list[Turn]]:
    """A stored conversation as the chat shows it: its latest branch, or the latest one through
    message `through`; each turn with its other versions (‹k/n›) and this session's rating."""
    conversation, shown = conversations.branches(conversation_id, session_id, through)
    kept = [b for b in shown if b.message.role in ("user", "assistant")]
    rated = conversations.ratings(
        session_id, [b.message.id for b in kept if b.message.role == "assistant"]
    )
    turns = [
        Turn(
            role=b.message.role,  # type: ignore[arg-type]
            content=b.message.content,
            message_id=b.message.id,
            model=b.message.model_version,
            stopped=b.message.finish_reason == "stop_by_user",
            rating=rated.get(b.message.id),
            siblings=b.siblings,
            cut=b.message.finish_reason == "length",
        )
        for b in kept
    ]
    return conversation, turns


async def answer(
    services: Services,
    state: ChatSession,
    model: str,
    regenerate: str | None = None,
    edit_of: str | None = None,
    continue_of: str | None = None,
) -> AsyncIterator[ChatSession]:
    """Stream an answer to `state`'s conversation into a new last turn (or over the last
    answer, which `regenerate` names: the new one is stored as its sibling). The conversation
    is stored as it goes: made on the first message, each turn appended (an edit as the sibling
    of the message it edits), so the history survives a reload."""
    service = services.answers
    again = regenerate or continue_of  # the last answer, answered anew or gone on with
    context = state.turns[:-1] if again else state.turns
    messages = service.check_messages(
        [
            *([ChatMessage(role="system", content=state.persona)] if state.persona else []),
            *(ChatMessage(role=t.role, content=t.content) for t in context),
        ]
    )
    follows: str | None = None
    if again is None:
        if state.conversation_id is None:
            state.conversation_id = await run_blocking(
                services.conversations.start,
                session_id=state.session_id,
                system_prompt=state.persona,
            )
        context[-1].message_id = context[-1].message_id or new_id()
        if state.off_latest and len(context) > 1 and edit_of is None:
            follows = context[-2].message_id  # the earlier branch on screen (‹k/n›)
    request = AnswerRequest(
        model=model or service.default_model(),
        messages=messages,
        params=service.sampling(max_tokens=None, temperature=None, top_p=None),
        options=GenerationOptions(),
        session_id=state.session_id,
        regenerate=regenerate,
        conversation_id=None if again else state.conversation_id,
        edit_of=edit_of,
        user_message_id=None if again else context[-1].message_id,
        follows=follows,
        continue_of=continue_of,
    )
    opened = await service.open(request)
    if continue_of:  # the cut answer grows on screen as it grows in storage
        turn, start = state.turns[-1], state.turns[-1].content
        turn.cut = False
    else:
        turn = Turn(role="assistant", content="", message_id=opened.id, model=opened.version)
        start = ""
    state.turns = [*context, turn]
    async for text in stream_text(service, opened):
        turn.content = start + text
        yield state
    if state.conversation_id is not None:  # stored: the thread as stored, with its ‹k/n›
        try:
            _, state.turns = await run_blocking(
                stored_turns,
                conversations=services.conversations,
                session_id=state.session_id,
                conversation_id=state.conversation_id,
                through=continue_of or opened.id,
            )
            state.off_latest = False  # the newest message ends the latest branch
        except Exception:  # the answer is on screen; its arrows come with the next reload
            logger.exception("reading conversation %s back failed", state.conversation_id)
    yield state


def busy(visible: bool) -> tuple[Any, Any]:
    """The stop button while an answer streams; the send button otherwise."""
    return gr.update(visible=visible), gr.update(visible=not visible)


async def one_at_a_time(
    state: ChatSession, updates: AsyncIterator[Update], outputs: int
) -> AsyncIterator[Update]:
    """A chat writes one answer at a time. A second send, edit, regenerate or 계속 생성 while an
    answer is being written (a double click while the page opened, or two calls through the
    queue API) changes nothing: the first one goes on."""
    me = asyncio.current_task()
    if state.answering and state.writer is not me:
        await updates.aclose()  # never started: nothing was stored
        yield tuple(gr.update() for _ in range(outputs))
        return
    state.writer = me
    try:
        async for update in updates:
            yield update
    finally:
        if state.writer is me:
            state.writer = None


async def send(
    services: Services, state: ChatSession, text: str, model: str
) -> AsyncIterator[Update]:
    """Add the user's message and stream the answer; on an error keep what they typed."""
    before = list(state.turns)
    state.turns = [*before, Turn(role="user", content=text)]
    state.awaiting_reason = None
    try:
        yield "", chatbot_update(state), state, gr.update(visible=False), *busy(True), error_line()
        async for current in answer(services, state, model):
            yield "", chatbot_update(current), current, gr.update(), *busy(True), gr.update()
        yield "", chatbot_update(state), state, gr.update(), *busy(False), gr.update()
    except Exception as err:  # said under the input; the chat and the input stay usable
        state.turns = before
        message = user_message(err, services.answers.limits.max_input_chars)
        yield text, chatbot_update(state), state, gr.update(), *busy(False), error_line(message)


async def edit(
    services: Services, state: ChatSession, data: gr.EditData, model: str
) -> AsyncIterator[Update]:
    """A user message edited in place: a new branch from it (the old one stays stored)."""
    index = data.index if isinstance(data.index, int) else data.index[0]
    old = state.turns[index] if 0 <= index < len(state.turns) else None
    value = data.value if isinstance(data.value, str) else str(data.value.get("text", ""))
    if old is None or old.role != "user" or not value.strip():
        message = strings.ERROR_EMPTY if old is not None and not value.strip() else None
        yield chatbot_update(state), state, gr.update(), *busy(False), error_line(message)
        return
    before = list(state.turns)
    state.turns = [*before[:index], Turn(role="user", content=value)]
    async for update in _streamed(services, state, model, before, edit_of=old.message_id):
        yield update


async def _streamed(
    services: Services, state: ChatSession, model: str, before: list[Turn], **how: Any
) -> AsyncIterator[Update]:
    """Stream an answer into the chat (`how`: an edit or a regeneration); on an error the
    turns go back to `before`."""
    state.awaiting_reason = None
    try:
        yield chatbot_update(state), state, gr.update(visible=False), *busy(True), error_line()
        async for current in answer(services, state, model, **how):
            yield chatbot_update(current), current, gr.update(), *busy(True), gr.update()
        yield chatbot_update(state), state, gr.update(), *busy(False), gr.update()
    except Exception as err:  # said under the input; the chat and the input stay usable
        state.turns = before
        message = user_message(err, services.answers.limits.max_input_chars)
        yield chatbot_update(state), state, gr.update(), *busy(False), error_line(message)


async def regenerate(services: Services, state: ChatSession, model: str) -> AsyncIterator[Update]:
    """Answer the last user message again; the earlier answer stays stored as a sibling."""
    async for update in _on_last_answer(services, state, model, "regenerate"):
        yield update


async def go_on(services: Services, state: ChatSession, model: str) -> AsyncIterator[Update]:
    """계속 생성: the last answer, cut by the length limit, goes on from where it stopped (the
    stored answer grows in place)."""
    async for update in _on_last_answer(services, state, model, "continue_of"):
        yield update


async def _on_last_answer(
    services: Services, state: ChatSession, model: str, how: str
) -> AsyncIterator[Update]:
    """Stream into the last answer `how` says: `regenerate` it or go on with it (`continue_of`,
    an answer cut by the length limit only); without one, say so."""
    last = state.last_answer()
    if last is None or (how == "continue_of" and not last.cut):
        nothing = (
            strings.NOTHING_TO_CONTINUE if how == "continue_of" else strings.NOTHING_TO_REGENERATE
        )
        info(nothing, duration=3)
        yield chatbot_update(state), state, gr.update(), *busy(False), gr.update()
        return
    async for update in _streamed(
        services, state, model, list(state.turns), **{how: last.message_id}
    ):
        yield update


def stop(state: ChatSession) -> Update:
    """The stop button: the answer so far stays (stored as `stop_by_user` by the stream)."""
    last = state.turns[-1] if state.turns else None
    if last is not None and last.role == "assistant":
        last.stopped = True
    info(strings.STOPPED, duration=3)
    return chatbot_update(state), state, *busy(False)


async def like(feedback: FeedbackService, state: ChatSession, data: gr.LikeData) -> Update:
    """👍/👎 on an answer (clicking the other thumb changes the vote); 👎 asks for a reason."""
    index = data.index if isinstance(data.index, int) else data.index[0]
    turn = state.turns[index] if 0 <= index < len(state.turns) else None
    if turn is None or turn.role != "assistant" or turn.message_id is None:
        warning(strings.NOT_RATABLE)
        return state, gr.update(), gr.update(), gr.update()
    if data.liked not in (True, False):  # clicked off: votes are kept, so the screen shows it
        info(strings.RATING_KEPT, duration=4)
        return state, gr.update(), chatbot_update(state), gr.update()
    value = 1 if data.liked else -1
    try:
        await run_blocking(
            feedback.rate, message_id=turn.message_id, value=value, session_id=state.session_id
        )
    except Exception as err:
        warning(user_message(err))
        return state, gr.update(), chatbot_update(state), gr.update()  # the vote as stored
    turn.rating = value
    state.awaiting_reason = turn.message_id if value < 0 else None
    info(strings.THANKS_UP if value > 0 else strings.THANKS_DOWN, duration=3)
    if value > 0:
        return state, gr.update(visible=False), gr.update(), gr.update()
    about = strings.REASON_ABOUT.format(answer=excerpt(turn.content))
    return state, gr.update(visible=True), gr.update(), f"{about}  \n{strings.REASON_TITLE}"


def excerpt(text: str, length: int = 40) -> str:
    """The start of an answer, to say which one a form is about (as text, never markup)."""
    flat = " ".join(text.split())
    return safe(flat if len(flat) <= length else flat[:length].rstrip() + "…")


async def send_reason(
    feedback: FeedbackService,
    state: ChatSession,
    reason: str | None,
    comment: str,
    better: str = "",
) -> Update:
    """Attach a reason, a comment and the answer the user would have liked to the 👎 just
    given (rating again replaces it)."""
    if state.awaiting_reason is None:
        return state, gr.update(visible=False), None, "", ""
    try:
        await run_blocking(
            feedback.rate,
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
    info(strings.THANKS_REASON, duration=3)
    return state, gr.update(visible=False), None, "", ""


def clear(state: ChatSession) -> Update:
    """A new, empty chat (the old one stays in the history; an answer streaming into it was
    stopped first, and stays stored as far as it got)."""
    fresh = ChatSession(session_id=state.session_id, search=state.search)
    return chatbot_update(fresh), fresh, gr.update(visible=False), "", *busy(False), error_line()


# ---- history ------------------------------------------------------------------------------
def when(moment: datetime | None, now: datetime | None = None) -> str:
    """When a conversation was last active, as a person says it (Korean time): 오늘 14:05,
    어제, 12월 1일, 2025년 12월 1일."""
    if moment is None:
        return ""
    local = as_utc(moment).astimezone(strings.TIMEZONE)
    today = (now or datetime.now(timezone.utc)).astimezone(strings.TIMEZONE).date()
    if local.date() == today:
        return strings.TODAY_AT.format(time=local.strftime("%H:%M"))
    if (today - local.date()).days == 1:
        return strings.YESTERDAY
    if local.year == today.year:
        return strings.HISTORY_DAY.format(month=local.month, day=local.day)
    return strings.HISTORY_DAY_OF_YEAR.format(year=local.year, month=local.month, day=local.day)


def history_update(conversations: ConversationService, state: ChatSession) -> Any:
    """The history list: this session's conversations (those with the search words, when
    searching), newest first, each with when it was last active."""
    if not state.session_id:
        return gr.update(choices=[], value=None, info=strings.HISTORY_EMPTY)
    rows = conversations.list(state.session_id, search=state.search or None)
    if rows:
        info = strings.HISTORY_INFO
    else:
        info = strings.SEARCH_NONE if state.search else strings.HISTORY_EMPTY
    return gr.update(
        choices=[
            (f"{c.title or strings.NEW_CHAT} · {when(c.updated_at or c.created_at)}", c.id)
            for c in rows
        ],
        info=info,
        value=state.conversation_id if any(c.id == state.conversation_id for c in rows) else None,
    )


def markdown_of(detail_: Any) -> str:
    """A conversation as Markdown, for people: its title, then who said what."""
    lines = [f"# {detail_.title or strings.NEW_CHAT}", ""]
    for message in detail_.messages:
        if message.role == "system":
            continue
        who = strings.EXPORT_ME if message.role == "user" else strings.EXPORT_KINDCHAT
        lines += [f"**{who}**", "", message.content.strip(), ""]
    return "\n".join(lines)


def open_conversation(
    conversations: ConversationService, state: ChatSession, conversation_id: str
) -> Update:
    """Reopen a stored conversation where it was left (its latest branch)."""
    if not conversation_id or conversation_id == state.conversation_id:
        return chatbot_update(state), state, *(gr.update() for _ in range(4))
    conversation, turns = stored_turns(conversations, state.session_id, conversation_id)
    opened = ChatSession(
        session_id=state.session_id,
        search=state.search,
        turns=turns,
        conversation_id=conversation.id,
        persona=conversation.system_prompt,
    )
    choice, custom = personas.choice_of(conversation.system_prompt)
    return (
        chatbot_update(opened),
        opened,
        gr.update(value=conversation.title or ""),
        gr.update(value="", visible=False),
        gr.update(value=choice),  # the persona follows the conversation
        gr.update(value=custom, visible=choice == personas.CUSTOM),
    )


def switch_branch(conversations: ConversationService, state: ChatSession, pick: str) -> Update:
    """‹ or › on a message with other versions (`pick`: "<turn>:<-1|1>"): the chat shows that
    version and the latest turns that followed it."""
    turn_text, _, step_text = pick.partition(":")
    try:
        index, step = int(turn_text), int(step_text.split(":")[0])
    except ValueError:
        return chatbot_update(state), state, gr.update()
    turn = state.turns[index] if 0 <= index < len(state.turns) else None
    place = turn.branch() if turn is not None else None
    if turn is None or place is None or state.conversation_id is None or step not in (-1, 1):
        return chatbot_update(state), state, gr.update()
    target = turn.siblings[min(max(place[0] - 1 + step, 0), place[1] - 1)]
    _, state.turns = stored_turns(
        conversations, state.session_id, state.conversation_id, through=target
    )
    state.awaiting_reason = None
    state.off_latest = True
    return chatbot_update(state), state, gr.update(visible=False)


def export_paths(conversations: ConversationService, state: ChatSession) -> list[str]:
    """The conversation as it is on screen, to keep: Markdown to read, and JSON (what
    `GET /v1/conversations/{id}` returns)."""
    if state.conversation_id is None:
        raise UserError(strings.NO_CONVERSATION)
    data = detail(*conversations.get(state.conversation_id, state.session_id))
    folder = Path(tempfile.mkdtemp(prefix="kindchat-export-"))
    readable = folder / f"kindchat-{data.id[:8]}.md"
    readable.write_text(markdown_of(data), encoding="utf-8")
    raw = folder / f"kindchat-{data.id[:8]}.json"
    raw.write_text(
        json.dumps(data.model_dump(mode="json"), ensure_ascii=False, indent=2), encoding="utf-8"
    )
    return [str(readable), str(raw)]


def build_chat_tab(services: ServicesRef) -> OnLoad:
    """The chat tab's components and events; what it needs when a page opens."""
    state = gr.State(ChatSession())
    with gr.Row(equal_height=False):
        # The history: a column beside the chat; on a phone, a drawer (☰ opens it, ✕ and
        # picking a conversation close it)
        with gr.Column(scale=1, min_width=200, elem_id="chat-sidebar"):
            drawer_close = gr.Button(strings.DRAWER_CLOSE, size="sm", elem_id="chat-drawer-close")
            new_chat = gr.Button(strings.NEW_CHAT, elem_id="chat-new")
            search = gr.Textbox(
                label=strings.SEARCH_LABEL,
                placeholder=strings.SEARCH_PLACEHOLDER,
                max_length=128,
                elem_id="chat-search",
            )
            history = gr.Radio(
                choices=[],
                label=strings.HISTORY_LABEL,
                info=strings.HISTORY_EMPTY,
                elem_id="chat-history",
            )
            with gr.Accordion(strings.MANAGE, open=False, elem_id="chat-manage") as manage:
                title = gr.Textbox(label=strings.RENAME_LABEL, elem_id="chat-title")
                rename_button = gr.Button(strings.RENAME, size="sm", elem_id="chat-rename")
                forget = gr.Checkbox(label=strings.FORGET, value=False, elem_id="chat-forget")
                delete_button = gr.Button(
                    strings.DELETE, size="sm", variant="stop", elem_id="chat-delete"
                )
                with gr.Group(visible=False, elem_id="chat-delete-ask") as delete_ask:
                    delete_question = gr.Markdown(strings.DELETE_ASK)
                    with gr.Row():
                        delete_yes = gr.Button(
                            strings.DELETE_YES, size="sm", variant="stop", elem_id="chat-delete-yes"
                        )
                        delete_no = gr.Button(strings.CANCEL, size="sm", elem_id="chat-delete-no")
                export_button = gr.Button(strings.EXPORT, size="sm", elem_id="chat-export")
                export_file = gr.File(
                    visible=False, file_count="multiple", elem_id="chat-export-file"
                )
                share_button = gr.Button(strings.SHARE, size="sm", elem_id="chat-share")
                share_link = gr.Textbox(
                    label=strings.SHARE_LINK_LABEL,
                    visible=False,
                    interactive=False,
                    buttons=["copy"],
                    elem_id="chat-share-link",
                )
        with gr.Column(scale=4, min_width=320, elem_id="chat-main"):
            with gr.Row(elem_id="chat-phone-bar"):  # on a phone only: the drawer, a new chat
                drawer_open = gr.Button(strings.DRAWER_OPEN, size="sm", elem_id="chat-drawer-open")
                new_chat_phone = gr.Button(strings.NEW_CHAT, size="sm", elem_id="chat-new-phone")
            chatbot = gr.Chatbot(
                label=strings.CHAT_LABEL,
                placeholder=strings.CHAT_PLACEHOLDER,
                height=460,
                sanitize_html=True,  # and `safe()` escapes: HTML shows as text
                allow_tags=False,
                feedback_options=("Like", "Dislike"),
                buttons=["copy"],
                editable="user",
                autoscroll=True,
                elem_id="chat-bot",
            )
            # Right under the answer it is about: the better answer first (what teaches the
            # model most), then reasons as chips and a comment, and the send button last.
            with gr.Group(visible=False, elem_id="chat-reason") as reason_box:
                reason_title = gr.Markdown(strings.REASON_TITLE, elem_id="chat-reason-title")
                better = gr.Textbox(
                    label=strings.BETTER_ANSWER_LABEL,
                    placeholder=strings.BETTER_ANSWER_PLACEHOLDER,
                    lines=2,
                    max_length=4000,
                    elem_id="chat-better-answer",
                )
                reason = gr.Radio(
                    strings.REASON_CHOICES, label=strings.REASON_LABEL, elem_id="chat-reason-chips"
                )
                comment = gr.Textbox(
                    label=strings.COMMENT_LABEL, max_length=4000, elem_id="chat-comment"
                )
                send_reason_button = gr.Button(
                    strings.REASON_SEND, variant="primary", elem_id="chat-reason-send"
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
                stop_button = gr.Button(
                    strings.STOP, variant="stop", scale=1, visible=False, elem_id="chat-stop"
                )
            error = gr.Markdown("", visible=False, elem_id="chat-error")
            deleted = gr.State(None)  # the conversation just deleted, while it can come back
            undo_button = gr.Button(
                strings.UNDO_DELETE, size="sm", visible=False, elem_id="chat-undo"
            )
            undo_timer = gr.Timer(UNDO_S, active=False)
            # the open conversation's id, for the page's URL (?c=<id>): reload and bookmarks
            conversation_ref = gr.Textbox(visible=False, elem_id="chat-conversation-id")
            # ‹ and › on a message with other versions: the page's script writes which
            # ("<turn>:<-1|1>") and presses the button (both in the page, out of sight)
            branch_pick = gr.Textbox(visible="hidden", elem_id="chat-branch-pick")
            branch_go = gr.Button(visible="hidden", elem_id="chat-branch-go")
            # 계속 생성 under an answer cut by the length limit (drawn there by the script)
            continue_go = gr.Button(visible="hidden", elem_id="chat-continue-go")
            # an item of ⋯'s menu in the history ("<conversation id>:<action>")
            menu_pick = gr.Textbox(visible="hidden", elem_id="chat-menu-pick")
            menu_go = gr.Button(visible="hidden", elem_id="chat-menu-go")
        with gr.Column(scale=1, min_width=220):
            model = gr.Dropdown(
                label=strings.MODEL_LABEL,
                info=strings.MODEL_INFO,
                choices=[],
                elem_id="chat-model",
            )
            persona = gr.Dropdown(
                label=strings.PERSONA_LABEL,
                info=strings.PERSONA_INFO,
                choices=list(personas.PERSONAS),
                value=personas.DEFAULT,
                elem_id="chat-persona",
            )
            custom_persona = gr.Textbox(
                label=strings.PERSONA_CUSTOM_LABEL,
                placeholder=strings.PERSONA_CUSTOM_PLACEHOLDER,
                visible=False,
                lines=2,
                elem_id="chat-persona-custom",
            )
            regenerate_button = gr.Button(strings.REGENERATE, elem_id="chat-regenerate")
            gr.Markdown(strings.EDIT_HINT)

    # what an answer being written updates (a send updates the input box too)
    running = [chatbot, state, reason_box, stop_button, send_button, error]

    @action("chat")
    async def on_send(
        state: ChatSession, text: str, model: str, choice: str, custom: str
    ) -> AsyncIterator[Update]:
        async def with_persona() -> AsyncIterator[Update]:
            if state.conversation_id is None:  # the persona is chosen per conversation
                state.persona = personas.system_prompt(choice, custom)
            async for update in send(services(), state, text, model):
                yield update

        async for update in one_at_a_time(state, with_persona(), 1 + len(running)):
            yield update

    @action("chat")
    async def on_edit(state: ChatSession, data: gr.EditData, model: str) -> AsyncIterator[Update]:
        updates = edit(services(), state, data, model)
        async for update in one_at_a_time(state, updates, len(running)):
            yield update

    @action("chat")
    async def on_continue(state: ChatSession, model: str) -> AsyncIterator[Update]:
        updates = go_on(services(), state, model)
        async for update in one_at_a_time(state, updates, len(running)):
            yield update

    @action("chat")
    async def on_regenerate(state: ChatSession, model: str) -> AsyncIterator[Update]:
        updates = regenerate(services(), state, model)
        async for update in one_at_a_time(state, updates, len(running)):
            yield update

    @action("history")
    def on_branch(state: ChatSession, pick: str) -> Update:
        try:
            return switch_branch(services().conversations, state, pick)
        except Exception as err:
            raise user_error(err) from err

    @action("feedback")
    async def on_like(state: ChatSession, data: gr.LikeData) -> Update:
        return await like(services().feedback, state, data)

    @action("feedback")
    async def on_reason(
        state: ChatSession, reason: str | None, comment: str, better: str
    ) -> Update:
        return await send_reason(services().feedback, state, reason, comment, better)

    @action("page")  # the list after each answer: a refresh, counted apart from history
    def on_history(state: ChatSession) -> Any:
        return history_update(services().conversations, state)

    @action("history")
    def on_open(state: ChatSession, conversation_id: str) -> Update:
        try:
            opened = open_conversation(services().conversations, state, conversation_id)
        except (NotFoundError, InvalidError) as err:  # deleted meanwhile, or not this session's
            raise UserError(strings.ERROR_NOT_FOUND) from err
        except Exception as err:
            raise user_error(err) from err
        # what the manage panel showed was about the conversation open before
        return *opened, gr.update(visible=False), gr.update(value=None, visible=False)

    @action("history")
    def on_search(state: ChatSession, words: str) -> Update:
        state.search = " ".join(words.split())
        return state, history_update(services().conversations, state)

    @action("history")
    def on_rename(state: ChatSession, title: str) -> Any:
        if state.conversation_id is None or not title.strip():
            raise UserError(strings.NO_CONVERSATION)
        try:
            services().conversations.rename(state.conversation_id, state.session_id, title)
        except Exception as err:
            raise user_error(err) from err
        return history_update(services().conversations, state)

    def on_delete_ask(state: ChatSession, forget: bool) -> Update:
        """Delete asks once, and says what it does to the model's training."""
        if state.conversation_id is None:
            warning(strings.NO_CONVERSATION)
            return gr.update(visible=False), gr.update()
        return gr.update(visible=True), strings.FORGET_ASK if forget else strings.DELETE_ASK

    @action("history")
    def on_delete(state: ChatSession, forget: bool) -> Update:
        if state.conversation_id is None:
            raise UserError(strings.NO_CONVERSATION)
        gone = state.conversation_id
        try:
            services().conversations.delete(gone, state.session_id, forget)
        except Exception as err:
            raise user_error(err) from err
        info(strings.DELETED_FORGOTTEN if forget else strings.DELETED, duration=UNDO_S)
        fresh = ChatSession(session_id=state.session_id, search=state.search)
        return (
            chatbot_update(fresh),
            fresh,
            history_update(services().conversations, fresh),
            gr.update(value="", visible=False),  # its share link stopped working
            gr.update(visible=False),  # the question
            None if forget else gone,  # a forgotten one cannot come back
            gr.update(visible=not forget),
            gr.Timer(active=not forget),
        )

    @action("history")
    def on_undo(state: ChatSession, gone: str | None) -> Update:
        """Bring the deleted conversation back, open."""
        hide = (gr.update(visible=False), gr.Timer(active=False))
        if gone is None:
            return chatbot_update(state), state, gr.update(), None, *hide
        try:
            services().conversations.restore(gone, state.session_id)
            chatbot, opened, *_ = open_conversation(services().conversations, state, gone)
        except Exception as err:
            warning(user_message(err))
            return chatbot_update(state), state, gr.update(), None, *hide
        info(strings.RESTORED, duration=4)
        return chatbot, opened, history_update(services().conversations, opened), None, *hide

    @action("history")
    def on_export(state: ChatSession) -> Any:
        return gr.File(value=export_paths(services().conversations, state), visible=True)

    @action("history")
    def on_share(state: ChatSession) -> Any:
        if state.conversation_id is None:
            raise UserError(strings.NO_CONVERSATION)
        try:
            token = services().conversations.share(state.conversation_id, state.session_id)
        except Exception as err:
            raise user_error(err) from err
        return gr.update(value=services().conversations.share_url(token), visible=True)

    @action("history")
    def on_menu(state: ChatSession, pick: str, forget: bool) -> Update:
        """An item of ⋯'s menu: open that conversation (this session's own, else 404 in words)
        with its manage panel, and do the item: rename gets the title box, share a link,
        export the files, delete its question (delete still asks once)."""
        conversation_id, _, rest = pick.partition(":")
        wanted = rest.partition(":")[0]
        if not conversation_id or wanted not in strings.HISTORY_MENU_ITEMS:
            raise UserError(strings.NO_CONVERSATION)
        try:
            chat_view, opened, title_update, link, persona_update, custom_update = (
                open_conversation(services().conversations, state, conversation_id)
            )
            if wanted == "rename":  # the title as stored, also for the conversation open now
                stored, _ = services().conversations.get(conversation_id, state.session_id)
                title_update = gr.update(value=stored.title or "")
            if wanted == "share":
                token = services().conversations.share(conversation_id, state.session_id)
                link = gr.update(value=services().conversations.share_url(token), visible=True)
            files = (
                gr.File(value=export_paths(services().conversations, opened), visible=True)
                if wanted == "export"
                else gr.update(value=None, visible=False)
            )
        except (NotFoundError, InvalidError) as err:  # deleted meanwhile, or not this session's
            raise UserError(strings.ERROR_NOT_FOUND) from err
        except Exception as err:
            raise user_error(err) from err
        asking = wanted == "delete"
        return (
            chat_view,
            opened,
            history_update(services().conversations, opened),
            title_update,
            link,
            persona_update,
            custom_update,
            gr.Accordion(open=True),
            gr.update(visible=asking),
            (strings.FORGET_ASK if forget else strings.DELETE_ASK) if asking else gr.update(),
            files,
        )

    def on_persona(state: ChatSession, choice: str) -> Update:
        """A persona is the conversation's: chosen for a new chat; in one under way the choice
        goes back to that conversation's, and the page says how to use the new one."""
        if state.conversation_id is not None and state.turns:
            info(strings.PERSONA_NEXT_CHAT, duration=6)
            kept, custom = personas.choice_of(state.persona)
            return gr.update(value=kept), gr.update(value=custom, visible=kept == personas.CUSTOM)
        return gr.update(), gr.update(visible=choice == personas.CUSTOM)

    sent = gr.on(
        [text.submit, send_button.click],
        on_send,
        [state, text, model, persona, custom_persona],
        [text, *running],
        concurrency_id="generate",
        js=AFTER_PAGE_OPENED,
    )
    edited = chatbot.edit(on_edit, [state, model], running, concurrency_id="generate")
    regenerated = regenerate_button.click(
        on_regenerate, [state, model], running, concurrency_id="generate"
    )
    continued = continue_go.click(on_continue, [state, model], running, concurrency_id="generate")

    def in_url(event: Any) -> None:
        """After `event`, the page's URL names the open conversation (`?c=<id>`, none: `/`)."""
        event.then(lambda state: state.conversation_id or "", [state], [conversation_ref]).then(
            None, [conversation_ref], None, js=URL_OF_CONVERSATION
        )

    for event in (sent, edited, regenerated, continued):
        event.then(on_history, [state], [history])
        in_url(event)

    @action("page")
    def after_stop(state: ChatSession) -> Update:
        # After the cancelled event's last update has landed: the buttons as when idle.
        return on_history(state), *busy(False)

    stop_button.click(
        stop,
        [state],
        [chatbot, state, stop_button, send_button],
        cancels=[sent, edited, regenerated, continued],
    ).then(after_stop, [state], [history, stop_button, send_button])
    # ‹/›: the chat shows another version (an answer streaming is stopped first)
    branch_go.click(
        on_branch,
        [state, branch_pick],
        [chatbot, state, reason_box],
        cancels=[sent, edited, regenerated, continued],
    ).then(after_stop, [state], [history, stop_button, send_button])
    # One action: ➕ 새 대화 (and the chat's own 🗑). It first stops an answer streaming, and
    # empties the chat only after that stream's last update has landed, so it cannot overwrite
    # the new chat (the stopped answer stays stored as far as it got).
    cleared = gr.on(
        [new_chat.click, new_chat_phone.click, chatbot.clear],
        lambda state: state,
        [state],
        [state],
        cancels=[sent, edited, regenerated, continued],
    ).then(clear, [state], [chatbot, state, reason_box, text, stop_button, send_button, error])
    cleared.then(after_stop, [state], [history, stop_button, send_button])
    cleared.then(
        lambda: (gr.update(visible=False), gr.update(value=None, visible=False)),
        None,
        [delete_ask, export_file],
    )
    in_url(cleared)
    chatbot.like(on_like, [state], [state, reason_box, chatbot, reason_title]).then(
        None,
        js=FOCUS_BETTER_ANSWER,  # the form has the focus
    )
    send_reason_button.click(
        on_reason, [state, reason, comment, better], [state, reason_box, reason, comment, better]
    )

    in_url(
        history.input(
            on_open,
            [state, history],
            [
                chatbot,
                state,
                title,
                share_link,
                persona,
                custom_persona,
                delete_ask,
                export_file,
            ],
        )
    )
    search.change(on_search, [state, search], [state, history], trigger_mode="always_last")
    drawer_open.click(None, js=OPEN_DRAWER)
    # closed too after a delete, so that the empty chat and its undo are in sight
    for closes in (drawer_close.click, history.input, new_chat.click, delete_yes.click):
        closes(None, js=CLOSE_DRAWER)
    rename_button.click(on_rename, [state, title], [history])
    delete_button.click(on_delete_ask, [state, forget], [delete_ask, delete_question])
    delete_no.click(lambda: gr.update(visible=False), None, [delete_ask])
    in_url(
        delete_yes.click(
            on_delete,
            [state, forget],
            [chatbot, state, history, share_link, delete_ask, deleted, undo_button, undo_timer],
        )
    )
    in_url(
        undo_button.click(
            on_undo, [state, deleted], [chatbot, state, history, deleted, undo_button, undo_timer]
        )
    )
    undo_timer.tick(  # the undo is offered for a few seconds
        lambda: (None, gr.update(visible=False), gr.Timer(active=False)),
        None,
        [deleted, undo_button, undo_timer],
    )
    export_button.click(on_export, [state], [export_file])
    # An item of ⋯'s menu: an answer streaming is stopped first, and the conversation changes
    # only after that stream's last update has landed (as for ➕ 새 대화), so the item acts on
    # the conversation it names and nothing else.
    picked = menu_go.click(
        lambda state: state,
        [state],
        [state],
        cancels=[sent, edited, regenerated, continued],
        trigger_mode="always_last",
    ).then(
        on_menu,
        [state, menu_pick, forget],
        [
            chatbot,
            state,
            history,
            title,
            share_link,
            persona,
            custom_persona,
            manage,
            delete_ask,
            delete_question,
            export_file,
        ],
    )
    picked.success(None, [menu_pick], None, js=FOCUS_MENU_ITEM)
    picked.then(after_stop, [state], [history, stop_button, send_button])
    in_url(picked)
    share_button.click(on_share, [state], [share_link])
    persona.input(on_persona, [state, persona], [persona, custom_persona])

    def on_load(session_id: str, begun: ChatSession, wanted: str) -> Update:
        """The page opens empty, or on the conversation its URL names (`?c=<id>`, this
        session's own: any other id opens an empty chat, with a word). A chat begun before
        the page had opened (its send waits at most 15 s for this step) is kept as it is."""
        served = services()
        choices = model_choices(served.answers)
        if begun.turns or begun.conversation_id:  # (an answer being written has its turns)
            begun.session_id = begun.session_id or session_id
            return (
                begun,
                gr.Dropdown(choices=choices, value=served.answers.default_model()),
                history_update(served.conversations, begun),
                *(gr.update() for _ in range(4)),
                begun.conversation_id or "",
            )
        fresh = ChatSession(session_id=session_id)
        opened: tuple[Any, ...] = (chatbot_update(fresh), fresh, *(gr.update() for _ in range(4)))
        if wanted and session_id:
            try:
                opened = open_conversation(served.conversations, fresh, wanted)
            except (NotFoundError, InvalidError):  # not this session's, deleted, or garbage
                warning(strings.CONVERSATION_NOT_FOUND)
        chat_view, current, title_update, _, persona_update, custom_update = opened
        return (
            current,
            gr.Dropdown(choices=choices, value=served.answers.default_model()),
            history_update(served.conversations, current),
            chat_view,
            title_update,
            persona_update,
            custom_update,
            current.conversation_id or "",
        )

    return OnLoad(
        on_load,
        [state, conversation_ref],
        [state, model, history, chatbot, title, persona, custom_persona, conversation_ref],
        js=CONVERSATION_IN_URL,
    )
