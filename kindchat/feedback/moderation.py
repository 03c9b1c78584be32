"""Moderation: one interface, ``check(text) -> Verdict``, for user turns and answers alike.

- :class:`LexiconModerator` reads a Korean/English lexicon of slurs and harmful categories kept as
  data (`feedback/data/moderation.json`, or `KINDCHAT_MODERATION_LEXICON`): Hangul terms match
  inside words (Korean attaches particles: 짱깨가, 짱깨들), Latin ones at word boundaries.
- :class:`EndpointModerator` asks an OpenAI-compatible `/moderations` endpoint (OpenAI's, or a
  self-hosted Llama Guard behind one), when `KINDCHAT_MODERATION_BASE_URL` is set.
- :func:`load_moderator` chains them: the first flag wins.

A flagged user turn gets a kind refusal instead of a generation (:func:`refusal`), and flagged
turns never reach training data (the export drops them, counted in its manifest). The same
lexicon names models (`identity`): an arena answer that says which model it is voids the battle,
as FastChat does, since a vote on it is no longer blind.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

HANGUL = re.compile(r"[\uac00-\ud7a3\u3131-\u318e]")

REFUSAL = (
    "죄송하지만 그 요청은 도와드릴 수 없어요. 누군가에게 상처를 주거나 위험할 수 있는 "
    "내용이라서요. 다른 이야기라면 언제든 기꺼이 함께할게요."
)
SELF_HARM_REFUSAL = (
    "많이 힘드신 것 같아요. 혼자 견디지 않으셔도 돼요. 지금 바로 자살예방상담전화 109 "
    "(24시간)나 정신건강위기상담 1577-0199에서 이야기를 들어 드려요. 제게도 마음을 털어놓으셔도 "
    "괜찮아요."
)


@dataclass(frozen=True)
class Verdict:
    """Whether a text is flagged, under which category, and what matched (or who said so)."""

    flagged: bool
    category: str | None = None
    evidence: str | None = None
    source: str = "lexicon"

    @property
    def reason(self) -> str | None:
        """What the store keeps on a flagged message: `source:category`."""
        return f"{self.source}:{self.category}" if self.flagged else None


CLEAN = Verdict(False)


class Moderator(Protocol):
    def check(self, text: str) -> Verdict: ...


def normalize(text: str) -> str:
    """NFKC, lower case, zero-width characters gone, whitespace runs as one space."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[\u200b-\u200d\ufeff]", "", text)
    return re.sub(r"\s+", " ", text)


def _pattern(terms: list[str]) -> re.Pattern[str] | None:
    parts = []
    for term in sorted({normalize(t).strip() for t in terms if t.strip()}, key=len, reverse=True):
        escaped = re.escape(term)
        parts.append(escaped if HANGUL.search(term) else rf"(?<![a-z0-9]){escaped}(?![a-z0-9])")
    return re.compile("|".join(parts)) if parts else None


class LexiconModerator:
    """Flags a text that contains a term of a harmful category of the lexicon."""

    def __init__(self, lexicon: dict[str, Any]) -> None:
        categories = lexicon.get("categories", {})
        if not isinstance(categories, dict):
            raise ValueError("the moderation lexicon needs a `categories` object")
        self._patterns = {
            name: pattern for name, terms in categories.items() if (pattern := _pattern(terms))
        }
        self._identity = _pattern(list(lexicon.get("identity", [])))

    @classmethod
    def from_file(cls, path: Path | None = None) -> LexiconModerator:
        """The lexicon at `path`, or the one shipped with kindchat."""
        if path is None:
            text = (
                resources.files("kindchat.feedback")
                .joinpath("data/moderation.json")
                .read_text(encoding="utf-8")
            )
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as err:
                raise ValueError(f"cannot read the moderation lexicon {path}: {err}") from None
        try:
            return cls(json.loads(text))
        except json.JSONDecodeError as err:
            raise ValueError(f"the moderation lexicon is not valid JSON: {err}") from None

    def check(self, text: str) -> Verdict:
        plain = normalize(text)
        for category, pattern in self._patterns.items():
            if match := pattern.search(plain):
                return Verdict(True, category, match.group(0))
        return CLEAN

    def reveals_identity(self, text: str) -> str | None:
        """The model name an answer gives away, if any (voids an arena battle)."""
        if self._identity is None:
            return None
        match = self._identity.search(normalize(text))
        return match.group(0) if match else None


class EndpointModerator:
    """An OpenAI-compatible moderation endpoint (`POST /moderations`)."""

    def __init__(self, base_url: str, api_key: str = "EMPTY", model: str | None = None) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.model = model

    @cached_property
    def _client(self) -> Any:
        # lazy: the client loads only when a moderation endpoint is configured
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=10.0)

    def check(self, text: str) -> Verdict:
        kwargs: dict[str, Any] = {"input": text}
        if self.model:
            kwargs["model"] = self.model
        try:
            result = self._client.moderations.create(**kwargs).results[0]
        except Exception as err:  # noqa: BLE001 - an outage must not stop the chat
            logger.warning("moderation endpoint %s failed: %s", self.base_url, err)
            return CLEAN
        if not result.flagged:
            return CLEAN
        flagged = [name for name, on in result.categories.model_dump().items() if on]
        return Verdict(True, (flagged or ["flagged"])[0], None, "endpoint")


class ChainModerator:
    """The first moderator that flags decides; identity leaks come from the lexicon."""

    def __init__(self, lexicon: LexiconModerator, *others: Moderator) -> None:
        self.lexicon = lexicon
        self.others = others

    def check(self, text: str) -> Verdict:
        verdict = self.lexicon.check(text)
        for other in self.others:
            if verdict.flagged:
                break
            verdict = other.check(text)
        return verdict

    def reveals_identity(self, text: str) -> str | None:
        return self.lexicon.reveals_identity(text)


def load_moderator(
    lexicon: Path | None = None,
    endpoint: str | None = None,
    api_key: str = "EMPTY",
    model: str | None = None,
) -> ChainModerator:
    """The lexicon (kindchat's or yours), then the endpoint if one is configured."""
    others: list[Moderator] = [EndpointModerator(endpoint, api_key, model)] if endpoint else []
    return ChainModerator(LexiconModerator.from_file(lexicon), *others)


def refusal(verdict: Verdict) -> str:
    """The kind answer to a flagged message."""
    return SELF_HARM_REFUSAL if verdict.category == "self_harm" else REFUSAL
