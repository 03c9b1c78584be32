"""`kindchat doctor`: what a newcomer trips on, one line per finding with its fix."""

from __future__ import annotations

from typing import Annotated

import typer

from kindchat.cli.common import console, friendly
from kindchat.config import Settings


@friendly
def doctor(
    ctx: typer.Context,
    preset: Annotated[
        str, typer.Option(help="Check disk and memory against this preset.")
    ] = "tiny",
) -> None:
    """Check torch, disk and memory, seed data, the database, the models, the browser tests'
    Chromium and font, the port, HF_HUB_OFFLINE; exit 0 when all is well, 1 otherwise."""
    from kindchat.doctor import run_checks  # the database's libraries: not for every command

    settings: Settings = ctx.obj
    findings = run_checks(settings, preset)
    for finding in findings:
        style = {"ok": "green", "warn": "yellow", "fail": "bold red"}[finding.level]
        console.print(f"[{style}]{finding.line()}[/]", highlight=False, soft_wrap=True)
    problems = [f for f in findings if f.level != "ok"]
    if problems:
        console.print(f"{len(problems)} problem(s) found")
        raise typer.Exit(1)
    console.print("all is well")
