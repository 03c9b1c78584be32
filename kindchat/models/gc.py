"""`kindchat models gc`: free the disk that versions nobody can reach any more hold.

A version is kept when any of these holds, and removed otherwise:

- an alias points at it (never removed, whatever else is said), or it is among the last `keep`
  entries of an alias's history (what `models rollback` can go back to);
- it is a parent, directly or through other kept versions, of a kept version (lineage: the SFT
  anchor of a policy, the RM it was trained against);
- the caller protects it (the CLI passes the versions of the last `keep` refused retrain runs,
  kept for inspection, and those of runs still in progress);
- it is younger than `min_age_s` (a cycle may have registered it a moment ago and not yet
  pointed an alias at it).

Removal renames the directory out of the registry first (one step: never half-listed), then
deletes it. The plan is made and carried out under the registry's alias lock, so no alias can
move onto a version while it goes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from kindchat.models.registry import Manifest, Registry

logger = logging.getLogger(__name__)

TRASH = ".trash"


@dataclass
class GcPlan:
    remove: list[Manifest] = field(default_factory=list)
    keep: dict[str, str] = field(default_factory=dict)  # version -> why
    bytes_freed: int = 0


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def plan_gc(
    registry: Registry,
    keep: int = 2,
    protected: set[str] | None = None,
    min_age_s: float = 3600.0,
    now: float | None = None,
) -> GcPlan:
    """What a gc would remove and why everything else stays."""
    if keep < 0:
        raise ValueError(f"--keep must be >= 0, got {keep}")
    state = registry.alias_state()
    versions = {m.version: m for m in registry.versions()}
    reasons: dict[str, str] = {}
    for alias, version in state["aliases"].items():
        reasons.setdefault(version, f"alias {alias}")
    for alias, history in state["history"].items():
        for version in history[-keep:] if keep else []:
            reasons.setdefault(version, f"history of {alias}")
    for version in protected or set():
        reasons.setdefault(version, "recent retrain run")
    clock = time.time() if now is None else now
    for version, manifest in versions.items():
        created = datetime.fromisoformat(manifest.created).timestamp()
        if clock - created < min_age_s:
            reasons.setdefault(version, "younger than the minimum age")
    frontier = [v for v in reasons if v in versions]
    while frontier:  # lineage: parents of kept versions stay
        child = frontier.pop()
        for parent in versions[child].parents:
            if parent in versions and parent not in reasons:
                reasons[parent] = f"parent of {child}"
                frontier.append(parent)
    plan = GcPlan(keep={v: r for v, r in reasons.items() if v in versions})
    for version, manifest in sorted(versions.items(), key=lambda kv: kv[1].created):
        if version not in reasons:
            plan.remove.append(manifest)
            plan.bytes_freed += _size(registry.root / version)
    return plan


def run_gc(
    registry: Registry,
    keep: int = 2,
    protected: set[str] | None = None,
    min_age_s: float = 3600.0,
    dry_run: bool = False,
) -> GcPlan:
    """Plan and, unless `dry_run`, remove; under the alias lock throughout."""
    with registry.aliases_locked():
        plan = plan_gc(registry, keep, protected, min_age_s)
        if dry_run:
            return plan
        aliases = set(registry.alias_state()["aliases"].values())
        trash = registry.root / TRASH
        trash.mkdir(exist_ok=True)
        for manifest in plan.remove:
            if manifest.version in aliases:  # belt and braces: never an alias target
                raise RuntimeError(f"gc planned to remove alias target {manifest.version}")
            target = trash / manifest.version
            os.replace(registry.root / manifest.version, target)
            shutil.rmtree(target, ignore_errors=True)
            logger.info("gc removed %s (%s)", manifest.version, manifest.kind)
    return plan
