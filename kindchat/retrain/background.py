"""Serve first, train in the background: the server starts a bootstrap of a larger preset in a
low-priority child process and reads its progress.

`kindchat serve --background-preset tiny` (or `KINDCHAT_BACKGROUND_PRESET`) starts
`python -m kindchat bootstrap --preset tiny --serve-sft-first` niced by `retrain_nice`, unless
that preset is bootstrapped already (its state says `done`) or another process is on it. As
its stages register, the aliases move and every server hot-swaps, as for a nightly promotion.
Stopping the server stops the child; the next start resumes after the last finished stage.

On a machine with no model at all (a fresh clone), the child first trains the `first_preset`
(micro: base LM and SFT, ~20 s) at full priority and serves it, then nices itself for the rest.
`kindchat serve` starts the child before it imports the serving stack, so the two overlap; the
server starts with nothing to serve and answers `model_starting` (503, Retry-After) until the
first SFT model lands and hot-swaps in.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

from kindchat.config import Settings
from kindchat.models.registry import Registry
from kindchat.retrain.bootstrap_state import process_alive, read_state

logger = logging.getLogger(__name__)


def served_preset(registry: Registry, alias: str = "rlhf") -> str | None:
    """The preset the model behind `alias` descends from (its base's manifest says), or None."""
    version = registry.aliases().get(alias)
    seen: set[str] = set()
    while version is not None and version not in seen and registry.is_version(version):
        seen.add(version)
        manifest = registry.manifest(version)
        if "preset" in manifest.config:
            return str(manifest.config["preset"])
        version = manifest.parents[0] if manifest.parents else None
    return None


class BackgroundBootstrap:
    """The child bootstrap of `preset`, owned by a server; `start()` / `stop()` / `view()`."""

    def __init__(self, settings: Settings, preset: str) -> None:
        self.settings = settings
        self.preset = preset
        self.process: subprocess.Popen[bytes] | None = None
        self.first: str | None = None  # the small preset trained first, when nothing served

    def needed(self) -> bool:
        state = read_state(self.settings, self.preset)
        if state is None:  # no record: trained before records existed, or never
            return served_preset(Registry.for_settings(self.settings)) != self.preset
        if state.status == "done":
            return False
        return not (state.status == "running" and process_alive(state.pid))

    def start(self) -> bool:
        """Start the child when the preset still needs training; whether one was started."""
        if self.process is not None and self.process.poll() is None:
            return False  # started already (by `kindchat serve`, before the app)
        if not self.needed():
            return False
        log = self.settings.logs_dir / f"bootstrap-{self.preset}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "KINDCHAT_HOME": str(self.settings.home), "PYTHONUNBUFFERED": "1"}
        env["KINDCHAT_DATA_DIR"] = str(self.settings.data_dir)
        if self.settings.registry_dir is not None:
            env["KINDCHAT_REGISTRY_DIR"] = str(self.settings.registry_dir)
        if self.settings.db_url:
            env["KINDCHAT_DB_URL"] = self.settings.db_url
        command = [sys.executable, "-m", "kindchat", "bootstrap", "--preset", self.preset]
        command += ["--serve-sft-first", "--nice", str(self.settings.retrain_nice)]
        self.first = self.settings.first_preset if self.nothing_served() else None
        if self.first is not None:
            command += ["--first", self.first]
        with log.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        logger.info(
            "background bootstrap of %s%s: pid %d (nice +%d), log %s",
            self.preset,
            f" ({self.first} first, at full priority)" if self.first else "",
            self.process.pid,
            self.settings.retrain_nice,
            log,
        )
        return True

    def nothing_served(self) -> bool:
        return "rlhf" not in Registry.for_settings(self.settings).aliases()

    def training_first(self) -> bool:
        """Whether the child is training the first models of a machine that has none (the
        server then starts empty and waits for them)."""
        return (
            self.first is not None
            and self.process is not None
            and self.process.poll() is None
            and self.nothing_served()
        )

    def stop(self) -> None:
        """Stop the child (it resumes after its last finished stage next time)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)

    def view(self) -> dict[str, Any]:
        """The preset's progress for `GET /v1/bootstrap` (`active`: training now); while the
        first models train, theirs (`first`: true)."""
        if self.first is not None:
            first = read_state(self.settings, self.first)
            if first is None or first.status == "running":
                return {**self._view(self.first), "first": True}
        return self._view(self.preset)

    def _view(self, preset: str) -> dict[str, Any]:
        state = read_state(self.settings, preset)
        if state is None:
            return {"active": self.process is not None, "preset": preset, "status": "waiting"}
        data = state.view()
        alive = state.status == "running" and process_alive(state.pid)
        if state.status == "running" and not alive:
            data["status"] = "stopped"
        return {"active": alive, **data}
