"""`kindchat simulate` end to end on micro models: a night over real HTTP, and broken plug-ins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kindchat.cli import app
from kindchat.config import Settings

# a server, simulated users and a KTO night (~45 s); the broken plug-in's run takes ~8 s
pytestmark = pytest.mark.slow

runner = CliRunner()


def simulate(settings: Settings, *args: str) -> tuple[int, str]:
    base = ["--home", str(settings.home), "--data-dir", str(settings.data_dir)]
    result = runner.invoke(app, [*base, "simulate", *args])
    return result.exit_code, result.output


def test_one_simulated_night_over_http(micro_copy: Settings, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("KINDCHAT_CHALLENGER_MIN_VOTES", "16")
    monkeypatch.setenv("KINDCHAT_CHALLENGER_SHARE", "1.0")
    code, out = simulate(
        micro_copy,
        "--users", "concise", "--nights", "1", "--votes", "24", "--preset", "micro",
        "--method", "kto", "-o", "max_steps=2", "--max-tokens", "12", "--max-arena", "48",
        "--json",
    )  # fmt: skip
    assert code == 0, out
    start, night = json.loads(out[out.index("[\n  {") :])  # the JSON after the progress logs
    assert start["night"] == 0 and night["night"] == 1
    feedback = night["feedback"]
    votes = sum(v for k, v in feedback.items() if k.startswith("vote_"))
    thumbs = feedback.get("thumb_up", 0) + feedback.get("thumb_down", 0)
    # 24 prompts: 12 arena votes, 12 chats each rated or not, plus a rated regeneration each
    assert votes == 12
    assert thumbs + feedback.get("no_rating", 0) == 12 + feedback.get("regenerations", 0)
    run, challenger = night["run"], night["challenger"]
    assert run["method"] == "kto" and run["status"] not in ("failed", "skipped"), run
    # Which way the night goes depends on two KTO steps and the users' votes; each way must be
    # what the run, the challenge and the served model say together.
    if not run["guards"]:  # the guard rails kept the new policy out of the arena
        assert run["status"] == "refused" and run["error"] and challenger is None, night
        assert night["served_after"] == night["served_before"]
    elif challenger is None:  # guarded, yet no challenge was run or recorded
        raise AssertionError(f"the guards passed but no challenger was judged: {night}")
    elif "undecided_after" in challenger:  # still in the arena after --max-arena battles
        assert run["status"] == "challenging" and challenger["undecided_after"] >= 48, night
        assert night["served_after"] == night["served_before"]
    else:  # the users decided: promoted (succeeded), or retired (refused)
        promoted = challenger["action"] == "promote"
        assert challenger["version"] in run["produced"], night
        assert run["status"] == ("succeeded" if promoted else "refused"), night
        served = challenger["version"] if promoted else night["served_before"]
        assert night["served_after"] == served, night
    # the users score the served policy on the 100 unseen test prompts, on a fixed seed
    assert start["score"]["n"] == night["score"]["n"] == 100
    if night["served_after"] == start["served_after"]:  # the same policy: the same score
        assert night["score"] == start["score"]


def test_a_broken_user_plugin_stops_with_one_line(micro_copy: Settings, tmp_path: Path) -> None:
    plugin = tmp_path / "broken.py"
    plugin.write_text(
        "class Broken:\n"
        "    def vote(self, p, a, b): return 'maybe'\n"
        "    def rate(self, p, a): return 1\n"
        "    def score(self, p, a): return 0.0\n"
        "def make(): return Broken()\n",
        encoding="utf-8",
    )
    code, out = simulate(
        micro_copy, "--users", f"{plugin}:make", "--votes", "4", "--preset", "micro"
    )
    errors = [line for line in out.splitlines() if "error:" in line]
    assert code == 2 and "Traceback" not in out and len(errors) == 1
    assert f"user plug-in {plugin}:make" in errors[0] and "vote() returned 'maybe'" in errors[0]
    code, out = simulate(micro_copy, "--users", "grumpy")
    assert code == 2 and "unknown users 'grumpy'" in out
