"""One chat call to an OpenAI-compatible endpoint, with retries: shared by the judge and augment.

The official `openai` client is used with its own retries off; :class:`ChatClient` retries
timeouts, connection errors, 429 and 5xx with exponential backoff (honouring `Retry-After`),
raises :class:`JudgeUnavailableError` when the endpoint stays unreachable and
:class:`JudgeError` at once for other refusals (bad key, unknown model, bad request).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import openai
from openai import OpenAI

from kindchat.config import Settings
from kindchat.feedback.errors import InvalidValueError, JudgeError, JudgeUnavailableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EndpointConfig:
    """Where and how to call the endpoint (defaults from `Settings.judge_*`)."""

    model: str
    base_url: str | None = None  # None: OpenAI's (or $OPENAI_BASE_URL)
    api_key: str | None = None  # None: $OPENAI_API_KEY, else a placeholder for keyless servers
    timeout_s: float = 60.0  # seconds per request
    max_retries: int = 4  # extra tries after a timeout, connection error, 429 or 5xx
    backoff_s: float = 1.0  # first wait; doubles each retry (with ±20 % jitter)
    backoff_max_s: float = 30.0  # longest single wait

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise InvalidValueError("model must name the endpoint's model", field="model")
        if self.timeout_s <= 0:
            raise InvalidValueError(
                f"timeout_s must be > 0, got {self.timeout_s}", field="timeout_s"
            )
        if self.max_retries < 0:
            raise InvalidValueError(
                f"max_retries must be ≥ 0, got {self.max_retries}", field="max_retries"
            )
        if self.backoff_s < 0 or self.backoff_max_s < self.backoff_s:
            raise InvalidValueError(
                "backoff_s must be ≥ 0 and backoff_max_s ≥ backoff_s", field="backoff_s"
            )

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> EndpointConfig:
        """The endpoint of `settings` (KINDCHAT_JUDGE_*), with non-None `overrides` applied."""
        key = settings.judge_api_key.get_secret_value() if settings.judge_api_key else None
        values: dict[str, Any] = {
            "model": settings.judge_model,
            "base_url": settings.judge_base_url,
            "api_key": key,
            "timeout_s": settings.judge_timeout_s,
            "max_retries": settings.judge_max_retries,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


_RETRYABLE = (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)


class ChatClient:
    """`complete(messages)` → the reply text; thread-safe (share one across worker threads)."""

    def __init__(self, config: EndpointConfig) -> None:
        self.config = config
        self._client = OpenAI(
            base_url=config.base_url,
            api_key=config.api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
            timeout=config.timeout_s,
            max_retries=0,
        )

    @property
    def where(self) -> str:
        return str(self._client.base_url)

    def _wait(self, attempt: int, err: Exception) -> float:
        delay = min(self.config.backoff_s * 2**attempt, self.config.backoff_max_s)
        delay *= random.uniform(0.8, 1.2)
        response = getattr(err, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), self.config.backoff_max_s))
            except ValueError:
                pass
        return delay

    def complete(
        self, messages: Sequence[dict[str, str]], *, temperature: float = 0.0, max_tokens: int = 512
    ) -> str:
        """One chat completion; retried on timeouts, connection errors, 429 and 5xx."""
        last: Exception | None = None
        for attempt in range(self.config.max_retries + 1):
            try:
                response = self._client.chat.completions.create(
                    model=self.config.model,
                    messages=list(messages),  # type: ignore[arg-type]
                    temperature=temperature,
                    max_tokens=max_tokens,
                )
            except _RETRYABLE as err:
                last = err
                if attempt == self.config.max_retries:
                    break
                delay = self._wait(attempt, err)
                logger.warning(
                    "%s from %s; retry %d/%d in %.2f s",
                    type(err).__name__,
                    self.where,
                    attempt + 1,
                    self.config.max_retries,
                    delay,
                )
                time.sleep(delay)
                continue
            except openai.APIStatusError as err:
                raise JudgeError(
                    f"the endpoint {self.where} refused the request ({err.status_code}: "
                    f"{err.message}); check the model name, API key and base URL"
                ) from err
            if not response.choices:
                return ""
            return response.choices[0].message.content or ""
        raise JudgeUnavailableError(
            f"the endpoint {self.where} is unavailable after {self.config.max_retries + 1} "
            f"tries ({type(last).__name__}: {last}); check --base-url / KINDCHAT_JUDGE_BASE_URL "
            "and that the server is up"
        ) from last
