"""`kindchat retrain run|status`: the nightly loop's cycles and their records."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

import typer
from rich.table import Table

from kindchat.cli.common import console, friendly
from kindchat.config import Settings

logger = logging.getLogger(__name__)

app = typer.Typer(help="The nightly loop: retrain cycles and their records.", no_args_is_help=True)


def _retrain_config(settings: Settings, **options: Any) -> Any:
    from kindchat.retrain.loop_config import RetrainConfig

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


@app.command("run")
@friendly
def run_command(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option(help="Run even with too little new feedback.")] = False,
    preset: Annotated[str | None, typer.Option(help="Budgets (KINDCHAT_RETRAIN_PRESET).")] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="Preference method, a name in retrain/methods.py (KINDCHAT_RETRAIN_METHOD)."
        ),
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
    adapter: Annotated[
        str | None,
        typer.Option(help="lora, full or auto: what the night registers (KINDCHAT_ADAPTER)."),
    ] = None,
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
        adapter=adapter,
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


@app.command("status")
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
    console.print(f"next scheduled run: {next_run.isoformat() if next_run else 'not scheduled'}")
    console.print(f"aliases: {state['aliases']}")
