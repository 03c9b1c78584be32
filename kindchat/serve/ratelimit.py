"""Rate limits per session, per API key and per client address (the `limits` library).

Each endpoint group (`chat`, `feedback`, `arena`, `history`, `sessions`) has its own counters. A caller is
counted under every scope that applies to it:

| caller                                 | scopes                 |
| -------------------------------------- | ---------------------- |
| anonymous (open mode)                  | address                |
| a session from POST /v1/sessions or UI | session, address       |
| an API key, or a session minted by one | key (+ session)        |

(A key's traffic often comes through one server of its owner, so its address is not limited;
the key's own limit is its budget.) A request over any limit gets 429 with `Retry-After` (the
seconds until that window frees a slot) and counts in `kindchat_rate_limited_total`. New
sessions are limited per address (`rate_limit_new_sessions`), or per key when minted with one.
Counters live in `rate_limit_storage`: `memory://` per process, `redis://…` shared.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)

from kindchat.config import Settings
from kindchat.serve.auth import Caller
from kindchat.serve.errors import ApiError
from kindchat.serve.metrics import Metrics

STRATEGIES: dict[str, type[RateLimiter]] = {
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
    "moving-window": MovingWindowRateLimiter,
}


class RateLimitedError(ApiError):
    status_code = 429
    type = "rate_limit_error"
    code = "rate_limited"


def _parse(text: str, name: str) -> list[RateLimitItem]:
    try:
        return list(parse_many(text))
    except ValueError as err:
        raise ValueError(
            f"{name} {text!r} is not a rate limit like '30/minute;600/day': {err}"
        ) from None


class RateLimits:
    """Checks and counts one request against every limit that applies to its caller."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.enabled = settings.rate_limits
        self.metrics = metrics
        strategy = STRATEGIES[settings.rate_limit_strategy]
        self.limiter = strategy(storage_from_string(settings.rate_limit_storage))
        self.per_scope = {
            "session": _parse(settings.rate_limit_session, "rate_limit_session"),
            "key": _parse(settings.rate_limit_api_key, "rate_limit_api_key"),
            "address": _parse(settings.rate_limit_address, "rate_limit_address"),
        }
        self.new_sessions = _parse(settings.rate_limit_new_sessions, "rate_limit_new_sessions")

    def scopes(self, caller: Caller) -> list[tuple[str, str]]:
        """(scope, who) for every limit that applies, the narrowest first."""
        out = []
        if caller.session_id is not None and caller.via != "key":
            out.append(("session", caller.session_id))
        out.append(("key", caller.key) if caller.key is not None else ("address", caller.address))
        return out

    def hit(self, group: str, caller: Caller) -> None:
        """Count one `group` request of `caller`, or raise RateLimitedError."""
        self._hit(
            group, [(scope, who, self.per_scope[scope]) for scope, who in self.scopes(caller)]
        )

    def hit_new_session(self, caller: Caller) -> None:
        """Count one new session for the caller's key (when it has one) or address."""
        if caller.key is not None:
            self._hit("sessions", [("key", caller.key, self.per_scope["key"])])
        else:
            self._hit("sessions", [("address", caller.address, self.new_sessions)])

    def _hit(self, group: str, scoped: list[tuple[str, str, list[RateLimitItem]]]) -> None:
        # One `hit` a limit (no separate `test`: half the cost on every request). The narrowest
        # scope goes first, so a session over its own limit spends nothing of its address's.
        if not self.enabled:
            return
        for scope, who, items in scoped:
            for item in items:
                keys = (group, scope, who)
                if not self.limiter.hit(item, *keys):
                    self._refuse(group, scope, item, keys)

    def _refuse(self, group: str, scope: str, item: RateLimitItem, keys: tuple[str, ...]) -> None:
        reset = self.limiter.get_window_stats(item, *keys).reset_time
        retry = max(1, math.ceil(reset - time.time()))
        self.metrics.rate_limited.labels(group, scope).inc()
        raise RateLimitedError(
            f"too many {group} requests from this {scope} (limit {item}); retry in {retry} s",
            retry_after=retry,
        )
