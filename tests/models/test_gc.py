"""`models gc`: what nothing can reach goes; alias targets, their recent history, their
parents and protected versions stay."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from kindchat.cli import app
from kindchat.config import Settings
from kindchat.models.gc import plan_gc, run_gc
from kindchat.models.registry import Registry


def _save(registry: Registry, kind: str, parents: list[str] | None = None) -> str:
    def write(path: Path) -> None:
        (path / "config.json").write_text("{}")
        (path / "weights.bin").write_bytes(b"x" * 1000)

    return registry.save(kind, write, parents=parents or []).version  # type: ignore[arg-type]


def test_gc_keeps_what_can_be_reached(settings: Settings) -> None:
    registry = Registry(settings.models_dir)
    base = _save(registry, "base")
    sft = _save(registry, "sft", [base])
    rm = _save(registry, "rm", [base])
    policies = [_save(registry, "policy", [sft, rm]) for _ in range(4)]
    orphan_rm = _save(registry, "rm", [base])  # a refused run's RM, no alias
    protected = _save(registry, "policy", [sft])
    registry.set_alias("sft", sft)
    for version in policies:  # rlhf history: p0, p1, p2; target p3
        registry.set_alias("rlhf", version)

    plan = plan_gc(registry, keep=1, protected={protected}, min_age_s=0)
    removed = {m.version for m in plan.remove}
    assert removed == {policies[0], policies[1], orphan_rm}
    assert plan.keep[policies[3]] == "alias rlhf" and plan.keep[policies[2]] == "history of rlhf"
    assert plan.keep[rm].startswith("parent of") and plan.keep[base].startswith("parent of")
    assert plan.keep[protected] == "recent retrain run"
    assert plan.bytes_freed >= 3000
    # Young versions are never taken, whatever else holds.
    assert plan_gc(registry, keep=0).remove == []

    dry = run_gc(registry, keep=1, protected={protected}, min_age_s=0, dry_run=True)
    assert {m.version for m in dry.remove} == removed and len(registry.versions()) == 9
    run_gc(registry, keep=1, protected={protected}, min_age_s=0)
    left = {m.version for m in registry.versions()}
    assert left == {base, sft, rm, policies[2], policies[3], protected}
    assert registry.resolve("rlhf") == registry.root / policies[3]
    assert registry.rollback_alias("rlhf") == policies[2]  # what rollback needs is there
    # keep=0: only alias targets and their lineage remain.
    run_gc(registry, keep=0, min_age_s=0)
    assert {m.version for m in registry.versions()} == {base, sft, rm, policies[2]}


def test_cli_dry_run_prints_and_keeps(settings: Settings) -> None:
    registry = Registry(settings.models_dir)
    sft = _save(registry, "sft")
    _save(registry, "sft")
    registry.set_alias("sft", sft)
    home = ["--home", str(settings.home), "--data-dir", str(settings.data_dir)]
    out = CliRunner().invoke(app, [*home, "models", "gc", "--dry-run", "--min-age-hours", "0"])
    assert out.exit_code == 0, out.output
    assert "would remove 1 versions" in out.output and len(registry.versions()) == 2
    out = CliRunner().invoke(app, [*home, "models", "gc", "--min-age-hours", "0"])
    assert "removed 1 versions" in out.output and [m.version for m in registry.versions()] == [sft]
    bad = CliRunner().invoke(app, [*home, "models", "gc", "--keep", "-1"])
    assert bad.exit_code == 2 and "--keep must be >= 0" in bad.output
