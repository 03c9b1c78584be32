"""A bootstrap killed halfway resumes at the stage it reached; its progress file says where it
is and how long is left."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kindchat.config import Settings
from kindchat.models.presets import get_preset
from kindchat.models.registry import Registry
from kindchat.retrain.bootstrap import run_bootstrap
from kindchat.retrain.bootstrap_state import read_state

pytestmark = pytest.mark.slow  # trains a whole bootstrap in a child process (~70 s)


def test_killed_bootstrap_resumes_after_its_last_stage(tmp_path: Path, data_dir: Path) -> None:
    settings = Settings(home=tmp_path / "home", data_dir=data_dir)
    env = {**os.environ, "KINDCHAT_HOME": str(settings.home), "KINDCHAT_DATA_DIR": str(data_dir)}
    child = subprocess.Popen(
        [sys.executable, "-m", "kindchat", "bootstrap", "--preset", "micro", "--until", "rm"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while True:  # kill it once the base LM is registered and SFT is under way
        state = read_state(settings, "micro")
        if state is not None and state.stage == "sft":
            break
        assert child.poll() is None and time.monotonic() < deadline, "never reached sft"
        time.sleep(0.2)
    view = state.view()
    assert [s["status"] for s in view["stages"]] == ["done", "running", "waiting"]
    assert view["eta_s"] is not None and view["eta_s"] > 0
    child.kill()
    child.wait(30)
    base = state.versions["base"]

    report = run_bootstrap(settings, get_preset("micro"), until="sft")
    registry = Registry(settings.models_dir)
    assert report.versions["base"] == base  # not trained again
    assert [m.version for m in registry.versions("base")] == [base]
    assert registry.aliases()["sft"] == report.versions["sft"]
    assert registry.manifest(report.versions["sft"]).parents == [base]
    done = read_state(settings, "micro")
    assert done is not None and done.status == "done" and done.eta_s() is None
