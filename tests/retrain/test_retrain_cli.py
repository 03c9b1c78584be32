"""`kindchat retrain run|status`, `kindchat models promote|rollback` on a micro registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from kindchat.cli import app
from kindchat.config import Settings
from kindchat.models.registry import MANIFEST, Registry

runner = CliRunner()


def kindchat(settings: Settings, *args: str) -> tuple[int, str]:
    base = ["--home", str(settings.home), "--data-dir", str(settings.data_dir)]
    result = runner.invoke(app, [*base, *args])
    return result.exit_code, result.output


def copy_of(registry: Registry, alias: str) -> str:
    source = registry.resolve(alias)

    def write(target: Path) -> None:
        shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MANIFEST))

    return registry.save("policy", write).version


def test_promote_and_rollback_from_the_command_line(micro_copy: Settings) -> None:
    registry = Registry(micro_copy.models_dir)
    old = registry.aliases()["rlhf"]
    candidate = copy_of(registry, "rlhf")
    code, out = kindchat(micro_copy, "models", "promote", candidate, "--alias", "rlhf")
    assert code == 0, out
    assert registry.aliases()["rlhf"] == candidate and old in out
    code, out = kindchat(micro_copy, "models", "rollback", "--alias", "rlhf")
    assert code == 0 and registry.aliases()["rlhf"] == old
    code, out = kindchat(micro_copy, "models", "rollback", "--alias", "rlhf")
    assert code == 2 and "no earlier version" in out
    rm = registry.aliases()["rm"]
    code, out = kindchat(micro_copy, "models", "promote", rm, "--alias", "rlhf")
    assert code == 2 and "rm model" in out and registry.aliases()["rlhf"] == old


def test_promoting_a_damaged_version_is_refused(micro_copy: Settings) -> None:
    """A version whose files no longer match its manifest's checksums is not promoted: one
    line, exit 2, and the alias stays where it was."""
    registry = Registry(micro_copy.models_dir)
    before = registry.alias_state()
    candidate = copy_of(registry, "rlhf")
    weights = next(registry.path(candidate).glob("*.safetensors"))
    with weights.open("ab") as handle:
        handle.write(b"\x00" * 16)  # damaged after saving
    code, out = kindchat(micro_copy, "models", "promote", candidate, "--alias", "rlhf")
    assert code == 2, out
    [error] = [line for line in out.splitlines() if "error:" in line]  # one line, no traceback
    assert "checksum mismatch" in error and candidate in error and "Traceback" not in out
    assert registry.alias_state() == before


def test_retrain_run_skips_and_status_shows_it(micro_copy: Settings) -> None:
    code, out = kindchat(micro_copy, "retrain", "run", "--preset", "micro", "--min-new-pairs", "3")
    assert code == 0, out
    assert "skipped" in out and "3 needed" in out
    code, out = kindchat(micro_copy, "retrain", "status", "--json")
    assert code == 0, out
    status = json.loads(out)
    assert status["running"] is None and status["next_run"] is None
    assert [r["status"] for r in status["runs"]] == ["skipped"]
    assert status["aliases"]["rlhf"] == Registry(micro_copy.models_dir).aliases()["rlhf"]
