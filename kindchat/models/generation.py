"""The one sampler: how every answer in kindchat is drawn, token by token.

Serving (both engines in :mod:`kindchat.models.engine`), PPO rollouts (:func:`sample_with_logits`)
and evaluation, simulated nights, the CLI and the benches (:func:`generate_batch`) all choose each
next token with :func:`next_tokens`, so the parameters of :class:`SamplingParams` and the seed
mean the same thing wherever an answer is drawn:

- the scores pass through transformers' own logits processors, in `generate`'s order: the
  repetition penalty (CTRL's, over the prompt and the answer so far), then, when sampling,
  temperature, top-k and top-p (:func:`logits_processors`);
- a greedy row (`do_sample=False` or `temperature == 0`) takes the argmax; a sampled row draws
  `torch.multinomial(softmax(scores), 1)`, as `generate` does;
- a row with a seed draws from its own `torch.Generator` seeded with it, so its tokens depend on
  its prompt, parameters and seed only, never on the rows batched beside it; a row without one
  draws from torch's global generator (not reproducible unless the caller seeds that).

So a request alone with seed `s` gets what `torch.manual_seed(s)` followed by
`model.generate(..., do_sample=True)` with the same parameters gives, token for token
(`tests/models/test_sampler.py`). What differs from `generate` on purpose: within a batch each
row keeps its own parameters and generator (`generate` has one of each for the whole batch).

What it costs, measured on the tiny preset's shape (vocabulary 8,000, 16 rows, 2 CPU cores,
server defaults): processing and drawing over the whole vocabulary takes about as long as the
model's decode step (~9 ms each; top-p's full sort ~4-6 ms, the draw's one exponential per
vocabulary entry ~2.5 ms). The engine used to sample among the 512 likeliest tokens only
(~1.5 ms) and served ~1.6x the tokens per second (1,155 against 737 at 16 concurrent requests);
PPO's former one-uniform draw made a rollout ~25% faster. Both are gone: they changed the
distribution (top-p within 512 tokens) or the draws (not `generate`'s for the same seed), and
`torch.multinomial` over the whole vocabulary is what equality with `generate` takes.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import cast

import torch
from transformers import (
    DynamicCache,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass(frozen=True)
class SamplingParams:
    """How one answer is drawn. The defaults are what the server uses when a request sets none,
    so evaluation and simulated nights that keep them draw answers as users get them.

    `temperature` 0 or `do_sample=False` is greedy decoding; `top_k` 0, `top_p` 1 and
    `repetition_penalty` 1 switch those off. The seed is not here: it belongs to one request
    (:class:`kindchat.models.backends.base.GenerationOptions`, `seeds` of :func:`generate_batch`),
    while these parameters are often shared by a whole batch.
    """

    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0
    repetition_penalty: float = 1.1
    do_sample: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 switches it off), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(
                f"repetition_penalty must be > 0 (1 switches it off), got {self.repetition_penalty}"
            )

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


DEFAULT_SAMPLING = SamplingParams()  # the server's defaults, for configs that copy them


def logits_processors(params: SamplingParams) -> LogitsProcessorList:
    """transformers' processors for `params`, in the order `generate` builds them: the
    repetition penalty, then (when sampling) temperature, top-k, top-p. Each returns a new
    tensor; none changes the scores it is given."""
    processors = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(float(params.repetition_penalty)))
    if params.greedy:
        return processors
    if params.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(float(params.temperature)))
    if params.top_k > 0:
        processors.append(TopKLogitsWarper(params.top_k))
    if params.top_p < 1.0:
        processors.append(TopPLogitsWarper(float(params.top_p)))
    return processors


def seeded_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A request's own random stream: a generator on `device` seeded with `seed` (None: none,
    the request draws from torch's global generator)."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def row_seeds(seed: int, count: int, start: int = 0) -> list[int]:
    """Request seeds for answers `start .. start + count - 1` drawn under one run seed (an
    evaluation, a night): answer `i` gets `seed * 1_000_003 + i`, so it is drawn the same
    whatever batch it lands in, and runs under different seeds share no answer's seed."""
    return [seed * 1_000_003 + i for i in range(start, start + count)]


