"""Batched sampling: `generate` with left padding, per-sequence EOS and clean decoding, and the
lean rollout sampler PPO uses (answers plus the logits that drew them)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    repetition_penalty: float = 1.0
    do_sample: bool = True

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")

    def generate_kwargs(self, tokenizer: PreTrainedTokenizerBase) -> dict[str, object]:
        sample = self.do_sample and self.temperature > 0
        kwargs: dict[str, object] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": sample,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "repetition_penalty": self.repetition_penalty,
        }
        if sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs


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
def generate_tokens(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    params: SamplingParams,
) -> torch.Tensor:
    """Sample responses for a left-padded batch: [B, R] ids, pad after each row's first EOS."""
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        **params.generate_kwargs(tokenizer),
    )
    return _pad_after_eos(output[:, input_ids.size(1) :], tokenizer)


@torch.no_grad()
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
    """Sample answers for a left-padded batch; return them with the model's raw logits.

    Returns [B, R] ids (pad after each row's first EOS) and [B, R, V] float logits, where
    `logits[:, t]` is what the model gave for token t before temperature and top-p: exactly
    the logits a full forward pass over prompt + answer gives there, so PPO reads log π_old
    off the sampling pass. This is `generate` reduced to what a rollout needs, for speed: on
    CPU, `torch.multinomial` draws an exponential variate for every vocabulary entry and
    took a fifth of `generate`'s time; inverse-CDF sampling draws one uniform per row.
    """
    batch = input_ids.size(0)
    cache = DynamicCache()
    cache_arg = {cache_kwarg(model): cache}
    positions = position_ids_for(attention_mask)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        **cache_arg,
        use_cache=True,
        logits_to_keep=1,
    )
    position = positions[:, -1:]
    done = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    tokens: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        step_logits = out.logits[:, -1].float()
        logits.append(step_logits)
        token = sample_token(step_logits, temperature, top_p).masked_fill(done, pad_id)
        tokens.append(token)
        done |= token == eos_id
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        position = position + 1
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
        out = model(
            input_ids=token[:, None],
            attention_mask=attention_mask,
            position_ids=position,
            **cache_arg,
            use_cache=True,
        )
    return torch.stack(tokens, dim=1), torch.stack(logits, dim=1)


def sample_token(
    logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0
) -> torch.Tensor:
    """[B, V] logits → [B] token ids drawn from softmax(logits / temperature), nucleus `top_p`.

    Inverse-CDF sampling: one uniform draw per row, located in the cumulative distribution.
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    order: torch.Tensor | None = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs > top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    u = torch.rand(probs.size(0), 1, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]
    index = torch.searchsorted(cdf, u, right=True).clamp(max=probs.size(-1) - 1)
    if order is not None:
        index = order.gather(1, index)
    return index.squeeze(1)


def response_mask(response: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, R] 1 on each row's tokens up to and including its first EOS, 0 after.

    Works when pad and EOS are the same id (checkpoints without a pad token).
    """
    is_eos = (response == eos_id).long()
    return ((is_eos.cumsum(dim=1) - is_eos) == 0).long()


def _pad_after_eos(response: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Keep each row up to and including its first EOS; pad the rest."""
    keep = response_mask(response, tokenizer.eos_token_id)
    return response.masked_fill(keep == 0, tokenizer.pad_token_id)


def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    params: SamplingParams,
) -> list[Generation]:
    """Sample one answer per prompt in one left-padded batch."""
    if not prompts:
        return []
    limit = max_prompt_tokens(model, params.max_new_tokens)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"][-limit:] for p in prompts]
    input_ids, attention = left_pad(encoded, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    responses = generate_tokens(
        model, tokenizer, input_ids.to(device), attention.to(device), params
    ).tolist()
    results = []
    eos = tokenizer.eos_token_id
    for ids, response in zip(encoded, responses, strict=True):
        # Up to and including the first EOS: when pad == EOS (checkpoints without a pad token)
        # the EOS must not be dropped as padding, or no answer would count as finished.
        if eos in response:
            response = response[: response.index(eos) + 1]
        elif tokenizer.pad_token_id != eos:
            response = [t for t in response if t != tokenizer.pad_token_id]
        decoded = str(tokenizer.decode(response, skip_special_tokens=True))
        text = drop_incomplete_char(decoded).strip()  # no U+FFFD where `max_new_tokens` cut
        results.append(Generation(ids, response, text))
    return results
