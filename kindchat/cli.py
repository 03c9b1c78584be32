"""The `kindchat` command line (typer). Flags override `KINDCHAT_*` environment settings."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kindchat.config import Settings
from kindchat.console import console, friendly
from kindchat.logs import setup_logging

logger = logging.getLogger("kindchat.cli")

app = typer.Typer(
    help="kindchat: a friendly, harmless Korean chat assistant improved by RLHF.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train one stage and register the result.", no_args_is_help=True)
models_app = typer.Typer(help="Inspect and manage registered model versions.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate reward models and policies.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option(help="State directory (KINDCHAT_HOME).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Seed data (KINDCHAT_DATA_DIR).")] = None,
) -> None:
    overrides = {k: v for k, v in {"home": home, "data_dir": data_dir}.items() if v is not None}
    settings = Settings(**overrides)
    settings.ensure_dirs()
    setup_logging(settings.logs_dir, settings.log_level)
    ctx.obj = settings


def _registry(settings: Settings) -> Any:
    from kindchat.models.registry import Registry

    return Registry.for_settings(settings)


@app.command()
@friendly
def bootstrap(
    ctx: typer.Context,
    preset: Annotated[
        str,
        typer.Option(
            help="micro (tests, <1 min) or tiny (demo); micro-llama and tiny-llama: Llama family."
        ),
    ] = "tiny",
    if_missing: Annotated[bool, typer.Option(help="Do nothing if an `rlhf` alias exists.")] = False,
    until: Annotated[str, typer.Option(help="Last stage: base|sft|rm|gold-rm|ppo|eval.")] = "eval",
) -> None:
    """Train the embedded models from the seed data: tokenizer, base LM, SFT, RM, gold RM, PPO."""
    from kindchat.models.presets import get_preset
    from kindchat.retrain.bootstrap import run_bootstrap

    settings: Settings = ctx.obj
    chosen = get_preset(preset)
    if if_missing and "rlhf" in _registry(settings).aliases():
        console.print("models already bootstrapped (alias `rlhf` exists); nothing to do")
        return
    report = run_bootstrap(settings, chosen, until=until)
    table = Table(title=f"bootstrap ({report.preset}) in {report.total_seconds:.0f} s")
    for column in ("stage", "version", "seconds"):
        table.add_column(column)
    for name, version in report.versions.items():
        table.add_row(name, version, f"{report.seconds[name]:.0f}")
    console.print(table)


@train_app.command("sft")
@friendly
def train_sft_command(
    ctx: typer.Context,
    base: Annotated[str, typer.Option(help="Base LM: alias, version id or directory.")] = "base",
    epochs: float = 1.0,
    max_steps: Annotated[int, typer.Option(help="Optimiser steps; -1 runs --epochs.")] = -1,
    batch_size: int = 8,
    learning_rate: float = 5e-4,
    max_length: int = 256,
    max_records: Annotated[int | None, typer.Option(help="Train on a slice.")] = None,
    full_loss: Annotated[bool, typer.Option(help="Loss on prompt tokens too.")] = False,
    include_eval_prompts: Annotated[
        bool, typer.Option(help="Do not hold out rm/*_test prompts.")
    ] = False,
    lora: Annotated[bool, typer.Option(help="Train LoRA adapters (merged on save).")] = False,
    lora_r: int = 8,
    deepspeed: Annotated[Path | None, typer.Option(help="DeepSpeed JSON config.")] = None,
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new version.")] = None,
) -> None:
    """Supervised fine-tuning on the seed SFT data in the KULLM template."""
    from kindchat.retrain.common import LoraOptions
    from kindchat.retrain.sft import SftConfig
    from kindchat.retrain.stages import train_sft

    settings: Settings = ctx.obj
    config = SftConfig(
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        max_length=max_length,
        max_records=max_records,
        completion_only_loss=not full_loss,
        exclude_eval_prompts=not include_eval_prompts,
        lora=LoraOptions(enabled=lora, r=lora_r),
        deepspeed=deepspeed,
    )
    registry = _registry(settings)
    manifest = train_sft(settings, registry, base, config)
    if alias:
        registry.set_alias(alias, manifest.version)
    console.print(
        f"registered {manifest.version}: held-out perplexity "
        f"{manifest.metrics['heldout_ppl_before']:.2f} -> {manifest.metrics['heldout_ppl']:.2f}"
    )


@train_app.command("rm")
@friendly
def train_rm_command(
    ctx: typer.Context,
    init: Annotated[
        str, typer.Option(help="LM (or RM) to start from: alias, version, dir.")
    ] = "base",
    epochs: float = 1.0,
    max_steps: Annotated[int, typer.Option(help="Optimiser steps; -1 runs --epochs.")] = -1,
    batch_size: int = 8,
    learning_rate: float = 1e-4,
    max_length: int = 256,
    max_records: Annotated[int | None, typer.Option(help="Train on a slice.")] = None,
    extra_data: Annotated[list[Path] | None, typer.Option(help="More pair files (export).")] = None,
    gold: Annotated[
        bool, typer.Option(help="Also learn from all G-Eval pairs (the judge).")
    ] = False,
    lora: bool = False,
    deepspeed: Annotated[Path | None, typer.Option(help="DeepSpeed JSON config.")] = None,
    seed: int = 0,
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new version.")] = None,
) -> None:
    """Pairwise reward model (TRL RewardTrainer) on the seed RM data; evaluated and registered."""
    from kindchat.retrain.common import LoraOptions
    from kindchat.retrain.reward import RmConfig
    from kindchat.retrain.stages import train_rm

    settings: Settings = ctx.obj
    config = RmConfig(
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        max_length=max_length,
        max_records=max_records,
        extra_data=list(extra_data or []),
        lora=LoraOptions(enabled=lora),
        deepspeed=deepspeed,
        seed=seed,
    )
    registry = _registry(settings)
    manifest = train_rm(settings, registry, init, config, gold=gold)
    if alias:
        registry.set_alias(alias, manifest.version)
    console.print(f"registered {manifest.version}: accuracy {manifest.metrics['accuracy']:.3f}")


@train_app.command("ppo")
@friendly
def train_ppo_command(
    ctx: typer.Context,
    sft: Annotated[str, typer.Option(help="Actor and reference init.")] = "sft",
    rm: Annotated[str, typer.Option(help="Reward model (and critic init).")] = "rm",
    # Defaults: the tiny preset's PPO budget (models/presets.py); KULLM-size actors want ~1e-5.
    steps: int = 100,
    batch_size: int = 16,
    mini_batch_size: int = 8,
    ppo_epochs: int = 1,
    max_new_tokens: int = 48,
    actor_lr: float = 1e-4,
    critic_lr: float = 1e-4,
    kl_coef: float = 0.1,
    reward_clip: float = 5.0,
    ema: Annotated[
        float | None, typer.Option(help="Keep an EMA of the actor (e.g. 0.992).")
    ] = None,
    lora: Annotated[bool, typer.Option(help="LoRA on actor and critic.")] = False,
    deepspeed: Annotated[Path | None, typer.Option(help="DeepSpeed (ZeRO) JSON config.")] = None,
    checkpoint_every: int = 25,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory.")] = None,
    seed: int = 0,
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new policy.")] = None,
) -> None:
    """PPO as in DeepSpeed-Chat step 3; logs each step to ppo_log.jsonl; registers a policy."""
    from kindchat.retrain.common import LoraOptions
    from kindchat.retrain.ppo import PpoConfig
    from kindchat.retrain.stages import train_ppo

    settings: Settings = ctx.obj
    config = PpoConfig(
        steps=steps,
        batch_size=batch_size,
        mini_batch_size=mini_batch_size,
        ppo_epochs=ppo_epochs,
        max_new_tokens=max_new_tokens,
        actor_lr=actor_lr,
        critic_lr=critic_lr,
        kl_coef=kl_coef,
        reward_clip=reward_clip,
        ema_decay=ema,
        actor_lora=LoraOptions(enabled=lora),
        critic_lora=LoraOptions(enabled=lora),
        deepspeed=deepspeed,
        checkpoint_every=checkpoint_every,
        seed=seed,
    )
    registry = _registry(settings)
    manifest = train_ppo(settings, registry, sft, rm, config, resume=resume)
    if alias:
        registry.set_alias(alias, manifest.version)
    m = manifest.metrics
    console.print(
        f"registered {manifest.version}: reward {m['reward_start']:.3f} -> "
        f"{m['reward_end']:.3f}, KL {m['kl_end']:.3f} (run {m['run_dir']})"
    )


@train_app.command("dpo")
@friendly
def train_dpo_command(
    ctx: typer.Context,
    sft: Annotated[str, typer.Option(help="Policy init and frozen reference.")] = "sft",
    epochs: float = 1.0,
    max_steps: int = -1,
    batch_size: int = 8,
    learning_rate: float = 5e-5,
    beta: float = 0.1,
    max_length: int = 256,
    max_records: int | None = None,
    extra_data: Annotated[list[Path] | None, typer.Option(help="More pair files (export).")] = None,
    lora: bool = False,
    deepspeed: Annotated[Path | None, typer.Option(help="DeepSpeed JSON config.")] = None,
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new policy.")] = None,
) -> None:
    """DPO (TRL DPOTrainer) from the same pairwise data: the RM-free alternative to PPO."""
    from kindchat.retrain.common import LoraOptions
    from kindchat.retrain.dpo import DpoConfig
    from kindchat.retrain.stages import train_dpo

    settings: Settings = ctx.obj
    config = DpoConfig(
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        beta=beta,
        max_length=max_length,
        max_records=max_records,
        extra_data=list(extra_data or []),
        lora=LoraOptions(enabled=lora),
        deepspeed=deepspeed,
    )
    registry = _registry(settings)
    manifest = train_dpo(settings, registry, sft, config)
    if alias:
        registry.set_alias(alias, manifest.version)
    console.print(f"registered {manifest.version}: train loss {manifest.metrics['train_loss']:.3f}")


@train_app.command("kto")
@friendly
def train_kto_command(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Option(help="A `kindchat feedback export` directory (unpaired + pairs).")
    ],
    init: Annotated[str, typer.Option(help="The policy to start from.")] = "sft",
    reference: Annotated[str, typer.Option(help="The frozen reference (the anchor).")] = "sft",
    epochs: float = 1.0,
    max_steps: int = -1,
    batch_size: int = 8,
    learning_rate: float = 5e-5,
    beta: float = 0.1,
    max_length: int = 256,
    max_records: int | None = None,
    pairs: Annotated[bool, typer.Option(help="Also learn from the export's pairs.")] = True,
    lora: bool = False,
    deepspeed: Annotated[Path | None, typer.Option(help="DeepSpeed JSON config.")] = None,
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new policy.")] = None,
) -> None:
    """KTO (TRL KTOTrainer) from single 👍/👎 and pairs of a feedback export."""
    from kindchat.retrain.common import LoraOptions, new_run_dir
    from kindchat.retrain.kto import KtoConfig
    from kindchat.retrain.kto import train as train_kto
    from kindchat.retrain.methods import MethodJob, PreferenceData

    settings: Settings = ctx.obj
    if not (data / "unpaired.json").is_file() and not (data / "train.json").is_file():
        raise FileNotFoundError(
            f"{data} holds no unpaired.json or train.json; make it with `kindchat feedback export`"
        )
    config = KtoConfig(
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        beta=beta,
        max_length=max_length,
        use_pairs=pairs,
        max_records=max_records,
        lora=LoraOptions(enabled=lora),
        deepspeed=deepspeed,
    )
    registry = _registry(settings)
    job = MethodJob(
        settings=settings,
        registry=registry,
        policy=registry.version_of(init) or init,
        sft=registry.version_of(reference) or reference,
        rm=None,
        base=None,
        data=PreferenceData.from_export(data),
        run_dir=new_run_dir(settings.runs_dir, "kto"),
    )
    result = train_kto(job, config)
    if alias:
        registry.set_alias(alias, result.policy)
    m = result.metrics
    console.print(
        f"registered {result.policy}: train loss {m['train_loss']:.3f} on {m['desirable']} "
        f"desirable / {m['undesirable']} undesirable examples"
    )


@eval_app.command("rm")
@friendly
def eval_rm_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Reward model: alias, version or directory.")] = "rm",
    max_length: int = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Pairwise accuracy on the seed's held-out rm/*_test.json, per set, beside the seed's RM."""
    from kindchat.retrain.rm_eval import SEED_RM_ACCURACY
    from kindchat.retrain.stages import eval_rm

    settings: Settings = ctx.obj
    results = eval_rm(settings, _registry(settings), model, max_length)
    if as_json:
        console.print_json(json.dumps({r.name: r.as_dict() for r in results}))
        return
    table = Table(title=f"reward model {model}: pairwise accuracy on rm/*_test.json")
    for column in ("set", "n", "accuracy", "95% interval", "seed RM-1.3b", "chosen", "rejected"):
        table.add_column(column)
    for r in results:
        seed_acc = SEED_RM_ACCURACY.get(r.name)
        table.add_row(
            r.name,
            str(r.accuracy.n),
            f"{r.accuracy.value:.3f}",
            f"[{r.accuracy.low:.2f}, {r.accuracy.high:.2f}]",
            f"{seed_acc:.3f}" if seed_acc is not None else "",
            f"{r.chosen_mean:.3f}",
            f"{r.rejected_mean:.3f}",
        )
    console.print(table)


