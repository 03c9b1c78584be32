"""Where a bootstrap stands: `$KINDCHAT_HOME/bootstrap/<preset>.json`, written as it goes.

The bootstrap process writes it at every stage boundary (atomically); the server reads it for
`GET /v1/bootstrap`, the chat banner and the dashboard; a bootstrap started again resumes after
the last stage it finished (its versions are taken from here, not from the aliases).

The time left is an estimate: each stage's expected seconds on 2 cores (measured, per preset),
scaled by how fast the finished stages went against their own expectations; inside a stage, the
share of its expected time already spent (never shown as more than 95% until it ends).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from kindchat.config import Settings

STAGES = ("base", "sft", "rm", "gold-rm", "ppo", "eval")
# Seconds per stage on 2 cores (tiny: the bootstrap measured in issue #18; micro: ~45 s in all).
EXPECTED_S: dict[str, dict[str, float]] = {
    "tiny": {"base": 365, "sft": 221, "rm": 78, "gold-rm": 76, "ppo": 115, "eval": 12},
    "micro": {"base": 10, "sft": 6, "rm": 5, "gold-rm": 6, "ppo": 4, "eval": 4},
    "micro-llama": {"base": 30, "sft": 14, "rm": 5, "gold-rm": 6, "ppo": 3, "eval": 4},
}
EXPECTED_S["tiny-llama"] = EXPECTED_S["tiny"]
DEFAULT_EXPECTED_S = 120.0  # a stage of an unmeasured preset
Status = Literal["running", "done", "failed", "stopped"]


@dataclass
class BootstrapState:
    preset: str
    status: Status = "running"
    stage: str | None = None  # the stage under way (None when done)
    versions: dict[str, str] = field(default_factory=dict)  # finished stage -> version
    seconds: dict[str, float] = field(default_factory=dict)  # finished stage -> wall time
    started_at: float = field(default_factory=time.time)
    stage_started_at: float = field(default_factory=time.time)
    pid: int | None = field(default_factory=os.getpid)
    error: str | None = None
    until: str = "eval"

    @property
    def stages(self) -> list[str]:
        return list(STAGES[: STAGES.index(self.until) + 1])

    def expected(self, stage: str) -> float:
        return EXPECTED_S.get(self.preset, {}).get(stage, DEFAULT_EXPECTED_S)

    def pace(self) -> float:
        """Actual over expected time of the finished stages (1.0 before any finished)."""
        done = [s for s in self.seconds if s in STAGES]
        expected = sum(self.expected(s) for s in done)
        return sum(self.seconds[s] for s in done) / expected if expected > 0 else 1.0

    def stage_progress(self, now: float | None = None) -> float:
        if self.stage is None:
            return 1.0
        spent = (now or time.time()) - self.stage_started_at
        return min(0.95, spent / (self.expected(self.stage) * self.pace()))

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds until the last stage ends, estimated; None when not running."""
        if self.status != "running" or self.stage is None:
            return None
        pace = self.pace()
        later = (
            self.stages[self.stages.index(self.stage) + 1 :] if self.stage in self.stages else []
        )
        current = self.expected(self.stage) * pace * (1 - self.stage_progress(now))
        return round(current + sum(self.expected(s) * pace for s in later))

    def view(self, now: float | None = None) -> dict[str, Any]:
        """For the API and the UI: each stage with its status, the stage under way, time left."""
        rows = []
        for name in self.stages:
            if name in self.seconds:
                status, progress = "done", 1.0
            elif name == self.stage and self.status == "running":
                status, progress = "running", self.stage_progress(now)
            else:
                status, progress = ("failed" if name == self.stage else "waiting"), 0.0
            rows.append(
                {
                    "name": name,
                    "status": status,
                    "progress": round(progress, 3),
                    "seconds": self.seconds.get(name),
                    "version": self.versions.get(name),
                }
            )
        return {
            "preset": self.preset,
            "status": self.status,
            "stage": self.stage,
            "stages": rows,
            "eta_s": self.eta_s(now),
            "elapsed_s": round((now or time.time()) - self.started_at),
            "error": self.error,
        }


def state_path(settings: Settings, preset: str) -> Path:
    return settings.home / "bootstrap" / f"{preset}.json"


def read_state(settings: Settings, preset: str) -> BootstrapState | None:
    path = state_path(settings, preset)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return BootstrapState(**data)
    except (FileNotFoundError, ValueError, TypeError):
        return None


def write_state(settings: Settings, state: BootstrapState) -> None:
    path = state_path(settings, state.preset)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(state), ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def process_alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lower_priority(increment: int) -> None:
    """`os.nice(increment)` for the whole process, every thread it has.

    On Linux a priority belongs to a thread, and `os.nice` changes the calling thread's alone:
    threads started before it (torch's intra-op pool, the tokenizers' pool, both started by the
    first models' training) would go on training the next preset at full priority, beside the
    server that answers people. Threads started afterwards inherit the caller's priority.
    """
    if increment <= 0:
        return
    os.nice(increment)
    target = os.getpriority(os.PRIO_PROCESS, 0)
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():  # not Linux: the priority is the process's
        return
    for task in tasks.iterdir():
        try:
            if os.getpriority(os.PRIO_PROCESS, int(task.name)) < target:
                os.setpriority(os.PRIO_PROCESS, int(task.name), target)
        except (ProcessLookupError, PermissionError):  # a thread that ended meanwhile
            continue
