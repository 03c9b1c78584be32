"""PPO's training curve as it is written beside a run and a registered version: one JSON line
per PPO step (reward, KL, losses, …). Light on purpose: the dashboard reads it while serving,
without the training stack."""

from __future__ import annotations

import json
from pathlib import Path

LOG_FILE = "ppo_log.jsonl"


def read_log(run_dir: Path) -> list[dict[str, float]]:
    """The steps logged in `run_dir` (a run directory or a registered version), oldest first."""
    path = run_dir / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
