"""`create_app(settings)`: the FastAPI app, with models, database and metrics in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from kindchat.config import Settings
from kindchat.feedback.db import init_db
from kindchat.models.backends.base import GenerationBackend
from kindchat.models.manager import Loader, ModelManager
from kindchat.models.registry import Registry, RegistryError
from kindchat.retrain.background import BackgroundBootstrap
from kindchat.retrain.challenger import arena_versions
from kindchat.retrain.scheduler import RetrainScheduler
from kindchat.serve.errors import install_error_handlers
from kindchat.serve.gate import Gate
from kindchat.serve.metrics import Metrics, MetricsMiddleware
from kindchat.serve.routes import (
    admin,
    arena,
    chat,
    conversations,
    feedback,
    health,
    models,
    sessions,
)
from kindchat.serve.services import ArenaService, build_services

logger = logging.getLogger(__name__)


def _local_dir(settings: Settings, alias: str) -> Path | None:
    """The directory of `alias` in the local registry (the one the server serves), if any."""

    try:
        return Registry.for_settings(settings).resolve(alias)
    except (RegistryError, OSError):
        logger.info("no local copy of %s; prompt tokens are estimated", alias)
        return None


def _local_tokenizer(settings: Settings, alias: str) -> Any:
    # lazy: transformers only when a remote backend counts tokens with a local tokenizer
    from kindchat.models.tokenizer import load_tokenizer

    path = _local_dir(settings, alias)
    return load_tokenizer(path) if path is not None else None


def served_model_names(settings: Settings) -> dict[str, str | None]:
    """alias -> served model name for backend=openai, from `openai_models`."""
    names: dict[str, str | None] = dict.fromkeys(settings.serve_aliases)
    for item in settings.openai_models:
        alias, sep, name = item.partition("=")
        if not sep:
            names = dict.fromkeys(settings.serve_aliases, item.strip())
        elif alias.strip() not in names:
            raise ValueError(
                f"openai model {item!r} names alias {alias.strip()!r}, which is not served "
                f"(served: {', '.join(settings.serve_aliases)})"
            )
        else:
            names[alias.strip()] = name.strip() or None
    return names


def remote_backend(settings: Settings) -> dict[str, GenerationBackend] | None:
    """alias -> remote backend for backend=tgi or openai (None for the local backends)."""
    if settings.backend == "tgi":
        if not settings.tgi_url:
            raise ValueError("backend tgi needs a server URL: set --tgi-url or KINDCHAT_TGI_URL")
        # lazy: each remote backend only when configured
        from kindchat.models.backends.tgi import TgiBackend

        tgi = TgiBackend(
            settings.tgi_url, tokenizer=_local_tokenizer(settings, settings.serve_aliases[-1])
        )
        return dict.fromkeys(settings.serve_aliases, tgi)
    if settings.backend == "openai" and not settings.openai_lora:
        if not settings.openai_base_url:
            raise ValueError(
                "backend openai needs a server URL: set --openai-base-url or "
                "KINDCHAT_OPENAI_BASE_URL (e.g. http://gpu-1:8000/v1 for vLLM)"
            )
        # lazy: each remote backend only when configured
        from kindchat.models.backends.openai_server import OpenAIBackend

        by_name: dict[str | None, GenerationBackend] = {}
        out: dict[str, GenerationBackend] = {}
        for alias, name in served_model_names(settings).items():
            if name not in by_name:
                by_name[name] = OpenAIBackend(
                    settings.openai_base_url,
                    model=name,
                    api_key=settings.openai_api_key,
                    model_dir=_local_dir(settings, alias),
                    stream_interval=settings.openai_stream_interval,
                )
            out[alias] = by_name[name]
        return out
    return None


async def check_challenger(arena: ArenaService, interval_s: float) -> None:
    """Decide a challenger whose deadline passed even when no vote comes (0: never)."""
    if interval_s <= 0:
        return
    while True:
        await asyncio.sleep(interval_s)
        try:
            await arena.decide_challenge()
        except Exception:  # keep checking; the next vote or check tries again
            logger.exception("challenger check failed")


def create_app(
    settings: Settings,
    *,
    loader: Loader | None = None,
    extensions: Sequence[Callable[[FastAPI], None]] = (),
    background: BackgroundBootstrap | None = None,
) -> FastAPI:
    """The API app. `loader` replaces how versions are loaded (e.g. a failing one in tests);
    each extension adds to the finished app (`kindchat.app` mounts the UI this way, so serve
    never imports the UI above it). `background`: the background bootstrap of
    `settings.background_preset`, when `kindchat serve` started it before building the app
    (made and started here otherwise)."""
    if loader is None and settings.backend == "openai" and settings.openai_lora:
        # lazy: only for a vLLM that loads the registry's adapters at run time
        from kindchat.models.vllm import VllmLoader

        loader = VllmLoader(settings)
    manager = ModelManager(settings, loader=loader, remote=remote_backend(settings))
    metrics = Metrics(manager)
    gate = Gate(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        if settings.torch_threads is not None:
            # lazy: torch only for local backends (remote deployments start without it)
            import torch

            torch.set_num_threads(settings.torch_threads)
        db = await asyncio.to_thread(init_db, settings)
        manager.arena_versions = functools.partial(arena_versions, db)  # the challenge's champion
        trainer = background
        if trainer is None and settings.background_preset:
            trainer = BackgroundBootstrap(settings, settings.background_preset)
        if trainer is not None:
            await asyncio.to_thread(trainer.start)
        await manager.start(allow_empty=trainer is not None and trainer.training_first())
        app.state.db = db
        app.state.services = build_services(settings, manager, db, metrics, gate, trainer)
        watcher = asyncio.create_task(manager.watch(), name="kindchat-alias-watch")
        judge = asyncio.create_task(
            check_challenger(app.state.services.arena, settings.challenger_check_s),
            name="kindchat-challenger-deadline",
        )
        app.state.scheduler = None
        if settings.retrain_schedule or settings.retention_days:
            app.state.scheduler = RetrainScheduler(settings, db, retrain=settings.retrain_schedule)
            await asyncio.to_thread(app.state.scheduler.start)
        logger.info("serving %s with backend %s", manager.status()["aliases"], manager.backend_name)
        try:
            yield
        finally:
            if app.state.scheduler is not None:
                app.state.scheduler.shutdown()
            if trainer is not None:
                await asyncio.to_thread(trainer.stop)
            for task in (watcher, judge):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await manager.close()
            db.dispose()

    app = FastAPI(
        title="kindchat",
        description="OpenAI-compatible chat API of kindchat, with feedback and arena.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.manager = manager
    app.state.metrics = metrics
    app.state.gate = gate
    install_error_handlers(app, settings.retry_after_s)
    for module in (chat, models, feedback, arena, conversations, sessions, health, admin):
        app.include_router(module.router)
    app.include_router(conversations.pages)  # /shared/<token>: a read-only page
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    for extend in extensions:
        extend(app)
    if settings.trusted_proxies:  # outermost: everything inside sees the client's address
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    return app
