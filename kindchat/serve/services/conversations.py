"""Conversation history: list, open, rename, delete, share (the API routes and the chat tab)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine

from kindchat.feedback import store
from kindchat.feedback.db import session_scope
from kindchat.feedback.models import ConversationPublic, MessagePublic


class ConversationService:
    """A session's own conversations; `share_base` is where share links point (from
    `Settings.share_base()`, never from a request's headers)."""

    def __init__(self, db: Engine, share_base: str) -> None:
        self.db = db
        self.share_base = share_base

    def start(self, session_id: str, system_prompt: str | None = None) -> str:
        """An empty stored conversation (the chat tab continues it turn by turn); its id."""
        with session_scope(self.db) as session:
            return store.create_conversation(
                session=session, session_id=session_id, system_prompt=system_prompt
            ).id

    def list(
        self, session_id: str, limit: int = 50, search: str | None = None
    ) -> list[ConversationPublic]:
        """The session's conversations, most recently active first (`search`: those whose
        title or messages contain it)."""
        with session_scope(self.db) as session:
            return store.list_conversations(
                session=session, session_id=session_id, limit=limit, search=search
            )

    def get(
        self, conversation_id: str, session_id: str
    ) -> tuple[ConversationPublic, list[MessagePublic]]:
        """A conversation of `session_id` and its messages as the user last saw them."""
        with session_scope(self.db) as session:
            conversation = store.owned_conversation(
                session=session, conversation_id=conversation_id, session_id=session_id
            )
            return conversation, store.conversation_thread(
                session=session, conversation_id=conversation_id
            )

    def branches(
        self, conversation_id: str, session_id: str, through: str | None = None
    ) -> tuple[ConversationPublic, list[store.Branched[MessagePublic]]]:
        """A conversation of `session_id` as the chat shows it: its latest branch, or the
        latest one through message `through` (‹k/n›), each message with its place among its
        siblings."""
        with session_scope(self.db) as session:
            conversation = store.owned_conversation(
                session=session, conversation_id=conversation_id, session_id=session_id
            )
            return conversation, store.conversation_branches(
                session=session, conversation_id=conversation_id, through=through
            )

    def ratings(self, session_id: str, message_ids: list[str]) -> dict[str, int]:
        """The ratings `session_id` gave these messages (message id -> +1/-1): what a reopened
        conversation shows on its 👍/👎."""
        with session_scope(self.db) as session:
            return store.session_ratings(
                session=session, session_id=session_id, message_ids=message_ids
            )

    def rename(self, conversation_id: str, session_id: str, title: str) -> ConversationPublic:
        with session_scope(self.db) as session:
            return store.rename_conversation(
                session=session, conversation_id=conversation_id, session_id=session_id, title=title
            )

    def delete(self, conversation_id: str, session_id: str, forget: bool) -> None:
        with session_scope(self.db) as session:
            store.delete_conversation(
                session=session,
                conversation_id=conversation_id,
                session_id=session_id,
                forget=forget,
            )

    def restore(self, conversation_id: str, session_id: str) -> None:
        """Undo a delete of this session's (a forgotten conversation is gone)."""
        with session_scope(self.db) as session:
            store.restore_conversation(
                session=session, conversation_id=conversation_id, session_id=session_id
            )

    def share(self, conversation_id: str, session_id: str) -> str:
        """The conversation's read-only link token."""
        with session_scope(self.db) as session:
            return store.share_conversation(
                session=session, conversation_id=conversation_id, session_id=session_id
            )

    def share_url(self, token: str) -> str:
        return f"{self.share_base}/shared/{token}"

    def shared(self, token: str) -> tuple[ConversationPublic, list[MessagePublic]]:
        """What a share link shows to anyone: the conversation with its personal data replaced
        by placeholders (one per value through the conversation, the title included). Its owner
        still sees what they wrote in their own history."""
        with session_scope(self.db) as session:
            conversation, messages = store.shared_conversation(session=session, token=token)
        # lazy: Presidio (and the spaCy it imports) costs the server ~2 s at start
        from kindchat.feedback.privacy import Redactor

        redactor = Redactor()
        shown = [m.model_copy(update={"content": redactor(m.content)}) for m in messages]
        return conversation.model_copy(
            update={
                "title": shared_title(conversation.title, messages, shown, redactor),
                "system_prompt": redactor(conversation.system_prompt)
                if conversation.system_prompt
                else conversation.system_prompt,
            }
        ), shown


def shared_title(
    title: str | None,
    messages: list[MessagePublic],
    shown: list[MessagePublic],
    redactor: Callable[[str], str],
) -> str | None:
    """The title others see. A title made from the first message (cut at 40 characters, where
    a number or an address may be cut in two and no longer recognised) is made again from that
    message with its personal data replaced; a title the owner wrote is redacted as it is, a
    word cut by `…` dropped. `shown`: `messages` as redacted."""
    if not title:
        return title
    first = next((i for i, m in enumerate(messages) if m.role == "user"), None)
    if first is not None and title == store.title_of(messages[first].content):
        return store.title_of(shown[first].content)
    if title.endswith("…"):
        title = title[:-1].rsplit(" ", 1)[0] + " …"
    return redactor(title)
