"""A lean causal-LM loop on torch alone, for the first visit's models.

On a fresh machine nobody can chat until the first SFT model lands, and what a new user waits
for there is mostly not training: the first import of TRL and `datasets` (their bytecode is
compiled on that first import) and SFTTrainer's setup of each stage (tokenizing through
`datasets`, the accelerator) cost about as much as the micro models' training itself. This loop
is what SFTTrainer does for them, and nothing else:

- the base LM: texts tokenized, each followed by the EOS, concatenated and cut into blocks of
  `max_length` (TRL's "wrapped" packing), the loss on every token;
- SFT: prompt + completion + EOS, cut at `max_length`, the loss on the completion's tokens only
  (TRL's `completion_only_loss`); the completion starts where the tokenized prompt and the
  tokenized prompt + completion part, as in TRL;
- the same optimisation as kindchat's trainers (`hf_trainer.trainer_arguments`): AdamW without weight
  decay, cosine schedule after a 5% warm-up, gradients clipped at norm 1, batches reshuffled every
  epoch from the run's seed, the loss the model's own masked cross-entropy;
- the same logs: every 10th step (or ~10 times in a short run) to the steps log, a progress bar.

Everything else (RM, PPO, DPO, KTO, nightly SFT, every larger preset) trains with TRL.
`tests/retrain/test_lean.py` holds this loop to TRL's on the micro preset: the same held-out
perplexity after SFT.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kindchat.logs import STEPS_LOGGER
from kindchat.retrain.common import check_finite, logging_steps
from kindchat.retrain.evaluate import padded_batch

logger = logging.getLogger(__name__)
steps_logger = logging.getLogger(STEPS_LOGGER)

Example = tuple[list[int], list[int]]  # input ids, labels (-100: no loss on that token)


def packed_examples(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> list[Example]:
    """Plain texts for a base LM: each followed by the EOS, concatenated, cut into blocks."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream += [*ids, eos]
    blocks = [stream[i : i + max_length] for i in range(0, len(stream), max_length)]
    return [(block, list(block)) for block in blocks]


def completion_examples(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    completions: Sequence[str],
    max_length: int,
) -> list[Example]:
    """Prompt + completion + EOS, the loss on the completion's tokens (and its EOS); an example
    whose prompt fills `max_length` has nothing to learn from and is dropped (as TRL does)."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    joined = [p + c for p, c in zip(prompts, completions, strict=True)]
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(joined, add_special_tokens=False)["input_ids"]
    examples: list[Example] = []
    for prompt, full in zip(prompt_ids, full_ids, strict=True):
        start = 0
        while start < min(len(prompt), len(full)) and prompt[start] == full[start]:
            start += 1
        ids = [*full, tokenizer.eos_token_id][:max_length]
        if start < len(ids):
            examples.append((ids, [-100] * start + ids[start:]))
    return examples


def cosine_with_warmup(total: int, warmup_ratio: float = 0.05) -> Callable[[int], float]:
    """The LR factor at each step: linear warm-up, then a cosine to zero (transformers'
    `get_cosine_schedule_with_warmup`, whose module imports peft: a second of a first visit)."""
    warmup = math.ceil(warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


def fit_causal_lm(
    model: PreTrainedModel,
    examples: Sequence[Example],
    config: Any,
    pad_id: int,
    stage: str,
) -> dict[str, Any]:
    """Train `model` in place on `examples` with `config`'s batch size, learning rate, epochs or
    max steps and seed (an `SftConfig`); the metrics `hf_trainer.run_trainer` reports for TRL."""
    if not examples:
        raise ValueError(f"{stage}: no training examples")
    per_epoch = math.ceil(len(examples) / config.batch_size)
    total = config.max_steps if config.max_steps > 0 else math.ceil(per_epoch * config.epochs)
    every = logging_steps(config.max_steps)
    torch.manual_seed(config.seed)
    order = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total))
    model.train()
    losses: list[float] = []
    logged: list[float] = []
    window: list[float] = []
    batches: list[list[int]] = []
    step = 0
    with tqdm(total=total, desc=stage, unit="step") as progress:
        while step < total:
            if not batches:
                perm = torch.randperm(len(examples), generator=order).tolist()
                batches = [
                    perm[i : i + config.batch_size] for i in range(0, len(perm), config.batch_size)
                ]
            ids, labels, mask = padded_batch([examples[i] for i in batches.pop(0)], pad_id)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window.append(loss.item())
            progress.update(1)
            if step % every == 0 or step == total:
                row = {
                    "loss": sum(window) / len(window),
                    "grad_norm": float(grad_norm),
                    "learning_rate": schedule.get_last_lr()[0],
                    "epoch": step / per_epoch,
                }
                steps_logger.info("%s step %d: %s", stage, step, json.dumps(row))
                logged.append(row["loss"])
                losses += window
                window = []
    train_loss = sum(losses) / len(losses)
    check_finite(train_loss, f"{stage} training loss")
    model.eval()
    metrics = {
        "train_loss": train_loss,
        "train_steps": total,
        "loss_first": logged[0],
        "loss_last": logged[-1],
    }
    logger.info("%s finished: %s", stage, metrics)
    return metrics
