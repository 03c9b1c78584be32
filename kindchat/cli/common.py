"""What every command group shares: the consoles, the registry, the options a user gave, and the
one place where errors become exit codes.

It sits below the command groups (each `kindchat/cli/<group>.py` imports it; it imports none of
them), and nothing outside `kindchat/cli/` imports the CLI.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from kindchat.config import Settings
from kindchat.errors import KindchatError
from kindchat.models.registry import Registry

logger = logging.getLogger("kindchat.cli")
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, soft_wrap=True)  # an error stays one line

F = TypeVar("F", bound=Callable[..., Any])

USER_ERROR_EXIT = 2
# The user's to fix: every kindchat error, plus what the libraries raise for a bad path or value
# (a missing config file, a malformed JSON, an option out of range) and a diverged training run.
USER_ERRORS: tuple[type[BaseException], ...] = (
    KindchatError,
    FileNotFoundError,
    ValueError,
    FloatingPointError,
)


def friendly(func: F) -> F:
    """User errors become one line on stderr and exit code 2, never a stack trace."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as err:
            logger.debug("command failed", exc_info=True)
            err_console.print(f"[bold red]error:[/] {err}", highlight=False)
            raise typer.Exit(USER_ERROR_EXIT) from None

    return wrapper  # type: ignore[return-value]


def given(**options: Any) -> dict[str, Any]:
    """The options the user gave. Every flag that sets a config field defaults to None, "not
    given", so the config's own default applies: one source for every default."""
    return {name: value for name, value in options.items() if value is not None}


def negated(flag: bool | None) -> bool | None:
    """`--include-x` for a field `exclude_x`: the opposite when given, None when not."""
    return None if flag is None else not flag


def registry_of(settings: Settings) -> Registry:
    """The model registry of these settings (locking through the database when it is shared)."""
    return Registry.for_settings(settings)
