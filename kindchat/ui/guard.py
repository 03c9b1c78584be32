"""The page is held to the API's rules: every page action is the signed cookie's session's.

Gradio keeps a page's state (`gr.State`) under a `session_hash` that the *browser* makes up and
sends with every queue call (it also shows in queue URLs). Knowing another page's hash would let
a second client read its history, receive its streamed answers and vote as its session. Two
checks close that, both here:

* :class:`PageGuard` (ASGI, in front of Gradio): Gradio's own API answers only the paths the page
  uses (:data:`PAGE_PATHS`: the queue, heartbeats, cancels, files it made); deep links, uploads,
  direct `run`/`call` endpoints and the rest are 404. A `session_hash` is bound to the signed
  session of the cookie that first used it; any later request naming that hash with another
  cookie, or none, is refused (403) before Gradio sees it, so it can neither join nor listen.
* :func:`guard_events` wraps every event handler of the Blocks once, after they are built: the
  handler's `gr.Request` cookie must be the session its page state holds, and an action that
  belongs to an endpoint group (chat, feedback, arena, history — set with :func:`action`) is
  counted on the same per-session and per-address limits as the API (:class:`~kindchat.serve.gate.Gate`).

Session hashes are kept out of the access log (:class:`RedactSessionHash`).
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import typing
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import parse_qs

import gradio as gr
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kindchat.serve.auth import SESSION_COOKIE
from kindchat.serve.errors import ApiError
from kindchat.serve.gate import Gate
from kindchat.ui import strings
from kindchat.ui.common import UserError, user_error

logger = logging.getLogger(__name__)

GRADIO_API = "/gradio_api/"
# What the page itself calls under /gradio_api/ (seen from a real browser session); everything
# else Gradio offers there (deep_link, upload, run/…, call/…, api/…, info, stream/…, mcp, …)
# is an API the page does not need.
PAGE_PATHS = re.compile(
    r"^/gradio_api/(queue/join|queue/data|heartbeat/[\w-]+|cancel|file=.+|startup-events"
    r"|theme\.css)$"
)
# Where a session hash may appear (and is bound): the queue's own calls.
BINDING_PATHS = re.compile(r"^/gradio_api/(queue/join|queue/data|heartbeat/[\w-]+|cancel)$")
MAX_BINDINGS = 200_000  # session hashes remembered (the oldest forgotten first)
MAX_BODY = 1 << 20  # a queue call's body at most (the page's inputs: text, small state)
F = TypeVar("F", bound=Callable[..., Any])


class PageSessionError(UserError):
    """A page event whose cookie is not the session of the page it names."""


def action(group: str) -> Callable[[F], F]:
    """Mark a handler as an action of an endpoint `group` (chat, feedback, arena, history): it
    then needs a session and is counted on that group's limits, as the API's route is."""

    def mark(fn: F) -> F:
        fn.__kindchat_group__ = group  # type: ignore[attr-defined]
        return fn

    return mark


@runtime_checkable
class PageState(Protocol):
    """A page's server-side state that belongs to one session (ChatSession, ArenaRound, …)."""

    session_id: str


def cookie_token(request: Any) -> str | None:
    """The session cookie of a Gradio request (or a Starlette one)."""
    cookies = getattr(request, "cookies", None)
    if cookies is not None and hasattr(cookies, "get"):
        value = cookies.get(SESSION_COOKIE)
        if value:
            return str(value)
    return None


class PageCheck:
    """Who a page event speaks for, and whether it may (one place for every handler)."""

    def __init__(self, gate: Callable[[], Gate]) -> None:
        self.gate = gate

    def check(self, request: Any, args: Iterable[Any], group: str | None) -> None:
        client = getattr(request, "client", None)
        caller = self.gate().page_caller(cookie_token(request), getattr(client, "host", None))
        for arg in args:
            if isinstance(arg, PageState) and not arg.session_id and caller.session_id:
                arg.session_id = caller.session_id  # a state the page's opening has not bound yet
            if (
                isinstance(arg, PageState)
                and arg.session_id
                and arg.session_id != (caller.session_id or "")
            ):
                self.gate().metrics.auth_rejected.labels("page_session_mismatch").inc()
                logger.warning("a page event with another session's page state was refused")
                raise PageSessionError(strings.ERROR_PAGE_SESSION)
        if group is None:
            return
        try:
            self.gate().page_hit(group, caller)
        except ApiError as err:
            raise user_error(err) from err


