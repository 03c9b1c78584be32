"""The `openai` backend: any OpenAI-compatible server (vLLM, SGLang, llama.cpp server, TGI's
Messages API, `transformers serve`), through the official `openai` client.

The server applies the model's chat template: every model kindchat registers carries one (the
KULLM template unless it brought its own), so a registered directory served by vLLM prompts
exactly as kindchat would. With the served model's tokenizer at hand (the registry holds the same
directory), the oldest turns are dropped here until the conversation fits, as the local backends
do; without it the server's own limit answers.

On vLLM the engine is asked for `stream_interval` tokens per streamed event (vLLM's own request
field; the first token still comes alone, at once): the layer's work is per event — an HTTP read,
a JSON parse, a delta passed on — so fewer, larger events make it cheaper per token, as Open
WebUI's delta chunk size does on its side. Other servers stream one event per token, as before.

Streaming with usage (`stream_options.include_usage`), `seed`, `stop` (cut here too, since not
every server honours it, and the stream closed at once), and cancellation: leaving the iteration
closes the HTTP stream, and vLLM, SGLang and `transformers serve` abort the request. Errors map to
kindchat's: unreachable or failing server → :class:`BackendUnavailableError` (503), 429 →
:class:`QueueFullError`, a rejected input → :class:`InputTooLongError` or
:class:`ConversationError` (4xx).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai

from kindchat.errors import InvalidError
from kindchat.models.adapters import base_dir
from kindchat.models.backends.base import (
    BackendUnavailableError,
    FinishReason,
    GenerationOptions,
    InputTooLongError,
    QueueFullError,
    RemoteBackend,
    StopMatcher,
    TextDelta,
)
from kindchat.models.generation import SamplingParams
from kindchat.models.template import (
    ConversationError,
    Message,
    turns_from_messages,
    turns_to_messages,
)

logger = logging.getLogger(__name__)


class ContinueUnsupportedError(InvalidError):
    """The model's server cannot go on with an answer (it takes OpenAI's own fields only)."""

    code = "continue_unsupported"

    def __init__(self, base_url: str) -> None:
        super().__init__(
            f"the model server at {base_url} cannot continue an answer (it needs vLLM's or "
            "SGLang's continue_final_message); regenerate it instead",
            field="continue_of",
        )


DEFAULT_CONTEXT = 4096
KEEPALIVE_S = 2.0  # idle connections to the engine are closed after this long (its limit: 5 s)
LENGTH_WORDS = ("context", "too long", "max_model_len", "longer than")  # an input over the limit


class OpenAIBackend(RemoteBackend):
    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        api_key: str = "EMPTY",
        model_dir: Path | None = None,
        context_length: int | None = None,
        timeout: float = 120.0,
        stream_interval: int = 1,
    ) -> None:
        """`model`: the served model name (None: the server's first model). `model_dir`: the
        served model's directory here (the registry's copy), for its tokenizer and context.
        `stream_interval`: tokens per streamed event to ask vLLM for (1: one per token)."""
        if stream_interval < 1:
            raise ValueError(f"stream_interval must be at least 1, got {stream_interval}")
        self.base_url = base_url.rstrip("/")
        self.model_id = model or ""
        self.stream_interval = stream_interval
        self._vllm = False  # set by start(): the server says it is vLLM (`owned_by`)
        if model_dir is not None:
            # lazy: transformers only when a local copy of the served model is there to count tokens
            from transformers import AutoConfig

            from kindchat.models.tokenizer import load_tokenizer

            self.use_tokenizer(load_tokenizer(model_dir))
            config = AutoConfig.from_pretrained(str(base_dir(model_dir)))
            context_length = context_length or getattr(config, "max_position_embeddings", None)
        self._context = context_length or DEFAULT_CONTEXT
        self._context_given = context_length is not None
        self._extras = True  # vLLM's sampling extras (top_k, repetition_penalty, min_tokens)
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=0,
            # Finished answers hand their connection back for the next one. Drop an idle one
            # before the engine does (uvicorn, under vLLM and SGLang, after 5 s): a request
            # must never be sent on a connection the server is closing.
            http_client=openai.DefaultAsyncHttpxClient(
                limits=httpx.Limits(
                    max_connections=1000,
                    max_keepalive_connections=100,
                    keepalive_expiry=KEEPALIVE_S,
                )
            ),
        )

    async def start(self) -> None:
        """Check the server lists the model (or take its first); unreachable -> 503 error."""
        try:
            page = await self._client.models.list()
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            raise BackendUnavailableError(
                f"OpenAI-compatible server {self.base_url} is unreachable: {err}"
            ) from None
        except openai.APIStatusError as err:
            raise BackendUnavailableError(
                f"OpenAI-compatible server {self.base_url} failed to list models: {err}"
            ) from None
        served = list(page.data)
        names = [m.id for m in served]
        if not self.model_id:
            if not names:
                raise BackendUnavailableError(f"{self.base_url} serves no model")
            self.model_id = names[0]
        elif self.model_id not in names:
            raise BackendUnavailableError(
                f"{self.base_url} does not serve {self.model_id!r} (it serves: "
                f"{', '.join(names) or 'nothing'}); set the served model name per alias"
            )
        card = next(m for m in served if m.id == self.model_id)
        self._vllm = card.owned_by == "vllm"
        max_len = (card.model_extra or {}).get("max_model_len")  # vLLM and SGLang report it
        if not self._context_given and isinstance(max_len, int) and max_len > 0:
            self._context = max_len
        logger.info(
            "OpenAI-compatible server %s serves %s (context %d)",
            self.base_url,
            self.model_id,
            self._context,
        )

    async def close(self) -> None:
        await self._client.close()

    def fit_messages(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        max_input_tokens: int | None,
        prefix: str = "",
    ) -> tuple[list[dict[str, str]], int | None]:
        """The messages to send, oldest turns dropped to fit, and their prompt tokens (None
        when no local tokenizer can count them); with `prefix`, ending with that answer so far
        as an assistant message."""
        if self.tokenizer is None:
            turns, system = turns_from_messages(messages)
            sent, tokens = turns_to_messages(turns, system), None
        else:
            fitted = self.fit_input(messages, params, max_input_tokens, prefix)
            sent, tokens = fitted.messages(), fitted.tokens
        if prefix:
            sent.append({"role": "assistant", "content": prefix})
            tokens = None if tokens is None else tokens + self.count_tokens(prefix)
        return sent, tokens

    async def stream(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        options: GenerationOptions | None = None,
    ) -> AsyncIterator[TextDelta]:
        options = options or GenerationOptions()
        params = self.cap_params(params)
        sent, prompt_tokens = self.fit_messages(
            messages, params, options.max_input_tokens, options.prefix
        )
        sample = params.do_sample and params.temperature > 0
        extra: dict[str, Any] = {}
        if sample and params.top_k > 0:
            extra["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            extra["repetition_penalty"] = params.repetition_penalty
        if options.min_tokens > 0:  # at most the (capped) answer budget, as the local engines
            extra["min_tokens"] = min(options.min_tokens, params.max_new_tokens)
        # what is sent is what is counted by: a server that refused the extras gets none of them
        interval = self.stream_interval if self._vllm and self._extras else 1
        if interval > 1:  # vLLM's field: fewer, larger events (see the module's docstring)
            extra["stream_interval"] = interval
        if options.prefix:  # go on with the last (assistant) message: vLLM's and SGLang's fields
            if not self._extras:
                raise ContinueUnsupportedError(self.base_url)
            extra.update(continue_final_message=True, add_generation_prompt=False)
        stop = StopMatcher(options.stop)
        completion = 0
        request: dict[str, Any] = {
            "model": self.model_id,
            "messages": sent,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature if sample else 0.0,
            "top_p": params.top_p if sample else 1.0,
            "seed": options.seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        create = self._client.chat.completions.with_streaming_response.create
        try:
            try:
                opened = create(**request, extra_body=(extra if self._extras else None) or None)
                response = await opened.__aenter__()
            except openai.UnprocessableEntityError:
                if not extra or not self._extras:
                    raise
                if options.prefix:  # without the extras it would answer anew, not go on
                    raise ContinueUnsupportedError(self.base_url) from None
                # A server that takes only OpenAI's own fields (`transformers serve`): go on
                # without the extras, for this request and the next.
                logger.warning("%s refuses %s; sending OpenAI fields only", self.base_url, extra)
                self._extras = False
                interval = 1  # one token per event, as without the field
                opened = create(**request)
                response = await opened.__aenter__()
            finish: FinishReason | None = None
            try:
                # Per network read, not per token: every SSE event that arrived together is
                # parsed here (json, no pydantic object per chunk) and goes on as one delta,
                # so under load the layer's work per token shrinks as the engine batches.
                # At the end of a finished answer the body is read to its end (the `[DONE]`
                # and the chunk terminator), so that the connection goes back to the pool;
                # only a stop sequence closes it early, which aborts the request upstream.
                buffer = b""
                ended = False
                async for data in response.http_response.aiter_bytes():
                    if ended:
                        continue  # what is left of a finished answer's body
                    buffer = (buffer + data).replace(b"\r\n", b"\n")  # sse-starlette: CRLF
                    *events, buffer = buffer.split(b"\n\n")
                    text, done = "", False
                    for event in events:
                        payload = _sse_data(event)
                        if payload is None:
                            continue
                        if payload == b"[DONE]":
                            ended = True
                            break
                        chunk = json.loads(payload)
                        if "error" in chunk and "choices" not in chunk:
                            raise BackendUnavailableError(
                                f"{self.base_url} failed mid-stream: {chunk['error']}"
                            )
                        usage = chunk.get("usage")
                        if usage:
                            completion = usage.get("completion_tokens", completion)
                            prompt_tokens = usage.get("prompt_tokens", prompt_tokens)
                        for choice in chunk.get("choices") or ():
                            piece = (choice.get("delta") or {}).get("content") or ""
                            if piece and not usage:
                                # until usage says: the first token comes alone, then
                                # `interval` tokens per event (the last may hold fewer)
                                completion = min(
                                    completion + (interval if completion else 1),
                                    params.max_new_tokens,
                                )
                            text += stop.feed(piece)
                            reason = choice.get("finish_reason")
                            if reason is not None:
                                finish = "length" if reason == "length" else "stop"
                                text += stop.feed("", final=True)
                            if stop.stopped:
                                finish = "stop"
                                done = True
                                break
                        if done:
                            break
                        if finish is not None and usage:
                            ended = True
                            break
                    if text:
                        yield TextDelta(text, prompt_tokens or 0, completion)
                    if done:
                        break  # closing the stream aborts the request on the server
            finally:
                await opened.__aexit__(None, None, None)
            if finish is None:
                raise BackendUnavailableError(
                    f"{self.base_url} ended the stream without a finish reason"
                )
            yield TextDelta("", prompt_tokens or 0, completion, finish)
        except openai.RateLimitError:
            raise QueueFullError(0, 0, retry_after=2) from None
        except openai.BadRequestError as err:
            message = _message(err)
            if any(word in message.lower() for word in LENGTH_WORDS):
                raise InputTooLongError(f"the server rejected the input: {message}") from None
            raise ConversationError(f"the server rejected the request: {message}") from None
        except openai.NotFoundError as err:
            raise BackendUnavailableError(
                f"{self.base_url} does not serve {self.model_id!r}: {_message(err)}"
            ) from None
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            raise BackendUnavailableError(f"{self.base_url} is unreachable: {err}") from None
        except openai.APIStatusError as err:
            raise BackendUnavailableError(
                f"{self.base_url} failed ({err.status_code}): {_message(err)}"
            ) from None


def _sse_data(event: bytes) -> bytes | None:
    """The `data:` payload of one server-sent event (lines joined), None for comments."""
    lines = [line[5:].lstrip() for line in event.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines).strip() if lines else None


def _message(err: openai.APIStatusError) -> str:
    body = err.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(body.get("detail"), str):
            return str(body["detail"])
    return str(err.message)