@eval_app.command("policy")
@friendly
def eval_policy_command(
    ctx: typer.Context,
    policy: Annotated[str, typer.Option(help="Policy A.")] = "rlhf",
    baseline: Annotated[str, typer.Option(help="Policy B.")] = "sft",
    judge: Annotated[str, typer.Option(help="Gold RM that PPO did not optimise.")] = "gold-rm",
    sft: Annotated[str, typer.Option(help="Reference for the KL estimate.")] = "sft",
    max_new_tokens: int = 64,
    temperature: float = 0.7,
    seed: int = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Win rate of A over B on the unseen rm/*_test.json prompts, judged by the gold RM."""
    from kindchat.retrain.policy_eval import PolicyEvalConfig
    from kindchat.retrain.stages import eval_policy

    settings: Settings = ctx.obj
    config = PolicyEvalConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    results = eval_policy(settings, _registry(settings), policy, baseline, judge, config, sft)
    if as_json:
        console.print_json(json.dumps({r.name: r.as_dict() for r in results}))
        return
    table = Table(title=f"{policy} vs {baseline}, judged by {judge}")
    for column in (
        "set",
        "n",
        "win rate",
        "95% interval",
        "reward A",
        "reward B",
        "KL(A||SFT)",
        "empty A/B",
        "repetitive A/B",
    ):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.name,
            str(r.win_rate.n),
            f"{r.win_rate.value:.3f}",
            f"[{r.win_rate.low:.2f}, {r.win_rate.high:.2f}]",
            f"{r.reward_a:.3f}",
            f"{r.reward_b:.3f}",
            f"{r.kl_a_sft:.2f}",
            f"{r.empty_a:.2f}/{r.empty_b:.2f}",
            f"{r.repetitive_a:.2f}/{r.repetitive_b:.2f}",
        )
    console.print(table)


def default_chat_model(settings: Settings) -> str:
    aliases = _registry(settings).aliases()
    return "rlhf" if "rlhf" in aliases else "sft"


@app.command()
@friendly
def generate(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="The user's message.")],
    model: Annotated[str | None, typer.Option(help="Alias, version id or directory.")] = None,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    top_p: float = 0.95,
    repetition_penalty: float = 1.1,
    seed: int | None = None,
) -> None:
    """Answer one prompt with a registered model and print the answer."""
    import torch
    from transformers.utils import logging as hf_logging

    from kindchat.models.generation import (
        SamplingParams,
        fit_to_context,
        generate_batch,
        max_prompt_tokens,
    )
    from kindchat.models.loading import load_causal_lm
    from kindchat.models.template import prompt_format

    hf_logging.disable_progress_bar()
    settings: Settings = ctx.obj
    if not prompt.strip():
        raise ValueError("the prompt is empty; pass some text to answer")
    params = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
    )
    path = _registry(settings).resolve(model or default_chat_model(settings))
    lm, tokenizer = load_causal_lm(path)
    if seed is not None:
        torch.manual_seed(seed)
    params = fit_to_context(lm, params)
    text = prompt_format(tokenizer).prompt(
        [{"role": "user", "content": prompt}],
        lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"]),
        max_prompt_tokens(lm, params.max_new_tokens),
    )
    console.print(generate_batch(lm, tokenizer, [text], params)[0].text, highlight=False)


@models_app.command("list")
@friendly
def models_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Versions (oldest first), the aliases pointing at them, and their key metrics."""
    settings: Settings = ctx.obj
    registry = _registry(settings)
    aliases = registry.aliases()
    by_version: dict[str, list[str]] = {}
    for name, version in aliases.items():
        by_version.setdefault(version, []).append(name)
    versions = registry.versions()
    if as_json:
        rows = [
            {**m.model_dump(exclude={"files", "config"}), "aliases": by_version.get(m.version, [])}
            for m in versions
        ]
        console.print_json(json.dumps(rows, ensure_ascii=False))
        return
    table = Table(title=f"models in {registry.root}")
    for column in ("version", "kind", "aliases", "parents", "key metrics", "created"):
        table.add_column(column)
    for m in versions:
        table.add_row(
            m.version,
            m.kind,
            ", ".join(sorted(by_version.get(m.version, []))),
            ", ".join(m.parents),
            format_metrics(m.metrics),
            m.created,
        )
    console.print(table)
    if not versions:
        console.print("no versions yet: run `kindchat bootstrap`")


@models_app.command("import")
@friendly
def models_import(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="A local Hugging Face checkpoint directory.")],
    kind: Annotated[str, typer.Option(help="sft, policy, base, or rm.")] = "sft",
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new version.")] = None,
) -> None:
    """Copy a local checkpoint into the registry, checked and with checksums.

    Afterwards it is served, retrained and compared in the arena like a bootstrapped model.
    """
    from kindchat.models.importer import IMPORT_KINDS, import_checkpoint

    if kind not in IMPORT_KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(IMPORT_KINDS)}")
    manifest = import_checkpoint(_registry(ctx.obj), source, kind, alias)  # type: ignore[arg-type]
    config = manifest.config
    console.print(
        f"imported {source} as {manifest.version} ({config['architecture']}, "
        f"{manifest.metrics['parameters'] / 1e6:.1f}M parameters, chat template: "
        f"{config['chat_template']})" + (f"; alias {alias} -> {manifest.version}" if alias else ""),
        highlight=False,
    )


@models_app.command("dummy")
@friendly
def models_dummy(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Directory to write the checkpoint to.")],
    preset: Annotated[str, typer.Option(help="Shape: micro-llama, tiny-llama, micro, tiny.")] = (
        "micro-llama"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Write a random-weight checkpoint shaped as a Llama-family release.

    It has its own SentencePiece tokenizer and chat template: for serving benchmarks and to try
    `models import`.
    """
    from kindchat.models.dummy import write_dummy_checkpoint
    from kindchat.models.presets import get_preset
    from kindchat.seed import corpus_texts

    settings: Settings = ctx.obj
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; choose a new directory")
    texts = corpus_texts(settings.data_dir)[:4000]
    write_dummy_checkpoint(out, get_preset(preset), texts, seed)
    console.print(f"wrote a random-weight {preset} checkpoint to {out}", highlight=False)


@models_app.command("gc")
@friendly
def models_gc(
    ctx: typer.Context,
    keep: Annotated[
        int, typer.Option(help="History entries per alias, and refused runs, to keep.")
    ] = 2,
    min_age_hours: Annotated[float, typer.Option(help="Never remove younger versions.")] = 1.0,
    dry_run: Annotated[bool, typer.Option(help="Only print what would be removed.")] = False,
) -> None:
    """Remove model versions nothing can reach: no alias, no recent history, no kept child.

    An alias target is never removed; nor are the versions of the last --keep refused retrain
    runs and of runs still in progress.
    """
    from kindchat.feedback import store
    from kindchat.feedback.db import init_db, session_scope
    from kindchat.models.gc import run_gc

    settings: Settings = ctx.obj
    protected: set[str] = set()
    with session_scope(init_db(settings)) as session:
        refused = store.list_runs(session=session, status="refused", limit=max(keep, 1))[:keep]
        live = [
            run
            for status in ("queued", "running", "challenging")
            for run in store.list_runs(session=session, status=status, limit=100)
        ]
    for run in [*refused, *live]:
        protected.update(run.produced_versions or [])
    plan = run_gc(
        _registry(settings), keep, protected, min_age_s=min_age_hours * 3600, dry_run=dry_run
    )
    verb = "would remove" if dry_run else "removed"
    for manifest in plan.remove:
        console.print(f"{verb} {manifest.version} ({manifest.kind}, {manifest.created})")
    console.print(
        f"{verb} {len(plan.remove)} versions, {plan.bytes_freed / 1e6:.1f} MB; "
        f"kept {len(plan.keep)}",
        highlight=False,
    )


KEY_METRICS = ("heldout_ppl_before", "heldout_ppl", "accuracy", "win_rate", "reward_mean", "kl")


def format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key in KEY_METRICS:
        value = metrics.get(key)
        if isinstance(value, int | float):
            parts.append(f"{key}={value:.3g}")
    return " ".join(parts)


def _register_subcommands() -> None:
    from kindchat.feedback.cli import register as register_feedback
    from kindchat.retrain.cli import register as register_retrain
    from kindchat.serve.cli import register as register_serve

    register_feedback(app)
    register_serve(app)
    register_retrain(app)


_register_subcommands()

if __name__ == "__main__":
    app()
