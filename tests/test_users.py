"""Simulated users as plug-ins: built-ins, files, and one-line errors for broken plug-ins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kindchat.config import Settings
from kindchat.feedback import store
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.export import ExportConfig, export_reward_data
from kindchat.models.registry import Registry
from kindchat.nights import NightConfig, simulate_night
from kindchat.users import (
    BUILTINS,
    CheckedUser,
    ScoredUser,
    UserPluginError,
    concise_score,
    load_users,
    polite_score,
)

POLITE = "안녕하세요. 도와드릴게요. 무엇이 궁금하세요?"
RUDE = "몰라. 알아서 해."


def test_builtin_scores_follow_their_rule() -> None:
    assert polite_score("", POLITE) == 1.0 and polite_score("", RUDE) == 0.0
    assert polite_score("", "") == 0.0
    assert concise_score("", "짧게 답할게요.") == 0.0
    assert concise_score("", "가" * 200) == -1.0 and concise_score("", " ") == -1.0


def test_a_noiseless_user_votes_and_rates_by_its_score() -> None:
    user = ScoredUser(polite_score, temperature=0, noise=0, bad_below=0.2)
    assert user.vote("q", POLITE, RUDE) == "a" and user.vote("q", RUDE, POLITE) == "b"
    assert user.vote("q", POLITE, POLITE) == "tie"
    assert user.vote("q", RUDE, "싫어.") == "both_bad"
    assert user.rate("q", POLITE) == 1 and user.rate("q", RUDE) == -1


def test_load_users_by_name_and_from_a_file(tmp_path: Path) -> None:
    assert {"polite", "concise", "gold-rm"} <= set(BUILTINS)
    assert load_users("polite").vote("q", POLITE, RUDE) in ("a", "b")
    plugin = tmp_path / "mine.py"
    plugin.write_text(
        "class Likes:\n"
        "    def vote(self, p, a, b): return 'a' if '좋아' in a else 'b'\n"
        "    def rate(self, p, a): return 1 if '좋아' in a else -1\n"
        "    def score(self, p, a): return float('좋아' in a)\n"
        "def make(): return Likes()\n",
        encoding="utf-8",
    )
    users = load_users(f"{plugin}:make")
    assert users.vote("q", "좋아요", "싫어요") == "a" and users.score("q", "좋아") == 1.0


def test_broken_plugins_give_one_line_naming_the_plugin(tmp_path: Path) -> None:
    plugin = tmp_path / "bad.py"
    plugin.write_text(
        "class Bad:\n"
        "    def vote(self, p, a, b): return 'c'\n"
        "    def rate(self, p, a): raise RuntimeError('boom')\n"
        "    def score(self, p, a): return float('nan')\n"
        "def make(): return Bad()\n"
        "def half(): return object()\n",
        encoding="utf-8",
    )
    users = load_users(f"{plugin}:make")
    for call, expected in (
        (lambda: users.vote("q", "a", "b"), "vote() returned 'c'"),
        (lambda: users.rate("q", "a"), "rate() raised RuntimeError: boom"),
        (lambda: users.score("q", "a"), "score() returned nan"),
    ):
        with pytest.raises(UserPluginError) as err:
            call()
        message = str(err.value)
        assert message.startswith(f"user plug-in {plugin}:make:") and expected in message
        assert "\n" not in message
    with pytest.raises(UserPluginError, match="has no method"):
        load_users(f"{plugin}:half")
    with pytest.raises(UserPluginError, match="no callable 'nope'"):
        load_users(f"{plugin}:nope")
    with pytest.raises(UserPluginError, match="unknown users 'angry'"):
        load_users("angry")
    with pytest.raises(UserPluginError, match="does not exist"):
        load_users(str(tmp_path / "missing.py:make"))


class Agreeable:
    """Votes for side a, likes everything: the night's bookkeeping becomes exact."""

    def vote(self, prompt: str, answer_a: str, answer_b: str) -> str:
        return "a"

    def rate(self, prompt: str, answer: str) -> int:
        return 1

    def score(self, prompt: str, answer: str) -> float:
        return 1.0


def test_a_simulated_night_lands_in_the_store_as_training_rows(
    micro_settings: Settings, tmp_path: Path
) -> None:
    settings = micro_settings.model_copy(update={"db_url": f"sqlite:///{tmp_path / 'n.db'}"})
    engine = init_db(settings)
    registry = Registry(settings.models_dir)
    users = CheckedUser(Agreeable(), "agreeable")
    prompts = [f"질문 {i}: 오늘 뭐 할까요?" for i in range(40)]
    config = NightConfig(votes=32, max_new_tokens=8, follow_up_after_up=1.0, seed=1)
    counts = simulate_night(engine, registry.resolve("sft"), "v-sft", users, prompts, config)
    # 16 battles; 16 chats, each 👍 and followed up, the follow-up 👍 too
    assert (counts["vote_a"], counts["thumb_up"], counts["follow_ups"]) == (16, 32, 16)
    with session_scope(engine) as s:
        battles = store.list_battles(session=s, limit=100)
        assert len(battles) == 16 and {b.winner for b in battles} == {"a"}
        report = export_reward_data(
            session=s,
            data_dir=settings.data_dir,
            out_dir=tmp_path / "out",
            config=ExportConfig(
                include_seed=False, test_fraction=0.0, min_answer_chars=0, max_similarity=1.0
            ),
        )
    assert report.signals["battle"] == 16 and report.signals["thumb_up"] == 32
    rows = json.loads((tmp_path / "out" / "unpaired.json").read_text(encoding="utf-8"))
    follow_ups = [r for r in rows if r.get("context")]
    assert len(follow_ups) == 16  # each carries the first exchange as its context
    assert all(len(r["context"]) == 2 for r in follow_ups)
