"""ROUGE-L: the bit-parallel LCS against the textbook DP, and hand-computed scores."""

from __future__ import annotations

import random

import pytest

from kindchat.feedback.textsim import RougeIndex, lcs_length, rouge_l, tokenize


def dp_lcs(a: str, b: str) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = (
                table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
            )
    return table[-1][-1]


def test_lcs_matches_dynamic_programming_on_random_strings() -> None:
    rng = random.Random(7)
    for _ in range(400):
        a = "".join(rng.choice("ab가나다") for _ in range(rng.randint(0, 80)))
        b = "".join(rng.choice("ab가나다") for _ in range(rng.randint(0, 80)))
        assert lcs_length(a, b) == dp_lcs(a, b), (a, b)


def test_known_cases() -> None:
    assert lcs_length("ABCBDAB", "BDCABA") == 4
    assert rouge_l("안녕하세요", "안녕하세요") == 1.0
    assert rouge_l("", "안녕") == 0.0
    # chars 가나다라 vs 가다라마: LCS 가다라 = 3, F1 = 2*3/(4+4)
    assert rouge_l("가나다라", "가다라마") == pytest.approx(0.75)
    # words: "the cat sat" vs "the cat ran": LCS 2, F1 = 4/6
    assert rouge_l("the cat sat", "the cat ran", "word") == pytest.approx(2 / 3)
    assert tokenize("가 나\n다") == ["가", "나", "다"]
    with pytest.raises(ValueError):
        tokenize("x", "bpe")  # type: ignore[arg-type]


def test_index_finds_the_most_similar_kept_text() -> None:
    index = RougeIndex(threshold=0.7)
    for text in ("오늘 날씨 어때?", "점심 메뉴를 추천해 줘", "영어로 번역해 줘"):
        index.add(text)
    assert index.most_similar("점심 메뉴 추천해 줘") >= 0.7
    assert index.most_similar("우주의 기원을 설명해 주세요") < 0.3
    assert index.most_similar("") == 0.0
