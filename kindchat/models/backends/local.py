"""What the `hf` and `deepspeed` backends share: a local model behind the batching engine."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kindchat.models.backends.base import (
    GenerationBackend,
    GenerationOptions,
    IncrementalDecoder,
    TextDelta,
)
from kindchat.models.engine import BatchEngine
from kindchat.models.generation import SamplingParams, context_length
from kindchat.models.template import Message, prompt_format

logger = logging.getLogger(__name__)


class LocalBackend(GenerationBackend):
    """A model in this process; concurrent requests are batched by :class:`BatchEngine`."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch_size: int,
        max_queue: int,
        forward: Callable[..., Any] | None = None,
        label: str = "model",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format(tokenizer)
        self.label = label
        self.engine = BatchEngine(
            model,
            tokenizer,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            forward=forward,
            name=f"{self.name}:{label}",
        )

    @property
    def context_length(self) -> int:
        return context_length(self.model)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    async def start(self) -> None:
        self.engine.start()

    async def close(self) -> None:
        await asyncio.to_thread(self.engine.stop)
        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        logger.info("%s backend %s closed", self.name, self.label)

    def stats(self) -> dict[str, int]:
        return {"queued": self.engine.queued, "running": self.engine.running}

    async def stream(
        self,
        messages: Sequence[Message],
        params: SamplingParams,
        options: GenerationOptions | None = None,
    ) -> AsyncIterator[TextDelta]:
        options = options or GenerationOptions()
        params = self.cap_params(params)
        prompt, _ = self.render_prompt(messages, params, options.max_input_tokens, options.prefix)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tokens = self.engine.submit(
            prompt_ids,
            params,
            seed=options.seed,
            min_new_tokens=min(options.min_tokens, params.max_new_tokens),
        )
        decoder = IncrementalDecoder(
            lambda ids: str(self.tokenizer.decode(ids, skip_special_tokens=True))
        )
        completion = 0
        try:
            async for event in tokens:
                if event.token_id is not None:
                    completion += 1
                final = event.finish_reason is not None
                text = decoder.push(event.token_id, final=final)
                if text or final:
                    yield TextDelta(text, len(prompt_ids), completion, event.finish_reason)
        finally:
            if not tokens.done:
                tokens.cancel()