def next_tokens(
    logits: torch.Tensor,
    histories: Sequence[Sequence[int]],
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> torch.Tensor:
    """Each row's next token, [B], from the logits of its last position, [B, V].

    Row `r` is processed with `params[r]` (:func:`logits_processors`) and, when it samples,
    drawn from `generators[r]` (torch's global generator where None). `histories[r]` is the
    row's token ids so far, prompt and answer, without padding: what the repetition penalty
    looks at. Rows with the same rule are processed together, which changes no row's numbers;
    seeded rows draw one by one, so a row's draw never depends on its neighbours. The logits
    are left as they were.
    """
    rows = logits.size(0)
    if not len(histories) == len(params) == len(generators) == rows:
        raise ValueError(
            f"{rows} rows of logits need as many histories, params and generators; got "
            f"{len(histories)}, {len(params)} and {len(generators)}"
        )
    scores = logits.float()
    chosen = torch.empty(rows, dtype=torch.long, device=scores.device)
    groups: dict[tuple[object, ...], list[int]] = {}
    for row, p in enumerate(params):
        groups.setdefault(_rule(p), []).append(row)
    for members in groups.values():
        p = params[members[0]]
        index = torch.tensor(members, device=scores.device)
        part = scores if len(members) == rows else scores.index_select(0, index)
        ids = (
            _history_ids([histories[r] for r in members], scores.device)
            if p.repetition_penalty != 1.0
            else torch.empty((len(members), 0), dtype=torch.long, device=scores.device)
        )
        part = logits_processors(p)(cast(torch.LongTensor, ids), part)
        chosen[index] = _draw(part, p.greedy, [generators[r] for r in members])
    return chosen


def _rule(params: SamplingParams) -> tuple[object, ...]:
    """What decides how a row's token is chosen (not `max_new_tokens`)."""
    if params.greedy:
        return (True, params.repetition_penalty)
    return (False, params.repetition_penalty, params.temperature, params.top_k, params.top_p)


def _history_ids(histories: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """[B, L] ids, each row padded with its own first token: the penalty applies at most once
    per token, so a repeat changes nothing."""
    if any(len(h) == 0 for h in histories):
        raise ValueError("every row needs at least one token (its prompt) before the next")
    width = max(len(h) for h in histories)
    return torch.tensor(
        [[*h, *([h[0]] * (width - len(h)))] for h in histories], dtype=torch.long, device=device
    )


def _draw(
    scores: torch.Tensor, greedy: bool, generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """Argmax, or one `torch.multinomial` draw per row as `generate` samples; seeded rows one
    by one from their own generators, the others together from the global one."""
    if greedy:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores, dim=-1)
    out = torch.empty(scores.size(0), dtype=torch.long, device=scores.device)
    free = [r for r, g in enumerate(generators) if g is None]
    if free:
        picked = probs if len(free) == len(generators) else probs[free]
        out[free] = torch.multinomial(picked, num_samples=1).squeeze(1)
    for row, generator in enumerate(generators):
        if generator is not None:
            out[row] = torch.multinomial(probs[row : row + 1], 1, generator=generator)[0, 0]
    return out


@dataclass(frozen=True)
class Generation:
    """Prompt and response token ids (response cut after its EOS, EOS kept) and the text."""

    prompt_ids: list[int]
    response_ids: list[int]
    text: str


REPLACEMENT_CHAR = "\ufffd"
MAX_INCOMPLETE_BYTES = 3  # the longest unfinished UTF-8 sequence (a 4-byte character, less one)


def drop_incomplete_char(text: str) -> str:
    """`text` without the replacement characters its unfinished last character decodes to.

    Byte-level BPE splits a Hangul syllable (3 bytes) over several tokens, so an answer cut by
    `max_tokens` can end inside one, and decoding turns those bytes into U+FFFD: one for
    byte-level BPE, one per byte for SentencePiece byte fallback, so at most
    :data:`MAX_INCOMPLETE_BYTES`. They are dropped, as vLLM and TGI drop them; a U+FFFD with
    text after it is the model's own and is kept.
    """
    kept = text.rstrip(REPLACEMENT_CHAR)
    if len(text) - len(kept) > MAX_INCOMPLETE_BYTES:
        return text[:-MAX_INCOMPLETE_BYTES]
    return kept


def context_length(model: PreTrainedModel) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048))


def fit_to_context(model: PreTrainedModel, params: SamplingParams) -> SamplingParams:
    """Cap `max_new_tokens` at half the context, so a prompt always has room beside it."""
    cap = context_length(model) // 2
    if params.max_new_tokens <= cap:
        return params
    return replace(params, max_new_tokens=cap)


def max_prompt_tokens(model: PreTrainedModel, max_new_tokens: int) -> int:
    """How many prompt tokens fit beside `max_new_tokens` in the model's context."""
    return max(1, context_length(model) - max_new_tokens)


def cache_kwarg(model: PreTrainedModel) -> str:
    """The name `model.forward` takes its KV cache by (`cache` in newer architectures such as
    Llama, `past_key_values` in older ones such as GPT-NeoX)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on each row's first real token (left padding safe)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists → left-padded ids and attention mask, both [B, T]."""
    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        if ids:
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
    return input_ids, attention


