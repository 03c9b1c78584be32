"""The product's app: the serving API with the Gradio UI mounted at `/`.

This module composes the rooms from above (ui on top of serve), so that no room imports one
above it. `kindchat serve`, the browser tests and the simulated users build their app here.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import FastAPI

from kindchat.config import Settings
from kindchat.serve.app import create_app
from kindchat.ui.app import mount_ui


def create_product_app(settings: Settings, *, page_checks: bool = True, **options: Any) -> FastAPI:
    """`serve.create_app` with the UI mounted; `options` go to `create_app` (e.g. `loader`).
    `page_checks=False` leaves the page's session checks out: for `bench/page_path.py`'s
    comparison only, never for serving."""
    return create_app(settings, extensions=[partial(mount_ui, page_checks=page_checks)], **options)
