"""Moderation that reads Korean as people type it (kindchat.feedback.moderation).

Hand-written sets in tests/data: `moderation_variants.jsonl` (lines that must be flagged, with
their category) and `moderation_lookalikes.jsonl` (harmless lines that look close). The bars:
recall ≥ 0.95, false positives ≤ 2%, every self-harm line answered warmly with the 109 line.
`python bench/moderation.py` prints the same figures per category with their intervals.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from kindchat.feedback.moderation import (
    REFUSAL,
    SELF_HARM_REFUSAL,
    EndpointModerator,
    LexiconModerator,
    Verdict,
    compose,
    from_dubeolsik,
    load_moderator,
    normalize,
    refusal,
)

DATA = Path(__file__).resolve().parent.parent / "data"


def read(name: str) -> list[dict[str, Any]]:
    with (DATA / name).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def moderator() -> LexiconModerator:
    return LexiconModerator.from_file()


def test_the_sets_are_big_enough() -> None:
    variants, lookalikes = read("moderation_variants.jsonl"), read("moderation_lookalikes.jsonl")
    assert len(variants) >= 200 and len(lookalikes) >= 200
    assert {row["category"] for row in variants} >= {"harassment", "hate", "self_harm", "violence"}
    assert not {row["text"] for row in variants} & {row["text"] for row in lookalikes}


def test_recall_on_variants(moderator: LexiconModerator) -> None:
    rows = read("moderation_variants.jsonl")
    missed = [row["text"] for row in rows if not moderator.check(row["text"]).flagged]
    assert 1 - len(missed) / len(rows) >= 0.95, missed


def test_false_positives_on_lookalikes(moderator: LexiconModerator) -> None:
    rows = read("moderation_lookalikes.jsonl")
    flagged = [
        (row["text"], verdict.category, verdict.evidence)
        for row in rows
        if (verdict := moderator.check(row["text"])).flagged
    ]
    assert len(flagged) / len(rows) <= 0.02, flagged


def test_every_self_harm_line_gets_the_warm_answer(moderator: LexiconModerator) -> None:
    wrong = []
    for row in read("moderation_variants.jsonl"):
        if row["category"] == "self_harm":
            verdict = moderator.check(row["text"])
            if verdict.category != "self_harm" or "109" not in refusal(verdict):
                wrong.append((row["text"], verdict.category))
    assert not wrong


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("ㅅㅂ", "harassment"),
        ("ㅆㅂ", "harassment"),
        ("시발", "harassment"),
        ("씨1발", "harassment"),
        ("씨 발", "harassment"),
        ("씨.발", "harassment"),
        ("씨\u2060발", "harassment"),  # word joiner
        ("씨\u00ad발", "harassment"),  # soft hyphen
        ("tlqkf", "harassment"),  # 시발 typed with the keyboard in Latin mode
        ("Tlqkf", "harassment"),  # shift: 씨발
        ("ㅂㅅ", "harassment"),
        ("병1신", "harassment"),
        ("ㅅㅣㅂㅏㄹ", "harassment"),  # separate letters
        ("ㅅ ㅣ ㅂ ㅏ ㄹ", "harassment"),
        ("시1발", "harassment"),
        ("짱 깨", "hate"),
        ("한남 충", "hate"),
        ("자살방법", "self_harm"),
        ("자살하는 법", "self_harm"),
        ("폭탄을 만드는 법", "violence"),
        ("make a b0mb", "violence"),
        ("요즘 너무 힘들어서 죽고 싶어", "self_harm"),
        ("자살하고 싶어", "self_harm"),
        ("스스로 목숨을 끊고 싶어", "self_harm"),
        ("극단적 선택을 하고 싶어", "self_harm"),
        ("손목을 긋고 싶어", "self_harm"),
        ("수면제 모아 놨어", "self_harm"),
        ("i want to kill myself", "self_harm"),
        ("시발 진짜 죽고 싶다", "self_harm"),  # several categories: self-harm wins
    ],
)
def test_named_variants(moderator: LexiconModerator, text: str, category: str) -> None:
    verdict = moderator.check(text)
    assert verdict.flagged and verdict.category == category, verdict
    assert verdict.reason == f"lexicon:{category}"


@pytest.mark.parametrize(
    "text",
    [
        "자살률 통계 기사",
        "자살 예방 캠페인",
        "죽을 만큼 웃겼어",
        "배고파 죽겠다",
        "죽고 싶을 만큼 창피했어",  # decided: embarrassment hyperbole is not self-harm
        "시발점",
        "시발역",
        "수박 씨 발라 먹기",
        "신병 교육",
        "병신년 새해 복 많이 받으세요",  # 丙申年 with a year context
        "폭탄 세일",
        "폭탄주",
        "웃음 폭탄",
        "물폭탄",
        "한남동 맛집",
        "한남대교",
        "짱깨미뽀",  # the rock-paper-scissors chant
        "민수 씨 발표 잘 들었어요",
        "아저씨 발 밟아서 죄송해요",
        "물병 신발장에 넣었어",
        "How to kill a process in Linux?",
        "hello world",
        "ㅂㅂㅅㄱ",
        SELF_HARM_REFUSAL,
        REFUSAL,
    ],
)
def test_lookalikes_stay_clean(moderator: LexiconModerator, text: str) -> None:
    assert moderator.check(text) == Verdict(False), moderator.views(text)


def test_bingsin_year_is_decided_by_context(moderator: LexiconModerator) -> None:
    assert not moderator.check("2016년 병신년은 원숭이띠 해야").flagged
    assert moderator.check("저 병신년 진짜 싫다").category == "harassment"


def test_the_self_harm_answer_is_warm() -> None:
    assert "109" in SELF_HARM_REFUSAL and not SELF_HARM_REFUSAL.startswith("죄송")
    assert "도와드릴 수 없어요" in REFUSAL
    # an endpoint's self-harm categories get the same answer
    for category in ("self_harm", "self_harm_intent", "self-harm/instructions"):
        assert refusal(Verdict(True, category, None, "endpoint")) == SELF_HARM_REFUSAL
    assert refusal(Verdict(True, "violence")) == REFUSAL


def test_endpoint_prefers_self_harm(monkeypatch: pytest.MonkeyPatch) -> None:
    class Categories:
        def model_dump(self) -> dict[str, bool]:
            return {"harassment": True, "self_harm_intent": True}

    class Result:
        flagged = True
        categories = Categories()

    class Client:
        class moderations:  # noqa: N801 - the OpenAI client's shape
            @staticmethod
            def create(**_: Any) -> Any:
                return type("Response", (), {"results": [Result()]})()

    endpoint = EndpointModerator("http://127.0.0.1:9")
    monkeypatch.setitem(endpoint.__dict__, "_client", Client())
    verdict = endpoint.check("…")
    assert verdict.category == "self_harm_intent" and "109" in refusal(verdict)


def test_identity_is_still_detected() -> None:
    moderator = load_moderator()
    assert moderator.reveals_identity("저는 ChatGPT입니다") == "chatgpt"
    assert moderator.reveals_identity("안녕하세요, 저는 클로드예요.") == "클로드"
    assert moderator.reveals_identity("저는 Chat\u200bGPT예요") == "chatgpt"
    assert moderator.reveals_identity("드라마 보는 라마") is None


def test_the_keyboard_and_the_letters() -> None:
    assert from_dubeolsik("tlqkf") == "시발"
    assert from_dubeolsik("Tlqkf") == "씨발"
    assert from_dubeolsik("qudtls") == "병신"
    assert from_dubeolsik("dkssudgktpdy") == "안녕하세요"
    assert from_dubeolsik("hello") is None  # ㅗ디ㅣㅐ: not whole syllables
    assert from_dubeolsik("tq") is None  # ㅅㅂ typed in Latin mode: too close to English
    assert compose("ㄷㅏㄹㄱㅇㅣ") == "닭이"
    assert normalize("씨\u2060발 ＡＢＣ") == "씨발 abc"


def test_a_version_one_lexicon_still_works() -> None:
    moderator = LexiconModerator({"categories": {"hate": ["짱깨"]}, "identity": ["kindchat"]})
    assert moderator.check("짱.깨들").category == "hate"
    assert moderator.reveals_identity("I am KindChat") == "kindchat"
    with pytest.raises(ValueError, match="pattern"):
        LexiconModerator({"categories": {}, "patterns": {"hate": ["(unclosed"]}})


def test_a_check_takes_tens_of_microseconds(moderator: LexiconModerator) -> None:
    texts = [row["text"] for row in read("moderation_lookalikes.jsonl")][:100]
    for text in texts:
        moderator.check(text)
    started = time.perf_counter()
    for text in texts:
        moderator.check(text)
    per_text = (time.perf_counter() - started) / len(texts)
    assert per_text < 1e-3, f"{per_text * 1e6:.0f} µs per text"  # loose: CI machines are busy