@torch.no_grad()
def sample_tokens(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    params: SamplingParams,
    eos_id: int,
    pad_id: int,
    seeds: Sequence[int | None] | None = None,
    keep_logits: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Answers for a left-padded batch [B, T], each token chosen by :func:`next_tokens`.

    Returns [B, R] ids (pad after each row's first EOS; EOS kept) and, with `keep_logits`,
    the model's raw logits of each step, R tensors [B, V] (before any processor): step t's
    are exactly what a full forward pass over prompt + answer gives for token t (else none).
    `seeds` holds one seed (or None) per row. A finished row still draws, as in `generate`,
    and gets padding.
    """
    batch = input_ids.size(0)
    if seeds is not None and len(seeds) != batch:
        raise ValueError(f"{batch} rows need {batch} seeds, got {len(seeds)}")
    generators = [seeded_generator(s, input_ids.device) for s in seeds or [None] * batch]
    histories = [
        row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask, strict=True)
    ]
    cache = DynamicCache()
    cache_arg = {cache_kwarg(model): cache}
    keep = {"logits_to_keep": 1} if "logits_to_keep" in _forward_params(model) else {}
    positions = position_ids_for(attention_mask)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        **cache_arg,
        use_cache=True,
        **keep,
    )
    position = positions[:, -1:]
    done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    tokens: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    for step in range(params.max_new_tokens):
        step_logits = out.logits[:, -1].float()
        if keep_logits:
            logits.append(step_logits)
        token = next_tokens(step_logits, histories, [params] * batch, generators)
        token = token.masked_fill(done, pad_id)
        tokens.append(token)
        done |= token == eos_id
        if bool(done.all()) or step == params.max_new_tokens - 1:
            break
        for history, t in zip(histories, token.tolist(), strict=True):
            history.append(t)
        position = position + 1
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        out = model(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=position,
            **cache_arg,
            use_cache=True,
        )
    return torch.stack(tokens, dim=1), logits


def _forward_params(model: PreTrainedModel) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def generate_tokens(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    params: SamplingParams,
    seeds: Sequence[int | None] | None = None,
) -> torch.Tensor:
    """Sample responses for a left-padded batch: [B, R] ids, pad after each row's first EOS."""
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    responses, _ = sample_tokens(
        model, input_ids, attention_mask, params, tokenizer.eos_token_id, pad_id, seeds
    )
    return responses


def sample_with_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's rollout: answers for a left-padded batch and the model's raw logits that drew them.

    Returns [B, R] ids (pad after each row's first EOS) and [B, R, V] float logits, where
    `logits[:, t]` is what the model gave for token t before temperature and top-p: exactly
    the logits a full forward pass over prompt + answer gives there, so PPO reads log π_old
    off the sampling pass. The tokens are drawn by the one sampler (:func:`next_tokens`) with
    `temperature` and `top_p` and no other processor, from torch's global generator.
    """
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        repetition_penalty=1.0,
    )
    responses, logits = sample_tokens(
        model, input_ids, attention_mask, params, eos_id, pad_id, keep_logits=True
    )
    return responses, torch.stack(logits, dim=1)


def response_mask(response: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, R] 1 on each row's tokens up to and including its first EOS, 0 after.

    Works when pad and EOS are the same id (checkpoints without a pad token).
    """
    is_eos = (response == eos_id).long()
    return ((is_eos.cumsum(dim=1) - is_eos) == 0).long()


def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    params: SamplingParams,
    seeds: Sequence[int | None] | None = None,
) -> list[Generation]:
    """Sample one answer per prompt in one left-padded batch; `seeds` holds one seed (or None)
    per prompt, with the meaning a served request's seed has."""
    if not prompts:
        return []
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts need {len(prompts)} seeds, got {len(seeds)}")
    limit = max_prompt_tokens(model, params.max_new_tokens)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"][-limit:] for p in prompts]
    if not all(encoded):
        raise ValueError("a prompt has no tokens; render it with the model's prompt format")
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    input_ids, attention = left_pad(encoded, pad_id)
    device = next(model.parameters()).device
    responses = generate_tokens(
        model, tokenizer, input_ids.to(device), attention.to(device), params, seeds
    ).tolist()
    results = []
    eos = tokenizer.eos_token_id
    for ids, response in zip(encoded, responses, strict=True):
        # Up to and including the first EOS: when pad == EOS (checkpoints without a pad token)
        # the EOS must not be dropped as padding, or no answer would count as finished.
        if eos in response:
            response = response[: response.index(eos) + 1]
        elif pad_id != eos:
            response = [t for t in response if t != pad_id]
        decoded = str(tokenizer.decode(response, skip_special_tokens=True))
        text = drop_incomplete_char(decoded).strip()  # no U+FFFD where `max_new_tokens` cut
        results.append(Generation(ids, response, text))
    return results
