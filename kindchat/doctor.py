"""`kindchat doctor`: what a newcomer trips on, checked, one line per finding with its fix.

Every check returns :class:`Finding`\\ s: ``ok``, ``warn`` (works, but something is off) or
``fail`` (a command will not work until it is fixed). `kindchat doctor` exits 0 when nothing
failed and nothing warned, 1 otherwise. Nothing here changes the machine: the database is
opened read-only (no migration), models are only hashed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from kindchat.config import Settings
from kindchat.feedback.db import create_db_engine, current_revision, database_url, head_revision
from kindchat.models.registry import Registry, RegistryError

Level = Literal["ok", "warn", "fail"]
GIB = 1 << 30
# What a preset's bootstrap needs: registry + runs on disk, training memory (measured, rounded up).
NEEDS_GIB: dict[str, tuple[float, float]] = {"micro": (0.3, 2.0), "tiny": (1.5, 4.0)}
SEED_FILES = ("sft", "rm")  # directories of the seed data every bootstrap reads
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


@dataclass(frozen=True)
class Finding:
    check: str
    level: Level
    message: str
    fix: str = ""

    def line(self) -> str:
        mark = {"ok": "✓", "warn": "!", "fail": "✗"}[self.level]
        tail = f" — fix: {self.fix}" if self.fix and self.level != "ok" else ""
        return f"{mark} {self.check}: {self.message}{tail}"


def check_torch(settings: Settings) -> Iterator[Finding]:
    if importlib.util.find_spec("torch") is None:
        yield Finding(
            "torch", "fail", "torch is not installed", "pip install torch==2.13.0 (the CPU wheel)"
        )
        return
    import torch  # lazy: only this check needs torch (≈2 s to import)

    cuda_build = torch.version.cuda is not None
    has_gpu = torch.cuda.is_available()
    if cuda_build and not has_gpu:
        yield Finding(
            "torch",
            "warn",
            f"torch {torch.__version__} is a CUDA build on a machine without a GPU (GBs for "
            "nothing)",
            "pip install --force-reinstall torch==2.13.0 (the CPU wheel)",
        )
    else:
        kind = (
            f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)" if has_gpu else "CPU"
        )
        yield Finding("torch", "ok", f"torch {torch.__version__} ({kind} build)")


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        return None
    return None


def check_resources(settings: Settings, preset: str) -> Iterator[Finding]:
    disk_need, memory_need = NEEDS_GIB.get(preset, NEEDS_GIB["tiny"])
    home = settings.home if settings.home.exists() else Path.cwd()
    free = shutil.disk_usage(home).free / GIB
    if free < disk_need:
        yield Finding(
            "disk",
            "fail",
            f"{free:.1f} GiB free at {home}, the {preset} preset needs {disk_need} GiB",
            "free some space, or point KINDCHAT_HOME at a larger disk",
        )
    else:
        yield Finding("disk", "ok", f"{free:.1f} GiB free at {home}")
    memory = _memory_gib()
    if memory is not None and memory < memory_need:
        yield Finding(
            "memory",
            "warn",
            f"{memory:.1f} GiB available, the {preset} preset trains in about {memory_need} GiB",
            "close other programs, or bootstrap the micro preset (--preset micro)",
        )
    elif memory is not None:
        yield Finding("memory", "ok", f"{memory:.1f} GiB available")


def check_seed(settings: Settings) -> Iterator[Finding]:
    root = settings.data_dir
    missing = [name for name in SEED_FILES if not (root / name).is_dir()]
    if not root.is_dir() or missing:
        yield Finding(
            "seed data",
            "fail",
            f"{root} has no {', '.join(missing or SEED_FILES)}/ (the seed data bootstrap reads)",
            "put the seed data beside the checkout (../shared/data/vaiv) or set KINDCHAT_DATA_DIR",
        )
        return
    files = sum(1 for _ in root.rglob("*.json"))
    yield Finding("seed data", "ok", f"{root} ({files} JSON files)")


def check_database(settings: Settings) -> Iterator[Finding]:
    url = database_url(settings)
    shown = url.split("@")[-1] if "@" in url else url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").exists():
        yield Finding(
            "database",
            "ok",
            f"{shown} does not exist yet (kindchat serve creates and migrates it)",
        )
        return
    engine = create_db_engine(url)
    try:
        revision = current_revision(engine)
    except SQLAlchemyError as err:
        yield Finding(
            "database",
            "fail",
            f"cannot reach {shown}: {str(err).splitlines()[0][:160]}",
            "start the database or fix KINDCHAT_DB_URL",
        )
        return
    finally:
        engine.dispose()
    head = head_revision()
    if revision != head:
        yield Finding(
            "database",
            "warn",
            f"{shown} is at revision {revision or 'none (empty)'}, the code expects {head}",
            "kindchat feedback migrate (kindchat serve also migrates on start)",
        )
    else:
        yield Finding("database", "ok", f"{shown} reachable, schema at {head}")


def check_models(settings: Settings) -> Iterator[Finding]:
    registry = Registry.for_settings(settings)
    aliases = registry.aliases()
    if not aliases:
        yield Finding(
            "models",
            "fail",
            f"no models in {settings.models_dir}",
            "scripts/run (serves at once, trains in the background) or kindchat bootstrap",
        )
        return
    broken = []
    for alias, version in sorted(aliases.items()):
        try:
            registry.verify(version)
        except RegistryError as err:
            broken.append(f"{alias} → {err}")
    if broken:
        yield Finding(
            "models",
            "fail",
            "; ".join(broken),
            "kindchat models rollback ALIAS, or promote a healthy version (kindchat models list)",
        )
    else:
        yield Finding("models", "ok", f"{len(aliases)} aliases, checksums match")


def _korean_font() -> bool:
    if shutil.which("fc-list") is None:
        return False
    listed = subprocess.run(
        ["fc-list", ":lang=ko", "family"], capture_output=True, text=True, check=False
    )
    return bool(listed.stdout.strip())


def check_browser(settings: Settings) -> Iterator[Finding]:
    chromium = next((p for p in CHROMIUM_PATHS if Path(p).exists()), None)
    if chromium is None:
        yield Finding(
            "browser tests",
            "warn",
            "no Chromium (the UI tests skip, or fail under KINDCHAT_REQUIRE_BROWSER=1)",
            "apt-get install -y chromium fonts-nanum fonts-noto-color-emoji",
        )
    elif not _korean_font():
        yield Finding(
            "browser tests",
            "warn",
            f"{chromium} but no Korean font: screenshots show boxes for Hangul",
            "apt-get install -y fonts-nanum",
        )
    else:
        yield Finding("browser tests", "ok", f"{chromium} with a Korean font")


def check_port(settings: Settings) -> Iterator[Finding]:
    if settings.port == 0:
        return
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((settings.host, settings.port))
        except OSError as err:
            yield Finding(
                "port",
                "fail",
                f"{settings.host}:{settings.port} is in use ({err.strerror})",
                f"stop what listens there, or kindchat serve --port {settings.port + 1}",
            )
            return
    yield Finding("port", "ok", f"{settings.host}:{settings.port} is free")


def check_offline(settings: Settings) -> Iterator[Finding]:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline and settings.backend in ("tgi", "openai"):
        yield Finding(
            "HF_HUB_OFFLINE",
            "warn",
            f"HF_HUB_OFFLINE=1 with --backend {settings.backend}: huggingface_hub's clients "
            "(InferenceClient) refuse even local URLs; kindchat's own backends are fine",
            "unset HF_HUB_OFFLINE for tools that use huggingface_hub's InferenceClient",
        )


CHECKS: list[Callable[[Settings], Iterator[Finding]]] = [
    check_torch,
    check_seed,
    check_database,
    check_models,
    check_browser,
    check_port,
    check_offline,
]


def run_checks(settings: Settings, preset: str = "tiny") -> list[Finding]:
    findings = list(check_resources(settings, preset))
    for check in CHECKS:
        findings.extend(check(settings))
    return findings
