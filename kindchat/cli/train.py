"""`kindchat train sft|rm|ppo|dpo|kto` (one stage, one registered version) and `kindchat bootstrap`.

No numbers here: each stage's config dataclass (`SftConfig`, `RmConfig`, `PpoConfig`,
`DpoConfig`, `KtoConfig`) holds the defaults, and an option left out is not given (None), so
the config's default applies.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from kindchat.cli.common import console, friendly, given, negated, registry_of
from kindchat.config import Settings

if TYPE_CHECKING:
    from kindchat.retrain.bootstrap import BootstrapReport

logger = logging.getLogger(__name__)

app = typer.Typer(help="Train one stage and register the result.", no_args_is_help=True)


@friendly
def bootstrap(
    ctx: typer.Context,
    preset: Annotated[
        str,
        typer.Option(
            help="micro (tests, <1 min) or tiny (demo); micro-llama and tiny-llama: Llama family."
        ),
    ] = "tiny",
    if_missing: Annotated[
        bool, typer.Option(help="Do nothing if this preset finished, or an `rlhf` alias exists.")
    ] = False,
    until: Annotated[
        str | None, typer.Option(help="Last stage: base|sft|rm|gold-rm|ppo|eval (default: eval).")
    ] = None,
    resume: Annotated[
        bool | None,
        typer.Option(help="Skip the stages an interrupted run of this preset finished (default)."),
    ] = None,
    serve_sft_first: Annotated[
        bool | None, typer.Option(help="Point `rlhf` at the new SFT model as soon as it lands.")
    ] = None,
    first: Annotated[
        str | None,
        typer.Option(
            help="When no `rlhf` alias exists yet, first train this small preset's base and "
            "SFT (micro: ~20 s) and serve it, then the preset."
        ),
    ] = None,
    nice: Annotated[
        int | None,
        typer.Option(min=0, max=19, help="Lower this process's priority by N after --first."),
    ] = None,
) -> None:
    """Train the embedded models from the seed data: tokenizer, base LM, SFT, RM, gold RM, PPO."""
    from kindchat.models.presets import get_preset
    from kindchat.retrain.bootstrap import run_bootstrap
    from kindchat.retrain.bootstrap_state import lower_priority, read_state

    settings: Settings = ctx.obj
    chosen = get_preset(preset)
    starter = get_preset(first) if first else None
    state = read_state(settings, chosen.name)
    done = state is not None and state.status == "done"
    if if_missing and (done or (state is None and "rlhf" in registry_of(settings).aliases())):
        console.print(f"models already bootstrapped ({chosen.name}); nothing to do")
        return
    if starter is not None and "rlhf" not in registry_of(settings).aliases():
        # someone waits for an answer: the small models at full priority, served as they land
        # the lean loop: no TRL import nor trainer setup before the first answer (`lean`)
        print_report(run_bootstrap(settings, starter, "sft", serve_sft_first=True, trainer="torch"))
    if nice:
        lower_priority(nice)  # every thread: the first models' training started some
    report = run_bootstrap(
        settings,
        chosen,
        **given(until=until, resume=resume, serve_sft_first=serve_sft_first),
    )
    print_report(report)


def print_report(report: BootstrapReport) -> None:
    table = Table(title=f"bootstrap ({report.preset}) in {report.total_seconds:.0f} s")
    for column in ("stage", "version", "seconds"):
        table.add_column(column)
    for name, version in report.versions.items():
        table.add_row(name, version, f"{report.seconds[name]:.0f}")
    console.print(table)


@app.command("sft")
@friendly
def train_sft_command(
    ctx: typer.Context,
    base: Annotated[str, typer.Option(help="Base LM: alias, version id or directory.")] = "base",
    epochs: Annotated[float | None, typer.Option(help="Passes over the data.")] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Optimiser steps; -1 runs --epochs.")
    ] = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    max_length: int | None = None,
    max_records: Annotated[int | None, typer.Option(help="Train on a slice.")] = None,
    full_loss: Annotated[bool | None, typer.Option(help="Loss on prompt tokens too.")] = None,
    include_eval_prompts: Annotated[
        bool | None, typer.Option(help="Do not hold out rm/*_test prompts.")
    ] = None,
    lora: Annotated[bool | None, typer.Option(help="Train LoRA adapters (merged on save).")] = None,
    lora_r: int | None = None,
    deepspeed: Annotated[Path | None, typer.Option(help="DeepSpeed JSON config.")] = None,
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new version.")] = None,
) -> None:
    """Supervised fine-tuning on the seed SFT data in the KULLM template (defaults: SftConfig)."""
    from kindchat.retrain.common import LoraOptions
    from kindchat.retrain.sft import SftConfig, train_sft

    settings: Settings = ctx.obj
    config = SftConfig(
        **given(
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            max_length=max_length,
            max_records=max_records,
            completion_only_loss=negated(full_loss),
            exclude_eval_prompts=negated(include_eval_prompts),
            deepspeed=deepspeed,
        ),
        lora=LoraOptions(**given(enabled=lora, r=lora_r)),
    )
    registry = registry_of(settings)
    manifest = train_sft(settings, registry, base, config)
    if alias:
        registry.set_alias(alias, manifest.version)
    console.print(
        f"registered {manifest.version}: held-out perplexity "
        f"{manifest.metrics['heldout_ppl_before']:.2f} -> {manifest.metrics['heldout_ppl']:.2f}"
    )


@app.command("rm")
@friendly
def train_rm_command(
    ctx: typer.Context,
    init: Annotated[
        str, typer.Option(help="LM (or RM) to start from: alias, version, dir.")
    ] = "base",
    epochs: Annotated[float | None, typer.Option(help="Passes over the pairs.")] = None,
    max_steps: Annotated[
        int | None, typer.Option(help="Optimiser steps; -1 runs --epochs.")
    ] = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    max_length: int | None = None,
    max_records: Annotated[int | None, typer.Option(help="Train on a slice.")] = None,
    extra_data: Annotated[list[Path] | None, typer.Option(help="More pair files (export).")] = None,
    gold: Annotated[
        bool, typer.Option(help="Also learn from all G-Eval pairs (the judge).")
    ] = False,
    lora: bool | None = None,
    deepspeed: Annotated[Path | None, typer.Option(help="DeepSpeed JSON config.")] = None,
    seed: int | None = None,
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new version.")] = None,
) -> None:
    """Pairwise reward model (TRL RewardTrainer) on the seed RM data; evaluated and registered
    (defaults: RmConfig)."""
    from kindchat.retrain.common import LoraOptions
    from kindchat.retrain.reward import RmConfig
    from kindchat.retrain.stages import train_rm

    settings: Settings = ctx.obj
    config = RmConfig(
        **given(
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            max_length=max_length,
            max_records=max_records,
            extra_data=extra_data,
            deepspeed=deepspeed,
            seed=seed,
        ),
        lora=LoraOptions(**given(enabled=lora)),
    )
    registry = registry_of(settings)
    manifest = train_rm(settings, registry, init, config, gold=gold)
    if alias:
        registry.set_alias(alias, manifest.version)
    console.print(f"registered {manifest.version}: accuracy {manifest.metrics['accuracy']:.3f}")


@app.command("ppo")
@friendly
def train_ppo_command(
    ctx: typer.Context,
    sft: Annotated[str, typer.Option(help="Actor and reference init.")] = "sft",
    rm: Annotated[str, typer.Option(help="Reward model (and critic init).")] = "rm",
    preset: Annotated[
        str, typer.Option(help="Start from this preset's PPO budget (micro, tiny, …).")
    ] = "tiny",
    steps: int | None = None,
    batch_size: int | None = None,
    mini_batch_size: int | None = None,
    ppo_epochs: int | None = None,
    max_new_tokens: int | None = None,
    actor_lr: float | None = None,
    critic_lr: float | None = None,
    kl_coef: float | None = None,
    reward_clip: float | None = None,
    ema: Annotated[
        float | None, typer.Option(help="Keep an EMA of the actor (e.g. 0.992).")
    ] = None,
    lora: Annotated[bool | None, typer.Option(help="LoRA on actor and critic.")] = None,
    deepspeed: Annotated[Path | None, typer.Option(help="DeepSpeed (ZeRO) JSON config.")] = None,
    checkpoint_every: int | None = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this directory.")] = None,
    seed: int | None = None,
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new policy.")] = None,
) -> None:
    """PPO as in DeepSpeed-Chat step 3; logs each step to ppo_log.jsonl; registers a policy.

    PpoConfig holds the defaults, the preset's budget overrides some of them, and an option
    given here overrides both."""
    from kindchat.models.presets import get_preset
    from kindchat.retrain.common import LoraOptions
    from kindchat.retrain.ppo import ppo_config, train_ppo

    settings: Settings = ctx.obj
    options = given(
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
        checkpoint_every=checkpoint_every,
        deepspeed=deepspeed,
        seed=seed,
    )
    if lora is not None:
        options.update(actor_lora=LoraOptions(enabled=lora), critic_lora=LoraOptions(enabled=lora))
    config = dataclasses.replace(ppo_config(get_preset(preset)), **options)
    registry = registry_of(settings)
    manifest = train_ppo(settings, registry, sft, rm, config, resume=resume)
    if alias:
        registry.set_alias(alias, manifest.version)
    m = manifest.metrics
    console.print(
        f"registered {manifest.version}: reward {m['reward_start']:.3f} -> "
        f"{m['reward_end']:.3f}, KL {m['kl_end']:.3f} (run {m['run_dir']})"
    )


def adapter_mode(value: str | None) -> bool:
    """`--adapter`: full or not given -> False, lora -> True; anything else is the user's
    mistake."""
    if value is None:
        return False
    if value not in ("full", "lora"):
        raise ValueError(f"--adapter takes full or lora, got {value!r}")
    return value == "lora"


@app.command("dpo")
@friendly
def train_dpo_command(
    ctx: typer.Context,
    sft: Annotated[str, typer.Option(help="Policy init and frozen reference.")] = "sft",
    epochs: float | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    beta: float | None = None,
    max_length: int | None = None,
    max_records: int | None = None,
    extra_data: Annotated[list[Path] | None, typer.Option(help="More pair files (export).")] = None,
    lora: bool | None = None,
    adapter: Annotated[
        str | None,
        typer.Option(help="full (default), or lora: a LoRA adapter over the policy's base."),
    ] = None,
    deepspeed: Annotated[Path | None, typer.Option(help="DeepSpeed JSON config.")] = None,
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new policy.")] = None,
) -> None:
    """DPO (TRL DPOTrainer) from the same pairwise data: the RM-free alternative to PPO
    (defaults: DpoConfig)."""
    from kindchat.retrain.common import LoraOptions
    from kindchat.retrain.dpo import DpoConfig, train_dpo

    settings: Settings = ctx.obj
    config = DpoConfig(
        **given(
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            beta=beta,
            max_length=max_length,
            max_records=max_records,
            extra_data=extra_data,
            deepspeed=deepspeed,
        ),
        lora=LoraOptions(**given(enabled=lora)),
    )
    registry = registry_of(settings)
    manifest = train_dpo(settings, registry, sft, config, adapter=adapter_mode(adapter))
    if alias:
        registry.set_alias(alias, manifest.version)
    console.print(f"registered {manifest.version}: train loss {manifest.metrics['train_loss']:.3f}")


@app.command("kto")
@friendly
def train_kto_command(
    ctx: typer.Context,
    data: Annotated[
        Path, typer.Option(help="A `kindchat feedback export` directory (unpaired + pairs).")
    ],
    init: Annotated[str, typer.Option(help="The policy to start from.")] = "sft",
    reference: Annotated[str, typer.Option(help="The frozen reference (the anchor).")] = "sft",
    epochs: float | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    learning_rate: float | None = None,
    beta: float | None = None,
    max_length: int | None = None,
    max_records: int | None = None,
    pairs: Annotated[
        bool | None, typer.Option(help="Also learn from the export's pairs (default).")
    ] = None,
    lora: bool | None = None,
    adapter: Annotated[
        str | None,
        typer.Option(help="full (default), or lora: a LoRA adapter over the policy's base."),
    ] = None,
    deepspeed: Annotated[Path | None, typer.Option(help="DeepSpeed JSON config.")] = None,
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new policy.")] = None,
) -> None:
    """KTO (TRL KTOTrainer) from single 👍/👎 and pairs of a feedback export (defaults:
    KtoConfig, the nightly method's)."""
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
        **given(
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            beta=beta,
            max_length=max_length,
            use_pairs=pairs,
            max_records=max_records,
            deepspeed=deepspeed,
        ),
        lora=LoraOptions(**given(enabled=lora)),
    )
    registry = registry_of(settings)
    job = MethodJob(
        settings=settings,
        registry=registry,
        policy=registry.version_of(init) or init,
        sft=registry.version_of(reference) or reference,
        rm=None,
        base=None,
        data=PreferenceData.from_export(data),
        run_dir=new_run_dir(settings.runs_dir, "kto"),
        adapter=adapter_mode(adapter),
    )
    result = train_kto(job, config)
    if alias:
        registry.set_alias(alias, result.policy)
    m = result.metrics
    console.print(
        f"registered {result.policy}: train loss {m['train_loss']:.3f} on {m['desirable']} "
        f"desirable / {m['undesirable']} undesirable examples"
    )
