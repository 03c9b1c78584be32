"""Batched sampling with transformers `generate`: left padding, per-sequence EOS, clean decoding."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


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
    finished: bool  # ended with EOS rather than running out of tokens


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
    response = output[:, input_ids.size(1) :]
    after_eos = (response == tokenizer.eos_token_id).long().cumsum(dim=1) - (
        response == tokenizer.eos_token_id
    ).long()
    return response.masked_fill(after_eos > 0, tokenizer.pad_token_id)


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
    for ids, response in zip(encoded, responses, strict=True):
        response = [t for t in response if t != tokenizer.pad_token_id]
        finished = tokenizer.eos_token_id in response
        text = tokenizer.decode(response, skip_special_tokens=True).strip()
        results.append(Generation(ids, response, text, finished))
    return results
