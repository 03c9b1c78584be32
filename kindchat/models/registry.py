"""Model registry under `$KINDCHAT_HOME/models`: versions, manifests with checksums, aliases.

Layout::

    models/
      aliases.json            {"aliases": {"sft": "sft-…"}, "history": {"sft": ["sft-…", …]},
                               "set_at": {"sft": "2026-…T…+00:00"}}
      .staging/<version>/     a version being written (never listed)
      <version>/              save_pretrained output + manifest.json

A version is written under `.staging/`, its manifest (with the sha256 of every file) last, and
then renamed into place in one step: a half-written version is never listed. `aliases.json` is
replaced atomically (write + rename) under the `registry-aliases` lock of :mod:`kindchat.locks`
(a file lock, plus an advisory lock when the database is PostgreSQL, so servers and training
nodes on several hosts sharing the registry move aliases one at a time), keeping each alias's
history so a promotion can be rolled back, and when each alias last moved (`alias_set_at`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from kindchat.config import Settings
from kindchat.errors import NotFoundError, UnavailableError
from kindchat.locks import LockBusyError, held, postgres_url

logger = logging.getLogger(__name__)

ModelKind = Literal["base", "sft", "rm", "policy"]
MANIFEST = "manifest.json"
ALIASES = "aliases.json"
CHALLENGER_ALIAS = "challenger"  # a policy the users are judging in the arena
STAGING = ".staging"


class RegistryError(UnavailableError):
    """A version or alias is missing, incomplete or corrupt: it cannot be served."""


class UnknownModelError(RegistryError, NotFoundError):
    """A reference names no alias, version or model directory."""


class DamagedVersionError(RegistryError):
    """A version's files no longer match its manifest's checksums (changed or missing)."""


class Manifest(BaseModel):
    version: str
    kind: ModelKind
    parents: list[str] = Field(default_factory=list)
    data_fingerprint: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    created: str
    files: dict[str, str] = Field(default_factory=dict, description="relative path -> sha256")
    base: str | None = Field(
        None, description="For a LoRA adapter version: the version it applies to (see adapters)"
    )

    @property
    def is_adapter(self) -> bool:
        return self.base is not None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON next to `path`, flush it to disk, then rename over `path` in one step."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


ALIAS_LOCK = "registry-aliases"
ALIAS_LOCK_WAIT_S = 60.0  # alias moves are quick; waiting longer means a stuck holder


class Registry:
    def __init__(self, root: Path, *, lock_url: str | None = None) -> None:
        """`lock_url`: a PostgreSQL URL whose advisory lock guards alias moves across hosts."""
        self.root = root
        self.lock_url = lock_url
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_settings(cls, settings: Settings) -> Registry:
        """The registry of `settings.models_dir`, locking through the database when shared."""
        return cls(settings.models_dir, lock_url=postgres_url(settings))

    # ---- versions -------------------------------------------------------------------------
    def new_version_id(self, kind: ModelKind) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        return f"{kind}-{stamp}-{secrets.token_hex(3)}"

    def save(
        self,
        kind: ModelKind,
        write: Callable[[Path], None],
        *,
        parents: list[str] | None = None,
        config: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        data_fingerprint: str = "",
        base: str | None = None,
    ) -> Manifest:
        """Write a new version with `write(dir)` (e.g. `save_pretrained`) and publish it.
        `base`: the version a LoRA adapter applies to (it joins the parents: gc keeps it).

        If `write` raises, or the process dies, nothing is published.
        """
        if base is not None:
            self.manifest(base)  # the base must be a registered version
            parents = [base, *(p for p in parents or [] if p != base)]
        version = self.new_version_id(kind)
        staging = self.root / STAGING / version
        staging.mkdir(parents=True)
        try:
            write(staging)
            files = {
                str(p.relative_to(staging)): sha256_file(p)
                for p in sorted(staging.rglob("*"))
                if p.is_file() and p.name != MANIFEST
            }
            manifest = Manifest(
                version=version,
                kind=kind,
                parents=list(parents or []),
                data_fingerprint=data_fingerprint,
                config=config or {},
                metrics=metrics or {},
                created=datetime.now(UTC).isoformat(timespec="seconds"),
                files=files,
                base=base,
            )
            write_json_atomic(staging / MANIFEST, manifest.model_dump())
            os.replace(staging, self.root / version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        logger.info("registered %s version %s", kind, version)
        return manifest

    def versions(self, kind: ModelKind | None = None) -> list[Manifest]:
        """Complete versions, oldest first; staging and foreign directories are skipped."""
        out = []
        for path in self.root.iterdir():
            if path.name.startswith(".") or not (path / MANIFEST).is_file():
                continue
            manifest = self._read_manifest(path)
            if kind is None or manifest.kind == kind:
                out.append(manifest)
        return sorted(out, key=lambda m: (m.created, m.version))

    def is_version(self, ref: str) -> bool:
        """Whether `ref` is the id of a complete version (a plain name, never a path)."""
        plain = bool(ref) and not ref.startswith(".") and "/" not in ref and "\\" not in ref
        return plain and (self.root / ref / MANIFEST).is_file()

    def manifest(self, version: str) -> Manifest:
        if not self.is_version(version):
            raise UnknownModelError(f"no complete model version {version!r} in {self.root}")
        return self._read_manifest(self.root / version)

    def path(self, version: str) -> Path:
        self.manifest(version)
        return self.root / version

    def update_metrics(self, version: str, metrics: dict[str, Any]) -> Manifest:
        """Merge `metrics` into a version's manifest (the manifest is not among the checksums)."""
        manifest = self.manifest(version)
        updated = manifest.model_copy(update={"metrics": {**manifest.metrics, **metrics}})
        write_json_atomic(self.root / version / MANIFEST, updated.model_dump())
        return updated

    def verify(self, version: str) -> Path:
        """Check every file against the manifest's sha256; return the version's directory."""
        manifest = self.manifest(version)
        root = self.root / version
        for rel, expected in manifest.files.items():
            path = root / rel
            if not path.is_file():
                raise DamagedVersionError(
                    f"model {version}: file {rel} is missing; the version is damaged"
                )
            if sha256_file(path) != expected:
                raise DamagedVersionError(
                    f"model {version}: checksum mismatch in {rel} (the file was changed after "
                    "saving); retrain or restore this version"
                )
        return root

    def prune_staging(self) -> int:
        """Remove leftovers of interrupted saves; return how many were removed."""
        staging = self.root / STAGING
        if not staging.is_dir():
            return 0
        removed = 0
        for path in staging.iterdir():
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        return removed

    def _read_manifest(self, path: Path) -> Manifest:
        try:
            return Manifest.model_validate_json((path / MANIFEST).read_text(encoding="utf-8"))
        except ValueError as err:
            raise RegistryError(f"{path / MANIFEST} is not a valid manifest: {err}") from None

    # ---- aliases --------------------------------------------------------------------------
    @contextmanager
    def _aliases_locked(self) -> Iterator[dict[str, Any]]:
        with self.aliases_locked():
            state = self._read_aliases()
            yield state
            write_json_atomic(self.root / ALIASES, state)

    def _read_aliases(self) -> dict[str, Any]:
        path = self.root / ALIASES
        if not path.is_file():
            return {"aliases": {}, "history": {}, "set_at": {}}
        state = json.loads(path.read_text(encoding="utf-8"))
        state.setdefault("aliases", {})
        state.setdefault("history", {})
        state.setdefault("set_at", {})
        return state

    def aliases(self) -> dict[str, str]:
        return dict(self._read_aliases()["aliases"])

    def alias_state(self) -> dict[str, Any]:
        """Aliases and each alias's history (oldest first), as stored."""
        return self._read_aliases()

    def alias_set_at(self, alias: str) -> datetime | None:
        """When `alias` last moved to what it names now (None: unknown, e.g. a registry from
        before this was recorded, or no such alias)."""
        stamp = self._read_aliases()["set_at"].get(alias)
        return datetime.fromisoformat(stamp) if stamp else None

    @contextmanager
    def aliases_locked(self) -> Iterator[None]:
        """Hold the alias lock without changing anything: no alias moves meanwhile (gc)."""
        with ExitStack() as stack:
            try:
                stack.enter_context(
                    held(
                        ALIAS_LOCK,
                        self.root / ".aliases.lock",
                        url=self.lock_url,
                        wait=ALIAS_LOCK_WAIT_S,
                    )
                )
            except LockBusyError as err:
                raise RegistryError(f"the aliases are locked by {err.holder}; try again") from None
            yield

    def set_alias(self, alias: str, version: str) -> str | None:
        """Point `alias` at `version` atomically; return the version it pointed at before.

        The version's files are checked against its manifest first (:meth:`verify`, outside the
        lock): an alias never moves to a damaged version (:class:`DamagedVersionError`, and the
        alias stays where it was).
        """
        self.verify(version)
        with self._aliases_locked() as state:
            previous = state["aliases"].get(alias)
            if previous != version:
                if previous is not None:
                    state["history"].setdefault(alias, []).append(previous)
                state["aliases"][alias] = version
                state["set_at"][alias] = _now()
        logger.info("alias %s -> %s (was %s)", alias, version, previous)
        return previous

    def remove_alias(self, alias: str, *, expected: str | None = None) -> str | None:
        """Drop `alias` atomically (its last target goes to its history); the version it
        pointed at, or None. With `expected`, only when it still points there."""
        with self._aliases_locked() as state:
            previous = state["aliases"].get(alias)
            if previous is None or (expected is not None and previous != expected):
                return None
            del state["aliases"][alias]
            state["set_at"].pop(alias, None)
            state["history"].setdefault(alias, []).append(previous)
        logger.info("alias %s removed (was %s)", alias, previous)
        return previous

    def rollback_alias(self, alias: str) -> str:
        """Point `alias` back at its previous version; return that version."""
        with self._aliases_locked() as state:
            history = state["history"].get(alias) or []
            if not history:
                raise RegistryError(f"alias {alias!r} has no earlier version to roll back to")
            version = history.pop()
            state["aliases"][alias] = version
            state["set_at"][alias] = _now()
        logger.info("alias %s rolled back to %s", alias, version)
        return version

    def resolve(self, ref: str) -> Path:
        """The directory of an alias, a version id, or a local model directory."""
        aliases = self.aliases()
        if ref in aliases:
            return self.verify(aliases[ref])
        if self.is_version(ref):
            return self.verify(ref)
        path = Path(ref).expanduser()
        if path.is_dir() and (path / "config.json").is_file():
            return path
        known = ", ".join(sorted(aliases)) or "none yet (run `kindchat bootstrap`)"
        raise UnknownModelError(
            f"unknown model {ref!r}: not an alias (known: {known}), a version id "
            "(see `kindchat models list`), or a directory with config.json"
        )

    def version_of(self, ref: str) -> str | None:
        """The version id an alias or version id refers to (None for a plain directory)."""
        aliases = self.aliases()
        if ref in aliases:
            return aliases[ref]
        return ref if self.is_version(ref) else None


def _now() -> str:
    return datetime.now(UTC).isoformat()
