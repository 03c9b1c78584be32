"""Training sets built from the seed: stable held-out splits, eval-prompt exclusion, fingerprints."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from transformers import PreTrainedTokenizerBase

from kindchat.models.template import Message, PromptTooLongError, prompt_format
from kindchat.seed import (
    Example,
    RmPair,
    SftRecord,
    corpus_texts,
    eval_prompt_keys,
    normalize_prompt,
    read_sft,
    stable_fraction,
)

T = TypeVar("T")


P = TypeVar("P", bound=RmPair | Example)


def without_eval_prompts(items: Sequence[P], data_dir: Path) -> list[P]:
    """`items` (pairs or examples) whose prompt is not one of the seed's evaluation prompts."""
    keys = eval_prompt_keys(data_dir)
    return [item for item in items if normalize_prompt(item.prompt) not in keys]


def split_heldout(
    items: Sequence[T], key: Callable[[T], str], fraction: float
) -> tuple[list[T], list[T]]:
    """(train, held-out): an item is held out iff the hash of its key falls below `fraction`.

    The split depends on each item's key alone, so it is the same on every machine and run and
    does not shift when other items are added.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"held-out fraction must lie in [0, 1), got {fraction}")
    train, heldout = [], []
    for item in items:
        (heldout if stable_fraction(key(item)) < fraction else train).append(item)
    return train, heldout


@dataclass(frozen=True)
class SftSplit:
    train: list[SftRecord]
    heldout: list[SftRecord]
    excluded_eval: int  # records dropped because their prompt is an evaluation prompt


def sft_key(record: SftRecord) -> str:
    return f"{record.subset}:{record.id}"


def load_sft_split(
    data_dir: Path,
    heldout_fraction: float = 0.05,
    exclude_eval_prompts: bool = True,
    max_records: int | None = None,
) -> SftSplit:
    """The seed SFT data minus evaluation prompts, split 95/5 by id hash."""
    records = read_sft(data_dir)
    excluded = 0
    if exclude_eval_prompts:
        keys = eval_prompt_keys(data_dir)
        kept = [r for r in records if normalize_prompt(r.prompt) not in keys]
        excluded = len(records) - len(kept)
        records = kept
    train, heldout = split_heldout(records, sft_key, heldout_fraction)
    if max_records is not None:
        train = train[:: max(1, len(train) // max_records)][:max_records]
        heldout = heldout[: max(8, max_records // 20)]
    return SftSplit(train, heldout, excluded)


def base_corpus(data_dir: Path, split: SftSplit, exclude_eval_prompts: bool = True) -> list[str]:
    """Seed text for the base LM: no evaluation prompt, and nothing of the held-out SFT records."""
    excluded = {normalize_prompt(r.prompt) for r in split.heldout}
    if exclude_eval_prompts:
        excluded |= eval_prompt_keys(data_dir)
    heldout_outputs = {r.output for r in split.heldout}
    return [t for t in corpus_texts(data_dir, frozenset(excluded)) if t not in heldout_outputs]


def prompt_completion_columns(
    records: Sequence[SftRecord], tokenizer: PreTrainedTokenizerBase
) -> dict[str, list[str]]:
    """TRL's prompt/completion columns, prompts in the model's format (the trainer appends the
    EOS)."""
    fmt = prompt_format(tokenizer)
    return {
        "prompt": [fmt.single(r.prompt) for r in records],
        "completion": [r.output for r in records],
    }


def example_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    context: Sequence[Message] = (),
    max_tokens: int | None = None,
) -> str:
    """A training example's model input: its conversation in the template serving uses, the
    oldest turns dropped until it fits `max_tokens` (the last message alone may exceed it:
    the trainer then truncates, as it would a long single-turn prompt)."""
    fmt = prompt_format(tokenizer)
    if not context or max_tokens is None:
        return fmt.conversation(prompt, context)

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    try:
        return fmt.conversation(prompt, context, count, max_tokens)
    except PromptTooLongError:
        return fmt.single(prompt)
