"""Who is speaking: server-signed sessions, API keys, and the client's address.

A session id is something the server hands out, never something a client picks:

* `POST /v1/sessions` returns a token (itsdangerous, signed with the session secret and
  timestamped); API clients send it as `Authorization: Bearer <token>` (the `api_key` of an
  OpenAI client) or `X-Kindchat-Session: <token>`.
* The browser UI gets the same token in an HttpOnly cookie (`kindchat_session`) on its first
  page load.
* An API key (`KINDCHAT_API_KEYS`, `name:key`) speaks as one client, the session `key:<name>`;
  sessions minted with a key (`POST /v1/sessions` with the key) carry its name.

A `session_id` (or `user`) in a request body is accepted only when it is such a token, or the
id of the caller's own signed session. The secret is generated on first start and kept in
`$KINDCHAT_HOME/session_secret` (mode 0600) unless `KINDCHAT_SESSION_SECRET` sets it; old secrets
in `KINDCHAT_SESSION_SECRETS_OLD` still verify while new tokens are signed with the current one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from kindchat.config import Settings
from kindchat.serve.errors import AuthenticationError, PermissionDeniedError

logger = logging.getLogger(__name__)

SESSION_COOKIE = "kindchat_session"
SESSION_HEADER = "x-kindchat-session"
SECRET_FILE = "session_secret"
KEY_PREFIX = "key:"
_SALT = "kindchat.session.v1"
VERIFIED_CACHE = 50_000  # tokens remembered as verified (a dict: the oldest go first)


class SessionTokenError(AuthenticationError):
    """A session token that is forged, damaged or expired."""

    code = "invalid_session"


class SessionRequiredError(AuthenticationError):
    """An endpoint that needs a signed session (or an API key) was called without one."""

    code = "session_required"


class UnsignedSessionError(PermissionDeniedError):
    """A body names a session id that is neither a token nor the caller's own session."""

    code = "unsigned_session"


@dataclass(frozen=True)
class Caller:
    """The one voice behind a request.

    `session_id`: the signed session (`key:<name>` for an API key itself), None when anonymous;
    `key`: the API key's name when the caller holds one or a session minted with one;
    `address`: the client's address (after trusted proxies); `via`: how it was shown.
    """

    session_id: str | None
    key: str | None
    address: str
    via: str  # key | token | cookie | anonymous
    ui: bool = False  # a session the web page minted


class Claims(NamedTuple):
    """What a valid token says: its session, the API key that minted it, whether the web page
    minted it (such sessions work in the page; in keyed mode not on the API)."""

    session_id: str
    key: str | None
    ui: bool


@dataclass(frozen=True)
class IssuedSession:
    session_id: str
    token: str
    expires_at: datetime


