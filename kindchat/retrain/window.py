"""What a night trains on: the feedback of the last `retrain_window_days` days (all of it when
unset), anomalous sessions left out and each voice capped (`feedback/influence.py`).

Chosen by measurement (`bench/learn_per_vote.py --second-night`, `docs/learning.md`): training
only on the feedback given since the last promotion — the serving policy's own answers —
learned markedly less than training on both nights (polite users: −0.147 [−0.220, −0.072] in
the users' score), and drifted further from SFT: a vote on an earlier policy's answers still
says what these users prefer, and half the rows overfit. The horizon bounds how old a vote may
be, as users and the product change; it is a bound, not a tuned value.

The export, the "enough feedback?" check and the anomaly judgement all read this one window; a
night with no vote since the last one is skipped (its data trained a model already).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kindchat.feedback.models import utcnow


@dataclass(frozen=True)
class TrainingWindow:
    """Feedback given at or after `since` (None: all of it) trains the night."""

    since: datetime | None
    days: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"since": self.since.isoformat() if self.since else None, "days": self.days}


def training_window(days: float | None, now: datetime | None = None) -> TrainingWindow:
    """The window ending `now`: the last `days` days, or everything when `days` is None."""
    if days is not None and days <= 0:
        raise ValueError(f"the training window must be > 0 days (or unset: all), got {days}")
    if days is None:
        return TrainingWindow(None, None)
    return TrainingWindow((now or utcnow()) - timedelta(days=days), days)
