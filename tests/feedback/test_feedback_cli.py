"""`kindchat feedback export`, `kindchat judge` and `kindchat augment` through the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from kindchat.cli import app as cli_app
from kindchat.config import Settings
from kindchat.feedback import store
from kindchat.feedback.db import init_db, session_scope

runner = CliRunner()


@pytest.fixture
def app() -> typer.Typer:
    """The real CLI (its `main` callback reads the settings)."""
    return cli_app


@pytest.fixture
def seed_dir(tmp_path: Path) -> Path:
    root = tmp_path / "seed"
    (root / "rm").mkdir(parents=True)
    pair = {
        "id": "c0",
        "prompt": "주말에 뭐 해?",
        "chosen": "산책하고 책을 읽어요.",
        "rejected": "몰라요 그런 거",
    }
    for name in ("conversation", "hatespeech", "translation"):
        rows = [pair] if name == "conversation" else []
        (root / "rm" / f"{name}_train.json").write_text(json.dumps(rows, ensure_ascii=False))
        (root / "rm" / f"{name}_test.json").write_text("[]")
    return root


def _invoke(app: typer.Typer, home: Path, seed: Path, *args: str) -> Any:
    return runner.invoke(app, ["--home", str(home), "--data-dir", str(seed), *args])


def test_feedback_export_writes_the_three_files(
    app: typer.Typer, seed_dir: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    engine = init_db(Settings(home=home))
    with session_scope(engine) as db:
        conv = store.create_conversation(session=db)
        store.record_message(session=db, conversation_id=conv.id, role="user", content="고마워!")
        a = store.record_message(
            session=db,
            conversation_id=conv.id,
            role="assistant",
            content="천만에요, 또 불러 주세요!",
        )
        b = store.record_message(
            session=db, conversation_id=conv.id, role="assistant", content="그래서 뭐요?"
        )
        battle = store.create_battle(
            session=db, session_id="s", context=[{"role": "user", "content": "고마워!"}],
            message_a_id=a.id, message_b_id=b.id,
        )  # fmt: skip
        store.vote(session=db, battle_id=battle.id, session_id="s", winner="a")
    engine.dispose()
    out = tmp_path / "rm"
    result = _invoke(
        app, home, seed_dir, "feedback", "export", "--out", str(out), "--test-fraction", "0"
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"] == {
        "battle": {"train": 1, "test": 0},
        "seed": {"train": 1, "test": 0},
    }
    assert len(json.loads((out / "train.json").read_text(encoding="utf-8"))) == 2
    bad = _invoke(app, home, seed_dir, "feedback", "export", "--out", str(out), "--since", "어제")
    assert bad.exit_code == 2 and "--since must be an ISO date" in bad.output
    stats = _invoke(app, home, seed_dir, "feedback", "stats", "--json")
    assert stats.exit_code == 0 and json.loads(stats.stdout)["voted_battles"] == 1


def test_judge_command_against_the_local_server(
    app: typer.Typer, openai_server: Any, seed_dir: Path, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        json.dumps({"id": "x", "prompt": "안녕", "response1": "안녕하세요!", "response2": "뭐"})
        + "\n",
        encoding="utf-8",
    )
    scored, ranked = tmp_path / "scored.json", tmp_path / "ranked.json"
    args = ["judge", "--in", str(pairs), "--out", str(scored), "--pairs-out", str(ranked)]
    endpoint = ["--base-url", openai_server.base_url, "--model", "m"]
    result = _invoke(app, tmp_path / "home", seed_dir, *args, *endpoint)
    assert result.exit_code == 0, result.output
    assert json.loads(scored.read_text(encoding="utf-8"))[0]["sum1"] == 30.0
    assert json.loads(ranked.read_text(encoding="utf-8"))[0]["chosen"] == "안녕하세요!"
    bad_type = _invoke(app, tmp_path / "home", seed_dir, *args, "--type", "poetry")
    assert bad_type.exit_code == 2 and "data type must be one of" in bad_type.output


def test_judge_command_with_no_server_fails_without_output(
    app: typer.Typer, seed_dir: Path, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"prompt": "안녕", "response1": "a", "response2": "b"}]))
    out = tmp_path / "scored.json"
    args = ["judge", "--in", str(pairs), "--out", str(out), "--base-url", "http://127.0.0.1:9/v1"]
    result = _invoke(app, tmp_path / "home", seed_dir, *args, "--max-retries", "0", "--no-cache")
    assert result.exit_code != 0
    assert not out.exists()
