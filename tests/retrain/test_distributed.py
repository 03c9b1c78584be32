"""`kindchat train dpo --deepspeed` under the `deepspeed` launcher: two processes on CPU (gloo),
one process group, one shared run directory, and one registered version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kindchat.config import Settings
from kindchat.models.registry import Registry
from tests.helpers import free_port

pytestmark = pytest.mark.slow  # trains in two processes (~20 s each)

ZERO2 = {
    "zero_optimization": {"stage": 2},
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "train_batch_size": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
}


def launch(settings: Settings, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    launcher = shutil.which("deepspeed") or str(Path(sys.executable).parent / "deepspeed")
    env = {
        **os.environ,
        "KINDCHAT_HOME": str(settings.home),
        "KINDCHAT_DATA_DIR": str(settings.data_dir),
    }
    command = [
        launcher,
        "--num_gpus", "2",
        "--master_port", str(free_port()),
        "--no_local_rank",
        "--module", "kindchat",
        "train", "dpo",
        "--max-steps", "2", "--batch-size", "2", "--max-records", "16",
        "--deepspeed", str(config),
        *args,
    ]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def test_dpo_on_two_gloo_processes_registers_one_version(
    micro_copy: Settings, tmp_path: Path
) -> None:
    config = tmp_path / "zero2.json"
    config.write_text(json.dumps(ZERO2), encoding="utf-8")
    registry = Registry(micro_copy.models_dir)
    before = {m.version for m in registry.versions()}
    done = launch(micro_copy, config, "--alias", "dpo-2proc")
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "rank 0 of 2" in log and "rank 1 of 2" in log, log[-4000:]
    assert "dist_world_size=2" in log
    new = {m.version for m in registry.versions()} - before
    assert len(new) == 1, f"registered {sorted(new)}: once per rank?"
    assert registry.aliases()["dpo-2proc"] == next(iter(new))
    assert len(list(micro_copy.runs_dir.glob("dpo-*"))) == 1  # both ranks shared rank 0's dir
    manifest = registry.manifest(next(iter(new)))
    assert manifest.metrics["train_steps"] == 2


def test_zero3_under_two_processes_is_refused(micro_copy: Settings, tmp_path: Path) -> None:
    config = tmp_path / "zero3.json"
    config.write_text(json.dumps({**ZERO2, "zero_optimization": {"stage": 3}}), encoding="utf-8")
    done = launch(micro_copy, config)
    assert done.returncode != 0
    assert "ZeRO stage 3 under several processes is not supported" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
