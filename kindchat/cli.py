"""The `kindchat` command line (typer). Flags override `KINDCHAT_*` environment settings."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from kindchat.config import Settings
from kindchat.logs import setup_logging

logger = logging.getLogger("kindchat.cli")
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

app = typer.Typer(
    help="kindchat: a friendly, harmless Korean chat assistant improved by RLHF.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
train_app = typer.Typer(help="Train one stage and register the result.", no_args_is_help=True)
models_app = typer.Typer(help="Inspect and manage registered model versions.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")

F = TypeVar("F", bound=Callable[..., Any])


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: shown as one line, exit code 2, no traceback."""
    from kindchat.models.registry import RegistryError
    from kindchat.models.template import ConversationError, PromptTooLongError
    from kindchat.seed import SeedDataError

    return (
        SeedDataError,
        RegistryError,
        PromptTooLongError,
        ConversationError,
        FileNotFoundError,
        ValueError,
        FloatingPointError,
    )


def friendly(func: F) -> F:
    """Turn user errors into a clear message and a non-zero exit instead of a stack trace."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except user_errors() as err:
            logger.debug("command failed", exc_info=True)
            err_console.print(f"[bold red]error:[/] {err}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


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

    return Registry(settings.models_dir)


@app.command()
@friendly
def bootstrap(
    ctx: typer.Context,
    preset: Annotated[str, typer.Option(help="micro (tests, <1 min) or tiny (demo).")] = "tiny",
    if_missing: Annotated[bool, typer.Option(help="Do nothing if an `sft` alias exists.")] = False,
) -> None:
    """Train the embedded models from the seed data: tokenizer, base LM, SFT."""
    from kindchat.models.presets import get_preset
    from kindchat.retrain.bootstrap import run_bootstrap

    settings: Settings = ctx.obj
    chosen = get_preset(preset)
    if if_missing and "sft" in _registry(settings).aliases():
        console.print("models already bootstrapped (alias `sft` exists); nothing to do")
        return
    report = run_bootstrap(settings, chosen)
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
    from kindchat.models.template import build_prompt

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
    text = build_prompt(
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


KEY_METRICS = ("heldout_ppl_before", "heldout_ppl", "accuracy", "win_rate", "reward_mean", "kl")


def format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key in KEY_METRICS:
        value = metrics.get(key)
        if isinstance(value, int | float):
            parts.append(f"{key}={value:.3g}")
    return " ".join(parts)


if __name__ == "__main__":
    app()
