"""The first visit's lean loop (`kindchat.retrain.lean`): the examples it builds are TRL's, its
schedule is transformers', the process that trains the first models imports neither TRL nor
`datasets`, and what it trains is as good as TRL's on the micro preset."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from kindchat.config import Settings
from kindchat.models.loading import load_causal_lm
from kindchat.models.presets import get_preset
from kindchat.models.registry import Registry
from kindchat.models.template import prompt_format
from kindchat.retrain.lean import completion_examples, cosine_with_warmup, packed_examples
from kindchat.retrain.sft import SftConfig, train_base, train_sft
from tests.helpers import heavy_imports


def test_examples_mask_the_prompt_and_end_with_the_eos(micro_settings: Settings) -> None:
    _, tokenizer = load_causal_lm(Registry.for_settings(micro_settings).resolve("sft"))
    fmt = prompt_format(tokenizer)
    prompt, answer = fmt.single("오늘 날씨 어때?"), "맑고 따뜻해요."
    [(ids, labels)] = completion_examples(tokenizer, [prompt], [answer], 256)
    assert ids[-1] == tokenizer.eos_token_id and len(ids) == len(labels)
    masked = [i for i, label in enumerate(labels) if label == -100]
    assert masked == list(range(len(masked))) and masked  # the prompt, and only the prompt
    assert tokenizer.decode(ids[: len(masked)]) == prompt
    assert tokenizer.decode([t for t in labels if t != -100]) == answer + tokenizer.eos_token
    cut = len(masked) + 5  # a long answer is cut at max_length, its first tokens kept
    [(short_ids, short_labels)] = completion_examples(tokenizer, [prompt], [answer * 40], cut)
    assert short_ids == ids[:cut] and short_labels == labels[:cut]
    assert completion_examples(tokenizer, [prompt], [answer], len(masked)) == []  # no answer left
    with pytest.raises(ValueError, match="prompts"):
        completion_examples(tokenizer, [prompt], [], 256)

    texts = ["첫 번째 글입니다.", "두 번째 글은 조금 더 깁니다. " * 10]
    blocks = packed_examples(tokenizer, texts, 16)
    stream = [t for block, _ in blocks for t in block]
    assert all(len(block) == 16 for block, _ in blocks[:-1]) and len(blocks[-1][0]) <= 16
    assert all(block == labels for block, labels in blocks)  # the loss on every token
    assert stream.count(tokenizer.eos_token_id) == 2 and stream[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(stream, skip_special_tokens=True) == "".join(texts)


@pytest.mark.parametrize("total", [7, 60, 120])
def test_the_schedule_is_transformers_cosine_with_warmup(total: int) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    reference = get_cosine_schedule_with_warmup(optimizer, math.ceil(0.05 * total), total)
    ours = cosine_with_warmup(total)
    for step in range(total + 1):
        assert ours(step) == pytest.approx(reference.lr_lambdas[0](step), abs=1e-12)


def test_the_first_models_train_without_importing_trl_or_datasets(tmp_path, data_dir) -> None:
    """What `bootstrap --first` imports to train the first models: no TRL, no `datasets`
    (~10 s of a fresh install's first imports), no peft."""
    imports = (
        "from kindchat.cli import app\n"
        "from kindchat.retrain.bootstrap import run_bootstrap\n"
        "from kindchat.retrain import lean"
    )
    assert heavy_imports(imports, {"trl", "datasets", "peft"}) == []


def test_a_config_for_the_lean_loop_refuses_what_only_trl_does() -> None:
    from kindchat.retrain.common import LoraOptions

    with pytest.raises(ValueError, match="trainer='trl'"):
        SftConfig(trainer="torch", lora=LoraOptions(enabled=True))
    with pytest.raises(ValueError, match="'trl' or 'torch'"):
        SftConfig(trainer="jax")  # type: ignore[arg-type]


@pytest.mark.slow  # trains a micro base and two SFTs (~25 s)
def test_the_lean_loop_trains_as_well_as_trl(micro_copy: Settings) -> None:
    """The micro preset, from the same initial weights and data: the lean base LM's held-out
    perplexity is TRL's within 3%, and so is SFT's from the same base (TRL's: 91.0, 93.0, 96.3,
    92.7 over seeds 0–3 here; the lean loop's 92.6, 92.3, 96.8, 93.5)."""
    registry = Registry.for_settings(micro_copy)
    preset = get_preset("micro")
    trl_base = registry.manifest(registry.aliases()["base"])
    lean_base = train_base(micro_copy, registry, preset, trainer="torch")
    assert lean_base.config["stage"]["trainer"] == "torch"
    assert lean_base.metrics["heldout_ppl"] == pytest.approx(
        trl_base.metrics["heldout_ppl"], rel=0.03
    )
    sft = {
        trainer: train_sft(
            micro_copy, registry, trl_base.version, SftConfig.for_preset(preset, trainer=trainer)
        ).metrics
        for trainer in ("trl", "torch")
    }
    assert sft["torch"]["heldout_ppl"] < sft["torch"]["heldout_ppl_before"]
    assert sft["torch"]["heldout_ppl"] == pytest.approx(sft["trl"]["heldout_ppl"], rel=0.03)
    assert sft["torch"]["train_steps"] == sft["trl"]["train_steps"] == preset.sft.max_steps
