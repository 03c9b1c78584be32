"""Rebuild training data from feedback: `kindchat feedback export --out DIR`.

The rows come from :func:`kindchat.feedback.pairs.mine_feedback` (every rule that turns a signal
into training data lives there): preference pairs, unpaired 👍/👎 examples (KTO) and users'
better answers (SFT demonstrations); then the seed's RM train pairs. Pairs pass these filters
in order, each drop counted under its reason:

1. `eval_prompt` — the prompt is one of the seed's evaluation prompts (`rm/*_test.json`);
2. `short_answer` — chosen or rejected has fewer than `min_answer_chars` visible characters;
3. `near_identical` — ROUGE-L(chosen, rejected) ≥ `max_similarity`;
4. `duplicate` — the same (context, prompt, chosen, rejected) was kept already (the first wins:
   feedback before seed, in `mine_feedback` order);
5. `contradictory` — a pair and its reverse both survive: both go.

Unpaired examples and demonstrations pass the same in spirit: `eval_prompt`, `short_answer`
(desirable ones and demonstrations only: an empty answer is a fine 👎), `duplicate`, and
`contradictory` (the same answer both 👍 and 👎 in one context).

Before mining, votes of sessions that vote like a script are left out (`anomalous_session`;
:mod:`kindchat.feedback.influence`); after the filters, no session may account for more than its
cap of the feedback rows (`influence_cap`). The manifest's `influence` holds the cap, the
sessions capped and the anomalous sessions by reason.

Everything is split by prompt hash (`kindchat.seed.stable_fraction`), so a prompt stays on its
side run after run. Output, written to temporary names and renamed, the manifest last:

* `train.json`, `test.json` — pairs in the seed RM format (`id`, `prompt`, `chosen`,
  `rejected`, `source`, plus `context`, the earlier turns as OpenAI-style messages, when the
  prompt is not the first turn);
* `unpaired.json` — KTO examples (`id`, `prompt`, `completion`, `label`, `source`, `context`);
* `sft.json` — demonstrations in the same format (`label` true);
* `manifest.json` — training rows per rule (`signals`), pairs by source and split, drops by
  reason, file row counts, personal data replaced per kind (`personal_data`: counts, never
  values), fingerprint, thresholds.

Personal data never leaves: every feedback row (pairs, unpaired, demonstrations) has its phone
numbers, 주민등록번호, e-mails, cards, accounts, passports, IPs, addresses and introduced names
replaced by typed placeholders (`<전화번호>` …; :mod:`kindchat.feedback.privacy`) before the
filters, so the files, their fingerprint and the night's training see only the placeholders.
The seed's pairs are a published dataset and pass as published.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlmodel import Session

from kindchat.feedback.errors import InvalidValueError
from kindchat.feedback.files import write_json_atomic
from kindchat.feedback.influence import InfluenceConfig, cap_rows, find_anomalies, read_votes
from kindchat.feedback.models import utcnow
from kindchat.feedback.moderation import Moderator, load_moderator
from kindchat.feedback.pairs import FeedbackExample, mine_feedback
from kindchat.feedback.privacy import Redactor
from kindchat.feedback.textsim import Tokenizer, rouge_l
from kindchat.seed import (
    RM_SUBSETS,
    eval_prompt_keys,
    normalize_prompt,
    read_rm,
    stable_fraction,
)
from kindchat.seed import fingerprint as seed_fingerprint

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: unpaired.json, sft.json and signal counts
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))


@dataclass(frozen=True)
class ExportConfig:
    """Thresholds of the reward-data export (every one recorded in the manifest)."""

    test_fraction: float = 0.05  # share of prompts held out in test.json (by prompt hash)
    min_answer_chars: int = 5  # drop pairs with a shorter chosen/rejected (visible characters)
    max_similarity: float = 0.9  # drop pairs whose answers reach this ROUGE-L F1
    similarity_tokens: Tokenizer = "char"  # ROUGE-L over characters or whitespace words
    include_seed: bool = True  # merge the seed's rm/*_train.json pairs
    seed_subsets: tuple[str, ...] = RM_SUBSETS  # which seed subsets to merge
    exclude_eval_prompts: bool = True  # drop pairs whose prompt is a seed evaluation prompt
    drop_contradictions: bool = True  # drop a pair when its reverse is kept too
    influence: InfluenceConfig = field(default_factory=InfluenceConfig)  # caps, anomalies

    def __post_init__(self) -> None:
        if not 0 <= self.test_fraction < 1:
            raise InvalidValueError(
                f"test_fraction must lie in [0, 1), got {self.test_fraction}",
                field="test_fraction",
            )
        if self.min_answer_chars < 0:
            raise InvalidValueError(
                f"min_answer_chars must be ≥ 0, got {self.min_answer_chars}",
                field="min_answer_chars",
            )
        if not 0 < self.max_similarity <= 1:
            raise InvalidValueError(
                f"max_similarity must lie in (0, 1] (1 drops only identical pairs), "
                f"got {self.max_similarity}",
                field="max_similarity",
            )
        if self.similarity_tokens not in ("char", "word"):
            raise InvalidValueError(
                f"similarity_tokens must be 'char' or 'word', got {self.similarity_tokens!r}",
                field="similarity_tokens",
            )
        unknown = sorted(set(self.seed_subsets) - set(RM_SUBSETS))
        if unknown:
            raise InvalidValueError(
                f"unknown seed subset(s) {unknown}; choose from {list(RM_SUBSETS)}",
                field="seed_subsets",
            )


@dataclass(frozen=True)
class RewardRow:
    """One output pair in the seed RM format (+ `source`, + `context` when multi-turn)."""

    id: str
    prompt: str
    chosen: str
    rejected: str
    source: str
    context: list[dict[str, str]] = field(default_factory=list)
    sessions: tuple[str, ...] = field(default=(), compare=False)  # never written out
    at: datetime | None = field(default=None, compare=False)
    models: tuple[str, ...] = field(default=(), compare=False)  # versions that answered

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.id,
            "prompt": self.prompt,
            "chosen": self.chosen,
            "rejected": self.rejected,
            "source": self.source,
        }
        if self.context:
            row["context"] = self.context
        return row

    def key(self, *, reverse: bool = False) -> str:
        first, second = (self.rejected, self.chosen) if reverse else (self.chosen, self.rejected)
        parts = [(m["role"], normalize_prompt(m["content"])) for m in self.context]
        return json.dumps(
            [
                parts,
                normalize_prompt(self.prompt),
                normalize_prompt(first),
                normalize_prompt(second),
            ],
            ensure_ascii=False,
        )


@dataclass(frozen=True)
class ExampleRow:
    """One unpaired example (KTO) or demonstration (SFT), with its conversation."""

    id: str
    prompt: str
    completion: str
    label: bool
    source: str
    context: list[dict[str, str]] = field(default_factory=list)
    sessions: tuple[str, ...] = field(default=(), compare=False)  # never written out
    at: datetime | None = field(default=None, compare=False)
    models: tuple[str, ...] = field(default=(), compare=False)  # the version that answered

    @classmethod
    def of(cls, example: FeedbackExample) -> ExampleRow:
        return cls(
            id=example.id,
            prompt=example.prompt,
            completion=example.completion,
            label=example.label,
            source=example.source,
            context=example.context,
            sessions=example.sessions,
            at=example.at,
            models=(example.model,) if example.model else (),
        )

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": self.id,
            "prompt": self.prompt,
            "completion": self.completion,
            "label": self.label,
            "source": self.source,
        }
        if self.context:
            row["context"] = self.context
        return row

    def key(self, *, flip: bool = False) -> str:
        parts = [(m["role"], normalize_prompt(m["content"])) for m in self.context]
        label = self.label != flip
        return json.dumps(
            [parts, normalize_prompt(self.prompt), normalize_prompt(self.completion), label],
            ensure_ascii=False,
        )


@dataclass(frozen=True)
class ExportReport:
    out_dir: Path
    train: int
    test: int
    counts: dict[str, dict[str, int]]  # source -> {"train": n, "test": n}
    dropped: dict[str, int]  # reason -> n
    fingerprint: str
    signals: dict[str, int] = field(default_factory=dict)  # rule -> training rows it made
    unpaired: int = 0  # rows in unpaired.json (KTO)
    demonstrations: int = 0  # rows in sft.json (better answers)
    influence: dict[str, Any] = field(default_factory=dict)  # the cap and the anomalies
    personal_data: dict[str, int] = field(default_factory=dict)  # kind -> values replaced


def visible_length(text: str) -> int:
    """Characters that show: no whitespace, no zero-width characters."""
    return len("".join(text.translate(_INVISIBLE).split()))


def pair_rows(pairs: Iterable[Any]) -> Iterator[RewardRow]:
    for pair in pairs:
        yield RewardRow(
            id=pair.id,
            prompt=pair.prompt,
            chosen=pair.chosen,
            rejected=pair.rejected,
            source=pair.source,
            context=pair.context,
            sessions=pair.sessions,
            at=pair.at,
            models=tuple(m for m in (pair.chosen_model, pair.rejected_model) if m),
        )


def seed_rows(data_dir: Path, subsets: Iterable[str]) -> Iterator[RewardRow]:
    for pair in read_rm(data_dir, "train", subsets):
        yield RewardRow(
            id=f"seed/{pair.subset}/{pair.id}",
            prompt=pair.prompt,
            chosen=pair.chosen,
            rejected=pair.rejected,
            source="seed",
        )


def filter_rows(
    rows: Iterable[RewardRow],
    config: ExportConfig,
    eval_prompts: frozenset[str],
    dropped: Counter[str],
) -> list[RewardRow]:
    """Apply the export filters in the documented order; count each drop in `dropped`."""
    kept: dict[str, RewardRow] = {}
    for row in rows:
        if normalize_prompt(row.prompt) in eval_prompts:
            dropped["eval_prompt"] += 1
        elif (
            min(visible_length(row.chosen), visible_length(row.rejected)) < config.min_answer_chars
        ):
            dropped["short_answer"] += 1
        elif rouge_l(row.chosen, row.rejected, config.similarity_tokens) >= config.max_similarity:
            dropped["near_identical"] += 1
        elif row.key() in kept:
            dropped["duplicate"] += 1
        else:
            kept[row.key()] = row
    return list(kept.values())


def drop_contradictions(
    rows: Sequence[R], config: ExportConfig, dropped: Counter[str], kind: str = ""
) -> list[R]:
    """Rows whose reverse (the opposite pair, or the same example with the other label) is not
    kept too. Applied after the cap, so a vote cast only to cancel another still spends its
    session's and its origin's room."""
    if not config.drop_contradictions:
        return list(rows)
    keys = {row.key() for row in rows}
    out = []
    for row in rows:
        reverse = row.key(reverse=True) if isinstance(row, RewardRow) else row.key(flip=True)
        if reverse in keys:
            dropped[f"{kind}_contradictory" if kind else "contradictory"] += 1
        else:
            out.append(row)
    return out


def drop_flagged(rows: Sequence[R], moderator: Moderator, dropped: Counter[str]) -> list[R]:
    """Moderation again at export time (the lexicon may have grown since the words were
    stored): a row any of whose texts is flagged — the prompt, its context, a user's better
    answer, an answer — never leaves (`flagged_text`). An answer that speaks of self-harm (to
    comfort, or with the 109 line) is what we want said, and stays, as when it was stored."""
    out = []
    for row in rows:
        asked = [row.prompt, *(m["content"] for m in row.context)]
        answers = [row.chosen, row.rejected] if isinstance(row, RewardRow) else [row.completion]
        if any(moderator.check(text).flagged for text in asked) or any(
            (verdict := moderator.check(text)).flagged and verdict.category != "self_harm"
            for text in answers
        ):
            dropped["flagged_text"] += 1
        else:
            out.append(row)
    return out


def redact_rows(rows: Sequence[R], counts: Counter[str]) -> list[R]:
    """Rows with personal data replaced by typed placeholders (:mod:`kindchat.feedback.privacy`),
    one redactor per row — its conversation: the earlier turns, the prompt, then the answers —
    so one value keeps one placeholder through it; replacements counted per kind in `counts`."""
    out = []
    for row in rows:
        redactor = Redactor()
        context = redactor.messages(row.context)
        prompt = redactor(row.prompt)
        if isinstance(row, RewardRow):
            new = replace(
                row,
                context=context,
                prompt=prompt,
                chosen=redactor(row.chosen),
                rejected=redactor(row.rejected),
            )
        else:
            new = replace(row, context=context, prompt=prompt, completion=redactor(row.completion))
        counts.update(redactor.counts)
        out.append(new)
    return out


def filter_examples(
    rows: Iterable[ExampleRow],
    config: ExportConfig,
    eval_prompts: frozenset[str],
    dropped: Counter[str],
    kind: str,
) -> list[ExampleRow]:
    """The pair filters' counterpart for unpaired rows; drops counted as `<kind>_<reason>`."""
    kept: dict[str, ExampleRow] = {}
    for row in rows:
        if normalize_prompt(row.prompt) in eval_prompts:
            dropped[f"{kind}_eval_prompt"] += 1
        elif row.label and visible_length(row.completion) < config.min_answer_chars:
            dropped[f"{kind}_short_answer"] += 1
        elif row.key() in kept:
            dropped[f"{kind}_duplicate"] += 1
        else:
            kept[row.key()] = row
    return list(kept.values())


