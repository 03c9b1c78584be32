"""Logging to the console (rich) and to `$KINDCHAT_HOME/logs/kindchat.log`."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

STEPS_LOGGER = "kindchat.steps"
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(logs_dir: Path, level: str = "INFO") -> Path:
    """Send kindchat's logs to the console and to a file; return the file's path.

    Idempotent: calling it twice (tests, nested CLI calls) adds no second handler.
    """
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_file = logs_dir / "kindchat.log"
    root = logging.getLogger("kindchat")
    root.setLevel(level.upper())
    for handler in list(root.handlers):
        if getattr(handler, "_kindchat", False):
            root.removeHandler(handler)
            handler.close()
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(_FILE_FORMAT))
    # Logs go to stderr, so that stdout carries only a command's output (`--json` stays JSON).
    console = RichHandler(
        console=Console(stderr=True), show_path=False, rich_tracebacks=False, markup=False
    )
    # Per-step training logs go to the file only; the trainers print their own progress bars.
    console.addFilter(lambda record: not record.name.startswith(STEPS_LOGGER))
    for handler in (file_handler, console):
        handler._kindchat = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False
    return log_file
