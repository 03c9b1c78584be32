"""Which model answers which name, and hot swap when a registry alias moves.

The manager serves the aliases in `settings.serve_aliases` (e.g. `rlhf`, `sft`) under the names
`kindchat-<alias>`, and every loaded version under its version id. When `aliases.json` changes
(polled by :meth:`ModelManager.watch`) or an admin asks (:meth:`ModelManager.reload`):

1. each version an alias now points at is loaded *beside* the ones serving (a version that fails
   to load is reported, and its alias keeps the old version);
2. the alias table is replaced in one assignment, so new requests go to the new versions;
3. versions no alias needs any more are retired: requests holding a :class:`Lease` on them
   finish, and the last one to leave frees the model.

If the first served alias (the default, `rlhf`) does not exist yet, or its version failed to
load, its name answers with the next served alias that does (`kindchat-rlhf` -> `sft` before the
first RLHF promotion); the response's `model` field and `/v1/models` say which version really
answered, and the `/v1/models` note says why.

For the arena alone (never listed, never answering a chat), the manager also loads the alias
`challenger` and the versions :attr:`ModelManager.arena_versions` names at each reload (the open
challenge's champion, when no served alias points at it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kindchat.config import Settings
from kindchat.models.backends.base import BackendUnavailableError, GenerationBackend
from kindchat.models.registry import (
    ALIASES,
    CHALLENGER_ALIAS,
    Registry,
    RegistryError,
    UnknownModelError,
)

logger = logging.getLogger(__name__)

NAME_PREFIX = "kindchat-"
Loader = Callable[[str, Path], GenerationBackend]


@dataclass
class LoadedModel:
    version: str
    backend: GenerationBackend
    loaded_at: float = field(default_factory=time.time)
    active: int = 0
    retired: bool = False


@dataclass(frozen=True)
class ModelName:
    """A name `/v1/models` lists and what it resolves to now."""

    name: str
    version: str
    alias: str | None
    note: str | None = None


@dataclass
class ReloadReport:
    aliases: dict[str, str]
    loaded: list[str] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # alias -> "version: error"
    reason: str = ""


class Lease:
    """One request's hold on a loaded model; release it when the answer is done (or dropped)."""

    def __init__(self, manager: ModelManager, model: LoadedModel, name: ModelName) -> None:
        self._manager = manager
        self.model = model
        self.name = name
        self._released = False

    @property
    def backend(self) -> GenerationBackend:
        return self.model.backend

    @property
    def version(self) -> str:
        return self.model.version

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        await self._manager._release(self.model)


def default_loader(settings: Settings) -> Loader:
    """Load a version with the configured local backend (`hf` or `deepspeed`)."""

    def load(version: str, path: Path) -> GenerationBackend:
        common: dict[str, Any] = {
            "device": settings.device,
            "max_batch_size": settings.max_batch_size,
            "max_queue": settings.max_queue,
            "label": version,
        }
        if settings.backend == "deepspeed":
            # lazy: the local backends import torch; remote deployments start without it
            from kindchat.models.backends.deepspeed import DeepSpeedBackend

            return DeepSpeedBackend.load(path, **common)
        # lazy: the local backends import torch; remote deployments start without it
        from kindchat.models.backends.hf import HFBackend

        return HFBackend.load(path, **common)

    return load


class ModelsStartingError(RegistryError):
    """Nothing is served yet: the first models of a fresh machine are still training."""

    code = "model_starting"
    retry_after = 5


