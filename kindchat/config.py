"""One settings object for the whole product (pydantic-settings, `KINDCHAT_*` env, CLI overrides)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# `../shared/data/vaiv` beside the checkout: kindchat/config.py -> kindchat -> checkout -> parent.
_CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = _CHECKOUT.parent / "shared" / "data" / "vaiv"


class Settings(BaseSettings):
    """Where kindchat keeps its state and reads its seed data.

    Every field reads `KINDCHAT_<NAME>` from the environment; the CLI passes flags as overrides.
    """

    model_config = SettingsConfigDict(env_prefix="KINDCHAT_", extra="ignore")

    home: Path = Field(Path("var"), description="State: models, database, logs, runs.")
    data_dir: Path = Field(
        DEFAULT_DATA_DIR, description="Seed data (sft/, rm/, geval_scores/, ppo/)."
    )
    log_level: str = Field("INFO", description="Log level of the console and the log file.")

    @cached_property
    def models_dir(self) -> Path:
        return self.home / "models"

    @cached_property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @cached_property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    def ensure_dirs(self) -> None:
        for path in (self.home, self.models_dir, self.logs_dir, self.runs_dir):
            path.mkdir(parents=True, exist_ok=True)
