"""Base LM and SFT on micro models: the loss falls, held-out perplexity drops, data stays apart."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from kindchat.config import Settings
from kindchat.models.registry import Registry
from kindchat.retrain.common import LoraOptions
from kindchat.retrain.data import base_corpus, load_sft_split
from kindchat.retrain.sft import SftConfig, train_sft
from kindchat.seed import eval_prompt_keys, normalize_prompt


def test_bootstrap_registers_base_and_sft(micro_settings: Settings) -> None:
    registry = Registry(micro_settings.models_dir)
    aliases = registry.aliases()
    base, sft = registry.manifest(aliases["base"]), registry.manifest(aliases["sft"])
    assert sft.parents == [base.version]
    # The base LM learned something: far below the perplexity of a uniform guess over the vocab.
    vocab = json.loads((registry.path(base.version) / "config.json").read_text())["vocab_size"]
    assert base.metrics["heldout_ppl"] < vocab / 4
    # SFT lowers held-out perplexity on answers in the KULLM template.
    assert sft.metrics["heldout_ppl"] < sft.metrics["heldout_ppl_before"]
    assert sft.metrics["heldout_ppl_before"] == pytest.approx(base.metrics["heldout_ppl"], rel=1e-3)


def test_sft_split_is_stable_and_excludes_eval_prompts(micro_settings: Settings) -> None:
    a = load_sft_split(micro_settings.data_dir)
    b = load_sft_split(micro_settings.data_dir)
    assert [r.id for r in a.heldout] == [r.id for r in b.heldout]
    total = len(a.train) + len(a.heldout)
    assert 0.03 < len(a.heldout) / total < 0.07
    keys = eval_prompt_keys(micro_settings.data_dir)
    assert a.excluded_eval >= 40  # the 40 conversation test prompts stand as SFT instructions
    assert not any(normalize_prompt(r.prompt) in keys for r in a.train + a.heldout)
    corpus = set(base_corpus(micro_settings.data_dir, a))
    assert not any(r.output in corpus for r in a.heldout)


@pytest.mark.slow  # trains
def test_lora_sft_trains_only_adapters_and_merges(micro_copy: Settings) -> None:
    registry = Registry(micro_copy.models_dir)
    config = SftConfig(
        max_steps=40,
        batch_size=8,
        learning_rate=2e-3,
        max_length=256,
        max_records=40,
        lora=LoraOptions(enabled=True, r=8),
    )
    manifest = train_sft(micro_copy, registry, "base", config)
    before = load_file(registry.path(registry.aliases()["base"]) / "model.safetensors")
    after = load_file(registry.path(manifest.version) / "model.safetensors")
    assert set(before) == set(after)  # LoRA was merged: a plain GPT-NeoX checkpoint
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("query_key_value" in k for k in changed)
    assert not any("embed" in k for k in changed)  # LoRA touched only its target modules
