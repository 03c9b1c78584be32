"""The gate every chat, feedback, arena and session request passes: who is it, may it, how often.

:meth:`Gate.caller` reads the credential (`Authorization: Bearer`, `X-Kindchat-Session`, or the
UI's cookie), checks a body's `session_id`/`user` against it, applies the access mode, and
counts the request against the rate limits. Refusals are 401 (no or bad credential), 403 (an
unsigned session id) and 429 (a limit, with `Retry-After`), each counted in `/metrics`.

| mode    | chat without a session | feedback, arena, history | POST /v1/sessions                  |
| ------- | ---------------------- | ------------------------ | ---------------------------------- |
| `open`  | yes (per address)      | a signed session         | anyone (new sessions per address)  |
| `keyed` | no: 401                | a key or a key's session | an API key (the UI: cookie/address) |

(In keyed mode the web page's own cookie sessions work in the page only, not on the API.)
"""

from __future__ import annotations

import ipaddress

from starlette.requests import HTTPConnection

from kindchat.config import Settings
from kindchat.serve.auth import (
    SESSION_COOKIE,
    SESSION_HEADER,
    Caller,
    IssuedSession,
    SessionRequiredError,
    Sessions,
    SessionTokenError,
    UnsignedSessionError,
)
from kindchat.serve.errors import ApiError, AuthenticationError
from kindchat.serve.metrics import Metrics
from kindchat.serve.ratelimit import RateLimits

PAGE_GROUP = "page"  # opening a page's tabs, refreshing its lists: no session needed


class KeyRequiredError(AuthenticationError):
    code = "api_key_required"


KEYED = (
    "this server is in keyed mode: send an API key or a session token as `Authorization: Bearer …`"
)


def person_address(host: str | None) -> str:
    """What one person's address is for limits and origins: an IPv4 address as it is, an IPv6
    address as its /64 network (one subscriber's line; every address in it is theirs)."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return host


def client_address(request: HTTPConnection) -> str:
    """The client's address: the peer, or what a trusted proxy said (ProxyHeadersMiddleware
    with `trusted_proxies` rewrites the peer; nobody else's X-Forwarded-For is read), as
    :func:`person_address` groups it."""
    return person_address(request.client.host if request.client else None)


def bearer(request: HTTPConnection) -> str | None:
    """The token of `Authorization: Bearer <token>`, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def credential(request: HTTPConnection) -> tuple[str | None, str]:
    """(the credential, how it came): a bearer token, the session header, or the cookie."""
    token = bearer(request)
    if token:
        return token, "token"
    header = request.headers.get(SESSION_HEADER)
    if header:
        return header.strip(), "token"
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        return cookie, "cookie"
    return None, "anonymous"


class Gate:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.mode = settings.access_mode
        self.sessions = Sessions(settings)
        self.limits = RateLimits(settings, metrics)
        self.metrics = metrics
        if self.mode == "keyed" and not self.sessions.has_keys:
            raise ValueError(
                "access_mode keyed needs at least one API key: set KINDCHAT_API_KEYS "
                "(name:key, comma-separated)"
            )

    def identify(self, request: HTTPConnection, named: str | None = None) -> Caller:
        """The caller, without access rules or limits (401/403 for bad credentials)."""
        try:
            return self._identify(request, named)
        except ApiError as err:
            self.metrics.auth_rejected.labels(err.code or "invalid").inc()
            raise

    def _identify(self, request: HTTPConnection, named: str | None) -> Caller:
        presented, via = credential(request)
        caller = self.sessions.identify(
            presented, client_address(request), via, lenient=self.mode == "open"
        )
        try:
            return self.sessions.claim(caller, named)
        except UnsignedSessionError:
            if self.mode == "keyed" and caller.session_id is None:
                raise KeyRequiredError(KEYED) from None  # no credential at all: 401
            raise

    def caller(
        self,
        request: HTTPConnection,
        group: str,
        *,
        named: str | None = None,
        need_session: bool = True,
    ) -> Caller:
        """The caller of a `group` request, checked and counted (module docstring)."""
        try:
            caller = self._identify(request, named)
            if self.mode == "keyed" and caller.session_id is None:
                raise KeyRequiredError(KEYED)
            if self.mode == "keyed" and caller.ui:
                raise KeyRequiredError(
                    "this server is in keyed mode: the web page's session works in the page "
                    "only; API calls need an API key or a session minted with one"
                )
            if need_session and caller.session_id is None:
                raise SessionRequiredError(
                    f"{group} needs a session: get one from POST /v1/sessions and send its "
                    "token as `Authorization: Bearer …` (or an API key)"
                )
        except ApiError as err:
            self.metrics.auth_rejected.labels(err.code or "invalid").inc()
            raise
        self.limits.hit(group, caller)
        return caller

    def page_caller(self, token: str | None, host: str | None) -> Caller:
        """The caller of a page request: its cookie's signed session (made by the page) and its
        address; anonymous without a valid cookie (the page opens, it cannot act)."""
        address = person_address(host)
        if token:
            try:
                claims = self.sessions.verify(token)
            except SessionTokenError:
                pass
            else:
                return Caller(claims.session_id, claims.key, address, "cookie", ui=True)
        return Caller(None, None, address, "anonymous", ui=True)

    def page_hit(self, group: str, caller: Caller) -> None:
        """A page action of `group` (the UI's door): it needs the page's signed session (but
        `page`, opening and refreshing the page's own views), and counts on the same
        per-session and per-address limits as the API's routes."""
        if caller.session_id is None and group != PAGE_GROUP:
            self.metrics.auth_rejected.labels(SessionRequiredError.code).inc()
            raise SessionRequiredError(
                "this page has no session (new sessions from this address are over the limit, "
                "or cookies are off); reload the page later"
            )
        self.limits.hit(group, caller)

    def new_session(self, request: HTTPConnection, via: str = "api") -> IssuedSession:
        """A new signed session for this caller (keyed mode: only with an API key). The UI's
        page (`via="ui"`) mints for its address, whatever stale or forged cookie it sent."""
        caller = (
            Caller(None, None, client_address(request), "anonymous")
            if via == "ui"
            else self.identify(request)
        )
        if self.mode == "keyed" and caller.key is None and via != "ui":
            self.metrics.auth_rejected.labels(KeyRequiredError.code).inc()
            raise KeyRequiredError(
                "this server is in keyed mode: sessions are minted with an API key "
                "(`Authorization: Bearer <key>`)"
            )
        self.limits.hit_new_session(caller)
        issued = self.sessions.issue(key=caller.key, address=caller.address, ui=via == "ui")
        self.metrics.sessions_issued.labels("key" if caller.key else via).inc()
        return issued

    def cookie_session(self, request: HTTPConnection) -> str | None:
        """The session id of the request's valid cookie (the UI), else None."""
        return self.token_session(request.cookies.get(SESSION_COOKIE))

    def token_session(self, token: str | None) -> str | None:
        """The session id of a valid token, else None."""
        if not token:
            return None
        try:
            return self.sessions.verify(token).session_id
        except SessionTokenError:
            return None
