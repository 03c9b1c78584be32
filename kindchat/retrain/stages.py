"""Registered stages: tokenizer + base LM, SFT, reward models, PPO, DPO, and their evaluations.

Each training stage registers a version and returns its manifest.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from kindchat.config import Settings
from kindchat.models.loading import load_causal_lm, load_reward_model
from kindchat.models.presets import Preset
from kindchat.models.registry import Manifest, Registry
from kindchat.models.tokenizer import load_tokenizer, train_tokenizer
from kindchat.retrain.common import config_dict, new_run_dir, register_once, writer
from kindchat.retrain.data import (
    base_corpus,
    load_sft_split,
    prompt_completion_dataset,
    without_eval_prompts,
)
from kindchat.retrain.dpo import DpoConfig, train_dpo_model
from kindchat.retrain.evaluate import response_perplexity
from kindchat.retrain.policy_eval import (
    PolicyEvalConfig,
    PolicySetResult,
    eval_metrics,
    evaluate_policies,
)
from kindchat.retrain.ppo import (
    LOG_FILE,
    PpoConfig,
    PpoTrainer,
    build_rlhf_models,
    read_log,
    summarize,
)
from kindchat.retrain.reward import RmConfig, reward_model_from_lm, train_reward_model
from kindchat.retrain.rm_eval import RmSetResult, accuracy_metrics, evaluate_reward_model
from kindchat.retrain.sft import SftConfig, train_causal_lm
from kindchat.seed import (
    GevalRecord,
    RmPair,
    eval_prompt_keys,
    fingerprint,
    normalize_prompt,
    read_geval,
    read_ppo_prompts,
    read_rm,
    read_rm_file,
)

logger = logging.getLogger(__name__)


def train_base(settings: Settings, registry: Registry, preset: Preset) -> Manifest:
    """Train the BPE tokenizer and a base LM of the preset's architecture on the seed text."""
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
    model = AutoModelForCausalLM.from_config(model_config)
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

    return register_once(
        lambda: registry.save(
            "base",
            writer(model, tokenizer),
            config={
                "preset": preset.name,
                "architecture": preset.architecture,
                "stage": config_dict(config),
            },
            metrics=metrics,
            data_fingerprint=fingerprint(texts),
        )
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
        model, tokenizer, prompt_completion_dataset(split.train, tokenizer), config, run_dir, "sft"
    )
    ppl_after = response_perplexity(model, tokenizer, split.heldout, config.max_length)
    metrics.update(
        heldout_ppl_before=ppl_before, heldout_ppl=ppl_after, train_records=len(split.train)
    )
    logger.info("sft: held-out perplexity %.2f -> %.2f", ppl_before, ppl_after)
    parent = registry.version_of(base_ref)

    return register_once(
        lambda: registry.save(
            "sft",
            writer(model, tokenizer),
            parents=[parent] if parent else [],
            config={"stage": config_dict(config), "base": str(base_ref)},
            metrics=metrics,
            data_fingerprint=fingerprint(split.train),
        )
    )


