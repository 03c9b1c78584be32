"""Continuous batching for local causal LMs: requests join a running batch between steps.

One worker thread owns the model. Each iteration it

1. admits waiting requests while the batch has room: their prompts are run together (left
   padded) and their KV cache is merged into the running batch's cache (left padding the shorter
   side), and their first token is chosen;
2. runs one decode step for every running sequence (one new token each, through the KV cache);
3. hands each new token to its request's consumer at once (streaming), and drops sequences that
   hit EOS, their `max_new_tokens`, the context, or were cancelled, trimming padding columns no
   row needs any more.

So a request never waits for a whole batch to finish: it starts at the next step boundary, and
throughput grows with the number of concurrent users. The waiting queue is bounded; a full queue
raises :class:`QueueFullError` instead of letting clients hang.

Every token is chosen by the one sampler, :func:`kindchat.models.generation.next_tokens`: each
row with its own :class:`SamplingParams` and, when the request has a seed, its own generator, so
a request's tokens do not depend on the requests batched beside it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from kindchat.models.backends.base import BackendUnavailableError, FinishReason, QueueFullError
from kindchat.models.generation import (
    SamplingParams,
    cache_kwarg,
    left_pad,
    next_tokens,
    position_ids_for,
    seeded_generator,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenEvent:
    """One generated token (None on a bare finish) and, on the last event, the finish reason."""

    token_id: int | None
    finish_reason: FinishReason | None = None
    error: BaseException | None = None


class TokenStream:
    """The consumer side of one request: an async iterator of :class:`TokenEvent`.

    Events are pushed from the engine thread with `call_soon_threadsafe`. `cancel()` (or closing
    the consuming task) makes the engine drop the sequence at its next step.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.done = False
        self.submitted_at = time.perf_counter()
        self.first_token_at: float | None = None

    def cancel(self) -> None:
        self.cancelled.set()

    def _push(self, event: TokenEvent) -> None:
        """Called from the engine thread; safe if the loop is gone (the client went away)."""
        _deliver([(self, event)])

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> TokenEvent:
        if self.done:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event.error is not None:
            self.done = True
            raise event.error
        if event.finish_reason is not None:
            self.done = True
        if self.first_token_at is None and event.token_id is not None:
            self.first_token_at = time.perf_counter()
        return event