def _wrap(fn: Callable[..., Any], check: PageCheck) -> Callable[..., Any]:
    """`fn` with a `gr.Request` first, checked before it runs; the same kind of callable
    (function, coroutine, generator, async generator), so Gradio runs it as it ran `fn`."""
    group = getattr(fn, "__kindchat_group__", None)
    signature = inspect.signature(fn)
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):
        hints = {}
    request = inspect.Parameter(
        "_kindchat_request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request
    )
    params = [
        p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
    ]

    if inspect.isasyncgenfunction(fn):

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            check.check(args[0], args[1:], group)
            async for item in fn(*args[1:], **kwargs):
                yield item

    elif inspect.iscoroutinefunction(fn):

        async def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            check.check(args[0], args[1:], group)
            return await fn(*args[1:], **kwargs)

    elif inspect.isgeneratorfunction(fn):

        def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            check.check(args[0], args[1:], group)
            yield from fn(*args[1:], **kwargs)

    else:

        def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            check.check(args[0], args[1:], group)
            return fn(*args[1:], **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[request, *params])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {
        "_kindchat_request": gr.Request,
        **{p.name: p.annotation for p in params if p.annotation is not inspect.Parameter.empty},
    }
    wrapper.__name__ = getattr(fn, "__name__", "handler")
    wrapper.__qualname__ = getattr(fn, "__qualname__", wrapper.__name__)
    return wrapper


def guard_events(demo: gr.Blocks, gate: Callable[[], Gate]) -> int:
    """Wrap every event handler of `demo` with the page check; how many were wrapped."""
    check = PageCheck(gate)
    wrapped = 0
    for block_fn in demo.fns.values():
        if block_fn.fn is not None and not getattr(block_fn.fn, "__kindchat_guarded__", False):
            block_fn.fn = _wrap(block_fn.fn, check)
            block_fn.fn.__kindchat_guarded__ = True  # type: ignore[attr-defined]
            wrapped += 1
    return wrapped


def _refuse(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


class PageGuard:
    """In front of the mounted Gradio app (module docstring): only the page's own paths, and
    each session hash bound to the signed session that first used it."""

    def __init__(self, app: ASGIApp, gate: Callable[[], Gate]) -> None:
        self.app = app
        self.gate = gate
        self.bound: OrderedDict[str, str] = OrderedDict()
        self.redacting = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.redacting:  # uvicorn configures its loggers after the app is built
            redact_access_log()
            self.redacting = True
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(GRADIO_API):
            if scope["type"] == "http" and (
                path == "/monitoring" or path.startswith("/monitoring/")
            ):
                await _refuse(404, "Not Found")(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if not PAGE_PATHS.match(path):
            await _refuse(404, "Not Found")(scope, receive, send)
            return
        request = HTTPConnection(scope)
        caller = self.gate().page_caller(
            cookie_token(request), request.client.host if request.client else None
        )
        session = caller.session_id or ""
        hashes = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash", [])
        if path.startswith("/gradio_api/heartbeat/"):
            hashes.append(path.rsplit("/", 1)[-1])
        if path.startswith("/gradio_api/file="):
            if not session:
                await _refuse(403, "a file of this page needs the page's session cookie")(
                    scope, receive, send
                )
                return
        if scope["method"] == "POST":
            body, receive = await _read_body(receive)
            if body is None:
                await _refuse(413, "request body too large")(scope, receive, send)
                return
            try:
                payload = json.loads(body or b"{}")
            except ValueError:
                payload = {}
            if isinstance(payload, dict) and isinstance(payload.get("session_hash"), str):
                hashes.append(payload["session_hash"])
        # One hash a request (query, path and body together), on the queue's own paths only:
        # every hash Gradio could act on is the one checked below.
        if len(hashes) > 1 or (hashes and not BINDING_PATHS.match(path)):
            await _refuse(400, "one session_hash, on the queue's own paths only")(
                scope, receive, send
            )
            return
        for session_hash in hashes:
            if session_hash not in self.bound:
                try:  # a new page: counted per address, so nobody floods the table
                    self.gate().limits.hit("pages", caller)
                except ApiError as err:
                    status = err.status_code
                    await _refuse(status, str(err))(scope, receive, send)
                    return
            if not self._bind(session_hash, session):
                self.gate().metrics.auth_rejected.labels("page_session_mismatch").inc()
                logger.warning(
                    "refused a %s from %s: its page belongs to another session",
                    path,
                    caller.address,
                )
                await _refuse(403, "this page belongs to another session; reload the page")(
                    scope, receive, send
                )
                return
        await self.app(scope, receive, send)

    def _bind(self, session_hash: str, session: str) -> bool:
        """Bind the hash to `session` on first sight; later, whether it is that session."""
        owner = self.bound.get(session_hash)
        if owner is None:
            self.bound[session_hash] = session
            if len(self.bound) > MAX_BINDINGS:
                self.bound.popitem(last=False)
            return True
        self.bound.move_to_end(session_hash)
        return owner == session


async def _read_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """The whole request body (None when over MAX_BODY), and a `receive` that replays it."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None, receive
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


class RedactSessionHash(logging.Filter):
    """Access-log lines without session hashes (query strings and heartbeat paths)."""

    PATTERN = re.compile(r"(session_hash=)[^&\s\"]+|(/heartbeat/)[\w-]+|(/file=)[^\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.PATTERN.sub(lambda m: (m.group(1) or m.group(2) or m.group(3)) + "…", a)
                if isinstance(a, str)
                else a
                for a in record.args
            )
        return True


def redact_access_log() -> None:
    """Install :class:`RedactSessionHash` on uvicorn's access logger (once)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSessionHash) for f in access.filters):
        access.addFilter(RedactSessionHash())
