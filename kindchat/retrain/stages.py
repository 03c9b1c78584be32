"""Registered training stages: tokenizer + base LM, and SFT. Each returns its manifest."""

from __future__ import annotations

import logging
from pathlib import Path

from datasets import Dataset
from transformers import GPTNeoXForCausalLM

from kindchat.config import Settings
from kindchat.models.loading import load_causal_lm
from kindchat.models.presets import Preset
from kindchat.models.registry import Manifest, Registry
from kindchat.models.tokenizer import train_tokenizer
from kindchat.retrain.common import config_dict, new_run_dir
from kindchat.retrain.data import (
    base_corpus,
    fingerprint,
    load_sft_split,
    prompt_completion_dataset,
)
from kindchat.retrain.evaluate import response_perplexity
from kindchat.retrain.sft import SftConfig, train_causal_lm

logger = logging.getLogger(__name__)


def train_base(settings: Settings, registry: Registry, preset: Preset) -> Manifest:
    """Train the BPE tokenizer and a GPT-NeoX base LM from scratch on the seed text."""
    budget = preset.base
    # Leave out every held-out SFT record (the full split), report perplexity on the sliced one.
    texts = base_corpus(settings.data_dir, load_sft_split(settings.data_dir))
    split = load_sft_split(settings.data_dir, max_records=preset.sft.max_records)
    if budget.max_records is not None:
        texts = texts[: budget.max_records]
    logger.info(
        "tokenizer: training a %d-token byte-level BPE on %d texts", preset.vocab_size, len(texts)
    )
    tokenizer = train_tokenizer(texts, preset.vocab_size)
    model_config = preset.model_config(
        len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    model = GPTNeoXForCausalLM(model_config)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("base LM: %.2fM parameters, preset %s", n_params / 1e6, preset.name)
    config = SftConfig(
        epochs=budget.epochs,
        max_steps=budget.max_steps,
        batch_size=budget.batch_size,
        learning_rate=budget.learning_rate,
        max_length=preset.seq_len,
        completion_only_loss=False,
        exclude_eval_prompts=True,
    )
    run_dir = new_run_dir(settings.runs_dir, "base")
    model, metrics = train_causal_lm(
        model, tokenizer, Dataset.from_dict({"text": texts}), config, run_dir, "base", packing=True
    )
    metrics["heldout_ppl"] = response_perplexity(model, tokenizer, split.heldout, preset.seq_len)
    metrics["parameters"] = n_params

    def write(path: Path) -> None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)

    return registry.save(
        "base",
        write,
        config={"preset": preset.name, "stage": config_dict(config)},
        metrics=metrics,
        data_fingerprint=fingerprint(texts),
    )


def train_sft(settings: Settings, registry: Registry, base_ref: str, config: SftConfig) -> Manifest:
    """SFT of a base LM (alias, version or directory) on the seed SFT data; register the result."""
    base_dir = registry.resolve(base_ref)
    model, tokenizer = load_causal_lm(base_dir)
    model.train()
    split = load_sft_split(
        settings.data_dir,
        heldout_fraction=config.heldout_fraction,
        exclude_eval_prompts=config.exclude_eval_prompts,
        max_records=config.max_records,
    )
    logger.info(
        "sft: %d train / %d held-out records (%d evaluation prompts left out)",
        len(split.train),
        len(split.heldout),
        split.excluded_eval,
    )
    ppl_before = response_perplexity(model, tokenizer, split.heldout, config.max_length)
    run_dir = new_run_dir(settings.runs_dir, "sft")
    model, metrics = train_causal_lm(
        model, tokenizer, prompt_completion_dataset(split.train), config, run_dir, "sft"
    )
    ppl_after = response_perplexity(model, tokenizer, split.heldout, config.max_length)
    metrics.update(
        heldout_ppl_before=ppl_before, heldout_ppl=ppl_after, train_records=len(split.train)
    )
    logger.info("sft: held-out perplexity %.2f -> %.2f", ppl_before, ppl_after)
    parent = registry.version_of(base_ref)

    def write(path: Path) -> None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)

    return registry.save(
        "sft",
        write,
        parents=[parent] if parent else [],
        config={"stage": config_dict(config), "base": str(base_ref)},
        metrics=metrics,
        data_fingerprint=fingerprint(split.train),
    )
