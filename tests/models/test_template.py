"""The KULLM template: single turn, stacked multi-turn, truncation of the oldest turns."""

from __future__ import annotations

import pytest

from kindchat.models.template import KULLM, ConversationError, PromptTooLongError, kullm_prompt

build_prompt = KULLM.prompt

HEADER = "아래는 작업을 설명하는 명령어입니다. 요청을 적절히 완료하는 응답을 작성하세요."


def test_single_turn_is_exactly_the_kullm_template() -> None:
    expected = f"{HEADER}\n\n### 명령어:\n오늘 날씨 어때?\n\n### 응답:\n"
    assert kullm_prompt("오늘 날씨 어때?") == expected
    assert build_prompt([{"role": "user", "content": "오늘 날씨 어때?"}]) == expected


CONVERSATION = [
    {"role": "user", "content": "첫 질문"},
    {"role": "assistant", "content": "첫 답"},
    {"role": "user", "content": "둘째 질문"},
    {"role": "assistant", "content": "둘째 답"},
    {"role": "user", "content": "마지막 질문"},
]


def test_multi_turn_stacks_earlier_turns() -> None:
    assert build_prompt(CONVERSATION) == (
        f"{HEADER}\n\n### 명령어:\n첫 질문\n\n### 응답:\n첫 답\n\n"
        "### 명령어:\n둘째 질문\n\n### 응답:\n둘째 답\n\n"
        "### 명령어:\n마지막 질문\n\n### 응답:\n"
    )


def test_truncation_drops_oldest_turns_first() -> None:
    full = build_prompt(CONVERSATION)
    without_first = build_prompt(CONVERSATION[2:])
    only_last = build_prompt(CONVERSATION[4:])
    assert build_prompt(CONVERSATION, len, len(full)) == full
    assert build_prompt(CONVERSATION, len, len(full) - 1) == without_first
    assert build_prompt(CONVERSATION, len, len(only_last)) == only_last
    with pytest.raises(PromptTooLongError, match="over the budget"):
        build_prompt(CONVERSATION, len, len(only_last) - 1)


def test_system_message_replaces_header() -> None:
    text = build_prompt(
        [{"role": "system", "content": "너는 친절한 비서야."}, {"role": "user", "content": "안녕"}]
    )
    assert text.startswith("너는 친절한 비서야.\n\n### 명령어:\n안녕")


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "assistant", "content": "x"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        [{"role": "tool", "content": "a"}],
    ],
)
def test_bad_conversations(messages: list[dict[str, str]]) -> None:
    with pytest.raises(ConversationError):
        build_prompt(messages)
