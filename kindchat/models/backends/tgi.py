"""The `tgi` backend: a Text Generation Inference server, through `huggingface_hub`.

The KULLM template is applied here, so TGI receives exactly the prompt a local model would.
Token counts come from TGI's stream details; the prompt is measured with the local tokenizer when
one is given (a registered model with the same vocabulary), else by TGI's `input_length`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import (
    HfHubHTTPError,
    InferenceTimeoutError,
    OverloadedError,
    TextGenerationError,
    ValidationError,
)
from transformers import PreTrainedTokenizerBase

from kindchat.models.backends.base import (
    BackendUnavailableError,
    FinishReason,
    GenerationBackend,
    GenerationOptions,
    InputTooLongError,
    QueueFullError,
    TextDelta,
)
from kindchat.models.generation import SamplingParams
from kindchat.models.template import Message

logger = logging.getLogger(__name__)

DEFAULT_CONTEXT = 2048


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level errors of httpx and of the HTTP client huggingface_hub uses (httpx2)."""
    errors: list[type[BaseException]] = [httpx.HTTPError, OSError]
    try:
        import httpx2  # type: ignore[import-not-found]

        errors.append(httpx2.HTTPError)
    except ImportError:
        pass
    return tuple(errors)


TRANSPORT_ERRORS = _transport_errors()


class TgiBackend(GenerationBackend):
    name = "tgi"

    def __init__(
        self,
        url: str,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.tokenizer = tokenizer
        self.timeout = timeout
        self.model_id = "tgi"
        self._context = DEFAULT_CONTEXT
        self._max_input: int | None = None

    @property
    def context_length(self) -> int:
        return self._context

    def count_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return len(text.encode("utf-8")) // 3 + 1  # rough: a Hangul syllable is 3 bytes

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
            messages, params, min(limits) if limits else None
        )
        sample = params.do_sample and params.temperature > 0
        completion = 0
        async with AsyncInferenceClient(model=self.url, timeout=self.timeout) as client:
            try:
                chunks: Any = await client.text_generation(
                    prompt,
                    stream=True,
                    details=True,
                    max_new_tokens=params.max_new_tokens,
                    do_sample=sample,
                    temperature=params.temperature if sample else None,
                    top_p=params.top_p if sample and params.top_p < 1.0 else None,
                    top_k=params.top_k if sample and params.top_k > 0 else None,
                    repetition_penalty=(
                        params.repetition_penalty if params.repetition_penalty != 1.0 else None
                    ),
                    seed=options.seed,
                )
                async for chunk in chunks:
                    finish: FinishReason | None = None
                    if chunk.details is not None:
                        finish = "length" if chunk.details.finish_reason == "length" else "stop"
                        completion = chunk.details.generated_tokens
                        prompt_tokens = getattr(chunk.details, "input_length", prompt_tokens)
                    elif not chunk.token.special:
                        completion += 1
                    text = "" if chunk.token.special else chunk.token.text
                    if text or finish:
                        yield TextDelta(text, prompt_tokens, completion, finish)
                    if finish:
                        return
            except ValidationError as err:
                raise InputTooLongError(f"the TGI server rejected the input: {err}") from None
            except OverloadedError:
                raise QueueFullError(0, 0, retry_after=2) from None
            except (InferenceTimeoutError, TextGenerationError, HfHubHTTPError) as err:
                raise BackendUnavailableError(f"TGI server {self.url} failed: {err}") from None
            except TRANSPORT_ERRORS as err:
                raise BackendUnavailableError(
                    f"TGI server {self.url} is unreachable: {err}"
                ) from None
        raise BackendUnavailableError(f"TGI server {self.url} ended the stream without details")
