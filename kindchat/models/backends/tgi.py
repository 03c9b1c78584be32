"""The `tgi` backend: a Text Generation Inference server, over its own streaming HTTP API.

TGI went into maintenance in December 2025 and its repository was archived in March 2026; for
new deployments choose the `openai` backend with vLLM or SGLang. This one keeps existing TGI
deployments working. It speaks TGI's `/generate_stream` (server-sent events) with httpx directly:
huggingface_hub's InferenceClient refuses every URL, local ones included, when `HF_HUB_OFFLINE=1`
is set, as it is on air-gapped GPU clusters.

The prompt is built here in the served model's format, so TGI receives exactly the prompt a local
model would. Token counts come from TGI's stream details; the prompt is measured with the local
tokenizer when one is given (a registered model with the same vocabulary), else by TGI's
`input_length`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from transformers import PreTrainedTokenizerBase

from kindchat.models.backends.base import (
    BackendUnavailableError,
    FinishReason,
    GenerationOptions,
    InputTooLongError,
    QueueFullError,
    RemoteBackend,
    TextDelta,
)
from kindchat.models.generation import SamplingParams
from kindchat.models.template import Message

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT = 2048


class TgiBackend(RemoteBackend):
    name = "tgi"

    def __init__(
        self,
        url: str,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.use_tokenizer(tokenizer)
        self.timeout = timeout
        self.model_id = "tgi"
        self._context = DEFAULT_CONTEXT
        self._max_input: int | None = None

    async def start(self) -> None:
        """Read the server's `/info` (model id and token limits); unreachable -> 503 error."""
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                response = await client.get(f"{self.url}/info")
                response.raise_for_status()
                info: dict[str, Any] = response.json()
        except httpx.HTTPError as err:
            raise BackendUnavailableError(f"TGI server {self.url} is unreachable: {err}") from None
        self.model_id = str(info.get("model_id", "tgi"))
        total = info.get("max_total_tokens")
        if isinstance(total, int) and total > 0:
            self._context = total
        max_input = info.get("max_input_tokens") or info.get("max_input_length")
        if isinstance(max_input, int) and max_input > 0:
            self._max_input = max_input
        logger.info("TGI at %s serves %s (context %d)", self.url, self.model_id, self._context)

    async def stream(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        options: GenerationOptions | None = None,
    ) -> AsyncIterator[TextDelta]:
        options = options or GenerationOptions()
        params = self.cap_params(params)
        limits = [x for x in (options.max_input_tokens, self._max_input) if x]
        prompt, prompt_tokens = self.render_prompt(
            messages, params, min(limits) if limits else None, options.prefix
        )
        sample = params.do_sample and params.temperature > 0
        parameters: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "do_sample": sample,
            "details": True,
            "stop": list(options.stop),
            "seed": options.seed,
        }
        if sample:
            parameters["temperature"] = params.temperature
            if params.top_p < 1.0:
                parameters["top_p"] = params.top_p
            if params.top_k > 0:
                parameters["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            parameters["repetition_penalty"] = params.repetition_penalty
        body = {"inputs": prompt, "parameters": parameters, "stream": True}
        completion = 0
        try:
            async with (
                httpx.AsyncClient(timeout=self.timeout) as client,
                client.stream("POST", f"{self.url}/generate_stream", json=body) as response,
            ):
                if response.status_code >= 400:
                    await response.aread()
                    raise _status_error(self.url, response)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:])
                    if "error" in event:
                        raise BackendUnavailableError(
                            f"TGI server {self.url} failed: {event['error']}"
                        )
                    token, details = event.get("token") or {}, event.get("details")
                    finish: FinishReason | None = None
                    if details is not None:
                        finish = "length" if details.get("finish_reason") == "length" else "stop"
                        completion = int(details.get("generated_tokens", completion))
                        prompt_tokens = int(details.get("input_length", prompt_tokens))
                    elif not token.get("special"):
                        completion += 1
                    text = "" if token.get("special") else str(token.get("text", ""))
                    if text or finish:
                        yield TextDelta(text, prompt_tokens, completion, finish)
                    if finish:
                        return
        except httpx.HTTPError as err:
            raise BackendUnavailableError(f"TGI server {self.url} is unreachable: {err}") from None
        raise BackendUnavailableError(f"TGI server {self.url} ended the stream without details")


def _status_error(url: str, response: httpx.Response) -> Exception:
    """TGI's error statuses as kindchat's errors (422: the input; 429: busy; else: the server)."""
    try:
        message = str(response.json().get("error", response.text))
    except ValueError:
        message = response.text
    if response.status_code == 422:
        return InputTooLongError(f"the TGI server rejected the input: {message}")
    if response.status_code == 429:
        return QueueFullError(0, 0, retry_after=2)
    return BackendUnavailableError(f"TGI server {url} failed ({response.status_code}): {message}")
