"""`create_app(settings)`: the FastAPI app, with models, database and metrics in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from fastapi import FastAPI

from kindchat.config import Settings
from kindchat.feedback.db import init_db
from kindchat.models.backends.base import GenerationBackend
from kindchat.models.manager import Loader, ModelManager
from kindchat.serve.errors import install_error_handlers
from kindchat.serve.metrics import Metrics, MetricsMiddleware
from kindchat.serve.routes import admin, arena, chat, feedback, health, models
from kindchat.serve.service import ChatService

logger = logging.getLogger(__name__)


def remote_backend(settings: Settings) -> GenerationBackend | None:
    """The TGI backend when `settings.backend == "tgi"` (with a local tokenizer if one exists)."""
    if settings.backend != "tgi":
        return None
    if not settings.tgi_url:
        raise ValueError("backend tgi needs a server URL: set --tgi-url or KINDCHAT_TGI_URL")
    from kindchat.models.backends.tgi import TgiBackend
    from kindchat.models.registry import Registry, RegistryError
    from kindchat.models.tokenizer import load_tokenizer

    tokenizer = None
    try:  # count tokens like the served model, if the registry holds one with that vocabulary
        registry = Registry(settings.models_dir)
        tokenizer = load_tokenizer(registry.resolve(settings.serve_aliases[-1]))
    except (RegistryError, OSError, ValueError):
        logger.info("no local tokenizer for TGI; prompt tokens are estimated")
    return TgiBackend(settings.tgi_url, tokenizer=tokenizer)


async def check_challenger(service: ChatService, interval_s: float) -> None:
    """Decide a challenger whose deadline passed even when no vote comes (0: never)."""
    if interval_s <= 0:
        return
    while True:
        await asyncio.sleep(interval_s)
        try:
            await service.decide_challenge()
        except Exception:  # keep checking; the next vote or check tries again
            logger.exception("challenger check failed")


def create_app(
    settings: Settings,
    *,
    loader: Loader | None = None,
    extensions: Sequence[Callable[[FastAPI], None]] = (),
) -> FastAPI:
    """The API app. `loader` replaces how versions are loaded (e.g. a failing one in tests);
    each extension adds to the finished app (`kindchat.app` mounts the UI this way, so serve
    never imports the UI above it)."""
    manager = ModelManager(settings, loader=loader, remote=remote_backend(settings))
    metrics = Metrics(manager)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        if settings.torch_threads is not None:
            import torch

            torch.set_num_threads(settings.torch_threads)
        db = await asyncio.to_thread(init_db, settings)
        await manager.start()
        app.state.db = db
        app.state.service = ChatService(settings, manager, db, metrics)
        watcher = asyncio.create_task(manager.watch(), name="kindchat-alias-watch")
        judge = asyncio.create_task(
            check_challenger(app.state.service, settings.challenger_check_s),
            name="kindchat-challenger-deadline",
        )
        app.state.scheduler = None
        if settings.retrain_schedule:
            from kindchat.retrain.scheduler import RetrainScheduler

            app.state.scheduler = RetrainScheduler(settings, db)
            await asyncio.to_thread(app.state.scheduler.start)
        logger.info("serving %s with backend %s", manager.status()["aliases"], manager.backend_name)
        try:
            yield
        finally:
            if app.state.scheduler is not None:
                app.state.scheduler.shutdown()
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
    install_error_handlers(app, settings.retry_after_s)
    for module in (chat, models, feedback, arena, health, admin):
        app.include_router(module.router)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    for extend in extensions:
        extend(app)
    return app
