"""Arena: two anonymous answers from two model versions, a vote that reveals them, a leaderboard."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from kindchat.config import Settings
from kindchat.feedback.models import BattleOutcome
from kindchat.models.registry import Registry
from kindchat.serve.leaderboard import bradley_terry, elo_ratings, rating_intervals


def test_battle_vote_reveal_and_leaderboard(
    micro_copy: Settings, serve: Any, new_version: Any, new_session: Any
) -> None:
    registry = Registry(micro_copy.models_dir)
    rlhf = new_version(micro_copy)
    registry.set_alias("rlhf", rlhf)
    sft = registry.version_of("sft")
    with serve() as api:
        alice, mallory = new_session(api.url), new_session(api.url)
        voted: list[BattleOutcome] = []  # as revealed, in vote order
        for round_ in range(4):
            battle = httpx.post(
                f"{api.url}/v1/arena/battles",
                json={"prompt": "안녕하세요", "session_id": alice, "max_tokens": 8},
                timeout=60,
            )
            assert battle.status_code == 200, battle.text
            body = battle.json()
            assert body["a"]["message_id"] != body["b"]["message_id"]
            assert "model" not in str(body)  # anonymous until the vote
            foreign = httpx.post(
                f"{api.url}/v1/arena/battles/{body['id']}/vote",
                json={"winner": "a", "session_id": mallory},
            )
            assert foreign.status_code == 403
            winner = "a" if round_ < 3 else "tie"
            vote = httpx.post(
                f"{api.url}/v1/arena/battles/{body['id']}/vote",
                json={"winner": winner, "session_id": alice},
            )
            assert vote.status_code == 200, vote.text
            revealed = vote.json()
            assert {revealed["version_a"], revealed["version_b"]} == {rlhf, sft}
            voted.append(
                BattleOutcome(
                    model_a=revealed["version_a"], model_b=revealed["version_b"], winner=winner
                )
            )
            again = httpx.post(
                f"{api.url}/v1/arena/battles/{body['id']}/vote",
                json={"winner": "b", "session_id": alice},
            )
            assert again.status_code == 409
        board = httpx.get(f"{api.url}/v1/leaderboard").json()
        assert board["method"] == "tallies"
        rows = {row["model"]: row for row in board["rows"]}
        assert rows[rlhf]["battles"] == rows[sft]["battles"] == 4
        assert rows[rlhf]["wins"] + rows[sft]["wins"] == 3
        assert rows[rlhf]["ties"] == rows[sft]["ties"] == 1
        # 3 decided battles: one model won more; Elo and BT rank it first, above the mean.
        leader, other = (rlhf, sft) if rows[rlhf]["wins"] > rows[sft]["wins"] else (sft, rlhf)
        for method, rate in (("elo", elo_ratings), ("bt", bradley_terry)):
            ranked = httpx.get(f"{api.url}/v1/leaderboard?method={method}").json()
            assert ranked["method"] == method
            by_model = {row["model"]: row for row in ranked["rows"]}
            # The ratings of the battles as revealed, in vote order (Elo depends on it), with
            # their bootstrap intervals: what the leaderboard module computes from these votes.
            expected = rating_intervals(voted, rate)
            for model in (rlhf, sft):
                row, estimate = by_model[model], expected[model]
                assert row["rating"] == pytest.approx(estimate.value, abs=0.01), method
                assert row["rating_low"] == pytest.approx(estimate.low, abs=0.01), method
                assert row["rating_high"] == pytest.approx(estimate.high, abs=0.01), method
                assert row["rating_low"] < row["rating_high"]  # 4 battles: no certainty
            assert ranked["rows"][0]["model"] == leader
            assert by_model[leader]["rating"] > 1000 > by_model[other]["rating"]
            assert by_model[rlhf]["rating"] + by_model[sft]["rating"] == pytest.approx(2000)
        cells = {(c["model"], c["opponent"]): c for c in board["pairs"]}
        assert cells[(rlhf, sft)]["battles"] == 4 and cells[(rlhf, sft)]["ties"] == 1
        assert cells[(rlhf, sft)]["wins"] == cells[(sft, rlhf)]["losses"]
        assert httpx.get(f"{api.url}/v1/leaderboard?method=glicko").status_code == 400
