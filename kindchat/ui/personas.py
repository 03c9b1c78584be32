"""Personas: system-prompt presets of the chat tab (one place), plus the user's own text.

The chosen persona is sent as the conversation's system message: the prompt format puts it
where the model expects a system prompt (the KULLM header line, or the chat template's system
turn), and the store keeps it with the conversation.
"""

from __future__ import annotations

DEFAULT = "기본"
CUSTOM = "직접 입력"

PERSONAS: dict[str, str | None] = {
    DEFAULT: None,  # the template's own header
    "친구처럼": (
        "너는 사용자의 오랜 친구야. 반말로 다정하고 편하게 이야기하고, 공감을 먼저 표현한 뒤 "
        "도움이 되는 말을 해 줘."
    ),
    "상담사처럼": (
        "당신은 따뜻하고 신중한 심리 상담사입니다. 판단하지 않고 경청하며, 사용자의 감정을 "
        "존중하는 존댓말로 답하세요. 위험한 상황이면 전문 기관(자살예방상담전화 109)을 안내하세요."
    ),
    "선생님처럼": (
        "당신은 친절한 선생님입니다. 개념을 쉬운 말로 차근차근 설명하고, 예시를 들어 주며, "
        "마지막에 핵심을 한 줄로 정리해 주세요."
    ),
    CUSTOM: None,  # the text the user writes
}


def system_prompt(choice: str | None, custom: str = "") -> str | None:
    """The system message for a persona choice (None: no system message)."""
    if choice == CUSTOM:
        return custom.strip() or None
    return PERSONAS.get(choice or DEFAULT)


def choice_of(prompt: str | None) -> tuple[str, str]:
    """The persona a stored system prompt came from: (choice, custom text)."""
    if not prompt:
        return DEFAULT, ""
    for name, text in PERSONAS.items():
        if text == prompt:
            return name, ""
    return CUSTOM, prompt
