"""`kindchat simulate`: nights of simulated users voting, retraining and promoting."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

import typer
from rich.table import Table

from kindchat.cli.common import console, friendly, given
from kindchat.cli.retrain import _retrain_config, parse_options
from kindchat.config import Settings

logger = logging.getLogger(__name__)


def _nights_table(reports: list[Any], users: str) -> Table:
    table = Table(title=f"simulated nights with '{users}' users (score: theirs, unseen prompts)")
    for column in (
        "night",
        "feedback",
        "run",
        "challenger record / decision",
        "serving",
        "users' score [95%]",
        "KL to SFT",
        "min",
    ):
        table.add_column(column)
    for r in reports:
        challenger = r.challenger or {}
        record = (
            f"{challenger.get('wins', 0)}-{challenger.get('losses', 0)}-{challenger.get('ties', 0)} "
            f"{challenger.get('action', '')} "
            + (
                f"[{challenger['win_rate_low']:.2f}, {challenger['win_rate_high']:.2f}]"
                if challenger.get("win_rate_low") is not None
                else ""
            )
            if challenger
            else ""
        )
        score = r.score
        table.add_row(
            str(r.night),
            ", ".join(f"{k} {v}" for k, v in sorted(r.feedback.items())),
            f"{r.run.get('status', '')} {r.run.get('method', '')}".strip(),
            record,
            r.served_after,
            f"{score['value']:.3f} [{score['low']:.3f}, {score['high']:.3f}]",
            "" if r.kl_sft is None else f"{r.kl_sft:.2f}",
            f"{r.seconds / 60:.1f}",
        )
    return table


@friendly
def simulate_command(
    ctx: typer.Context,
    users: Annotated[
        str, typer.Option(help="Built-in users (polite, concise, gold-rm) or file.py:factory.")
    ] = "polite",
    nights: Annotated[int | None, typer.Option(help="Nights to simulate.")] = None,
    votes: Annotated[int | None, typer.Option(help="Arena votes + chat thumbs per night.")] = None,
    url: Annotated[
        str | None, typer.Option(help="A running server on this home (default: start one).")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            help="Requests in flight at most (default 16): every person reads and votes at "
            "once, each at their own pace; what they send waits for a slot, and the server "
            "batches what is in flight."
        ),
    ] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Answer budget.")] = None,
    max_arena: Annotated[
        int | None,
        typer.Option(help="Challenger battles per night before giving up on a decision."),
    ] = None,
    preset: Annotated[str | None, typer.Option(help="Retrain budgets.")] = None,
    method: Annotated[
        str | None, typer.Option(help="Preference method (default: the setting).")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="A method setting as NAME=VALUE."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the nights as JSON.")] = False,
    seed: int | None = None,
) -> None:
    """Nights of simulated users over HTTP: feedback, retrain, challenger, users' score
    (defaults: SimulateConfig)."""
    from kindchat.models.registry import Registry
    from kindchat.simulate import SimulateConfig, simulate
    from kindchat.users import load_users

    settings: Settings = ctx.obj
    config = SimulateConfig(
        **given(
            nights=nights,
            votes=votes,
            concurrency=concurrency,
            max_tokens=max_tokens,
            challenger_max_battles=max_arena,
            seed=seed,
        )
    )
    retrain = _retrain_config(
        settings,
        preset=preset,
        method=method,
        method_options=parse_options(option),
        min_new_pairs=0,
    )
    extra: dict[str, Any] = {}
    if users == "gold-rm":
        extra["gold_dir"] = Registry.for_settings(settings).resolve(retrain.gold_alias)
    plugin = load_users(users, **extra)
    reports = simulate(settings, plugin, config, retrain, url=url)
    if as_json:
        console.print_json(
            json.dumps([r.as_dict() for r in reports], ensure_ascii=False, default=str)
        )
        return
    console.print(_nights_table(reports, users))