def rm_training_pairs(settings: Settings, config: RmConfig, gold: bool = False) -> list[RmPair]:
    """Seed RM train pairs (unless `seed_data` is off) + extra pair files, evaluation prompts left
    out, deduplicated (same context, prompt and answers).

    The gold RM (the judge of policy evaluation) also sees every complete G-Eval pair of the seed
    whose sums differ, the raw material the seed's RM data was filtered from.
    """
    pairs = read_rm(settings.data_dir, "train") if config.seed_data else []
    for path in config.extra_data:
        pairs.extend(read_rm_file(path))
    if gold:
        pairs.extend(geval_pairs(read_geval(settings.data_dir)))
    if config.exclude_eval_prompts:
        pairs = without_eval_prompts(pairs, settings.data_dir)
    seen: set[tuple[str, str, str, str]] = set()
    unique = []
    for p in pairs:
        key = (
            json.dumps(p.context, ensure_ascii=False),
            normalize_prompt(p.prompt),
            p.chosen.strip(),
            p.rejected.strip(),
        )
        if key not in seen and p.chosen.strip() != p.rejected.strip():
            seen.add(key)
            unique.append(p)
    if config.max_records is not None:
        unique = unique[:: max(1, len(unique) // config.max_records)][: config.max_records]
    return unique


def geval_pairs(records: list[GevalRecord]) -> list[RmPair]:
    """G-Eval rows as pairs: the answer with the higher score sum is chosen; ties are dropped."""
    out = []
    for g in records:
        if not g.complete or g.sum1 == g.sum2:
            continue
        first_wins = g.sum1 > g.sum2
        out.append(
            RmPair(
                id=f"geval:{g.id}",
                prompt=g.prompt,
                chosen=g.response1 if first_wins else g.response2,
                rejected=g.response2 if first_wins else g.response1,
                subset=g.subset,
            )
        )
    return out


def train_rm(
    settings: Settings, registry: Registry, init_ref: str, config: RmConfig, gold: bool = False
) -> Manifest:
    """Train a reward model from an LM (or an earlier RM), evaluate it, register it as `rm`."""
    init_dir = registry.resolve(init_ref)
    tokenizer = load_tokenizer(init_dir)
    model = reward_model_from_lm(init_dir, tokenizer.pad_token_id)
    pairs = rm_training_pairs(settings, config, gold=gold)
    logger.info("%s: %d training pairs", "gold rm" if gold else "rm", len(pairs))
    run_dir = new_run_dir(settings.runs_dir, "gold-rm" if gold else "rm")
    model, metrics = train_reward_model(model, tokenizer, pairs, config, run_dir)
    results = evaluate_reward_model(
        model, tokenizer, read_rm(settings.data_dir, "test"), config.max_length
    )
    metrics.update(accuracy_metrics(results), train_pairs=len(pairs), gold=gold)
    logger.info("rm accuracy on held-out pairs: %.3f", metrics["accuracy"])
    parent = registry.version_of(init_ref)

    return register_once(
        lambda: registry.save(
            "rm",
            writer(model, tokenizer),
            parents=[parent] if parent else [],
            config={"stage": config_dict(config), "init": init_ref, "gold": gold},
            metrics=metrics,
            data_fingerprint=fingerprint(pairs),
        )
    )


def ppo_prompts(settings: Settings, config: PpoConfig, extra: list[str] | None = None) -> list[str]:
    """Seed step-3 prompts (+ live prompts), evaluation prompts left out, deduplicated."""
    prompts = [p.prompt for p in read_ppo_prompts(settings.data_dir)] + list(extra or [])
    keys = eval_prompt_keys(settings.data_dir) if config.exclude_eval_prompts else frozenset()
    seen: set[str] = set()
    out = []
    for prompt in prompts:
        key = normalize_prompt(prompt)
        if key and key not in keys and key not in seen:
            seen.add(key)
            out.append(prompt)
    if config.max_prompts is not None:
        out = out[: config.max_prompts]
    return out


def train_ppo(
    settings: Settings,
    registry: Registry,
    sft_ref: str,
    rm_ref: str,
    config: PpoConfig,
    resume: Path | None = None,
    extra_prompts: list[str] | None = None,
    run_dir: Path | None = None,
    reference_ref: str | None = None,
) -> Manifest:
    """PPO of the SFT model against the RM (DeepSpeed-Chat step 3); register a `policy`.

    With `resume`, the run in that directory continues from its last checkpoint with its own
    config (the `config` argument is then ignored). `run_dir` names a new run's directory.
    `reference_ref` is the KL anchor when the actor starts elsewhere than SFT (a night's PPO
    starts from the serving policy and stays anchored to SFT).
    """
    if resume is not None:
        saved = resume / "config.json"
        if not saved.is_file():
            raise FileNotFoundError(f"{resume} is not a PPO run directory (no config.json)")
        config = PpoConfig.from_json(json.loads(saved.read_text(encoding="utf-8")))
    torch.manual_seed(config.seed)
    sft_dir, rm_dir = registry.resolve(sft_ref), registry.resolve(rm_ref)
    prompts = ppo_prompts(settings, config, extra_prompts)
    logger.info("ppo: %d prompts, %d steps of %d", len(prompts), config.steps, config.batch_size)
    reference_dir = registry.resolve(reference_ref) if reference_ref else None
    models = build_rlhf_models(sft_dir, rm_dir, config, reference_dir)
    run_dir = resume or run_dir or new_run_dir(settings.runs_dir, "ppo")
    trainer = PpoTrainer(models, prompts, config, run_dir)
    if resume is not None:
        trainer.load_checkpoint()
    trainer.train()
    metrics = summarize(read_log(run_dir))
    metrics["run_dir"] = str(run_dir)
    actor = trainer.final_actor()
    tokenizer = models.tokenizer
    refs = (sft_ref, rm_ref, reference_ref) if reference_ref else (sft_ref, rm_ref)
    parents = list(dict.fromkeys(v for v in map(registry.version_of, refs) if v))

    def write(path: Path) -> None:
        writer(actor, tokenizer)(path)
        shutil.copy(run_dir / LOG_FILE, path / LOG_FILE)

    return register_once(
        lambda: registry.save(
            "policy",
            write,
            parents=parents,
            config={
                "stage": config_dict(config),
                "algorithm": "ppo",
                "sft": sft_ref,
                "rm": rm_ref,
                "reference": reference_ref or sft_ref,
            },
            metrics=metrics,
            data_fingerprint=fingerprint(prompts),
        )
    )


def train_dpo(settings: Settings, registry: Registry, sft_ref: str, config: DpoConfig) -> Manifest:
    """DPO of the SFT model (also the frozen reference) on the RM's pairs; register a `policy`."""
    sft_dir = registry.resolve(sft_ref)
    model, tokenizer = load_causal_lm(sft_dir)
    reference, _ = load_causal_lm(sft_dir)
    model.train()
    rm_like = RmConfig(
        exclude_eval_prompts=config.exclude_eval_prompts,
        max_records=config.max_records,
        extra_data=config.extra_data,
    )
    pairs = rm_training_pairs(settings, rm_like)
    logger.info("dpo: %d pairs", len(pairs))
    run_dir = new_run_dir(settings.runs_dir, "dpo")
    model, metrics = train_dpo_model(model, reference, tokenizer, pairs, config, run_dir)
    parent = registry.version_of(sft_ref)

    return register_once(
        lambda: registry.save(
            "policy",
            writer(model, tokenizer),
            parents=[parent] if parent else [],
            config={"stage": config_dict(config), "algorithm": "dpo", "sft": sft_ref},
            metrics=metrics,
            data_fingerprint=fingerprint(pairs),
        )
    )


def eval_rm(
    settings: Settings, registry: Registry, rm_ref: str, max_length: int
) -> list[RmSetResult]:
    """Pairwise accuracy on `rm/*_test.json`; stored in the version's manifest when registered."""
    model, tokenizer = load_reward_model(registry.resolve(rm_ref))
    results = evaluate_reward_model(
        model, tokenizer, read_rm(settings.data_dir, "test"), max_length
    )
    version = registry.version_of(rm_ref)
    if version:
        registry.update_metrics(version, accuracy_metrics(results))
    return results


def eval_policy(
    settings: Settings,
    registry: Registry,
    policy_ref: str,
    baseline_ref: str,
    gold_ref: str,
    config: PolicyEvalConfig,
    sft_ref: str = "sft",
) -> list[PolicySetResult]:
    """Win rate of a policy over a baseline on the unseen `rm/*_test.json` prompts, gold-judged."""
    pairs = read_rm(settings.data_dir, "test")
    results = evaluate_policies(
        registry.resolve(policy_ref),
        registry.resolve(baseline_ref),
        registry.resolve(gold_ref),
        registry.resolve(sft_ref),
        pairs,
        config,
    )
    version = registry.version_of(policy_ref)
    if version:
        baseline = registry.version_of(baseline_ref) or baseline_ref
        gold = registry.version_of(gold_ref) or gold_ref
        registry.update_metrics(version, eval_metrics(results, baseline, gold))
    return results
