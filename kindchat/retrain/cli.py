"""`kindchat retrain run|status`, `kindchat models promote|rollback`, `kindchat simulate`.

Wired by `kindchat/cli.py` with `register(app)`; settings come from the `main` callback.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

import typer
from rich.table import Table

from kindchat.config import Settings
from kindchat.console import console, friendly

logger = logging.getLogger(__name__)


def _retrain_config(settings: Settings, **options: Any) -> Any:
    from kindchat.retrain.cycle import RetrainConfig

    config = RetrainConfig.from_settings(
        settings, **{k: v for k, v in options.items() if v is not None}
    )
    config.method_config()  # an unknown method option fails here, before any work starts
    return config


def parse_options(items: list[str] | None) -> dict[str, Any] | None:
    """`NAME=VALUE` pairs (the value as JSON, else a string) -> a dict; None when none given."""
    if not items:
        return None
    options: dict[str, Any] = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"--option takes NAME=VALUE, got {item!r}")
        try:
            options[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[name.strip()] = value
    return options


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


def _runs_table(runs: list[Any]) -> Table:
    table = Table(title="retrain runs (newest first)")
    for column in ("run", "status", "stage", "started", "promoted", "versions", "why / error"):
        table.add_column(column)
    for run in runs:
        table.add_row(
            run.id[:12],
            run.status,
            run.stage or "",
            run.started_at.isoformat(timespec="seconds") if run.started_at else "",
            "yes" if run.promoted else "",
            ", ".join(run.produced_versions or []),
            (run.error or "")[:160],
        )
    return table


def register(app: typer.Typer) -> None:
    """Add `retrain`, `simulate`, and `models promote|rollback` to the kindchat CLI."""

    # The `models` group of the app being built (also right under `python -m kindchat.cli`).
    models_app = next(
        g.typer_instance
        for g in app.registered_groups
        if g.name == "models" and g.typer_instance is not None
    )

    retrain_app = typer.Typer(help="The nightly loop: retrain cycles and their records.")
    app.add_typer(retrain_app, name="retrain", no_args_is_help=True)

    @retrain_app.command("run")
    @friendly
    def run_command(
        ctx: typer.Context,
        force: Annotated[bool, typer.Option(help="Run even with too little new feedback.")] = False,
        preset: Annotated[
            str | None, typer.Option(help="Budgets (KINDCHAT_RETRAIN_PRESET).")
        ] = None,
        method: Annotated[
            str | None,
            typer.Option(help="Preference method: ppo, dpo or kto (KINDCHAT_RETRAIN_METHOD)."),
        ] = None,
        option: Annotated[
            list[str] | None,
            typer.Option(
                "--option",
                "-o",
                help="A method setting as NAME=VALUE (JSON value), e.g. -o epochs=2 -o ppo.steps=20.",
            ),
        ] = None,
        min_new_pairs: Annotated[int | None, typer.Option(help="Skip below this.")] = None,
        child: Annotated[
            bool, typer.Option(help="Train in a niced child process (as the scheduler does).")
        ] = False,
    ) -> None:
        """Run one retrain cycle now (the same lock as the scheduler: never two at once)."""
        from kindchat.retrain.admin import trigger_retrain
        from kindchat.retrain.cycle import run_retrain_cycle

        settings: Settings = ctx.obj
        config = _retrain_config(
            settings,
            preset=preset,
            method=method,
            method_options=parse_options(option),
            min_new_pairs=0 if force else min_new_pairs,
        )
        if child:
            run = trigger_retrain(settings, config=config, wait=True)
        else:
            run = run_retrain_cycle(settings, config)
        console.print(_runs_table([run]))
        gate = (run.metrics or {}).get("policy_gate", {})
        if "win_rate" in gate:
            console.print(
                f"win rate over {gate['baseline']}: {gate['win_rate']:.3f} "
                f"[{gate['win_rate_low']:.3f}, {gate['win_rate_high']:.3f}], "
                f"KL to SFT {gate['kl_a_sft']:.2f}"
            )
        if run.status == "failed":
            raise typer.Exit(1)

    @retrain_app.command("status")
    @friendly
    def status_command(
        ctx: typer.Context,
        limit: Annotated[int, typer.Option(help="Runs to show.")] = 10,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Recent retrain runs, whether one is running, and the next scheduled time."""
        from kindchat.feedback.db import init_db
        from kindchat.retrain.admin import retrain_runs, retrain_state
        from kindchat.retrain.scheduler import stored_next_run_time

        settings: Settings = ctx.obj
        engine = init_db(settings)
        runs = retrain_runs(settings, engine=engine, limit=limit)
        state = retrain_state(settings)
        next_run = stored_next_run_time(settings, engine)
        if as_json:
            data = {
                **state,
                "next_run": next_run.isoformat() if next_run else None,
                "runs": [json.loads(r.model_dump_json()) for r in runs],
            }
            console.print_json(json.dumps(data, ensure_ascii=False))
            return
        console.print(_runs_table(runs))
        console.print(f"running now: {state['running'] or 'no'}")
        console.print(
            f"next scheduled run: {next_run.isoformat() if next_run else 'not scheduled'}"
        )
        console.print(f"aliases: {state['aliases']}")

    @models_app.command("promote")
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

    @models_app.command("rollback")
    @friendly
    def rollback_command(
        ctx: typer.Context,
        alias: Annotated[str, typer.Option(help="The alias to move back.")] = "rlhf",
    ) -> None:
        """Point an alias back at its previous version."""
        from kindchat.retrain.admin import rollback

        change = rollback(ctx.obj, alias)
        console.print(f"{change.alias}: {change.previous} -> {change.version}")

    @app.command("simulate")
    @friendly
    def simulate_command(
        ctx: typer.Context,
        users: Annotated[
            str, typer.Option(help="Built-in users (polite, concise, gold-rm) or file.py:factory.")
        ] = "polite",
        nights: Annotated[int, typer.Option(help="Nights to simulate.")] = 1,
        votes: Annotated[int, typer.Option(help="Arena votes + chat thumbs per night.")] = 500,
        url: Annotated[
            str | None, typer.Option(help="A running server on this home (default: start one).")
        ] = None,
        concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 4,
        max_tokens: Annotated[int, typer.Option(help="Answer budget.")] = 48,
        max_arena: Annotated[
            int, typer.Option(help="Challenger battles per night before giving up on a decision.")
        ] = 2000,
        preset: Annotated[str | None, typer.Option(help="Retrain budgets.")] = None,
        method: Annotated[
            str | None, typer.Option(help="Preference method (default: the setting).")
        ] = None,
        option: Annotated[
            list[str] | None,
            typer.Option("--option", "-o", help="A method setting as NAME=VALUE."),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the nights as JSON.")] = False,
        seed: int = 0,
    ) -> None:
        """Nights of simulated users over HTTP: feedback, retrain, challenger, users' score."""
        from kindchat.models.registry import Registry
        from kindchat.simulate import SimulateConfig, simulate
        from kindchat.users import load_users

        settings: Settings = ctx.obj
        config = SimulateConfig(
            nights=nights,
            votes=votes,
            concurrency=concurrency,
            max_tokens=max_tokens,
            challenger_max_battles=max_arena,
            seed=seed,
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
            extra["judge_dir"] = Registry.for_settings(settings).resolve(retrain.gold_alias)
        plugin = load_users(users, **extra)
        reports = simulate(settings, plugin, config, retrain, url=url)
        if as_json:
            console.print_json(
                json.dumps([r.as_dict() for r in reports], ensure_ascii=False, default=str)
            )
            return
        console.print(_nights_table(reports, users))
