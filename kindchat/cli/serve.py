"""`kindchat serve`: the API server with the UI."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from kindchat.cli.common import friendly
from kindchat.config import Settings

logger = logging.getLogger(__name__)


@friendly
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Listen address (KINDCHAT_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (KINDCHAT_PORT).")] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="hf, deepspeed, openai (vLLM, SGLang…) or tgi (KINDCHAT_BACKEND)."),
    ] = None,
    tgi_url: Annotated[str | None, typer.Option(help="TGI server URL for --backend tgi.")] = None,
    openai_base_url: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible server (…/v1) for --backend openai."),
    ] = None,
    openai_model: Annotated[
        list[str] | None,
        typer.Option(help="Served model name: NAME for every alias, or ALIAS=NAME; repeat."),
    ] = None,
    model_alias: Annotated[
        list[str] | None,
        typer.Option(help="Alias to serve as kindchat-<alias>; repeat; first is default."),
    ] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Sequences per batch.")] = None,
    max_queue: Annotated[int | None, typer.Option(help="Waiting requests, then 429.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 …")] = None,
    background_preset: Annotated[
        str | None,
        typer.Option(help="Train this preset (e.g. tiny) in the background while serving."),
    ] = None,
) -> None:
    """Serve the chat UI at / and the OpenAI-compatible API (chat, feedback, arena) at /v1."""
    from kindchat.retrain.background import BackgroundBootstrap

    base: Settings = ctx.obj
    overrides = {
        "host": host,
        "port": port,
        "backend": backend,
        "tgi_url": tgi_url,
        "openai_base_url": openai_base_url,
        "openai_models": openai_model or None,
        "serve_aliases": model_alias or None,
        "max_batch_size": max_batch_size,
        "max_queue": max_queue,
        "device": device,
        "background_preset": background_preset,
    }
    settings = base.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    settings = Settings.model_validate(settings.model_dump())  # re-check the overrides
    background = None
    if settings.background_preset:
        # before the serving stack's imports (~10 s): on a fresh machine the first models train
        # meanwhile, on the other core
        settings.ensure_dirs()
        background = BackgroundBootstrap(settings, settings.background_preset)
        background.start()
        if background.training_first():
            # A fresh install compiles each module's bytecode at its first import, and the child
            # begins with torch and transformers (~10 s cold). Import the web stack first (~8 s
            # cold, no torch in it): torch and transformers then load from the child's .pyc
            # instead of being compiled a second time, on the core the child trains on.
            import gradio  # noqa: F401
            import sqlmodel  # noqa: F401
    try:
        import uvicorn

        from kindchat.app import create_product_app

        url = f"http://{settings.host}:{settings.port}"
        logger.info("kindchat: chat UI at %s/ · API at %s/v1 (%s)", url, url, settings.backend)
        uvicorn.run(
            create_product_app(settings, background=background),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            timeout_graceful_shutdown=30,
            proxy_headers=False,  # X-Forwarded-For only from KINDCHAT_TRUSTED_PROXIES (the app's)
        )
    finally:
        if background is not None:  # a server that failed to start leaves no child behind
            background.stop()
