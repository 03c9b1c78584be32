"""Per-browser-tab state, kept by Gradio in `gr.State` (one copy per visitor, never shared)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from gradio.components.chatbot import Message, MessageDict

from kindchat.serve.protocol import ChatMessage
from kindchat.ui.common import safe

Role = Literal["user", "assistant"]


@dataclass
class Turn:
    """One chat message as the user saw it; assistant turns carry their stored message id."""

    role: Role
    content: str
    message_id: str | None = None
    model: str | None = None  # the version that answered
    rating: int | None = None  # this session's 👍 (1) / 👎 (-1)
    stopped: bool = False  # the user stopped this answer mid-way
    siblings: tuple[str, ...] = ()  # stored ids of it and its other versions (‹k/n›), oldest first
    cut: bool = False  # the answer ended at the length limit (계속 생성 can go on)

    def branch(self) -> tuple[int, int] | None:
        """Its place among its versions (k, n) when it has more than one."""
        if len(self.siblings) < 2 or self.message_id not in self.siblings:
            return None
        return self.siblings.index(self.message_id) + 1, len(self.siblings)


@dataclass
class ChatSession:
    """The chat tab of one visitor: who they are (for ratings) and what was said."""

    session_id: str = ""
    turns: list[Turn] = field(default_factory=list)
    awaiting_reason: str | None = None  # answer id whose 👎 may get a reason
    conversation_id: str | None = None  # the stored conversation (made on the first message)
    persona: str | None = None  # the system message of this conversation
    off_latest: bool = False  # ‹k/n› went back to an earlier branch: the next turn follows it
    search: str = ""  # the history's search words (kept across chats)
    # the task writing this chat's answer (one at a time: see chat.one_at_a_time)
    writer: asyncio.Task[Any] | None = field(default=None, compare=False, repr=False)

    @property
    def answering(self) -> bool:
        """An answer is being written: its task is alive (a stopped or crashed one is not,
        even before its generator's cleanup has run)."""
        return self.writer is not None and not self.writer.done()

    def messages(self, upto: int | None = None) -> list[ChatMessage]:
        """The conversation for the service (the persona, then the first `upto` turns)."""
        system = [ChatMessage(role="system", content=self.persona)] if self.persona else []
        return [*system, *(ChatMessage(role=t.role, content=t.content) for t in self.turns[:upto])]

    def last_answer(self) -> Turn | None:
        if self.turns and self.turns[-1].role == "assistant" and self.turns[-1].message_id:
            return self.turns[-1]
        return None

    def chatbot(self) -> list[MessageDict | Message]:
        """Chatbot messages, HTML escaped (index i is `turns[i]`, which the like event uses)."""
        return [MessageDict(role=t.role, content=safe(t.content)) for t in self.turns]

    def branch_classes(self) -> list[str]:
        """The chat's ‹k/n› marks as CSS classes of the chatbot (`kcb-<turn>-<k>-<n>`), and
        `kcc-<turn>` for a last answer cut by the length limit: the page's script draws the
        arrows and the 계속 생성 button from them, next to each message's buttons."""
        marks = [
            f"kcb-{i}-{b[0]}-{b[1]}"
            for i, t in enumerate(self.turns)
            if (b := t.branch()) is not None
        ]
        last = self.last_answer()
        if last is not None and last.cut:
            marks.append(f"kcc-{len(self.turns) - 1}")
        return marks

    def feedback(self) -> list[str | None]:
        """The chatbot's 👍/👎 marks, one per assistant message in order."""
        marks = {1: "Like", -1: "Dislike"}
        return [marks.get(t.rating or 0) for t in self.turns if t.role == "assistant"]


@dataclass
class ArenaRound:
    """The arena tab of one visitor: the battle on screen and whether it was voted on."""

    session_id: str = ""
    battle_id: str | None = None
    prompt: str = ""
    answers: list[str] = field(default_factory=lambda: ["", ""])
    verdict: str | None = None

    def panel(self, side: int) -> list[MessageDict | Message]:
        """Side A (0) or B (1) as chatbot messages, HTML escaped."""
        if not self.prompt:
            return []
        shown: list[MessageDict | Message] = [MessageDict(role="user", content=safe(self.prompt))]
        if self.answers[side]:
            shown.append(MessageDict(role="assistant", content=safe(self.answers[side])))
        return shown
