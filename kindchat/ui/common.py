"""What every tab shares: how handlers reach the services, show text safely, and report errors."""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from kindchat.models.manager import ModelName
from kindchat.serve.errors import to_api_error
from kindchat.serve.services import Answer, AnswerService, Services
from kindchat.ui import strings

logger = logging.getLogger(__name__)

ServicesRef = Callable[[], Services]
"""The app's :class:`~kindchat.serve.services.Services`, built in the FastAPI lifespan after the
UI is built; each tab reads the services it uses from it, handlers take those only."""


@dataclass(frozen=True)
class OnLoad:
    """What a tab runs with ``fn(session_id, *inputs)``: when the page opens, once the browser's
    session id is known (`on_open`), and/or whenever the tab is selected (`on_select`; plots
    drawn while their tab is hidden come out empty, so data-heavy tabs load then)."""

    fn: Callable[..., Any]
    inputs: list[Any]
    outputs: list[Any]
    on_open: bool = True
    on_select: bool = False
    js: str | None = None  # run in the browser first, on the inputs (e.g. to read the URL)


def safe(text: str) -> str:
    """Text for a Markdown-rendering component, with HTML shown as text (never run).

    Escaping `&`, `<`, `>` turns every tag into literal characters before Markdown sees it, so
    `<script>` and `<img onerror=…>` display as typed; Markdown emphasis and lists still work.
    """
    return html.escape(text, quote=False)


ERROR_MESSAGES = {
    "empty_message": strings.ERROR_EMPTY,
    "context_length_exceeded": strings.ERROR_TOO_LONG,
    "server_busy": strings.ERROR_BUSY,
    "rate_limited": strings.ERROR_RATE_LIMITED,
    "session_required": strings.ERROR_NO_SESSION,
    "model_not_found": strings.ERROR_MODEL,
    "model_unavailable": strings.ERROR_MODEL,
    "model_starting": strings.ERROR_MODEL_STARTING,
    "retrain_busy": strings.ERROR_RETRAIN_BUSY,
    "flagged_text": strings.ERROR_FLAGGED_TEXT,
}


def user_message(err: BaseException, max_chars: int = 8000) -> str:
    """The Korean sentence for an error of the service: what went wrong and what to do (unknown
    ones are logged). `max_chars`: the server's input limit, which the too-long message names."""
    if isinstance(err, gr.Error):
        return str(err.message)
    api = to_api_error(err)
    if api is None:
        logger.error("UI handler failed", exc_info=err)
        return strings.ERROR_GENERIC
    if api.code in ERROR_MESSAGES:
        return ERROR_MESSAGES[api.code].format(limit=max_chars)
    fallback = strings.ERROR_UNAVAILABLE if api.status_code >= 500 else strings.ERROR_GENERIC
    return strings.ERROR_DETAIL.format(message=fallback, detail=safe(str(api)))


class UserError(gr.Error):
    """Gradio's error toast with a Korean title."""

    def __init__(self, message: str, duration: float | None = 10) -> None:
        super().__init__(message, duration=duration, title=strings.TITLE_ERROR)


def info(message: str, duration: float | None = 10) -> None:
    """An information toast, titled in Korean."""
    gr.Info(message, duration=duration, title=strings.TITLE_INFO)


def warning(message: str, duration: float | None = 10) -> None:
    """A warning toast, titled in Korean."""
    gr.Warning(message, duration=duration, title=strings.TITLE_WARNING)


def user_error(err: BaseException) -> gr.Error:
    """A Korean :class:`gr.Error` for an error of the service (unknown ones are logged)."""
    return UserError(user_message(err))


def error_line(message: str | None = None) -> Any:
    """The line under an input that says what went wrong (hidden when `message` is None).
    Errors are shown there and in a toast, never as Gradio's error panel over the outputs,
    which would cover the chat and the input."""
    if message:
        warning(message, duration=8)
        return gr.update(value=f"⚠️ {message}", visible=True)
    return gr.update(value="", visible=False)


VERSION_DATE = re.compile(r"-(\d{4})(\d{2})(\d{2})-")


def friendly_name(served: str) -> str:
    """What people call a served model: `kindchat-rlhf` → 추천 모델, `kindchat-sft` → 기본 모델,
    a version id → 이전 모델 (날짜). Version ids stay in detail lines."""
    alias = served.removeprefix("kindchat-")
    if alias in strings.MODEL_NAMES:
        return strings.MODEL_NAMES[alias]
    found = VERSION_DATE.search(served)
    if found:
        year, month, day = found.groups()
        return strings.OLDER_VERSION.format(date=f"{year}.{int(month)}.{int(day)}")
    return alias


def model_label(name: ModelName) -> str:
    """The friendly name of a served model (its alias's, or the version's date)."""
    return friendly_name(name.name)


def model_choices(answers: AnswerService) -> list[tuple[str, str]]:
    """(label, served name) for every model the server answers with now, one entry per model:
    an alias and the version it points at are one model (the alias is listed)."""
    seen: set[str] = set()
    choices = []
    for name in answers.models():
        if name.version not in seen:
            seen.add(name.version)
            choices.append((model_label(name), name.name))
    return choices


_STORING: set[asyncio.Task[None]] = set()  # stopped answers being stored (kept referenced)


async def stream_text(service: AnswerService, answer: Answer) -> AsyncIterator[str]:
    """The answer's text so far after each piece; stored when it ends. Stopped early (the
    stop button cancels the event, or the tab closed), it is stored as far as it got, with
    `finish_reason` `stop_by_user`, in a task of its own so that the cancellation cannot cut
    the write short."""
    try:
        async with contextlib.aclosing(service.deltas(answer)) as pieces:
            async for _ in pieces:
                yield answer.text
        await service.store(answer)
    finally:
        if not answer.stored:
            task = asyncio.get_running_loop().create_task(service.abandon(answer))
            _STORING.add(task)
            task.add_done_callback(_STORING.discard)


async def run_blocking(fn: Callable[..., Any], /, **kwargs: Any) -> Any:
    """A store- or registry-bound service call off the event loop."""
    return await asyncio.to_thread(fn, **kwargs)
