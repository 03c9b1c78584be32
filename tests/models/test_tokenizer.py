"""The byte-level BPE: Korean round trip, specials, save/load."""

from __future__ import annotations

from pathlib import Path

import pytest

from kindchat.models.tokenizer import EOS_TOKEN, PAD_TOKEN, load_tokenizer, train_tokenizer

TEXTS = [
    "안녕하세요, 만나서 반갑습니다.",
    "오늘은 날씨가 정말 좋네요! 산책하기 좋은 날이에요.",
    "혐오 표현은 상대방에게 상처를 줄 수 있어요.",
] * 20


@pytest.fixture(scope="module")
def tokenizer():  # noqa: ANN201
    return train_tokenizer(TEXTS, vocab_size=400)


@pytest.mark.parametrize(
    "text",
    [
        "안녕하세요, 만나서 반갑습니다.",
        "처음 보는 낱말: 뷁쉛 🙂 and English\n\t줄바꿈",
        "   앞뒤 공백  ",
    ],
)
def test_korean_round_trip_is_exact(tokenizer, text: str) -> None:  # noqa: ANN001
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_bpe_learned_merges(tokenizer) -> None:  # noqa: ANN001
    text = "안녕하세요"
    # Byte-level: 5 Hangul syllables are 15 bytes; trained merges must compress them.
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) < 15


def test_specials_and_save_load(tokenizer, tmp_path: Path) -> None:  # noqa: ANN001
    assert tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token == PAD_TOKEN
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    ids = tokenizer("좋아요" + EOS_TOKEN, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded("안녕하세요")["input_ids"] == tokenizer("안녕하세요")["input_ids"]
    assert loaded.eos_token_id == tokenizer.eos_token_id


def test_vocab_size_check() -> None:
    with pytest.raises(ValueError, match="at least 300"):
        train_tokenizer(TEXTS, vocab_size=100)
