"""What a causal LM says about given answers: held-out perplexity on answers in the serving
template, and its logits at the answer positions (PPO's log-probabilities, the policy
evaluation's KL estimate)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kindchat.models.generation import position_ids_for
from kindchat.models.template import prompt_format
from kindchat.seed import SftRecord


@torch.no_grad()
def padded_batch(
    rows: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, labels) rows padded on the right: input ids, labels (-100 on padding) and the
    attention mask, as tensors."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, targets) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(targets)] = torch.tensor(targets)
        attention[i, : len(ids)] = 1
    return input_ids, labels, attention


def response_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[SftRecord],
    max_length: int,
    batch_size: int = 8,
) -> float:
    """exp(mean NLL) over the answer tokens (EOS included) of `records`, prompt tokens masked."""
    if not records:
        raise ValueError("no records to evaluate perplexity on")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    fmt = prompt_format(tokenizer)
    for start in range(0, len(records), batch_size):
        rows = []
        for rec in records[start : start + batch_size]:
            prompt = tokenizer(fmt.single(rec.prompt), add_special_tokens=False)["input_ids"]
            answer = tokenizer(rec.output, add_special_tokens=False)["input_ids"]
            answer = answer + [tokenizer.eos_token_id]
            ids = (prompt + answer)[:max_length]
            labels = ([-100] * len(prompt) + answer)[:max_length]
            if any(label != -100 for label in labels[1:]):
                rows.append((ids, labels))
        if not rows:
            continue
        input_ids, label_t, attention = padded_batch(rows, tokenizer.pad_token_id)
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        shift_logits = logits[:, :-1].float()
        shift_labels = label_t[:, 1:].to(device)
        nll = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.size(-1)),
            shift_labels.reshape(-1),
            ignore_index=-100,
            reduction="sum",
        )
        total_nll += nll.item()
        total_tokens += int((shift_labels != -100).sum())
    if was_training:
        model.train()
    return math.exp(total_nll / max(1, total_tokens))


def response_logits(
    model: PreTrainedModel,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
) -> torch.Tensor:
    """[B, R, V] logits that predict each response token (positions P−1 … P+R−2).

    Only those R+1 positions go through the LM head (`logits_to_keep`), not the prompt's.
    """
    response_length = sequences.size(1) - prompt_length
    logits = model(
        input_ids=sequences,
        attention_mask=attention_mask,
        position_ids=position_ids_for(attention_mask),
        logits_to_keep=response_length + 1,
    ).logits
    return logits[:, :-1]