R = TypeVar("R", RewardRow, ExampleRow)


def split_rows(rows: Iterable[R], test_fraction: float) -> tuple[list[R], list[R]]:
    """(train, test): a row is held out iff the hash of its normalised prompt < test_fraction."""
    train: list[R] = []
    test: list[R] = []
    for row in rows:
        (test if stable_fraction(normalize_prompt(row.prompt)) < test_fraction else train).append(
            row
        )
    return train, test


def export_reward_data(
    *,
    session: Session,
    data_dir: Path,
    out_dir: Path,
    config: ExportConfig | None = None,
    since: datetime | None = None,
    moderator: Moderator | None = None,
) -> ExportReport:
    """Write the export files (module docstring) to `out_dir`; return the counts. `moderator`
    (default: kindchat's lexicon) checks every feedback text again on the way out."""
    config = config or ExportConfig()
    anomalies = find_anomalies(read_votes(session, since), config.influence)
    for sid, reasons in anomalies.sessions.items():
        logger.info("session %s votes like a script (%s): its votes are left out", sid, reasons)
    mined = mine_feedback(session=session, since=since, exclude=anomalies.sessions)
    dropped: Counter[str] = Counter(mined.dropped)
    moderator = moderator or load_moderator()
    personal: Counter[str] = Counter()
    candidates: list[RewardRow] = redact_rows(
        drop_flagged(list(pair_rows(mined.pairs)), moderator, dropped), personal
    )
    from_feedback = len(candidates)
    if config.include_seed:
        candidates.extend(seed_rows(data_dir, config.seed_subsets))
    eval_prompts = eval_prompt_keys(data_dir) if config.exclude_eval_prompts else frozenset()
    kept = filter_rows(candidates, config, eval_prompts, dropped)
    unpaired_rows = redact_rows(
        drop_flagged(list(map(ExampleRow.of, mined.unpaired)), moderator, dropped), personal
    )
    kto = filter_examples(unpaired_rows, config, eval_prompts, dropped, "kto")
    demo_rows = redact_rows(
        drop_flagged(list(map(ExampleRow.of, mined.demonstrations)), moderator, dropped),
        personal,
    )
    sft = filter_examples(demo_rows, config, eval_prompts, dropped, "sft")
    (kept, kto, sft), cap = cap_rows([kept, kto, sft], config.influence)  # one cap for all
    if cap.dropped:
        dropped["influence_cap"] += cap.dropped
    kept = drop_contradictions(kept, config, dropped)
    kto = drop_contradictions(kto, config, dropped, "kto")
    sft = drop_contradictions(sft, config, dropped, "sft")
    train, test = split_rows(kept, config.test_fraction)
    unpaired, _ = split_rows(kto, config.test_fraction)
    demos, _ = split_rows(sft, config.test_fraction)
    influence = {**cap.as_dict(config.influence), "anomalous": anomalies.as_dict()}
    from_users = [row for rows in (train, test, unpaired, demos) for row in rows if row.at]
    times = sorted(at for row in from_users if (at := row.at) is not None)
    model_versions = Counter(model for row in from_users for model in row.models)

    counts: dict[str, dict[str, int]] = {}
    for split, rows in (("train", train), ("test", test)):
        for row in rows:
            counts.setdefault(row.source, {"train": 0, "test": 0})[split] += 1
    files = {
        "train.json": [row.to_json() for row in train],
        "test.json": [row.to_json() for row in test],
        "unpaired.json": [row.to_json() for row in unpaired],
        "sft.json": [row.to_json() for row in demos],
    }
    fingerprint = seed_fingerprint(
        [item for name, rows in files.items() for item in ({"file": name}, *rows)]
    )
    manifest = {
        "format_version": FORMAT_VERSION,
        "created_at": utcnow().isoformat(),
        "since": since.isoformat() if since else None,
        "signals": dict(sorted(mined.signals.items())),
        "candidates": {"feedback": from_feedback, "seed": len(candidates) - from_feedback},
        "counts": dict(sorted(counts.items())),
        "totals": {"train": len(train), "test": len(test)},
        "rows": {name: len(rows) for name, rows in files.items()},
        "dropped": dict(sorted(dropped.items())),
        "influence": influence,
        "personal_data": dict(sorted(personal.items())),
        "date_range": [times[0].isoformat(), times[-1].isoformat()] if times else None,
        "model_versions": dict(model_versions.most_common()),
        "fingerprint": fingerprint,
        "thresholds": {
            k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()
        },
        "files": list(files),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        write_json_atomic(out_dir / name, rows)
    write_json_atomic(out_dir / "manifest.json", manifest)
    logger.info(
        "exported %d train / %d test pairs, %d unpaired, %d demonstrations to %s "
        "(signals %s, dropped %s, fingerprint %s)",
        len(train),
        len(test),
        len(unpaired),
        len(demos),
        out_dir,
        dict(mined.signals),
        dict(dropped),
        fingerprint,
    )
    return ExportReport(
        out_dir,
        len(train),
        len(test),
        counts,
        dict(dropped),
        fingerprint,
        signals=dict(mined.signals),
        unpaired=len(unpaired),
        demonstrations=len(demos),
        influence=influence,
        personal_data=dict(sorted(personal.items())),
    )
