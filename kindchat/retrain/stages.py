"""Registered stages: tokenizer + base LM, SFT, reward models, and the evaluations.

Each training stage registers a version (`common.register_model`) and returns its manifest.
The preference methods' stages live in their own modules: `ppo.train_ppo`, `dpo.train_dpo`.
"""

from __future__ import annotations

import json
import logging

from datasets import Dataset
from transformers import AutoModelForCausalLM, set_seed

from kindchat.config import Settings
from kindchat.models.loading import load_causal_lm, load_reward_model
from kindchat.models.presets import Preset
from kindchat.models.registry import Manifest, Registry
from kindchat.models.tokenizer import load_tokenizer, train_tokenizer
from kindchat.retrain.common import config_dict, new_run_dir, register_model
from kindchat.retrain.data import (
    base_corpus,
    load_sft_split,
    prompt_completion_dataset,
    without_eval_prompts,
)
from kindchat.retrain.evaluate import response_perplexity
from kindchat.retrain.policy_eval import (
    PolicyEvalConfig,
    PolicySetResult,
    eval_metrics,
    evaluate_policies,
)
from kindchat.retrain.reward import RmConfig, reward_model_from_lm, train_reward_model
from kindchat.retrain.rm_eval import RmSetResult, accuracy_metrics, evaluate_reward_model
from kindchat.retrain.sft import SftConfig, train_causal_lm
from kindchat.seed import (
    GevalRecord,
    RmPair,
    fingerprint,
    normalize_prompt,
    read_geval,
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
    set_seed(budget.seed)  # the initial weights too: one preset, one base model, every run
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

    return register_model(
        registry,
        "base",
        model,
        tokenizer,
        parents=[],
        config={
            "preset": preset.name,
            "architecture": preset.architecture,
            "stage": config_dict(config),
        },
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
        model, tokenizer, prompt_completion_dataset(split.train, tokenizer), config, run_dir, "sft"
    )
    ppl_after = response_perplexity(model, tokenizer, split.heldout, config.max_length)
    metrics.update(
        heldout_ppl_before=ppl_before, heldout_ppl=ppl_after, train_records=len(split.train)
    )
    logger.info("sft: held-out perplexity %.2f -> %.2f", ppl_before, ppl_after)
    return register_model(
        registry,
        "sft",
        model,
        tokenizer,
        parents=[registry.version_of(base_ref)],
        config={"stage": config_dict(config), "base": str(base_ref)},
        metrics=metrics,
        data_fingerprint=fingerprint(split.train),
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
    model = reward_model_from_lm(init_dir, tokenizer.pad_token_id, seed=config.seed)
    pairs = rm_training_pairs(settings, config, gold=gold)
    logger.info("%s: %d training pairs", "gold rm" if gold else "rm", len(pairs))
    run_dir = new_run_dir(settings.runs_dir, "gold-rm" if gold else "rm")
    model, metrics = train_reward_model(model, tokenizer, pairs, config, run_dir)
    results = evaluate_reward_model(
        model, tokenizer, read_rm(settings.data_dir, "test"), config.max_length
    )
    metrics.update(accuracy_metrics(results), train_pairs=len(pairs), gold=gold)
    logger.info("rm accuracy on held-out pairs: %.3f", metrics["accuracy"])
    return register_model(
        registry,
        "rm",
        model,
        tokenizer,
        parents=[registry.version_of(init_ref)],
        config={"stage": config_dict(config), "init": init_ref, "gold": gold},
        metrics=metrics,
        data_fingerprint=fingerprint(pairs),
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
