"""Reward-data export on a hand-made feedback set: exact pairs and exact drop counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from kindchat.feedback import store
from kindchat.feedback.errors import InvalidValueError
from kindchat.feedback.export import ExportConfig, export_reward_data, visible_length
from kindchat.feedback.influence import InfluenceConfig
from kindchat.seed import read_rm_file

EVAL_PROMPT = "평가용 질문입니다"

NO_ANOMALY_FILTER = InfluenceConfig(anomaly_filter=False)


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")


@pytest.fixture
def tiny_seed(tmp_path: Path) -> Path:
    """A seed directory with two RM train pairs (one too short) and one evaluation prompt."""
    root = tmp_path / "seed"
    _write(
        root / "rm" / "conversation_train.json",
        [
            {"id": "c0", "prompt": "주말에 뭐 해?", "chosen": "산책하고 책을 읽을 거예요.<|endoftext|>",
             "rejected": "알아서 뭐 하게요?<|endoftext|>"},
            {"id": "c1", "prompt": "배고파", "chosen": "밥 먹어요", "rejected": "응<|endoftext|>"},
        ],
    )  # fmt: skip
    _write(root / "rm" / "conversation_test.json", [
        {"id": "t0", "prompt": EVAL_PROMPT, "chosen": "좋은 답입니다", "rejected": "나쁜 답이다"},
    ])  # fmt: skip
    for name in ("hatespeech_train", "hatespeech_test", "translation_train", "translation_test"):
        _write(root / "rm" / f"{name}.json", [])
    return root


class Feedback:
    """Builds conversations, answers, ratings and battles with little ceremony."""

    def __init__(self, db: Session) -> None:
        self.db = db

    def ask(self, *turns: str) -> str:
        """A conversation whose messages alternate user/assistant, ending with a user turn."""
        conv = store.create_conversation(session=self.db)
        for i, text in enumerate(turns):
            role = "user" if i % 2 == 0 else "assistant"
            store.record_message(session=self.db, conversation_id=conv.id, role=role, content=text)
        return conv.id

    def answer(self, conv_id: str, text: str, parent: str | None = None) -> str:
        return store.record_message(
            session=self.db, conversation_id=conv_id, role="assistant", content=text,
            parent_id=parent, model_version="v1",
        ).id  # fmt: skip

    def rate(self, message_id: str, value: int, who: str = "u1", better: str | None = None) -> None:
        store.rate(
            session=self.db, message_id=message_id, session_id=who, value=value,
            better_answer=better,
        )  # fmt: skip

    def battle(self, prompt: str, a: str, b: str, winner: str | None) -> None:
        conv = self.ask(prompt)
        a_id, b_id = self.answer(conv, a), self.answer(conv, b)
        battle = store.create_battle(
            session=self.db, session_id="s", context=[{"role": "user", "content": prompt}],
            message_a_id=a_id, message_b_id=b_id,
        )  # fmt: skip
        if winner is not None:
            store.vote(session=self.db, battle_id=battle.id, session_id="s", winner=winner)


def build_feedback(db: Session) -> None:
    f = Feedback(db)
    # 1. a 👎 answer and its 👍 regeneration -> regeneration pair
    conv = f.ask("오늘 기분이 어때?")
    bad = f.answer(conv, "그런 건 묻지 마세요.")
    good = f.answer(conv, "저는 늘 좋아요! 당신은 오늘 어떠세요?", parent=bad)
    f.rate(bad, -1)
    f.rate(good, 1)
    # 2. 👍 and 👎 answers to the same context in two conversations -> rating pair
    f.rate(f.answer(f.ask("점심 메뉴 추천해 줘"), "김치찌개 어떠세요? 따뜻하고 든든해요."), 1)
    f.rate(f.answer(f.ask("점심  메뉴 추천해 줘 "), "아무거나 드세요, 알아서 하세요."), -1)
    # 3. a multi-turn rating pair keeps the earlier turns as context
    conv = f.ask("안녕", "안녕하세요!", "심심해")
    f.rate(f.answer(conv, "그럼 같이 끝말잇기 할까요? 제가 먼저 할게요."), 1)
    f.rate(f.answer(conv, "저도 심심한데 어쩌라고요."), -1)
    # 4. battles: a wins; tie; both bad; unvoted
    f.battle("고마워!", "천만에요! 언제든 도와드릴게요.", "별말씀을 다 하세요.", "a")
    f.battle("잘 자", "좋은 꿈 꾸세요!", "안녕히 주무세요!", "tie")
    f.battle("뭐해?", "아무것도 안 해.", "몰라 몰라 몰라.", "both_bad")
    f.battle("비 온대", "우산 꼭 챙기세요!", "그렇군요, 알겠습니다.", None)
    # 5. drops on the pair level
    f.battle("고마워!", "천만에요! 언제든 도와드릴게요.", "별말씀을 다 하세요.", "a")  # duplicate
    f.battle("배불러", "많이 드셨군요, 잠깐 산책은 어떠세요?", "네", "a")  # short_answer
    f.battle("같이 가자", "좋아요, 같이 가요!", "좋아요, 같이 가요!!", "b")  # near_identical
    f.battle(EVAL_PROMPT, "정성껏 답해 드릴게요.", "대충 답할게요 뭐.", "a")  # eval_prompt
    f.battle("추천해 줘", "이 책을 추천해요 정말로", "저 영화를 추천해요 아마도", "a")
    f.battle(
        "추천해 줘", "이 책을 추천해요 정말로", "저 영화를 추천해요 아마도", "b"
    )  # contradictory
    # 6. single thumbs (KTO examples, one multi-turn); mixed 👍/👎 on one answer is dropped
    f.rate(f.answer(f.ask("혼자 있는 👍"), "혼자만 평가받은 답이에요."), 1)
    f.rate(
        f.answer(f.ask("배고파", "뭐 먹고 싶어요?", "라면"), "라면은 몸에 나빠요, 먹지 마세요."), -1
    )
    mixed = f.answer(f.ask("의견이 갈리는 질문"), "의견이 갈리는 답이에요.")
    f.rate(mixed, 1, "u1")
    f.rate(mixed, -1, "u2")
    # 7. a 👎 with the answer the user wanted -> a pair (better > rated) and an SFT row
    conv = f.ask("안녕", "안녕하세요!", "이름이 뭐야?")
    f.rate(
        f.answer(conv, "몰라요, 알아서 하세요."),
        -1,
        better="저는 친절한 도우미 kindchat이에요. 반가워요!",
    )


EXPECTED = {
    ("regeneration", "오늘 기분이 어때?",
     "저는 늘 좋아요! 당신은 오늘 어떠세요?", "그런 건 묻지 마세요."),
    ("rating", "점심 메뉴 추천해 줘",
     "김치찌개 어떠세요? 따뜻하고 든든해요.", "아무거나 드세요, 알아서 하세요."),
    ("rating", "심심해",
     "그럼 같이 끝말잇기 할까요? 제가 먼저 할게요.", "저도 심심한데 어쩌라고요."),
    ("battle", "고마워!", "천만에요! 언제든 도와드릴게요.", "별말씀을 다 하세요."),
    ("better_answer", "이름이 뭐야?",
     "저는 친절한 도우미 kindchat이에요. 반가워요!", "몰라요, 알아서 하세요."),
}  # fmt: skip
EXPECTED_UNPAIRED = {
    ("battle_both_bad", "뭐해?", "아무것도 안 해.", False),
    ("battle_both_bad", "뭐해?", "몰라 몰라 몰라.", False),
    ("thumb_up", "혼자 있는 👍", "혼자만 평가받은 답이에요.", True),
    ("thumb_down", "라면", "라면은 몸에 나빠요, 먹지 마세요.", False),
    ("thumb_down", "이름이 뭐야?", "몰라요, 알아서 하세요.", False),
}
EXPECTED_SIGNALS = {
    "battle": 7,  # every a/b vote makes a pair; the filters drop six of them later
    "battle_both_bad": 2,
    "rating": 2,
    "regeneration": 1,
    "thumb_up": 1,
    "thumb_down": 2,  # the answer with a better one is a single 👎 too
    "better_answer": 1,
}
EXPECTED_DROPS = {
    "battle_tie": 1,
    "battle_unvoted": 1,
    "rating_mixed": 1,
    "duplicate": 1,
    "short_answer": 1,
    "near_identical": 1,
    "eval_prompt": 1,
    "contradictory": 2,
}


def _load(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text(encoding="utf-8"))


def test_export_yields_exactly_the_expected_pairs_and_drops(
    db: Session, tiny_seed: Path, tmp_path: Path
) -> None:
    build_feedback(db)
    out = tmp_path / "out"
    # One scripted voter writes everything at once: no anomaly judging here (test_influence.py)
    config = ExportConfig(test_fraction=0.0, include_seed=False, influence=NO_ANOMALY_FILTER)
    report = export_reward_data(session=db, data_dir=tiny_seed, out_dir=out, config=config)

    train = _load(out / "train.json")
    assert _load(out / "test.json") == []
    assert {(r["source"], r["prompt"], r["chosen"], r["rejected"]) for r in train} == EXPECTED
    assert len(train) == len(EXPECTED)
    hello = [{"role": "user", "content": "안녕"}, {"role": "assistant", "content": "안녕하세요!"}]
    multi = {r["prompt"]: r.get("context") for r in train if r.get("context")}
    assert multi == {"심심해": hello, "이름이 뭐야?": hello}
    unpaired = _load(out / "unpaired.json")
    assert {(r["source"], r["prompt"], r["completion"], r["label"]) for r in unpaired} == (
        EXPECTED_UNPAIRED
    )
    ramen = next(r for r in unpaired if r["prompt"] == "라면")
    assert ramen["context"] == [
        {"role": "user", "content": "배고파"},
        {"role": "assistant", "content": "뭐 먹고 싶어요?"},
    ]
    [demo] = _load(out / "sft.json")
    assert demo["id"].startswith("better:") and {k: v for k, v in demo.items() if k != "id"} == {
        "prompt": "이름이 뭐야?", "completion": "저는 친절한 도우미 kindchat이에요. 반가워요!",
        "label": True, "source": "better_answer", "context": hello,
    }  # fmt: skip
    assert report.signals == EXPECTED_SIGNALS
    assert (report.unpaired, report.demonstrations) == (5, 1)
    assert report.dropped == EXPECTED_DROPS
    manifest = _load(out / "manifest.json")
    assert manifest["dropped"] == EXPECTED_DROPS
    assert manifest["counts"] == {
        "battle": {"train": 1, "test": 0},
        "better_answer": {"train": 1, "test": 0},
        "rating": {"train": 2, "test": 0},
        "regeneration": {"train": 1, "test": 0},
    }
    assert manifest["signals"] == EXPECTED_SIGNALS
    assert manifest["rows"] == {
        "train.json": 5, "test.json": 0, "unpaired.json": 5, "sft.json": 1,
    }  # fmt: skip
    assert manifest["thresholds"]["min_answer_chars"] == 5
    assert manifest["fingerprint"] == report.fingerprint and len(report.fingerprint) == 16
    # the output reads back with the seed's own RM reader
    assert len(read_rm_file(out / "train.json")) == len(EXPECTED)


def test_export_merges_the_seed_and_splits_stably_by_prompt(
    db: Session, tiny_seed: Path, tmp_path: Path
) -> None:
    build_feedback(db)
    config = ExportConfig(test_fraction=0.5, influence=NO_ANOMALY_FILTER)
    first = export_reward_data(
        session=db, data_dir=tiny_seed, out_dir=tmp_path / "a", config=config
    )
    again = export_reward_data(
        session=db, data_dir=tiny_seed, out_dir=tmp_path / "b", config=config
    )
    assert first.fingerprint == again.fingerprint
    assert first.train + first.test == len(EXPECTED) + 1  # + seed c0; seed c1 is too short
    assert first.dropped["short_answer"] == 2
    rows = _load(tmp_path / "a" / "train.json") + _load(tmp_path / "a" / "test.json")
    seed = [r for r in rows if r["source"] == "seed"]
    assert seed == [
        {"id": "seed/conversation/c0", "prompt": "주말에 뭐 해?", "chosen": "산책하고 책을 읽을 거예요.",
         "rejected": "알아서 뭐 하게요?", "source": "seed"},
    ]  # fmt: skip
    test_prompts = {r["prompt"] for r in _load(tmp_path / "a" / "test.json")}
    train_prompts = {r["prompt"] for r in _load(tmp_path / "a" / "train.json")}
    assert not test_prompts & train_prompts


def test_since_limits_feedback_but_not_the_seed(
    db: Session, tiny_seed: Path, tmp_path: Path
) -> None:
    build_feedback(db)
    from datetime import datetime, timedelta, timezone

    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    report = export_reward_data(
        session=db, data_dir=tiny_seed, out_dir=tmp_path / "o", since=later,
        config=ExportConfig(test_fraction=0.0, influence=NO_ANOMALY_FILTER),
    )  # fmt: skip
    assert report.counts == {"seed": {"train": 1, "test": 0}}


@pytest.mark.parametrize(
    "bad",
    [
        {"test_fraction": 1.0},
        {"test_fraction": -0.1},
        {"min_answer_chars": -1},
        {"max_similarity": 0.0},
        {"max_similarity": 1.5},
        {"similarity_tokens": "bpe"},
        {"seed_subsets": ("poetry",)},
    ],
)
def test_export_config_checks(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidValueError):
        ExportConfig(**bad)


def test_visible_length_ignores_whitespace_and_zero_width() -> None:
    assert visible_length("\u200b") == 0
    assert visible_length(" 안 녕 \n") == 2