class ModelManager:
    """Loaded versions, the alias table, leases, and hot swap."""

    def __init__(
        self,
        settings: Settings,
        *,
        loader: Loader | None = None,
        remote: Mapping[str, GenerationBackend] | None = None,
    ) -> None:
        """`remote` (alias -> a TGI or OpenAI-compatible server) serves the aliases instead of
        loading registry versions; the servers own their models (no hot swap here)."""
        if not settings.serve_aliases:
            raise ValueError("serve_aliases is empty; name at least one alias, e.g. ['sft']")
        self.settings = settings
        self.registry = Registry.for_settings(settings)
        self._loader = loader or default_loader(settings)
        self._remote = dict(remote) if remote else None
        self._loaded: dict[str, LoadedModel] = {}
        self._aliases: dict[str, str] = {}
        self._arena: set[str] = set()  # versions loaded for the arena only
        # asked at every reload: versions the arena needs beside the aliases (set by the app)
        self.arena_versions: Callable[[], Collection[str]] | None = None
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self._stamp: tuple[int, int, int] | None = None
        self.failures: dict[str, str] = {}
        self.load_failures_total = 0
        self.swaps_total = 0
        self.last_report: ReloadReport | None = None
        self.starting = False  # started empty: the first models are on their way

    @property
    def backend_name(self) -> str:
        if self._remote:
            return next(iter(self._remote.values())).name
        return self.settings.backend

    # ---- lifecycle --------------------------------------------------------------------------
    async def start(self, *, allow_empty: bool = False) -> ReloadReport:
        """Load what the served aliases point at; fail if nothing can be served, unless
        `allow_empty` (the first models are training: requests get :class:`ModelsStartingError`
        until they land and the alias watcher loads them)."""
        if self._remote is not None:
            started: dict[int, str] = {}
            for alias, backend in self._remote.items():
                if id(backend) not in started:
                    await backend.start()
                    version = f"{backend.name}:{getattr(backend, 'model_id', backend.name)}"
                    started[id(backend)] = version
                    self._loaded[version] = LoadedModel(version, backend)
                self._aliases[alias] = started[id(backend)]
            report = ReloadReport(
                dict(self._aliases), loaded=list(started.values()), reason="start"
            )
        else:
            report = await self.reload("start")
        if not self._aliases and allow_empty:
            self.starting = True
            logger.info("no model to serve yet: waiting for the first models to land")
            return report
        if not self._aliases:
            known = ", ".join(sorted(self.registry.aliases())) or "none"
            detail = "; ".join(f"{a}: {e}" for a, e in report.failed.items())
            raise UnknownModelError(
                f"none of the served aliases {self.settings.serve_aliases} can be served "
                f"(registry aliases: {known}{'; ' + detail if detail else ''}); "
                "run `kindchat bootstrap` or set KINDCHAT_SERVE_ALIASES"
            )
        return report

    async def close(self) -> None:
        async with self._lock:
            models = list(self._loaded.values())
            self._loaded.clear()
            self._aliases = {}
        for model in models:
            await model.backend.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def watch(self) -> None:
        """Poll `aliases.json` and reload when it changes (run as a task; cancel to stop)."""
        interval = self.settings.alias_poll_s
        if interval <= 0 or self._remote is not None:
            return
        self._stamp = self._aliases_stamp()
        while True:
            # someone may be waiting for the first model: look more often until it is there
            await asyncio.sleep(min(interval, 0.5) if self.starting else interval)
            stamp = self._aliases_stamp()
            if stamp == self._stamp:
                continue
            self._stamp = stamp
            try:
                await self.reload("aliases.json changed")
            except Exception:  # keep watching; the old models keep serving
                logger.exception("reload after an alias change failed")

    def _aliases_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.registry.root / ALIASES)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    # ---- hot swap ---------------------------------------------------------------------------
    async def reload(self, reason: str = "admin") -> ReloadReport:
        """Load new alias targets beside the old ones, switch, and retire what is unused."""
        if self._remote is not None:
            return ReloadReport(dict(self._aliases), reason=f"{reason}: remote backend, no-op")
        async with self._lock:
            registry_aliases = await asyncio.to_thread(self.registry.aliases)
            report = ReloadReport({}, reason=reason)
            new_table: dict[str, str] = {}
            for alias in self._loaded_aliases():
                wanted = registry_aliases.get(alias)
                current = self._aliases.get(alias)
                if wanted is None:
                    if current is not None and alias != CHALLENGER_ALIAS:
                        # alias removed: keep serving what we have (a retired challenger goes)
                        new_table[alias] = current
                    continue
                if wanted not in self._loaded:
                    error = await self._load(wanted)
                    if error is not None:
                        report.failed[alias] = f"{wanted}: {error}"
                        if current is not None:
                            new_table[alias] = current
                        continue
                    report.loaded.append(wanted)
                new_table[alias] = wanted
            arena = await self._load_arena_versions(report)
            changed = new_table != self._aliases
            self._aliases = new_table  # new requests use the new table from here on
            if new_table:
                self.starting = False
            self._arena = arena
            report.aliases = dict(new_table)
            report.retired = self._retire_unused()
            self.failures = dict(report.failed)
            if changed and reason != "start":
                self.swaps_total += 1
            self.last_report = report
        log = logger.error if report.failed else logger.info
        log(
            "models (%s): aliases %s, loaded %s, retired %s, failed %s",
            reason,
            report.aliases,
            report.loaded,
            report.retired,
            report.failed or "none",
        )
        return report

    async def _load_arena_versions(self, report: ReloadReport) -> set[str]:
        """Load the versions :attr:`arena_versions` asks for now; those loaded (a failure to
        ask keeps the current ones, a failure to load is reported under `arena:<version>`)."""
        if self.arena_versions is None:
            return set()
        try:
            wanted = set(await asyncio.to_thread(self.arena_versions))
        except Exception:
            logger.exception("could not tell which versions the arena needs; keeping the old")
            return set(self._arena)
        loaded = set()
        for version in sorted(wanted):
            if version not in self._loaded:
                error = await self._load(version)
                if error is not None:
                    report.failed[f"arena:{version}"] = f"{version}: {error}"
                    continue
                report.loaded.append(version)
            loaded.add(version)
        return loaded

    async def _load(self, version: str) -> str | None:
        """Load and start `version`; the error text if it fails (the caller keeps the old one)."""
        try:
            path = await asyncio.to_thread(self.registry.resolve, version)
            backend = await asyncio.to_thread(self._loader, version, path)
            await backend.start()
        except Exception as err:
            self.load_failures_total += 1
            logger.exception(
                "could not load model version %s; the old version keeps serving", version
            )
            return f"{type(err).__name__}: {err}"
        self._loaded[version] = LoadedModel(version, backend)
        return None

    def _retire_unused(self) -> list[str]:
        needed = set(self._aliases.values()) | self._arena
        retired = []
        for version, model in list(self._loaded.items()):
            if version in needed:
                continue
            del self._loaded[version]
            model.retired = True
            retired.append(version)
            if model.active == 0:
                self._close_later(model)
            else:
                logger.info("%s retired; %d requests still finishing", version, model.active)
        return retired

    def _close_later(self, model: LoadedModel) -> None:
        task = asyncio.get_running_loop().create_task(self._close(model))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, model: LoadedModel) -> None:
        try:
            await model.backend.close()
            logger.info("freed model version %s", model.version)
        except Exception:
            logger.exception("closing model version %s failed", model.version)

    async def _release(self, model: LoadedModel) -> None:
        model.active -= 1
        if model.retired and model.active == 0:
            await self._close(model)

    def _loaded_aliases(self) -> list[str]:
        """The served aliases, plus the arena's challenger (loaded, never listed)."""
        aliases = list(self.settings.serve_aliases)
        return aliases if CHALLENGER_ALIAS in aliases else [*aliases, CHALLENGER_ALIAS]

    def _public_versions(self) -> set[str]:
        return {self._aliases[a] for a in self.settings.serve_aliases if a in self._aliases}

    # ---- lookup -----------------------------------------------------------------------------
    def names(self) -> list[ModelName]:
        """Served names: `kindchat-<alias>` (with fallbacks) and each publicly served version id
        (the challenger's version is the arena's alone)."""
        out = []
        for alias in self.settings.serve_aliases:
            try:
                out.append(self.resolve(NAME_PREFIX + alias))
            except UnknownModelError:
                continue
        public = self._public_versions()
        out.extend(ModelName(v, v, None) for v in sorted(self._loaded) if v in public)
        return out

    def challenger(self) -> ModelName | None:
        """The challenger, when one is loaded (only arena battles may use it)."""
        if CHALLENGER_ALIAS in self.settings.serve_aliases:
            return None  # configured as an ordinary served alias
        version = self._aliases.get(CHALLENGER_ALIAS)
        if version is None or version not in self._loaded:
            return None
        return ModelName(NAME_PREFIX + CHALLENGER_ALIAS, version, CHALLENGER_ALIAS)

    def resolve(self, name: str, *, arena: bool = False) -> ModelName:
        """What `name` (`kindchat-<alias>`, a bare served alias, or a version id) answers with.
        The challenger resolves only for the arena (`arena=True`)."""
        table = self._aliases
        alias = name.removeprefix(NAME_PREFIX)
        if arena and alias == CHALLENGER_ALIAS and (challenger := self.challenger()) is not None:
            return challenger
        if arena and name in self._arena and name in self._loaded:
            return ModelName(name, name, None)
        if alias in self.settings.serve_aliases:
            if alias in table:
                return ModelName(name, table[alias], alias)
            if alias == self.settings.serve_aliases[0]:
                for other in self.settings.serve_aliases[1:]:
                    if other in table:
                        note = self._fallback_note(alias, other, table[other])
                        return ModelName(name, table[other], other, note)
        if name in self._loaded and name in self._public_versions():
            return ModelName(name, name, None)
        if not table and self.starting:
            raise ModelsStartingError(
                "the first model is still training on this machine (about 30 s after the "
                "server started); try again in a few seconds",
                field="model",
            )
        served = ", ".join(n.name for n in self.names()) or "none"
        raise UnknownModelError(f"model {name!r} is not served here; choose one of: {served}")

    def _fallback_note(self, alias: str, other: str, version: str) -> str:
        """Why `alias` answers with `other` (at `version`): its version failed to load (which,
        and why, from the last reload), or the alias does not exist yet."""
        failure = self.failures.get(alias)  # "<version>: <error>"
        if failure is None:
            return f"alias {alias!r} does not exist yet; answering with {other!r}"
        failed, _, reason = failure.partition(": ")
        return (
            f"alias {alias!r} points at {failed}, which failed to load ({reason}); "
            f"answering with {other!r} ({version}) instead"
        )

    def acquire(self, name: str, *, arena: bool = False) -> Lease:
        """Hold the model `name` resolves to until :meth:`Lease.release` (hot swap waits)."""
        resolved = self.resolve(name, arena=arena)
        model = self._loaded.get(resolved.version)
        if model is None:  # retired between resolve and here: resolve again
            resolved = self.resolve(name, arena=arena)
            model = self._loaded.get(resolved.version)
        if model is None:
            raise BackendUnavailableError(f"model {name!r} is being swapped; retry", retry_after=1)
        model.active += 1
        return Lease(self, model, resolved)

    def default_name(self) -> str:
        return NAME_PREFIX + self.settings.serve_aliases[0]

    def arena_name(self, version: str, *, alias: str | None = None) -> str | None:
        """A name an arena side can acquire that answers with `version` now: `kindchat-<alias>`
        when that is served and answers with it, else the first served alias that does, else
        the version id (publicly served, or loaded for the arena); None when none does."""
        preferred = [alias] if alias and alias != CHALLENGER_ALIAS else []
        for candidate in [*preferred, *self.settings.serve_aliases]:
            try:
                if self.resolve(NAME_PREFIX + candidate).version == version:
                    return NAME_PREFIX + candidate
            except UnknownModelError:
                continue
        if version in self._loaded and (
            version in self._public_versions() or version in self._arena
        ):
            return version
        return None

    # ---- introspection ----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "backend": self.backend_name,
            "aliases": dict(self._aliases),
            "loaded": {
                v: {"active": m.active, **m.backend.stats()} for v, m in self._loaded.items()
            },
            "failures": dict(self.failures),
            "load_failures_total": self.load_failures_total,
            "swaps_total": self.swaps_total,
        }

    def queue_stats(self) -> dict[str, int]:
        queued = running = 0
        for model in self._loaded.values():
            stats = model.backend.stats()
            queued += stats.get("queued", 0)
            running += stats.get("running", 0)
        return {"queued": queued, "running": running}