def load_or_create_secret(home: Path) -> str:
    """The secret in `home/session_secret`, made (0600) when there is none. Written whole to a
    temporary file and linked into place, so a second server starting at the same moment reads
    the one secret, never a half-written file."""
    path = home / SECRET_FILE
    home.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = home / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(tmp, path)  # fails if another process linked its secret first
            logger.info("made a new session secret in %s", path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    secret = path.read_text(encoding="utf-8").strip()
    if len(secret) < 32:
        raise ValueError(
            f"{path} holds a secret of {len(secret)} characters; delete it (a new one is made) "
            "or set KINDCHAT_SESSION_SECRET to at least 32 characters"
        )
    return secret


def _parse_keys(items: list[Any]) -> dict[str, bytes]:
    """name -> key bytes from `name:key` items (a bare key is named by its hash)."""
    keys: dict[str, bytes] = {}
    for item in items:
        raw = item.get_secret_value() if hasattr(item, "get_secret_value") else str(item)
        name, sep, key = raw.partition(":")
        if not sep:
            name, key = "k" + hashlib.sha256(raw.encode()).hexdigest()[:8], raw
        name, key = name.strip(), key.strip()
        if not name or len(key) < 16:
            raise ValueError(
                f"API key {name or '(unnamed)'!r} is too short: use 16 characters or more "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        if name in keys:
            raise ValueError(f"two API keys are named {name!r}")
        keys[name] = key.encode()
    return keys


class Sessions:
    """Issues and checks session tokens; recognises API keys (compared in constant time)."""

    def __init__(self, settings: Settings) -> None:
        current = (
            settings.session_secret.get_secret_value()
            if settings.session_secret is not None
            else load_or_create_secret(settings.home)
        )
        old = [s.get_secret_value() for s in settings.session_secrets_old]
        # itsdangerous signs with the last key and verifies with any (rotation).
        self._serializer = URLSafeTimedSerializer([*old, current], salt=_SALT)
        self._tag_key = hashlib.sha256(b"kindchat.origin:" + current.encode()).digest()
        self.max_age_s = settings.session_max_age_s
        self._keys = _parse_keys(list(settings.api_keys))
        self._verified: dict[str, tuple[dict[str, Any], float]] = {}

    @property
    def has_keys(self) -> bool:
        return bool(self._keys)

    def origin_tag(self, address: str) -> str:
        """A keyed hash of a client address (no address is stored in the clear)."""
        digest = hmac.new(self._tag_key, address.encode(), hashlib.sha256).hexdigest()
        return digest[:12]

    def issue(
        self, key: str | None = None, address: str | None = None, ui: bool = False
    ) -> IssuedSession:
        """A new session and its token. Minted under the API key named `key`, the session is
        its own origin (`k-<random>`); minted for a client `address`, the id carries its
        origin tag (`s-<tag>-<random>`, :func:`kindchat.feedback.influence.origin_of`), so
        what many sessions of one address weigh together can be capped."""
        if key is not None or address is None:
            session_id = "k-" + secrets.token_hex(12)
        else:
            session_id = f"s-{self.origin_tag(address)}-{secrets.token_hex(10)}"
        payload: dict[str, Any] = {"s": session_id, "k": key}
        if ui:
            payload["u"] = 1
        token = self._serializer.dumps(payload)
        expires = datetime.now(timezone.utc) + timedelta(seconds=self.max_age_s)
        return IssuedSession(session_id, str(token), expires)

    def verify(self, token: str) -> Claims:
        """The claims of a valid token (its key, if any, still configured); SessionTokenError
        otherwise. A token seen before is not checked again (the HMAC costs more than the
        rest of a page event): its payload and signing time are remembered, and its age and
        key are checked on every call."""
        known = self._verified.get(token)
        if known is not None:
            payload, signed_at = known
            if time.time() - signed_at > self.max_age_s:
                del self._verified[token]
                raise SessionTokenError(
                    "the session token has expired; get a new one from POST /v1/sessions"
                )
            return self._claims(payload)
        try:
            payload, stamp = self._serializer.loads(
                token, max_age=self.max_age_s, return_timestamp=True
            )
        except SignatureExpired:
            raise SessionTokenError(
                "the session token has expired; get a new one from POST /v1/sessions"
            ) from None
        except BadSignature:
            raise SessionTokenError(
                "the session token is not valid (not signed by this server, or damaged)"
            ) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("s"), str):
            raise SessionTokenError("the session token is not valid (unknown payload)")
        claims = self._claims(payload)
        if len(self._verified) >= VERIFIED_CACHE:
            try:
                self._verified.pop(next(iter(self._verified)))  # the oldest first
            except (KeyError, RuntimeError, StopIteration):  # another thread got there
                pass
        self._verified[token] = (payload, stamp.timestamp())
        return claims

    def _claims(self, payload: dict[str, Any]) -> Claims:
        key = payload.get("k") if isinstance(payload.get("k"), str) else None
        if key is not None and key not in self._keys:
            raise SessionTokenError(
                f"the session token was minted with the API key {key!r}, which is no longer valid"
            )
        return Claims(payload["s"], key, bool(payload.get("u")))

    def key_name(self, presented: str) -> str | None:
        """The name of the API key `presented` is, or None (every key compared, in constant
        time)."""
        found = None
        raw = presented.encode()
        for name, key in self._keys.items():
            if secrets.compare_digest(raw, key):
                found = name
        return found

    def identify(
        self, presented: str | None, address: str, via: str, *, lenient: bool = False
    ) -> Caller:
        """The caller a credential makes (`presented` None: anonymous). `lenient` (open mode):
        a bearer that is neither a key nor shaped like a token (an OpenAI client's dummy
        `api_key="EMPTY"`) is anonymous, as on a vLLM server without keys; a token that fails
        its check is refused either way."""
        if not presented:
            return Caller(None, None, address, "anonymous")
        name = self.key_name(presented)
        if name is not None:
            return Caller(KEY_PREFIX + name, name, address, "key")
        if "." not in presented:
            if lenient:
                return Caller(None, None, address, "anonymous")
            raise SessionTokenError("the API key is not valid", code="invalid_api_key")
        claims = self.verify(presented)
        return Caller(claims.session_id, claims.key, address, via, claims.ui)

    def claim(self, caller: Caller, named: str | None) -> Caller:
        """The caller a body's `session_id`/`user` makes: a token is verified; a plain id must
        be the caller's own session (UnsignedSessionError otherwise)."""
        if named is None or named == caller.session_id:
            return caller
        try:
            claims = self.verify(named)
        except SessionTokenError as err:
            if "." not in named:  # a bare id, not a damaged token
                raise UnsignedSessionError(
                    f"session id {named[:40]!r} is not signed by this server; get a session "
                    "from POST /v1/sessions and send its token (Authorization: Bearer …)",
                    param="session_id",
                ) from None
            raise err
        return Caller(
            claims.session_id, claims.key or caller.key, caller.address, "token", claims.ui
        )
