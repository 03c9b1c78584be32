"""What a night trains on: the feedback given while the serving policy has been serving.

The window opens when the served alias (`RetrainConfig.served_alias`, `rlhf`; `sft` before the
first promotion) last moved, and stays open until the next move. Every vote, thumb and better
answer given since then is in it — on the serving policy's answers, on its arena opponents'
(SFT, a challenger) — and nothing older: answers of a policy that no longer serves describe
what *it* did wrong, which the new policy may not do at all (off-policy data), and old votes
would otherwise outweigh the night's as the store grows.

A night that is refused or retired leaves the window open, so its feedback is used again, with
what came since, by the next night: nothing is lost to a bad night. The export, the "enough
feedback?" check and the anomaly judgement all read this one window (`docs/learning.md`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kindchat.models.registry import Registry


@dataclass(frozen=True)
class TrainingWindow:
    """Feedback given at or after `since` (None: all of it) trains the night."""

    since: datetime | None
    alias: str  # the alias whose last move opened the window
    version: str | None  # what it serves

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat() if self.since else None,
            "alias": self.alias,
            "version": self.version,
        }


def training_window(registry: Registry, served_alias: str, sft_alias: str) -> TrainingWindow:
    """The window of the policy serving now: `served_alias`, or `sft_alias` before the first
    promotion. A registry that never recorded when the alias moved gives the whole store."""
    aliases = registry.aliases()
    alias = served_alias if served_alias in aliases else sft_alias
    return TrainingWindow(registry.alias_set_at(alias), alias, aliases.get(alias))
