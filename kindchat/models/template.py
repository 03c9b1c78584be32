"""How a conversation becomes a model's input text: one :class:`PromptFormat` per model.

A model whose tokenizer has a ``chat_template`` is prompted with it (``apply_chat_template``,
system role included): that is what vLLM, SGLang and ``transformers serve`` do with the same
directory. Every model kindchat trains is registered with the KULLM template below written as
its ``chat_template`` (:data:`KULLM_CHAT_TEMPLATE`), so a registered directory serves as it is
in any of them. A checkpoint without a chat template (a raw Polyglot-Ko, say) gets the same
KULLM text, rendered here in Python.

The KULLM v2 template, single turn::

    아래는 작업을 설명하는 명령어입니다. 요청을 적절히 완료하는 응답을 작성하세요.

    ### 명령어:
    {prompt}

    ### 응답:

Multi-turn conversations stack the earlier turns (`### 명령어:` / `### 응답:` blocks) before the
last user message; a leading system message replaces the header line. When a token budget is
given the oldest turns are dropped first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2.exceptions import TemplateError

from kindchat.errors import InvalidError, TooLongError

HEADER = "아래는 작업을 설명하는 명령어입니다. 요청을 적절히 완료하는 응답을 작성하세요."
INSTRUCTION_TAG = "### 명령어:"
RESPONSE_TAG = "### 응답:"
TURN_SEPARATOR = "\n\n"

# The KULLM template as a Jinja chat template: written into every model kindchat registers, so
# that vLLM, SGLang or `transformers serve` prompt it exactly as kindchat does (a test checks that
# it renders the same text as `render`).
KULLM_CHAT_TEMPLATE = (
    "{%- set ns = namespace(prev='') -%}"
    "{%- if messages and messages[0]['role'] == 'system' and messages[0]['content'] | trim -%}"
    "{{- messages[0]['content'] | trim -}}"
    "{%- else -%}"
    "{{- '" + HEADER + "' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] == 'system' -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- ('\\n\\n' if ns.prev == 'user' else '\\n\\n"
    + INSTRUCTION_TAG
    + "\\n') + message['content'] -}}"
    "{%- set ns.prev = 'user' -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- ('\\n\\n' if ns.prev == 'assistant' else '\\n\\n"
    + RESPONSE_TAG
    + "\\n') + message['content'] -}}"
    "{%- set ns.prev = 'assistant' -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '\\n\\n" + RESPONSE_TAG + "\\n' -}}{%- endif -%}"
)

Message = Mapping[str, str]  # OpenAI-style {"role": "system"|"user"|"assistant", "content": ...}


class PromptTooLongError(TooLongError):
    """Even the last user message alone does not fit the token budget."""

    def __init__(self, needed: int, budget: int) -> None:
        super().__init__(
            f"the last message needs {needed} tokens with the template, over the budget of "
            f"{budget}; shorten it"
        )
        self.needed = needed
        self.budget = budget


class ConversationError(InvalidError):
    """The messages do not form a conversation kindchat can answer."""


@dataclass(frozen=True)
class Turn:
    """One exchange: a user message and, except for the last turn, the assistant's answer."""

    user: str
    assistant: str | None = None


def render(turns: Sequence[Turn], header: str = HEADER) -> str:
    """Stack the turns in the KULLM template; the last turn must await an answer."""
    if not turns or turns[-1].assistant is not None:
        raise ConversationError("the conversation must end with a user message")
    parts = [header]
    for turn in turns:
        parts.append(f"{INSTRUCTION_TAG}\n{turn.user}")
        parts.append(f"{RESPONSE_TAG}\n{turn.assistant or ''}")
    return TURN_SEPARATOR.join(parts)


def turns_from_messages(messages: Sequence[Message]) -> tuple[list[Turn], str | None]:
    """Group OpenAI-style messages into turns; return them and the system message, if any.

    A leading `system` message is the system prompt (blank: none). Consecutive messages of
    the same role are joined with a blank line.
    """
    system: str | None = None
    body = list(messages)
    if body and body[0].get("role") == "system":
        system = body[0].get("content", "").strip() or None
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
    return turns, system


