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


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread priorities: Linux")
def test_lowering_the_priority_reaches_threads_started_before() -> None:
    """`bootstrap --first micro --nice 10` lowers its priority after the first models trained:
    torch's intra-op threads, started by that training, must train the next preset niced too
    (`os.nice` alone changes the calling thread's priority only)."""
    code = (
        "import os, threading, torch\n"
        "from kindchat.retrain.bootstrap_state import lower_priority\n"
        "torch.set_num_threads(2)\n"
        "a = torch.randn(256, 256); (a @ a).sum()\n"
        "done = threading.Event(); t = threading.Thread(target=done.wait); t.start()\n"
        "before = os.getpriority(os.PRIO_PROCESS, 0)\n"
        "lower_priority(7)\n"
        "nices = [os.getpriority(os.PRIO_PROCESS, int(tid))"
        " for tid in os.listdir('/proc/self/task')]\n"
        "done.set(); t.join()\n"
        "print(len(nices), min(nices) - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    threads, raised = map(int, out.stdout.split())
    assert threads >= 3  # the main thread, ours, and torch's pool at least
    assert raised == 7  # every one of them, not only the caller
