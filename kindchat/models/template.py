"""The KULLM prompt template: one function used by training, serving and evaluation alike.

Single turn::

    아래는 작업을 설명하는 명령어입니다. 요청을 적절히 완료하는 응답을 작성하세요.

    ### 명령어:
    {prompt}

    ### 응답:

Multi-turn conversations stack the earlier turns (`### 명령어:` / `### 응답:` blocks) before the
last user message; when a token budget is given the oldest turns are dropped first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

HEADER = "아래는 작업을 설명하는 명령어입니다. 요청을 적절히 완료하는 응답을 작성하세요."
INSTRUCTION_TAG = "### 명령어:"
RESPONSE_TAG = "### 응답:"
TURN_SEPARATOR = "\n\n"

Message = Mapping[str, str]  # OpenAI-style {"role": "system"|"user"|"assistant", "content": ...}


class PromptTooLongError(ValueError):
    """Even the last user message alone does not fit the token budget."""

    def __init__(self, needed: int, budget: int) -> None:
        super().__init__(
            f"the last message needs {needed} tokens with the template, over the budget of "
            f"{budget}; shorten it"
        )
        self.needed = needed
        self.budget = budget


class ConversationError(ValueError):
    """The messages do not form a conversation kindchat can answer."""


@dataclass(frozen=True)
class Turn:
    """One exchange: a user message and, except for the last turn, the assistant's answer."""

    user: str
    assistant: str | None = None


def kullm_prompt(prompt: str) -> str:
    """The single-turn KULLM prompt for `prompt` (ends right after `### 응답:\\n`)."""
    return render([Turn(prompt)])


def render(turns: Sequence[Turn], header: str = HEADER) -> str:
    """Stack the turns in the KULLM template; the last turn must await an answer."""
    if not turns or turns[-1].assistant is not None:
        raise ConversationError("the conversation must end with a user message")
    parts = [header]
    for turn in turns:
        parts.append(f"{INSTRUCTION_TAG}\n{turn.user}")
        parts.append(f"{RESPONSE_TAG}\n{turn.assistant or ''}")
    return TURN_SEPARATOR.join(parts)


def turns_from_messages(messages: Sequence[Message]) -> tuple[list[Turn], str]:
    """Group OpenAI-style messages into turns; return them and the header to use.

    A leading `system` message replaces the template's header line. Consecutive messages of
    the same role are joined with a blank line.
    """
    header = HEADER
    body = list(messages)
    if body and body[0].get("role") == "system":
        header = body[0].get("content", "").strip() or HEADER
        body = body[1:]
    turns: list[Turn] = []
    pending_user: list[str] = []
    pending_assistant: list[str] = []
    for index, message in enumerate(body):
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str):
            raise ConversationError(f"messages[{index}].content must be a string")
        if role == "user":
            if pending_assistant:
                turns.append(Turn("\n\n".join(pending_user), "\n\n".join(pending_assistant)))
                pending_user, pending_assistant = [], []
            pending_user.append(content)
        elif role == "assistant":
            if not pending_user:
                raise ConversationError(
                    f"messages[{index}]: an assistant message needs a user one before it"
                )
            pending_assistant.append(content)
        else:
            raise ConversationError(
                f"messages[{index}].role must be 'user' or 'assistant' (or a first 'system'), got {role!r}"
            )
    if not pending_user or pending_assistant:
        raise ConversationError("the conversation must end with a user message")
    turns.append(Turn("\n\n".join(pending_user)))
    return turns, header


def conversation_prompt(
    prompt: str,
    context: Sequence[Message] = (),
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int | None = None,
) -> str:
    """The model input for `prompt` after the earlier messages `context` (a training example's
    conversation): exactly what serving builds for the same messages. Empty context: the
    single-turn :func:`kullm_prompt`."""
    return build_prompt([*context, {"role": "user", "content": prompt}], count_tokens, max_tokens)


def build_prompt(
    messages: Sequence[Message],
    count_tokens: Callable[[str], int] | None = None,
    max_tokens: int | None = None,
) -> str:
    """The model input for a conversation, oldest turns dropped until it fits `max_tokens`.

    Raises :class:`PromptTooLongError` if even the last user message alone does not fit.
    """
    turns, header = turns_from_messages(messages)
    if max_tokens is None or count_tokens is None:
        return render(turns, header)
    for start in range(len(turns)):
        text = render(turns[start:], header)
        needed = count_tokens(text)
        if needed <= max_tokens:
            return text
    raise PromptTooLongError(needed, max_tokens)