def _deliver(events: list[tuple[TokenStream, TokenEvent]]) -> None:
    """Hand events to their streams' event loops: one wake-up per loop, not one per token."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[TokenStream, TokenEvent]]] = {}
    for stream, event in events:
        by_loop.setdefault(stream._loop, []).append((stream, event))
    for loop, batch in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, batch)
        except RuntimeError:  # event loop closed
            for stream, _ in batch:
                stream.cancelled.set()


def _put_all(events: list[tuple[TokenStream, TokenEvent]]) -> None:
    for stream, event in events:
        stream._queue.put_nowait(event)


@dataclass
class _Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    stream: TokenStream
    generator: torch.Generator | None  # the request's own, seeded with its seed; None: global
    min_new_tokens: int = 0
    generated: list[int] = field(default_factory=list)
    next_token: int = -1  # sampled, not yet fed through the model

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.generated)


class _Batch:
    """The running batch: sequences, their left-padded attention mask [B, T] and KV cache.

    The cache object is kept across decode steps (the model grows it in place); it is rebuilt
    only when sequences join or leave.
    """

    def __init__(self) -> None:
        self.seqs: list[_Sequence] = []
        self.mask: torch.Tensor | None = None
        self.cache: DynamicCache | None = None

    def __len__(self) -> int:
        return len(self.seqs)

    def merge(self, seqs: list[_Sequence], mask: torch.Tensor, cache: DynamicCache) -> None:
        if not self.seqs or self.mask is None or self.cache is None:
            self.seqs, self.mask, self.cache = list(seqs), mask, cache
            return
        width = max(self.mask.shape[1], mask.shape[1])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])
        self.cache = DynamicCache(
            ddp_cache_data=[
                (
                    torch.cat([_left_pad(ka, width, 2), _left_pad(kb, width, 2)]),
                    torch.cat([_left_pad(va, width, 2), _left_pad(vb, width, 2)]),
                )
                for (ka, va), (kb, vb) in zip(_layers(self.cache), _layers(cache), strict=True)
            ]
        )
        self.seqs.extend(seqs)

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows`, then drop leading columns that are padding in every kept row."""
        if not rows or self.mask is None or self.cache is None:
            self.seqs, self.mask, self.cache = [], None, None
            return
        index = torch.tensor(rows, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        cut = int((mask.sum(0) > 0).nonzero()[0].item())
        self.mask = mask[:, cut:]
        self.cache = DynamicCache(
            ddp_cache_data=[
                (k.index_select(0, index)[:, :, cut:], v.index_select(0, index)[:, :, cut:])
                for k, v in _layers(self.cache)
            ]
        )
        self.seqs = [self.seqs[r] for r in rows]


def _layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (keys, values), [B, heads, T, head_dim]."""
    layers: list[Any] = list(cache.layers)
    return [(layer.keys, layer.values) for layer in layers]


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class BatchEngine:
    """Continuous batching over a causal LM whose forward takes an HF KV cache.

    `forward` defaults to the model itself; the DeepSpeed backend passes its inference engine.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch_size: int = 16,
        max_queue: int = 64,
        forward: Callable[..., Any] | None = None,
        name: str = "engine",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.name = name
        self._forward = forward or model
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = cache_kwarg(model)
        self._keep_kwarg = "logits_to_keep" in params
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.context_length = int(getattr(model.config, "max_position_embeddings", 2048))
        self.device = next(model.parameters()).device
        self._waiting: deque[_Sequence] = deque()
        self._batch = _Batch()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.max_running = 0

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"kindchat-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker; requests still waiting or running end with BackendUnavailableError."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._batch)

    # ---- requests ---------------------------------------------------------------------------
    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        seed: int | None = None,
        min_new_tokens: int = 0,
    ) -> TokenStream:
        """Queue a request; its tokens arrive on the returned stream (in the calling loop).

        With a `seed`, the request draws from its own generator seeded with it: the same prompt,
        parameters and seed give the same tokens, alone or batched with others. Without one it
        draws from torch's global generator. EOS is suppressed until `min_new_tokens` tokens
        exist (vLLM's `min_tokens`).
        """
        if not prompt_ids:
            raise ValueError("the prompt has no tokens")
        if len(prompt_ids) + params.max_new_tokens > self.context_length:
            raise ValueError(
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({params.max_new_tokens}) "
                f"exceed the context of {self.context_length}"
            )
        stream = TokenStream(asyncio.get_running_loop())
        generator = seeded_generator(seed, self.device)
        seq = _Sequence(list(prompt_ids), params, stream, generator, min_new_tokens)
        with self._cond:
            if self._stopping:
                raise BackendUnavailableError(f"{self.name} is shutting down")
            free_slots = max(0, self.max_batch_size - len(self._batch))
            if len(self._waiting) + 1 - free_slots > self.max_queue:
                raise QueueFullError(len(self._waiting), self.max_queue)
            self._waiting.append(seq)
            self._cond.notify()
        return stream

    # ---- worker -----------------------------------------------------------------------------
    def _run(self) -> None:
        logger.info("%s: batching up to %d sequences", self.name, self.max_batch_size)
        try:
            with torch.inference_mode():
                while True:
                    with self._cond:
                        while not self._stopping and not self._waiting and not self._batch.seqs:
                            self._cond.wait()
                        if self._stopping:
                            break
                        admitted = self._take_waiting()
                    try:
                        if admitted:
                            self._prefill(admitted)
                            admitted = []
                        if self._batch.seqs:
                            self._decode()
                    except Exception as err:  # a failed step ends its requests, not the engine
                        logger.exception("%s: generation step failed", self.name)
                        error = BackendUnavailableError(f"generation failed: {err}")
                        for seq in admitted:
                            seq.stream._push(TokenEvent(None, error=error))
                        self._fail_all(error)
        finally:
            self._fail_all(BackendUnavailableError(f"{self.name} stopped"), include_waiting=True)
            logger.info("%s: stopped after %d steps", self.name, self.steps)

    def _take_waiting(self) -> list[_Sequence]:
        admitted: list[_Sequence] = []
        while self._waiting and len(self._batch) + len(admitted) < self.max_batch_size:
            seq = self._waiting.popleft()
            if seq.stream.cancelled.is_set():
                seq.stream._push(TokenEvent(None, "stop"))
                continue
            admitted.append(seq)
        return admitted

    def _fail_all(self, error: BaseException, include_waiting: bool = False) -> None:
        for seq in self._batch.seqs:
            seq.stream._push(TokenEvent(None, error=error))
        self._batch.keep([])
        if include_waiting:
            with self._cond:
                while self._waiting:
                    self._waiting.popleft().stream._push(TokenEvent(None, error=error))

    def _model_step(
        self,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache,
    ) -> torch.Tensor:
        """One forward pass growing `cache`; the logits of each row's last position."""
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": positions,
            self._cache_kwarg: cache,
            "use_cache": True,
        }
        if self._keep_kwarg:
            kwargs["logits_to_keep"] = 1
        out = self._forward(**kwargs)
        return out.logits[:, -1, :].float()

    def _prefill(self, seqs: list[_Sequence]) -> None:
        input_ids, mask = left_pad([s.prompt_ids for s in seqs], self.pad_id)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        positions = position_ids_for(mask)
        cache = DynamicCache()
        logits = self._model_step(input_ids, mask, positions, cache)
        self._batch.merge(seqs, mask, cache)
        self._sample_and_emit(logits, first=len(self._batch) - len(seqs))
        self.max_running = max(self.max_running, len(self._batch))

    def _decode(self) -> None:
        batch = self._batch
        assert batch.mask is not None and batch.cache is not None
        input_ids = torch.tensor([[s.next_token] for s in batch.seqs], device=self.device)
        positions = batch.mask.sum(-1, keepdim=True)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch), 1))], dim=1)
        logits = self._model_step(input_ids, batch.mask, positions, batch.cache)
        self.steps += 1
        self._sample_and_emit(logits, first=0)

    def _sample_and_emit(self, logits: torch.Tensor, first: int) -> None:
        """Choose a token for rows `first..` (whose logits are `logits`), stream it, retire rows."""
        batch = self._batch
        rows = batch.seqs[first:]
        tokens = choose_tokens(
            rows, logits, self.eos_id, [s.prompt_ids + s.generated for s in rows]
        )
        keep: list[int] = [r for r in range(first) if not self._drop_cancelled(batch.seqs[r])]
        events: list[tuple[TokenStream, TokenEvent]] = []
        for offset, (seq, token) in enumerate(zip(rows, tokens, strict=True)):
            if seq.stream.cancelled.is_set():
                events.append((seq.stream, TokenEvent(None, "stop")))
                continue
            seq.generated.append(token)
            finish: FinishReason | None = None
            if token == self.eos_id:
                finish = "stop"
            elif (
                len(seq.generated) >= seq.params.max_new_tokens or seq.length >= self.context_length
            ):
                finish = "length"
            events.append((seq.stream, TokenEvent(None if token == self.eos_id else token, finish)))
            if finish is None:
                seq.next_token = token
                keep.append(first + offset)
        if len(keep) != len(batch):
            batch.keep(keep)
        _deliver(events)

    @staticmethod
    def _drop_cancelled(seq: _Sequence) -> bool:
        if seq.stream.cancelled.is_set():
            seq.stream._push(TokenEvent(None, "stop"))
            return True
        return False


