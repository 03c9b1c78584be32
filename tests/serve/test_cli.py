"""`kindchat serve` passes its flags into Settings."""

from __future__ import annotations

from typing import Any

import typer
from typer.testing import CliRunner

from kindchat.cli import serve as serve_cli
from kindchat.config import Settings


def test_serve_command_flags(monkeypatch: Any, settings: Settings) -> None:
    app = typer.Typer()  # the real command under a callback that hands it these settings

    @app.callback()
    def main(ctx: typer.Context) -> None:
        ctx.obj = settings

    app.command("serve")(serve_cli.serve)
    seen: dict[str, Any] = {}

    def fake_run(asgi: Any, **kwargs: Any) -> None:  # uvicorn is outside what we test here
        seen.update(kwargs, app=asgi)

    monkeypatch.setattr("uvicorn.run", fake_run)
    runner = CliRunner()
    help_text = runner.invoke(app, ["serve", "--help"]).output
    for flag in ("--host", "--port", "--backend", "--tgi-url", "--model-alias"):
        assert flag in help_text
    result = runner.invoke(
        app,
        [
            "serve",
            "--port",
            "8123",
            "--backend",
            "deepspeed",
            "--model-alias",
            "sft",
            "--max-queue",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    state = seen["app"].state.settings
    assert seen["port"] == 8123 and state.backend == "deepspeed"
    assert state.serve_aliases == ["sft"] and state.max_queue == 3
    bad = runner.invoke(app, ["serve", "--backend", "vllm"])
    assert bad.exit_code == 2
