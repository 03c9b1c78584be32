"""Reward model and PPO on micro models against a toy preference that is known in advance.

The toy preference: an answer that contains a full stop "." beats the same answer without it.
A real RM (TRL RewardTrainer) learns it from synthetic pairs; PPO must then make the policy
produce more full stops and raise the RM's mean score.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kindchat.config import Settings
from kindchat.models.generation import SamplingParams, generate_batch
from kindchat.models.loading import load_causal_lm, load_reward_model
from kindchat.models.registry import Registry
from kindchat.models.template import kullm_prompt
from kindchat.retrain.common import new_run_dir
from kindchat.retrain.ppo import PpoConfig, train_ppo
from kindchat.retrain.ppo_log import LOG_FILE, read_log
from kindchat.retrain.reward import RmConfig, reward_model_from_lm, score_texts, train_reward_model
from kindchat.seed import RmPair, read_ppo_prompts, read_sft


def toy_pairs(settings: Settings) -> list[RmPair]:
    """(answer with its full stops, the same answer without them) for SFT answers with a '.'."""
    pairs = []
    for rec in read_sft(settings.data_dir, ["hatespeech"]):
        text = rec.output[:60]
        if "." in text:
            pairs.append(
                RmPair(
                    id=rec.id,
                    prompt=rec.instruction,
                    chosen=text,
                    rejected=text.replace(".", ""),
                    subset="toy",
                )
            )
    return pairs


@dataclass(frozen=True)
class Toy:
    settings: Settings
    rm_version: str
    rm_metrics: dict[str, float]


@pytest.fixture(scope="module")
def toy(micro_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Toy:
    """A copy of the micro registry plus an RM trained on the toy preference."""
    import shutil

    home = tmp_path_factory.mktemp("toy") / "home"
    shutil.copytree(micro_settings.home, home, ignore=shutil.ignore_patterns("logs", "runs"))
    settings = Settings(home=home, data_dir=micro_settings.data_dir)
    settings.ensure_dirs()
    registry = Registry(settings.models_dir)
    pairs = toy_pairs(settings)
    train, test = pairs[:-40], pairs[-40:]
    base_dir = registry.resolve("base")
    _, tokenizer = load_causal_lm(base_dir)
    torch.manual_seed(0)  # the RM's fresh head: the same toy RM every run
    rm = reward_model_from_lm(base_dir, tokenizer.pad_token_id)
    config = RmConfig(max_steps=100, batch_size=8, learning_rate=3e-3, max_length=128)
    rm, metrics = train_reward_model(
        rm, tokenizer, train, config, new_run_dir(settings.runs_dir, "rm")
    )
    chosen = score_texts(rm, tokenizer, [p.prompt for p in test], [p.chosen for p in test], 128)
    rejected = score_texts(rm, tokenizer, [p.prompt for p in test], [p.rejected for p in test], 128)
    accuracy = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(test)

    def write(path: Path) -> None:
        rm.save_pretrained(path)
        tokenizer.save_pretrained(path)

    manifest = registry.save("rm", write, metrics={"accuracy": accuracy, **metrics})
    return Toy(settings, manifest.version, {"accuracy": accuracy, **metrics})


@pytest.mark.slow  # trains
def test_reward_model_learns_the_preference(toy: Toy) -> None:
    assert toy.rm_metrics["accuracy"] >= 0.8  # held-out pairs; chance is 0.5
    assert toy.rm_metrics["train_loss"] < 0.6931  # below the loss of a constant RM (log 2)


SAMPLES = 256  # answers before and after PPO, one per unseen prompt (see the margins below)


def _full_stop_rate_and_reward(
    settings: Settings, policy_dir: Path, rm_version: str
) -> tuple[float, float]:
    registry = Registry(settings.models_dir)
    model, tokenizer = load_causal_lm(policy_dir)
    rm, _ = load_reward_model(registry.path(rm_version))
    prompts = [p.prompt for p in read_ppo_prompts(settings.data_dir)[1000 : 1000 + SAMPLES]]
    torch.manual_seed(123)
    gens = generate_batch(
        model,
        tokenizer,
        [kullm_prompt(p) for p in prompts],
        SamplingParams(max_new_tokens=24, temperature=1.0, top_p=1.0, repetition_penalty=1.0),
    )
    texts = [g.text for g in gens]
    scores = score_texts(rm, tokenizer, prompts, texts, 128)
    return sum("." in t for t in texts) / len(texts), sum(scores) / len(scores)


@pytest.mark.slow  # trains
def test_ppo_raises_reward_on_the_toy_preference(toy: Toy) -> None:
    registry = Registry(toy.settings.models_dir)
    config = PpoConfig(
        steps=20,
        batch_size=16,
        mini_batch_size=8,
        max_new_tokens=24,
        actor_lr=1e-3,
        critic_lr=2e-3,
        kl_coef=0.1,
        checkpoint_every=0,
    )
    manifest = train_ppo(toy.settings, registry, "sft", toy.rm_version, config)
    assert manifest.kind == "policy"
    assert manifest.parents == [registry.aliases()["sft"], toy.rm_version]
    log = read_log(Path(manifest.metrics["run_dir"]))
    assert [row["step"] for row in log] == list(range(1, 21))
    for row in log:
        for key in (
            "reward_mean",
            "kl",
            "policy_loss",
            "value_loss",
            "clip_fraction",
            "response_length",
            "entropy",
        ):
            assert torch.isfinite(torch.tensor(row[key])), (key, row)
    assert (registry.path(manifest.version) / LOG_FILE).is_file()
    rate_before, reward_before = _full_stop_rate_and_reward(
        toy.settings, registry.resolve("sft"), toy.rm_version
    )
    rate_after, reward_after = _full_stop_rate_and_reward(
        toy.settings, registry.path(manifest.version), toy.rm_version
    )
    # Margins, not a bare `>`: measured over PPO seeds 0-3 (8 sampling seeds each), the policy
    # goes from a full-stop rate of 0.40 to 0.90-0.99 and a mean RM score of 0.05 to 3.1-3.6.
    # On SAMPLES = 256 answers the standard error of each difference is ~0.036 (rate) and ~0.24
    # (score; per-answer SD 3.4 before, <= 1.8 after): the margins lie more than 8 standard
    # errors under the smallest gain measured, and more than 4 above the gain of a PPO that
    # learns nothing (0), so neither a lucky seed nor an unlucky one decides the outcome.
    assert rate_after >= rate_before + 0.2, (rate_before, rate_after)
    assert reward_after >= reward_before + 1.0, (reward_before, reward_after)


def _run_ppo_child(home: str, data_dir: str, rm_version: str, run_dir: str) -> None:
    settings = Settings(home=Path(home), data_dir=Path(data_dir))
    registry = Registry(settings.models_dir)
    config = PpoConfig(
        steps=50,
        batch_size=4,
        mini_batch_size=4,
        max_new_tokens=8,
        actor_lr=1e-4,
        critic_lr=1e-4,
        checkpoint_every=2,
    )
    train_ppo(settings, registry, "sft", rm_version, config, run_dir=Path(run_dir))


@pytest.mark.slow  # trains
def test_resume_after_kill(toy: Toy, tmp_path: Path) -> None:
    run_dir = tmp_path / "ppo-run"
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(
        target=_run_ppo_child,
        args=(str(toy.settings.home), str(toy.settings.data_dir), toy.rm_version, str(run_dir)),
    )
    child.start()
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "checkpoint" / "trainer.pt").is_file():
        time.sleep(0.2)
    assert (run_dir / "checkpoint" / "trainer.pt").is_file(), "no checkpoint was written"
    time.sleep(1.0)  # let it run past the checkpoint, so some log lines must be dropped on resume
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    registry = Registry(toy.settings.models_dir)
    policies_before = {m.version for m in registry.versions("policy")}
    # Shorten the run so the test stays fast: resume reads config.json from the run directory.
    config = json.loads((run_dir / "config.json").read_text())
    checkpoint_step = torch.load(run_dir / "checkpoint" / "trainer.pt", weights_only=True)["step"]
    config["steps"] = checkpoint_step + 2
    (run_dir / "config.json").write_text(json.dumps(config))
    manifest = train_ppo(toy.settings, registry, "sft", toy.rm_version, PpoConfig(), resume=run_dir)
    assert manifest.version not in policies_before
    steps = [row["step"] for row in read_log(run_dir)]
    assert steps == list(range(1, checkpoint_step + 3))  # each step once, none lost or repeated


@pytest.mark.slow  # trains
@pytest.mark.parametrize("stage", [0, 2])
def test_deepspeed_zero(toy: Toy, tmp_path: Path, stage: int) -> None:
    ds_config = tmp_path / "ds.json"
    ds_config.write_text(
        json.dumps({"zero_optimization": {"stage": stage}, "bf16": {"enabled": False}})
    )
    os.environ["MASTER_PORT"] = str(29600 + stage)
    registry = Registry(toy.settings.models_dir)
    config = PpoConfig(
        steps=2,
        batch_size=4,
        mini_batch_size=2,
        max_new_tokens=8,
        actor_lr=1e-4,
        critic_lr=1e-4,
        checkpoint_every=0,
        deepspeed=ds_config,
    )
    manifest = train_ppo(toy.settings, registry, "sft", toy.rm_version, config)
    log = read_log(Path(manifest.metrics["run_dir"]))
    assert [row["step"] for row in log] == [1, 2]
    assert all(torch.isfinite(torch.tensor(row["policy_loss"])) for row in log)
    before = load_causal_lm(registry.resolve("sft"))[0].state_dict()
    after = load_causal_lm(registry.path(manifest.version))[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="mini_batch_size"):
        PpoConfig(batch_size=8, mini_batch_size=3)
    with pytest.raises(ValueError, match="lam must lie"):
        PpoConfig(lam=1.5)
