"""`kindchat models list|import|dummy|gc|promote|rollback`, and `kindchat generate` from any of them."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kindchat.cli.common import console, friendly, registry_of
from kindchat.config import Settings

logger = logging.getLogger(__name__)

app = typer.Typer(help="Inspect and manage registered model versions.", no_args_is_help=True)


KEY_METRICS = ("heldout_ppl_before", "heldout_ppl", "accuracy", "win_rate", "reward_mean", "kl")


def format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key in KEY_METRICS:
        value = metrics.get(key)
        if isinstance(value, int | float):
            parts.append(f"{key}={value:.3g}")
    return " ".join(parts)


def default_chat_model(settings: Settings) -> str:
    aliases = registry_of(settings).aliases()
    return "rlhf" if "rlhf" in aliases else "sft"


@friendly
def generate(
    ctx: typer.Context,
    prompt: Annotated[str, typer.Argument(help="The user's message.")],
    model: Annotated[str | None, typer.Option(help="Alias, version id or directory.")] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(help="Answer budget (KINDCHAT_DEFAULT_MAX_TOKENS).")
    ] = None,
    temperature: float | None = None,
    top_p: float | None = None,
    repetition_penalty: float | None = None,
    seed: int | None = None,
) -> None:
    """Answer one prompt with a registered model and print the answer (drawn by the one
    sampler with the server's defaults for what is not given: `--seed` means what a served
    request's seed means)."""
    from transformers.utils import logging as hf_logging

    from kindchat.models.generation import (
        DEFAULT_SAMPLING,
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
    given = {
        "temperature": temperature,
        "top_p": top_p,
        "repetition_penalty": repetition_penalty,
    }
    params = replace(
        DEFAULT_SAMPLING,
        max_new_tokens=settings.default_max_tokens if max_new_tokens is None else max_new_tokens,
        **{name: value for name, value in given.items() if value is not None},
    )
    path = registry_of(settings).resolve(model or default_chat_model(settings))
    lm, tokenizer = load_causal_lm(path)
    params = fit_to_context(lm, params)
    text = prompt_format(tokenizer).prompt(
        [{"role": "user", "content": prompt}],
        lambda s: len(tokenizer(s, add_special_tokens=False)["input_ids"]),
        max_prompt_tokens(lm, params.max_new_tokens),
    )
    [answer] = generate_batch(lm, tokenizer, [text], params, seeds=[seed])
    console.print(answer.text, highlight=False)


@app.command("list")
@friendly
def models_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Versions (oldest first), the aliases pointing at them, and their key metrics."""
    settings: Settings = ctx.obj
    registry = registry_of(settings)
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
            m.kind + (f" (LoRA over {m.base})" if m.base else ""),
            ", ".join(sorted(by_version.get(m.version, []))),
            ", ".join(m.parents),
            format_metrics(m.metrics),
            m.created,
        )
    console.print(table)
    if not versions:
        console.print("no versions yet: run `kindchat bootstrap`")


@app.command("import")
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
    manifest = import_checkpoint(registry_of(ctx.obj), source, kind, alias)  # type: ignore[arg-type]
    config = manifest.config
    console.print(
        f"imported {source} as {manifest.version} ({config['architecture']}, "
        f"{manifest.metrics['parameters'] / 1e6:.1f}M parameters, chat template: "
        f"{config['chat_template']})" + (f"; alias {alias} -> {manifest.version}" if alias else ""),
        highlight=False,
    )


@app.command("merge")
@friendly
def models_merge(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="An adapter version (or an alias naming one).")],
    alias: Annotated[str | None, typer.Option(help="Point this alias at the merged copy.")] = None,
) -> None:
    """Write the full checkpoint of a LoRA adapter version (base + adapter, merged), for an
    engine without LoRA; the adapter stays."""
    from kindchat.models.loading import merge_adapter

    manifest = merge_adapter(registry_of(ctx.obj), version, alias)
    console.print(
        f"merged {manifest.config['merged_from']} over {manifest.parents[1]} into "
        f"{manifest.version}" + (f"; alias {alias} -> {manifest.version}" if alias else ""),
        highlight=False,
    )


@app.command("dummy")
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


@app.command("gc")
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
    from kindchat.feedback import run_records
    from kindchat.feedback.db import init_db, session_scope
    from kindchat.models.gc import run_gc

    settings: Settings = ctx.obj
    protected: set[str] = set()
    with session_scope(init_db(settings)) as session:
        refused = run_records.list_runs(session=session, status="refused", limit=max(keep, 1))[
            :keep
        ]
        live = [
            run
            for status in ("queued", "running", "challenging")
            for run in run_records.list_runs(session=session, status=status, limit=100)
        ]
    for run in [*refused, *live]:
        protected.update(run.produced_versions or [])
    plan = run_gc(
        registry_of(settings), keep, protected, min_age_s=min_age_hours * 3600, dry_run=dry_run
    )
    verb = "would remove" if dry_run else "removed"
    for manifest in plan.remove:
        console.print(f"{verb} {manifest.version} ({manifest.kind}, {manifest.created})")
    console.print(
        f"{verb} {len(plan.remove)} versions, {plan.bytes_freed / 1e6:.1f} MB; "
        f"kept {len(plan.keep)}",
        highlight=False,
    )


@app.command("promote")
@friendly
def promote_command(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="A registered version id.")],
    alias: Annotated[str, typer.Option(help="The alias to point at it.")] = "rlhf",
) -> None:
    """Point an alias at a version (atomic; running servers hot-swap)."""
    from kindchat.retrain.admin import promote

    change = promote(ctx.obj, version, alias)
    console.print(f"{change.alias}: {change.previous} -> {change.version}")


@app.command("rollback")
@friendly
def rollback_command(
    ctx: typer.Context,
    alias: Annotated[str, typer.Option(help="The alias to move back.")] = "rlhf",
) -> None:
    """Point an alias back at its previous version."""
    from kindchat.retrain.admin import rollback

    change = rollback(ctx.obj, alias)
    console.print(f"{change.alias}: {change.previous} -> {change.version}")
