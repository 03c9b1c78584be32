"""Each preference method is one module with its config beside it: PPO's optimiser settings are
config fields with checks, the registry finds every method there, one function registers every
trained model, and DPO and KTO refuse too little data on their shared path before loading."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch

from kindchat.config import Settings
from kindchat.models.presets import get_preset
from kindchat.models.registry import Registry
from kindchat.retrain import ppo
from kindchat.retrain.common import register_model
from kindchat.retrain.errors import RetrainError
from kindchat.retrain.methods import METHODS, MethodJob, PreferenceData, get_method
from kindchat.retrain.ppo import PpoConfig, PpoMethodConfig, Trainable, ppo_config


def test_ppo_is_found_by_name_in_its_own_module() -> None:
    method = get_method("ppo")
    assert METHODS["ppo"] == "kindchat.retrain.ppo:METHOD" and method is ppo.METHOD
    assert method.config_type is PpoMethodConfig
    config = method.config(get_preset("micro"), **{"ppo.adam_beta2": 0.99, "rm_gate_margin": 0.1})
    assert (config.ppo.adam_beta2, config.rm_gate_margin) == (0.99, 0.1)
    assert config.ppo.steps == get_preset("micro").ppo.steps  # the preset's budget underneath


def test_the_optimiser_is_built_from_the_config() -> None:
    config = PpoConfig(
        adam_beta1=0.8, adam_beta2=0.9, adam_epsilon=1e-6, weight_decay=0.01, max_grad_norm=0.5
    )
    trainable = Trainable(torch.nn.Linear(3, 1), 2e-3, config, None)  # type: ignore[arg-type]
    [group] = trainable.optimizer.param_groups
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (
        2e-3,
        (0.8, 0.9),
        1e-6,
        0.01,
    )
    assert trainable.max_grad_norm == 0.5


def test_a_step_clips_the_gradient_to_max_grad_norm() -> None:
    model = torch.nn.Linear(4, 1, bias=False)
    trainable = Trainable(model, 1e-3, PpoConfig(max_grad_norm=0.5), None)  # type: ignore[arg-type]
    norms: list[float] = []
    trainable.optimizer.step = lambda: norms.append(float(model.weight.grad.norm()))  # type: ignore[method-assign, union-attr]
    trainable.step(model(torch.full((1, 4), 100.0)).sum())  # raw gradient norm: 200
    assert norms == [pytest.approx(0.5)]
    assert model.weight.grad is None  # zeroed for the next step


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("adam_beta1", 1.0, "adam_beta1 must lie in"),
        ("adam_beta2", -0.1, "adam_beta2 must lie in"),
        ("adam_epsilon", 0.0, "adam_epsilon must be > 0"),
        ("weight_decay", -1e-3, "weight_decay must be >= 0"),
        ("max_grad_norm", 0.0, "max_grad_norm must be > 0"),
        ("actor_lr", 0.0, "actor_lr must be > 0"),
        ("critic_lr", -1.0, "critic_lr must be > 0"),
        ("temperature", 0.0, "temperature must be > 0"),
        ("top_p", 1.5, "top_p must lie in"),
        ("max_prompt_tokens", 0, "max_prompt_tokens must be >= 1"),
        ("checkpoint_every", -1, "checkpoint_every must be >= 0"),
        ("max_prompts", 0, "max_prompts must be >= 1"),
    ],
)
def test_every_ppo_setting_is_checked(name: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PpoConfig(**{name: value})  # type: ignore[arg-type]


def test_method_config_checks() -> None:
    with pytest.raises(ValueError, match="rm_gate_margin"):
        PpoMethodConfig(rm_gate_margin=1.5)
    with pytest.raises(ValueError, match="rm_alias"):
        PpoMethodConfig(rm_alias=" ")


def test_preset_budget_and_older_run_configs() -> None:
    tiny = get_preset("tiny")
    config = ppo_config(tiny)
    assert (config.steps, config.actor_lr, config.max_new_tokens) == (
        tiny.ppo.steps,
        tiny.ppo.actor_lr,
        tiny.ppo.max_new_tokens,
    )
    assert config.max_prompt_tokens + config.max_new_tokens == tiny.seq_len
    # A run directory written before the optimiser fields existed resumes with their defaults.
    saved = json.loads(json.dumps(asdict(config), default=str))
    for name in ("adam_beta1", "adam_beta2", "adam_epsilon", "weight_decay"):
        del saved[name]
    restored = PpoConfig.from_json(saved)
    defaults = PpoConfig()
    assert all(
        getattr(restored, f.name) == getattr(defaults, f.name)
        for f in fields(PpoConfig)
        if f.name.startswith("adam") or f.name == "weight_decay"
    )
    assert restored.steps == config.steps


class _Saves:
    """Stands in for a model or tokenizer: `save_pretrained` writes one file."""

    def __init__(self, name: str) -> None:
        self.name = name

    def save_pretrained(self, path: Path) -> None:
        (Path(path) / self.name).write_text(self.name, encoding="utf-8")


def test_register_model_writes_once_with_clean_parents(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    log = tmp_path / "ppo_log.jsonl"
    log.write_text('{"step": 1}\n', encoding="utf-8")
    manifest = register_model(
        registry,
        "policy",
        _Saves("weights.bin"),  # type: ignore[arg-type]
        _Saves("tokenizer.json"),  # type: ignore[arg-type]
        parents=["sft-1", None, "rm-1", "sft-1"],
        config={"algorithm": "test"},
        metrics={"x": 1.0},
        data_fingerprint="abc",
        extra_files=[log],
    )
    assert manifest.parents == ["sft-1", "rm-1"]
    assert sorted(manifest.files) == ["ppo_log.jsonl", "tokenizer.json", "weights.bin"]
    assert (registry.path(manifest.version) / "ppo_log.jsonl").read_text() == '{"step": 1}\n'
    assert [m.version for m in registry.versions("policy")] == [manifest.version]


@pytest.mark.parametrize(("name", "needs"), [("dpo", "1 preference pairs"), ("kto", "8 examples")])
def test_too_little_data_is_refused_before_any_model_loads(
    settings: Settings, tmp_path: Path, name: str, needs: str
) -> None:
    pairs = tmp_path / "train.json"
    pairs.write_text("[]", encoding="utf-8")
    job = MethodJob(
        settings=settings,
        registry=Registry(tmp_path / "empty"),  # nothing to load: a load would fail otherwise
        policy="no-such-policy",
        sft="no-such-sft",
        rm=None,
        base=None,
        data=PreferenceData(pairs=pairs),
        run_dir=tmp_path / "run",
    )
    method = get_method(name)
    with pytest.raises(RetrainError, match=f"{name} needs at least {needs}.*has 0"):
        method.train(job, method.config(get_preset("micro"), batch_size=8))
