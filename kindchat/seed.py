"""Typed readers for the VAIV seed data (`sft/*.jsonl`, `rm/*.json`, `geval_scores/*.json`, `ppo/`).

Every reader fails with :class:`SeedDataError` naming the file, the row (1-based) and what is
wrong. The `<|endoftext|>` suffix that the seed's RM data carries is stripped on read; the
tokenizer's EOS is appended when a response is encoded (see `kindchat.models.template`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kindchat.errors import InvalidError

EOS_TEXT = "<|endoftext|>"
RM_SUBSETS = ("conversation", "hatespeech", "translation")
SFT_SUBSETS = ("conversation", "hatespeech", "evol")
GEVAL_SUBSETS = ("conversation", "hatespeech")


class SeedDataError(InvalidError):
    """A seed file is missing or malformed; the message names the file, row and problem."""

    def __init__(self, path: Path, message: str, row: int | None = None) -> None:
        where = f"{path}" if row is None else f"{path}, row {row}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.row = row


def strip_eos(text: str) -> str:
    """Remove every trailing `<|endoftext|>` (the seed appends one to RM responses)."""
    while text.endswith(EOS_TEXT):
        text = text[: -len(EOS_TEXT)]
    return text


def normalize_prompt(text: str) -> str:
    """The key under which two prompts count as the same one (whitespace-insensitive)."""
    return " ".join(text.split())


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by `key` alone: the basis of every held-out split."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def fingerprint(items: Iterable[BaseModel | dict[str, Any] | str]) -> str:
    """sha256 of the items' canonical JSON, 16 hex digits: which data a model was trained on."""
    digest = hashlib.sha256()
    for item in items:
        data = item.model_dump() if isinstance(item, BaseModel) else item
        digest.update(json.dumps(data, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=False)


class SftRecord(_Record):
    """One instruction and its reference answer (`sft/*.jsonl`)."""

    id: str
    instruction: str = Field(min_length=1)
    output: str = Field(min_length=1)
    input: str | None = None
    subset: str = ""

    @field_validator("id", mode="before")
    @classmethod
    def _id_to_str(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @property
    def prompt(self) -> str:
        """The instruction, with the optional `input` appended as the seed's evol data does."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


CONTEXT_ROLES = ("system", "user", "assistant")


def _check_context(value: list[dict[str, str]]) -> list[dict[str, str]]:
    for index, message in enumerate(value):
        if set(message) != {"role", "content"} or message["role"] not in CONTEXT_ROLES:
            raise ValueError(
                f"context[{index}] must be {{role, content}} with role in {list(CONTEXT_ROLES)}"
            )
    if value and value[-1]["role"] == "user":
        raise ValueError("context holds the turns *before* the prompt: it cannot end with user")
    return value


class RmPair(_Record):
    """A prompt with a preferred (`chosen`) and a dispreferred (`rejected`) answer.

    `context` holds the conversation before `prompt` (OpenAI-style messages, empty for a single
    turn, as in the seed); trainers build the input with the same multi-turn template as serving.
    """

    id: str = ""
    prompt: str = Field(min_length=1)
    chosen: str
    rejected: str
    subset: str = ""
    context: list[dict[str, str]] = Field(default_factory=list)

    @field_validator("chosen", "rejected")
    @classmethod
    def _strip_eos(cls, value: str) -> str:
        return strip_eos(value)

    _context = field_validator("context")(_check_context)


class Example(_Record):
    """One answer with a verdict, no sibling needed: a 👍 (`label` true) or 👎 (false) for KTO,
    or a demonstration (a better answer a user wrote: label true) for SFT."""

    id: str = ""
    prompt: str = Field(min_length=1)
    completion: str
    label: bool = True
    source: str = ""
    context: list[dict[str, str]] = Field(default_factory=list)

    _context = field_validator("context")(_check_context)


class GevalRecord(_Record):
    """Two answers to one prompt, each scored by the G-Eval judge on six criteria (1–5)."""

    id: str
    prompt: str = Field(min_length=1)
    response1: str
    scores1: list[float] = Field(min_length=1)
    sum1: float
    response2: str
    scores2: list[float] = Field(min_length=1)
    sum2: float
    subset: str = ""

    @field_validator("response1", "response2")
    @classmethod
    def _strip_eos(cls, value: str) -> str:
        return strip_eos(value)

    @field_validator("scores1", "scores2")
    @classmethod
    def _scores_in_range(cls, value: list[float]) -> list[float]:
        bad = [s for s in value if s != 0 and not 1 <= s <= 5]
        if bad:
            raise ValueError(f"scores must lie in 1..5 (0: not scored), got {bad}")
        return value

    @model_validator(mode="after")
    def _sums_match(self) -> GevalRecord:
        for scores, total, name in (
            (self.scores1, self.sum1, "sum1"),
            (self.scores2, self.sum2, "sum2"),
        ):
            if abs(sum(scores) - total) > 1e-6:
                raise ValueError(f"{name}={total} is not the sum of its scores ({sum(scores)})")
        return self

    @property
    def complete(self) -> bool:
        """Every criterion of both answers was scored (the seed has a few judge failures: 0)."""
        return (
            0 not in self.scores1
            and 0 not in self.scores2
            and len(self.scores1) == len(self.scores2)
        )


class PpoPrompt(_Record):
    """A prompt for PPO rollouts (`ppo/step3_prompts.json`)."""

    id: str
    prompt: str = Field(min_length=1)


R = TypeVar("R", bound=_Record)


def _validate(model: type[R], raw: Any, path: Path, row: int, **extra: Any) -> R:
    if not isinstance(raw, dict):
        raise SeedDataError(path, f"expected a JSON object, got {type(raw).__name__}", row)
    try:
        return model.model_validate({**raw, **extra})
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in err.errors()
        )
        raise SeedDataError(path, problems, row) from None


def _load_json_list(path: Path) -> list[Any]:
    if not path.is_file():
        raise SeedDataError(path, "file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SeedDataError(path, f"invalid JSON at line {err.lineno}: {err.msg}") from None
    except UnicodeDecodeError as err:
        raise SeedDataError(path, f"not UTF-8 text: {err.reason}") from None
    if not isinstance(data, list):
        raise SeedDataError(path, f"expected a JSON list of objects, got {type(data).__name__}")
    return data


def _iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    if not path.is_file():
        raise SeedDataError(path, "file not found")
    with path.open(encoding="utf-8") as handle:
        for row, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield row, json.loads(line)
            except json.JSONDecodeError as err:
                raise SeedDataError(path, f"invalid JSON: {err.msg}", row) from None


def _subset_of(path: Path) -> str:
    return path.stem.split("_")[0]


def read_sft_file(path: Path) -> list[SftRecord]:
    subset = _subset_of(path)
    return [_validate(SftRecord, raw, path, row, subset=subset) for row, raw in _iter_jsonl(path)]


def read_rm_file(path: Path) -> list[RmPair]:
    subset = _subset_of(path)
    return [
        _validate(RmPair, raw, path, row, subset=subset)
        for row, raw in enumerate(_load_json_list(path), start=1)
    ]


def read_examples_file(path: Path) -> list[Example]:
    """Unpaired examples (`unpaired.json`) or demonstrations (`sft.json`) of a feedback export."""
    return [
        _validate(Example, raw, path, row) for row, raw in enumerate(_load_json_list(path), start=1)
    ]


def read_geval_file(path: Path) -> list[GevalRecord]:
    subset = _subset_of(path)
    return [
        _validate(GevalRecord, raw, path, row, subset=subset)
        for row, raw in enumerate(_load_json_list(path), start=1)
    ]


def read_ppo_prompts_file(path: Path) -> list[PpoPrompt]:
    return [
        _validate(PpoPrompt, raw, path, row)
        for row, raw in enumerate(_load_json_list(path), start=1)
    ]


def _check_subsets(subsets: Iterable[str] | None, known: tuple[str, ...]) -> tuple[str, ...]:
    chosen = tuple(subsets) if subsets is not None else known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise ValueError(f"unknown subset(s) {unknown}; choose from {list(known)}")
    return chosen


def read_sft(data_dir: Path, subsets: Iterable[str] | None = None) -> list[SftRecord]:
    """All SFT records of the chosen subsets (default: conversation, hatespeech, evol)."""
    out: list[SftRecord] = []
    for subset in _check_subsets(subsets, SFT_SUBSETS):
        out.extend(read_sft_file(data_dir / "sft" / f"{subset}.jsonl"))
    return out


def read_rm(
    data_dir: Path, split: Literal["train", "test"], subsets: Iterable[str] | None = None
) -> list[RmPair]:
    """The seed's pairwise data for one split, subsets in a fixed order."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    out: list[RmPair] = []
    for subset in _check_subsets(subsets, RM_SUBSETS):
        out.extend(read_rm_file(data_dir / "rm" / f"{subset}_{split}.json"))
    return out


def read_geval(data_dir: Path, subsets: Iterable[str] | None = None) -> list[GevalRecord]:
    out: list[GevalRecord] = []
    for subset in _check_subsets(subsets, GEVAL_SUBSETS):
        out.extend(read_geval_file(data_dir / "geval_scores" / f"{subset}_scores.json"))
    return out


def read_ppo_prompts(data_dir: Path) -> list[PpoPrompt]:
    return read_ppo_prompts_file(data_dir / "ppo" / "step3_prompts.json")


def eval_prompt_keys(data_dir: Path) -> frozenset[str]:
    """Normalised prompts of `rm/*_test.json`: the product's evaluation prompts.

    Every training set leaves these out by default, so each evaluation prompt is unseen.
    """
    return frozenset(normalize_prompt(pair.prompt) for pair in read_rm(data_dir, "test"))


def corpus_texts(data_dir: Path, exclude_prompts: frozenset[str] = frozenset()) -> list[str]:
    """Every distinct text of the seed (prompts and answers), for the tokenizer and the base LM.

    Records whose prompt is in `exclude_prompts` contribute nothing (neither prompt nor answers).
    """
    seen: set[str] = set()
    texts: list[str] = []

    def add(*items: str) -> None:
        for text in items:
            if text.strip() and text not in seen:
                seen.add(text)
                texts.append(text)

    def kept(prompt: str) -> bool:
        return normalize_prompt(prompt) not in exclude_prompts

    for rec in read_sft(data_dir):
        if kept(rec.prompt):
            add(rec.prompt, rec.output)
    for pair in read_rm(data_dir, "train"):
        if kept(pair.prompt):
            add(pair.prompt, pair.chosen, pair.rejected)
    for g in read_geval(data_dir):
        if kept(g.prompt):
            add(g.prompt, g.response1, g.response2)
    for p in read_ppo_prompts(data_dir):
        if kept(p.prompt):
            add(p.prompt)
    return texts