def choose_tokens(
    seqs: list[_Sequence],
    logits: torch.Tensor,
    eos_id: int | None,
    histories: list[list[int]],
) -> list[int]:
    """The next token of every row (logits [B, V] of the rows' last positions), each with its
    own parameters and generator, by the one sampler. `histories[r]` is row r's prompt and
    answer so far; EOS is not allowed before the row's `min_new_tokens` (as transformers'
    `MinNewTokensLengthLogitsProcessor`, here applied first, which changes nothing: a banned
    EOS stays at -inf through every processor)."""
    blocked = [
        r for r, s in enumerate(seqs) if len(histories[r]) - len(s.prompt_ids) < s.min_new_tokens
    ]
    if eos_id is not None and blocked:
        logits = logits.clone()
        logits[blocked, eos_id] = float("-inf")
    params = [s.params for s in seqs]
    return next_tokens(logits, histories, params, [s.generator for s in seqs]).tolist()


class WaveEngine(BatchEngine):
    """Dynamic batching through `model.generate`, for models whose forward has its own KV cache
    (DeepSpeed kernel injection): requests waiting at the start of a wave run together, each
    streamed token by token and stopped on its own EOS/length/cancel; later arrivals wait for
    the next wave.

    `generate` runs greedy with one logits processor, :class:`_RowSampler`, which chooses every
    row's token with the one sampler (its own parameters and seed) and leaves only that token
    standing; so a wave's rows need not share their sampling settings.
    """

    def __init__(self, *args: Any, generate: Callable[..., Any] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._generate: Callable[..., Any] = generate or cast(Any, self.model).generate

    def _prefill(self, seqs: list[_Sequence]) -> None:
        input_ids, mask = left_pad([s.prompt_ids for s in seqs], self.pad_id)
        finished = [False] * len(seqs)
        engine = self

        class RowStreamer(BaseStreamer):
            prompt_seen = False

            def put(self, value: torch.Tensor) -> None:
                if not self.prompt_seen:  # generate first passes the prompt
                    self.prompt_seen = True
                    return
                for row, token in enumerate(value.view(-1).tolist()):
                    if finished[row]:
                        continue
                    seq = seqs[row]
                    seq.generated.append(token)
                    finish: FinishReason | None = None
                    if token == engine.eos_id:
                        finish = "stop"
                    elif len(seq.generated) >= seq.params.max_new_tokens:
                        finish = "length"
                    if finish or not seq.stream.cancelled.is_set():
                        token_out = None if token == engine.eos_id else token
                        seq.stream._push(TokenEvent(token_out, finish))
                    if finish:
                        finished[row] = True

            def end(self) -> None:
                for row, seq in enumerate(seqs):
                    if not finished[row]:
                        finished[row] = True
                        seq.stream._push(TokenEvent(None, "stop"))

        class RowStop(StoppingCriteria):
            def __call__(
                self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any
            ) -> torch.Tensor:
                done = [finished[r] or seqs[r].stream.cancelled.is_set() for r in range(len(seqs))]
                return torch.tensor(done, device=input_ids.device)

        config = GenerationConfig(
            max_new_tokens=max(s.params.max_new_tokens for s in seqs),
            do_sample=False,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
        )
        self.max_running = max(self.max_running, len(seqs))
        self._generate(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            generation_config=config,
            streamer=RowStreamer(),
            stopping_criteria=StoppingCriteriaList([RowStop()]),
            logits_processor=LogitsProcessorList(
                [_RowSampler(seqs, finished, input_ids.shape[1], self.eos_id)]
            ),
        )
        self.steps += 1


class _RowSampler(LogitsProcessor):
    """Inside one wave's `generate`: each unfinished row's token chosen by
    :func:`choose_tokens`, with the row's history read off `input_ids` (its left padding
    dropped); that row's scores come back -inf everywhere but at its token, so greedy
    `generate` takes exactly it. Finished and cancelled rows keep their scores (`generate`
    pads them, or the wave's streamer drops them)."""

    def __init__(
        self, seqs: list[_Sequence], finished: list[bool], prompt_width: int, eos_id: int | None
    ) -> None:
        self.seqs = seqs
        self.finished = finished  # shared with the wave's streamer, which marks rows done
        self.prompt_width = prompt_width
        self.eos_id = eos_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> Any:
        rows = [
            r
            for r, done in enumerate(self.finished)
            if not done and not self.seqs[r].stream.cancelled.is_set()
        ]
        if not rows:
            return scores
        starts = [self.prompt_width - len(self.seqs[r].prompt_ids) for r in rows]
        histories = [input_ids[r, start:].tolist() for r, start in zip(rows, starts, strict=True)]
        index = torch.tensor(rows, device=scores.device)
        tokens = choose_tokens(
            [self.seqs[r] for r in rows], scores.index_select(0, index), self.eos_id, histories
        )
        out = scores.clone()
        out[index] = float("-inf")
        out[index, torch.tensor(tokens, device=scores.device)] = 0.0
        return out
