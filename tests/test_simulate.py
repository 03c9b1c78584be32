"""`kindchat simulate` end to end on micro models: a night over real HTTP, and broken plug-ins."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from kindchat.cli import app
from kindchat.config import Settings

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
    assert votes == 12 and thumbs + feedback.get("no_rating", 0) >= 12
    assert night["run"]["method"] == "kto"
    assert night["run"]["status"] in ("challenging", "succeeded", "refused")
    if night["run"]["guards"]:  # the guards let it into the arena: the users judged it
        assert night["challenger"] is not None
    for report in (start, night):
        score = report["score"]
        assert score["low"] <= score["value"] <= score["high"] and score["n"] == 100


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
