"""Registry: atomic publication, checksums, aliases with history."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from kindchat.models.registry import Registry, RegistryError, UnknownModelError


def write_model(path: Path) -> None:
    (path / "config.json").write_text('{"model_type": "gpt_neox"}')
    (path / "model.safetensors").write_bytes(os.urandom(1024))


def test_save_publishes_complete_version(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    m = registry.save("sft", write_model, parents=["base-x"], metrics={"heldout_ppl": 3.0})
    assert [v.version for v in registry.versions()] == [m.version]
    assert set(m.files) == {"config.json", "model.safetensors"}
    assert registry.verify(m.version) == tmp_path / m.version
    assert registry.manifest(m.version).parents == ["base-x"]


def test_failed_save_is_not_listed(tmp_path: Path) -> None:
    registry = Registry(tmp_path)

    def crash(path: Path) -> None:
        write_model(path)
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        registry.save("sft", crash)
    assert registry.versions() == []
    assert not any((tmp_path / ".staging").iterdir())


def _slow_save(root: str) -> None:
    def write(path: Path) -> None:
        write_model(path)
        time.sleep(60)

    Registry(Path(root)).save("sft", write)


def test_killed_save_is_not_listed(tmp_path: Path) -> None:
    """A process killed mid-save (SIGKILL: no cleanup runs) leaves nothing listed."""
    proc = multiprocessing.get_context("spawn").Process(target=_slow_save, args=(str(tmp_path),))
    proc.start()
    staging = tmp_path / ".staging"
    deadline = time.time() + 30
    while time.time() < deadline and not (staging.is_dir() and any(staging.rglob("*.safetensors"))):
        time.sleep(0.05)
    assert any(staging.rglob("*.safetensors")), "the child never started writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    registry = Registry(tmp_path)
    assert registry.versions() == []
    with pytest.raises(UnknownModelError):
        registry.resolve(next(staging.iterdir()).name)
    assert registry.prune_staging() == 1


def test_tampered_file_fails_loading(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    m = registry.save("rm", write_model)
    registry.set_alias("rm", m.version)
    with (tmp_path / m.version / "model.safetensors").open("r+b") as handle:
        handle.write(b"\x00\x01")
    with pytest.raises(RegistryError, match="checksum mismatch in model.safetensors"):
        registry.resolve("rm")
    (tmp_path / m.version / "model.safetensors").unlink()
    with pytest.raises(RegistryError, match="model.safetensors is missing"):
        registry.resolve(m.version)


def test_alias_never_moves_to_a_damaged_version(tmp_path: Path) -> None:
    """Moving an alias verifies the version's checksums first: a damaged version is refused
    and the alias (and its history) stay as they were."""
    registry = Registry(tmp_path)
    good = registry.save("policy", write_model).version
    bad = registry.save("policy", write_model).version
    registry.set_alias("rlhf", good)
    set_at = registry.alias_set_at("rlhf")
    with (tmp_path / bad / "model.safetensors").open("ab") as handle:
        handle.write(b"\x00\x01")  # damaged after saving
    with pytest.raises(RegistryError, match=f"model {bad}: checksum mismatch in model.safetensors"):
        registry.set_alias("rlhf", bad)
    (tmp_path / bad / "config.json").unlink()
    with pytest.raises(RegistryError, match="config.json is missing"):
        registry.set_alias("nightly", bad)
    state = registry.alias_state()
    assert state["aliases"] == {"rlhf": good} and state["history"] == {}
    assert registry.alias_set_at("rlhf") == set_at  # the refused moves left no trace


def test_aliases_history_and_rollback(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    a = registry.save("policy", write_model).version
    b = registry.save("policy", write_model).version
    assert registry.alias_set_at("rlhf") is None
    assert registry.set_alias("rlhf", a) is None
    first = registry.alias_set_at("rlhf")
    assert registry.set_alias("rlhf", b) == a
    moved = registry.alias_set_at("rlhf")
    assert first is not None and moved is not None and moved >= first  # when it last moved
    assert registry.aliases() == {"rlhf": b}
    assert registry.rollback_alias("rlhf") == a
    assert registry.aliases()["rlhf"] == a
    with pytest.raises(RegistryError, match="no earlier version"):
        registry.rollback_alias("rlhf")
    with pytest.raises(UnknownModelError):
        registry.set_alias("rlhf", "policy-does-not-exist")


def test_resolve_refs(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "models")
    v = registry.save("base", write_model).version
    outside = tmp_path / "kullm"
    outside.mkdir()
    write_model(outside)
    assert registry.resolve(v) == registry.root / v
    assert registry.resolve(str(outside)) == outside
    with pytest.raises(UnknownModelError, match="not an alias"):
        registry.resolve("nope")
    with pytest.raises(UnknownModelError):
        registry.resolve("../kullm/../models/" + v)
