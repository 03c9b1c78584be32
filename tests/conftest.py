"""Shared fixtures: seed data dir, fresh settings, and micro models bootstrapped once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from kindchat.config import DEFAULT_DATA_DIR, Settings

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("KINDCHAT_DATA_DIR", DEFAULT_DATA_DIR))
    if not (path / "sft").is_dir():
        pytest.fail(f"seed data not found at {path}; set KINDCHAT_DATA_DIR")
    return path


@pytest.fixture
def settings(tmp_path: Path, data_dir: Path) -> Settings:
    """Fresh, empty state for one test."""
    s = Settings(home=tmp_path / "home", data_dir=data_dir)
    s.ensure_dirs()
    return s


@pytest.fixture(scope="session")
def micro_settings(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Settings:
    """Settings whose registry holds micro `base` and `sft` models (bootstrapped once, ~30 s).

    Treat it as read-only: tests that register versions or move aliases copy it first
    (see `micro_copy`).
    """
    from kindchat.models.presets import get_preset
    from kindchat.retrain.bootstrap import run_bootstrap

    s = Settings(home=tmp_path_factory.mktemp("micro") / "home", data_dir=data_dir)
    run_bootstrap(s, get_preset("micro"))
    return s


@pytest.fixture(scope="session")
def micro_llama_settings(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Settings:
    """Like `micro_settings`, on the Llama family (preset `micro-llama`, ~50 s). Read-only."""
    from kindchat.models.presets import get_preset
    from kindchat.retrain.bootstrap import run_bootstrap

    s = Settings(home=tmp_path_factory.mktemp("micro-llama") / "home", data_dir=data_dir)
    run_bootstrap(s, get_preset("micro-llama"))
    return s


def copy_home(settings: Settings, tmp_path: Path) -> Settings:
    """A private, writable copy of `settings`' registry and state under `tmp_path`."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(settings.home, home, ignore=shutil.ignore_patterns("logs", "runs"))
    s = Settings(home=home, data_dir=settings.data_dir)
    s.ensure_dirs()
    return s


@pytest.fixture
def micro_copy(micro_settings: Settings, tmp_path: Path) -> Settings:
    """A private, writable copy of the micro registry for one test."""
    return copy_home(micro_settings, tmp_path)


@pytest.fixture
def micro_llama_copy(micro_llama_settings: Settings, tmp_path: Path) -> Settings:
    """A private, writable copy of the micro Llama registry for one test."""
    return copy_home(micro_llama_settings, tmp_path)
