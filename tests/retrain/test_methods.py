"""Preference methods as plug-ins: the registry, DPO and KTO learning a toy preference, and
nightly LoRA adapters (a PEFT directory over the base, going on night after night, merged).

The toy preference: a warm, willing answer over a curt refusal. Training sees it on some prompts;
the test measures it on prompts training never saw, as the log-probability margin
log π(warm | prompt) − log π(curt | prompt), before and after one method run on micro models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from kindchat.cli import app
from kindchat.config import Settings
from kindchat.models.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    NotAdapterError,
    model_params,
    wants_adapter,
)
from kindchat.models.gc import plan_gc
from kindchat.models.loading import load_causal_lm, merge_adapter
from kindchat.models.presets import get_preset
from kindchat.models.registry import Registry
from kindchat.models.template import kullm_prompt
from kindchat.retrain.dpo import DpoConfig
from kindchat.retrain.kto import KtoConfig, class_weights
from kindchat.retrain.loop_config import RetrainConfig
from kindchat.retrain.methods import (
    METHODS,
    MethodJob,
    PreferenceData,
    UnknownMethodError,
    get_method,
)
from kindchat.seed import eval_prompt_keys, normalize_prompt, read_ppo_prompts

WARM = "네, 기꺼이 도와드릴게요! 천천히 같이 해 봐요."
CURT = "싫어요. 혼자 하세요."


def toy_prompts(settings: Settings, n: int) -> list[str]:
    keys = eval_prompt_keys(settings.data_dir)
    prompts = [p.prompt for p in read_ppo_prompts(settings.data_dir)]
    return [p for p in prompts if normalize_prompt(p) not in keys and len(p) < 80][:n]


@torch.no_grad()
def margin(model_dir: Path, prompts: list[str]) -> float:
    """Mean over prompts of log π(WARM) − log π(CURT), each answer followed by EOS."""
    model, tokenizer = load_causal_lm(model_dir)

    def logp(prompt: str, answer: str) -> float:
        context = tokenizer(kullm_prompt(prompt), add_special_tokens=False)["input_ids"]
        target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([context + target])
        logits = model(ids).logits[0, len(context) - 1 : -1].log_softmax(-1)
        return float(logits.gather(1, torch.tensor(target)[:, None]).sum())

    return sum(logp(p, WARM) - logp(p, CURT) for p in prompts) / len(prompts)


def write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def job(
    settings: Settings,
    data: PreferenceData,
    run_dir: Path,
    *,
    adapter: bool = False,
    policy: str | None = None,
) -> MethodJob:
    registry = Registry(settings.models_dir)
    sft = registry.aliases()["sft"]
    return MethodJob(
        settings=settings,
        registry=registry,
        policy=policy or sft,
        adapter=adapter,
        sft=sft,
        rm=registry.aliases().get("rm"),
        base=registry.aliases().get("base"),
        data=data,
        run_dir=run_dir,
    )


def test_registry_names_every_method_and_refuses_unknown_ones() -> None:
    assert sorted(METHODS) == ["dpo", "kto", "ppo"]
    for name in METHODS:
        method = get_method(name)
        assert method.name == name and callable(method.train)
        assert method.config(get_preset("micro")) is not None
    with pytest.raises(UnknownMethodError, match="choose from dpo, kto, ppo"):
        get_method("grpo")
    with pytest.raises(UnknownMethodError, match="'grpo'"):
        RetrainConfig(method="grpo")
    with pytest.raises(Exception, match="no setting"):
        get_method("dpo").config(get_preset("micro"), betta=0.2)
    nested = get_method("ppo").config(get_preset("micro"), **{"ppo.steps": 7, "rm.max_steps": 3})
    assert (nested.ppo.steps, nested.rm.max_steps) == (7, 3)


def test_unknown_method_on_the_cli_is_one_line_naming_the_choices(settings: Settings) -> None:
    result = CliRunner().invoke(
        app, ["--home", str(settings.home), "retrain", "run", "--method", "grpo"]
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "grpo" in lines[0] and "dpo, kto, ppo" in lines[0]
    assert "Traceback" not in result.output


def test_kto_weights_balance_the_classes() -> None:
    assert class_weights([True] * 10 + [False] * 30, balance=True) == (3.0, 1.0)
    assert class_weights([True] * 30 + [False] * 10, balance=True) == (1.0, 3.0)
    assert class_weights([True] * 5, balance=True) == (1.0, 1.0)
    assert class_weights([True] * 10 + [False] * 30, balance=False) == (1.0, 1.0)


@pytest.mark.slow  # trains
def test_dpo_raises_a_toy_preference_on_unseen_prompts(
    micro_copy: Settings, tmp_path: Path
) -> None:
    prompts = toy_prompts(micro_copy, 56)
    train, held_out = prompts[:48], prompts[48:]
    pairs = [
        {"id": f"p{i}", "prompt": p, "chosen": WARM, "rejected": CURT} for i, p in enumerate(train)
    ]
    data = PreferenceData(pairs=write(tmp_path / "train.json", pairs))
    the_job = job(micro_copy, data, tmp_path / "run")
    before = margin(the_job.registry.resolve(the_job.sft), held_out)
    config = DpoConfig(epochs=2, batch_size=8, learning_rate=1e-3, beta=0.1, max_length=128)
    result = get_method("dpo").train(the_job, config)
    after = margin(the_job.registry.path(result.policy), held_out)
    assert after - before > 2.0, (before, after)
    manifest = the_job.registry.manifest(result.policy)
    assert manifest.config["reference"] == the_job.sft and manifest.metrics["pairs"] == 48


@pytest.mark.slow  # trains
def test_kto_raises_a_toy_preference_from_single_thumbs(
    micro_copy: Settings, tmp_path: Path
) -> None:
    prompts = toy_prompts(micro_copy, 56)
    train, held_out = prompts[:48], prompts[48:]
    # No pairs at all: half the prompts got a 👍 on the warm answer, the others a 👎 on the curt one.
    rows = [
        {"id": f"u{i}", "prompt": p, "completion": WARM if i % 2 else CURT, "label": bool(i % 2)}
        for i, p in enumerate(train)
    ]
    data = PreferenceData(unpaired=write(tmp_path / "unpaired.json", rows))
    the_job = job(micro_copy, data, tmp_path / "run")
    before = margin(the_job.registry.resolve(the_job.sft), held_out)
    config = KtoConfig(epochs=2, batch_size=8, learning_rate=1e-3, beta=0.1, max_length=128)
    result = get_method("kto").train(the_job, config)
    after = margin(the_job.registry.path(result.policy), held_out)
    assert after - before > 2.0, (before, after)
    metrics = the_job.registry.manifest(result.policy).metrics
    assert (metrics["desirable"], metrics["undesirable"]) == (24, 24)


# ---- nightly LoRA adapters (micro Llama) ------------------------------------------------------
def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.slow  # trains
def test_a_night_of_adapters_learns_goes_on_and_merges(
    micro_llama_copy: Settings, tmp_path: Path
) -> None:
    settings = micro_llama_copy
    registry = Registry(settings.models_dir)
    sft = registry.aliases()["sft"]
    prompts = toy_prompts(settings, 56)
    train, held_out = prompts[:48], prompts[48:]
    rows = [
        {"id": f"u{i}", "prompt": p, "completion": WARM if i % 2 else CURT, "label": bool(i % 2)}
        for i, p in enumerate(train)
    ]
    data = PreferenceData(unpaired=write(tmp_path / "unpaired.json", rows))
    config = KtoConfig(epochs=2, batch_size=8, learning_rate=5e-3, beta=0.1, max_length=128)
    before = margin(registry.path(sft), held_out)

    first = get_method("kto").train(job(settings, data, tmp_path / "n1", adapter=True), config)
    night1 = registry.manifest(first.policy)
    path1 = registry.path(first.policy)
    # A standard PEFT directory over the SFT version, nothing else of the model copied.
    assert night1.base == sft and night1.parents[0] == sft
    assert night1.config["format"] == "lora" and night1.config["reference"] == sft
    assert {ADAPTER_CONFIG, ADAPTER_WEIGHTS} <= set(night1.files)
    assert not any(name.startswith("model") for name in night1.files)
    assert json.loads((path1 / ADAPTER_CONFIG).read_text())["base_model_name_or_path"] == sft
    assert size(path1) < size(registry.path(sft)) / 2
    after1 = margin(path1, held_out)
    assert after1 - before > 1.0, (before, after1)

    # The next night starts from the adapter and registers one adapter over the same base.
    registry.set_alias("rlhf", first.policy)
    night2_job = job(settings, data, tmp_path / "n2", adapter=True, policy=first.policy)
    second = get_method("kto").train(night2_job, config)
    night2 = registry.manifest(second.policy)
    assert night2.base == sft and night2.config["init"] == first.policy
    assert margin(registry.path(second.policy), held_out) > after1 - 0.5

    # `models merge` writes the full checkpoint: the same logits as base + adapter.
    result = CliRunner().invoke(app, ["--home", str(settings.home), "models", "merge", "rlhf"])
    assert result.exit_code == 0, result.output
    merged = next(m for m in registry.versions() if m.config.get("merged_from") == first.policy)
    assert merged.base is None and merged.parents == [first.policy, sft]
    ids = torch.tensor([[5, 17, 99, 3, 42]])
    adapter_model, _ = load_causal_lm(path1)
    full_model, _ = load_causal_lm(registry.path(merged.version))
    with torch.no_grad():
        assert torch.allclose(adapter_model(ids).logits, full_model(ids).logits, atol=1e-5)
    with pytest.raises(NotAdapterError, match="full checkpoint already"):
        merge_adapter(registry, merged.version)

    # gc: with no alias on the SFT version any more, it stays as the base of kept adapters.
    registry.set_alias("rlhf", second.policy)
    for alias in ("sft", "base"):
        registry.remove_alias(alias)
    plan = plan_gc(registry, keep=0, min_age_s=0)
    assert sft in plan.keep and sft not in {m.version for m in plan.remove}


def test_auto_trains_adapters_above_a_billion_parameters(micro_llama_settings: Settings) -> None:
    registry = Registry(micro_llama_settings.models_dir)
    sft = registry.path(registry.aliases()["sft"])
    assert 0 < model_params(sft) < 1_000_000
    assert not wants_adapter("auto", sft)  # a few MB: a full copy costs less
    assert wants_adapter("lora", sft) and not wants_adapter("full", sft)
