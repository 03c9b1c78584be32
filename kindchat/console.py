"""What every command group of the CLI shares: the consoles and the user-error mapping.

It sits below the command groups (`kindchat/cli.py` and each room's `cli.py` import it), so no
group imports the top-level CLI that registers it.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

logger = logging.getLogger("kindchat.cli")
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, soft_wrap=True)  # an error stays one line

F = TypeVar("F", bound=Callable[..., Any])


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: shown as one line, exit code 2, no traceback."""
    from kindchat.feedback.errors import FeedbackError
    from kindchat.models.registry import RegistryError
    from kindchat.models.template import ConversationError, PromptTooLongError
    from kindchat.retrain.errors import RetrainError
    from kindchat.seed import SeedDataError

    return (
        SeedDataError,
        RegistryError,
        FeedbackError,
        RetrainError,
        PromptTooLongError,
        ConversationError,
        FileNotFoundError,
        ValueError,
        FloatingPointError,
    )


def friendly(func: F) -> F:
    """Turn user errors into a clear message and a non-zero exit instead of a stack trace."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except user_errors() as err:
            logger.debug("command failed", exc_info=True)
            err_console.print(f"[bold red]error:[/] {err}", highlight=False)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]