def turns_to_messages(turns: Sequence[Turn], system: str | None = None) -> list[dict[str, str]]:
    """The OpenAI-style messages of `turns` (after the system message, if any)."""
    out = [{"role": "system", "content": system}] if system else []
    for turn in turns:
        out.append({"role": "user", "content": turn.user})
        if turn.assistant is not None:
            out.append({"role": "assistant", "content": turn.assistant})
    return out


@dataclass(frozen=True)
class Fitted:
    """A conversation fitted to a token budget: what is kept, as text, and its tokens."""

    turns: list[Turn]
    system: str | None
    text: str
    tokens: int | None

    def messages(self) -> list[dict[str, str]]:
        return turns_to_messages(self.turns, self.system)


class PromptFormat:
    """A model's prompt format: its tokenizer's chat template, else the KULLM template.

    Get one with :func:`prompt_format`; training, serving and evaluation all build prompts
    through it, so a model sees the same text in each.
    """

    def __init__(self, tokenizer: Any = None) -> None:
        template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
        self._tokenizer = tokenizer if isinstance(template, str) and template else None
        self.is_kullm = self._tokenizer is None or template == KULLM_CHAT_TEMPLATE

    @property
    def name(self) -> str:
        """`kullm` (kindchat's template, in Python or as a chat template) or `chat_template`."""
        return "kullm" if self.is_kullm else "chat_template"

    def render(self, turns: Sequence[Turn], system: str | None = None) -> str:
        """The input for `turns` (the last one awaiting its answer)."""
        if not turns or turns[-1].assistant is not None:
            raise ConversationError("the conversation must end with a user message")
        if self._tokenizer is None:
            return render(turns, system or HEADER)

        try:
            text = self._tokenizer.apply_chat_template(
                turns_to_messages(turns, system), tokenize=False, add_generation_prompt=True
            )
        except TemplateError as err:
            raise ConversationError(
                f"the model's chat template refused the conversation: {err}"
            ) from None
        return str(text)

    def single(self, prompt: str) -> str:
        """The input for one user message."""
        return self.render([Turn(prompt)])

    def prompt(
        self,
        messages: Sequence[Message],
        count_tokens: Callable[[str], int] | None = None,
        max_tokens: int | None = None,
    ) -> str:
        """The input for a conversation, oldest turns dropped until it fits `max_tokens`.

        Raises :class:`PromptTooLongError` if even the last user message alone does not fit.
        """
        return self.fit(messages, count_tokens, max_tokens).text

    def fit(
        self,
        messages: Sequence[Message],
        count_tokens: Callable[[str], int] | None = None,
        max_tokens: int | None = None,
    ) -> Fitted:
        """The turns kept (oldest dropped until the input fits `max_tokens`), their input text
        and its token count (None without `count_tokens`).

        Raises :class:`PromptTooLongError` if even the last user message alone does not fit.
        """
        turns, system = turns_from_messages(messages)
        if max_tokens is None or count_tokens is None:
            return Fitted(turns, system, self.render(turns, system), None)
        for start in range(len(turns)):
            text = self.render(turns[start:], system)
            needed = count_tokens(text)
            if needed <= max_tokens:
                return Fitted(turns[start:], system, text, needed)
        raise PromptTooLongError(needed, max_tokens)

    def conversation(
        self,
        prompt: str,
        context: Sequence[Message] = (),
        count_tokens: Callable[[str], int] | None = None,
        max_tokens: int | None = None,
    ) -> str:
        """The input for `prompt` after the earlier messages `context` (a training example's
        conversation): exactly what serving builds for the same messages."""
        return self.prompt(
            [*context, {"role": "user", "content": prompt}], count_tokens, max_tokens
        )


KULLM = PromptFormat()  # the embedded default, for a model without a chat template


def prompt_format(tokenizer: Any) -> PromptFormat:
    """The one place that decides how `tokenizer`'s model is prompted."""
    return PromptFormat(tokenizer)


def kullm_prompt(prompt: str) -> str:
    """The single-turn KULLM prompt for `prompt` (ends right after `### 응답:\\n`)."""
    return KULLM.single(prompt)
