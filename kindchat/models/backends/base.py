"""The one interface every generation backend speaks, and the typed errors they raise.

A backend turns OpenAI-style messages and :class:`SamplingParams` into an async stream of
:class:`TextDelta`: text pieces as they are generated, with the token counts so far, the last one
carrying the finish reason. Local backends and `tgi` build the prompt on our side in the model's
format (:meth:`GenerationBackend.render_prompt`); the `openai` backend sends the messages, and
the server applies the chat template kindchat wrote into the registered model.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from kindchat.errors import BusyError, TooLongError, UnavailableError
from kindchat.models.generation import REPLACEMENT_CHAR, SamplingParams, drop_incomplete_char
from kindchat.models.template import (
    KULLM,
    Fitted,
    Message,
    PromptFormat,
    PromptTooLongError,
    prompt_format,
)

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]
BackendName = Literal["hf", "deepspeed", "tgi", "openai"]  # one per backend module


class BackendError(UnavailableError):
    """Generation failed for a reason that is not the caller's input."""


class QueueFullError(BackendError, BusyError):
    """The engine's waiting queue is full; the caller should retry after `retry_after` seconds."""

    def __init__(self, queued: int, limit: int, retry_after: int = 1) -> None:
        super().__init__(
            f"the server is busy: {queued} requests are already waiting (limit {limit}); "
            f"retry in {retry_after} s"
        )
        self.retry_after: float | None = retry_after


class BackendUnavailableError(BackendError):
    """The backend cannot serve now (stopped, unloaded, or a remote server unreachable)."""

    def __init__(self, message: str, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after: float | None = retry_after


class InputTooLongError(TooLongError):
    """The prompt does not fit the model's context (or the configured token limit)."""


@dataclass(frozen=True)
class TextDelta:
    """A piece of generated text; `finish_reason` is set on the last delta of a stream only."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class GenerationOptions:
    """Per-request extras beside the sampling parameters."""

    seed: int | None = None
    min_tokens: int = 0  # EOS suppressed before this many tokens (local backends)
    max_input_tokens: int | None = None  # our own cap, below the model's context
    stop: tuple[str, ...] = field(default_factory=tuple)
    # The answer so far, cut by the length limit: the model goes on from its last character
    # (계속 생성). The prompt ends with it; only the new text streams.
    prefix: str = ""


class GenerationBackend(abc.ABC):
    """Messages + sampling parameters -> async stream of :class:`TextDelta`."""

    name: BackendName
    prompt_format: PromptFormat = KULLM  # local backends: their model's own format

    @property
    @abc.abstractmethod
    def context_length(self) -> int:
        """Prompt + completion tokens the model can attend to."""

    @abc.abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes in the model's tokenizer."""

    @abc.abstractmethod
    def stream(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        options: GenerationOptions | None = None,
    ) -> AsyncIterator[TextDelta]:
        """Generate an answer to `messages`, yielding text as it grows.

        Leaving the iteration early (or cancelling the task consuming it) stops generation.
        """

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare for serving (start worker threads, check a remote server)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop generating and free the model."""

    def stats(self) -> dict[str, int]:
        """Queue depth and running sequences, for metrics (zero for remote backends)."""
        return {"queued": 0, "running": 0}

    def cap_params(self, params: SamplingParams) -> SamplingParams:
        """`max_new_tokens` capped at half the context, so a prompt always has room beside it."""
        cap = max(1, self.context_length // 2)
        if params.max_new_tokens <= cap:
            return params
        return replace(params, max_new_tokens=cap)

    def render_prompt(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        max_input_tokens: int | None,
        prefix: str = "",
    ) -> tuple[str, int]:
        """The prompt in the model's format (oldest turns dropped to fit) and its token count;
        with `prefix` (an answer to go on with) it ends with that answer so far.

        Raises :class:`InputTooLongError` when even the last user message does not fit.
        """
        fitted = self.fit_input(messages, params, max_input_tokens, prefix)
        text = fitted.text + prefix
        return text, self.count_tokens(text) if prefix or fitted.tokens is None else fitted.tokens

    def fit_input(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        max_input_tokens: int | None,
        prefix: str = "",
    ) -> Fitted:
        """The conversation fitted beside `max_new_tokens` in the context (and under
        `max_input_tokens`), leaving room for `prefix`: oldest turns dropped, counted in the
        model's tokens.

        Raises :class:`InputTooLongError` when even the last user message does not fit.
        """

        budget = max(1, self.context_length - params.max_new_tokens)
        if prefix:
            budget = max(1, budget - self.count_tokens(prefix))
        if max_input_tokens is not None:
            budget = min(budget, max_input_tokens)
        try:
            return self.prompt_format.fit(messages, self.count_tokens, budget)
        except PromptTooLongError as err:
            raise InputTooLongError(
                f"the input needs {err.needed} tokens, over the limit of {err.budget} "
                f"(context {self.context_length} minus max_tokens {params.max_new_tokens}"
                + (f", max_input_tokens {max_input_tokens}" if max_input_tokens else "")
                + "); shorten the last message or lower max_tokens"
            ) from None


class RemoteBackend(GenerationBackend):
    """A model served by another process (TGI, an OpenAI-compatible server). With the served
    model's tokenizer at hand (the registry holds the same directory) tokens are counted and
    prompts built exactly; without it, tokens are estimated."""

    tokenizer: Any = None
    _context: int = 2048

    def use_tokenizer(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        if tokenizer is not None:
            self.prompt_format = prompt_format(tokenizer)

    @property
    def context_length(self) -> int:
        return self._context

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return len(text.encode("utf-8")) // 3 + 1  # rough: a Hangul syllable is 3 bytes


class IncrementalDecoder:
    """Turn a growing list of token ids into text deltas without splitting UTF-8 characters.

    Byte-level BPE splits a Korean syllable over several tokens; a delta is held back while the
    decoded text ends in the replacement character, until a later token completes it. At the
    end (`final`: EOS, or a cut by `max_tokens`) an unfinished last character is dropped
    (:func:`~kindchat.models.generation.drop_incomplete_char`), never sent as U+FFFD.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._emitted = 0

    def push(self, token_id: int | None, final: bool = False) -> str:
        if token_id is not None:
            self._ids.append(token_id)
        text = self._decode(self._ids)
        if text.endswith(REPLACEMENT_CHAR):
            if not final:
                return ""
            text = drop_incomplete_char(text)
        delta = text[self._emitted :]
        self._emitted = max(self._emitted, len(text))
        return delta


class StopMatcher:
    """Cut generated text at the first of the `stop` strings (OpenAI's `stop`)."""

    def __init__(self, stop: Sequence[str]) -> None:
        self._stop = [s for s in stop if s]
        self._text = ""
        self._sent = 0
        self.stopped = False

    def feed(self, delta: str, final: bool = False) -> str:
        """Text safe to send now; sets `stopped` once a stop string appears."""
        if not self._stop:
            return delta
        self._text += delta
        cut = min((i for s in self._stop if (i := self._text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out = self._text[self._sent : cut]
            self._sent = cut
            return out
        # Hold back a tail that could still grow into a stop string.
        hold = 0 if final else max(len(s) for s in self._stop) - 1
        upto = max(self._sent, len(self._text) - hold)
        out = self._text[self._sent : upto]
        self._sent = upto
        return out
