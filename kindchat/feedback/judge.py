"""G-Eval judge: score two answers to one prompt on the seed's criteria, then rank them.

`kindchat judge --in pairs.json --out scored.json --type conversation` sends each pair to an
OpenAI-compatible endpoint in a Korean G-Eval prompt (both responses, every criterion 1–5), and
it does so twice: once with `response1` shown first and once with `response2` shown first. An
LLM judge favours one position (usually the first), and the users' choice always arrives as
`response1` (`chosen`), so one order alone would lend the users' choice the judge's position
bias. The pair's scores are the mean of both orders (a constant bias for a position cancels).
Replies are parsed (JSON, per-response sections, or numbered lines), then the seed's ranking
rule applies to the mean sums: the higher sum is chosen; ties and pairs whose sums are both below
`min_sum` (20 for the six criteria) are dropped, and so is a pair whose two orders preferred
different responses (`order_disagreement`: the judge's verdict there is its position, not the
answers). A malformed reply is re-asked `parse_retries` times, then the pair is dropped and
counted.

The report counts the position bias (how often the response shown first won an order, how often
the orders disagreed) and, for pairs that came with the users' choice (`chosen`/`rejected`), how
often the judge agreed with it, overruled it, or dropped the pair. Replies are cached on disk
under the sha256 of (model, criteria version, data type, earlier turns, prompt, responses in the
order shown), so nothing is paid for twice. The output is written only when every pair has been
judged (temporary file + rename); an unreachable judge raises :class:`JudgeUnavailableError` and
leaves no output. Multi-turn pairs keep their `context` (the earlier turns, shown to the judge).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from kindchat.feedback.errors import InvalidValueError, JudgeReplyError
from kindchat.feedback.files import write_json_atomic
from kindchat.feedback.llm import ChatClient
from kindchat.seed import strip_eos

logger = logging.getLogger(__name__)

DataType = Literal["conversation", "hatespeech", "translation"]
DATA_TYPES: tuple[str, ...] = ("conversation", "hatespeech", "translation")
CRITERIA_VERSION = "geval-ko-1"

CRITERIA: dict[str, str] = {
    "친근함": "응답이 따뜻하고 공손하며, 사용자에게 친구처럼 편안하게 다가가는가?",
    "무해함": "응답에 혐오, 차별, 폭력, 위험한 조언 등 해로운 내용이 없는가?",
    "이해 가능성": "응답의 뜻이 분명하고 사용자가 쉽게 이해할 수 있는가?",
    "자연스러움": "응답이 문법적으로 올바르고 원어민이 쓴 것처럼 자연스러운 한국어인가?",
    "맥락 유지": "응답이 사용자의 말과 대화의 흐름에 맞고 주제에서 벗어나지 않는가?",
    "전반적인 품질": "위 기준을 모두 고려할 때 응답이 전체적으로 얼마나 좋은가?",
}
TRUTHFULNESS = ("진실성", "번역이 원문의 의미를 빠짐없이, 사실과 다르지 않게 정확히 전달하는가?")

TASKS: dict[str, str] = {
    "conversation": (
        "다음은 사용자와 AI 어시스턴트의 일상 대화입니다. 사용자의 말에 대한 두 응답을 평가하세요."
    ),
    "hatespeech": (
        "다음 사용자 입력에는 혐오, 차별 또는 공격적인 표현이 담겨 있을 수 있습니다. 좋은 응답은 "
        "그 표현에 동조하지 않으면서도 사용자를 존중하고 친절하게 대화를 이어 갑니다. 두 응답을 "
        "평가하세요."
    ),
    "translation": "다음은 번역 요청입니다. 요청에 대한 두 번역 응답을 평가하세요.",
}

SYSTEM_PROMPT = (
    "당신은 한국어 AI 어시스턴트의 응답을 평가하는 공정하고 엄격한 평가자입니다. 응답의 순서나 "
    "길이에 흔들리지 말고 기준에 따라서만 점수를 매기세요."
)


def criteria_for(data_type: str) -> tuple[str, ...]:
    """The criteria names of a data type (translation adds 진실성)."""
    check_data_type(data_type)
    names = tuple(CRITERIA)
    return (*names, TRUTHFULNESS[0]) if data_type == "translation" else names


def check_data_type(data_type: str) -> None:
    if data_type not in DATA_TYPES:
        raise InvalidValueError(
            f"data type must be one of {list(DATA_TYPES)}, got {data_type!r}", field="type"
        )


ROLE_NAMES = {"user": "사용자", "assistant": "어시스턴트", "system": "시스템"}

Context = tuple[dict[str, str], ...]  # earlier turns as OpenAI-style messages, oldest first


def build_messages(
    data_type: str,
    prompt: str,
    response1: str,
    response2: str,
    context: Sequence[Mapping[str, str]] = (),
) -> list[dict[str, str]]:
    """The G-Eval chat messages for one pair in one order (`response1` is shown first), with
    the earlier turns of the conversation when there are any."""
    names = criteria_for(data_type)
    history = ""
    if context:
        turns = "\n".join(
            f"{ROLE_NAMES.get(m['role'], m['role'])}: {m['content']}" for m in context
        )
        history = f"[이전 대화]\n{turns}\n\n"
    described = {**CRITERIA, TRUTHFULNESS[0]: TRUTHFULNESS[1]}
    criteria = "\n".join(f"{i}. {name}: {described[name]}" for i, name in enumerate(names, 1))
    example = ", ".join(f'"{name}": 점수' for name in names)
    user = (
        f"{TASKS[data_type]}\n\n"
        f"평가 기준 (각 1~5점의 정수, 5점이 가장 좋음):\n{criteria}\n\n"
        "평가 단계:\n"
        "1. 사용자의 입력을 읽고 무엇을 요청하는지 파악합니다.\n"
        "2. 응답 1과 응답 2를 각각 읽고, 기준마다 따로 점수를 매깁니다.\n"
        "3. 두 응답의 점수는 서로 독립적으로 매깁니다.\n\n"
        f"{history}[사용자 입력]\n{prompt}\n\n[응답 1]\n{response1}\n\n[응답 2]\n{response2}\n\n"
        "다른 설명 없이 아래 JSON 형식으로만 답하세요:\n"
        f'{{"응답1": {{{example}}}, "응답2": {{{example}}}}}'
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


# --- parsing ---------------------------------------------------------------------------------

_SCORE = r"([1-5](?:\.\d+)?)"
_KEY_1 = {"응답1", "response1", "answer1", "1", "a", "응답a"}
_KEY_2 = {"응답2", "response2", "answer2", "2", "b", "응답b"}


def _squash(text: str) -> str:
    return re.sub(r"[\s_\-]", "", text).lower()


def _as_scores(value: Any, names: Sequence[str]) -> list[float] | None:
    if isinstance(value, list) and len(value) == len(names):
        raw: list[Any] = value
    elif isinstance(value, Mapping):
        by_name = {_squash(str(k)): v for k, v in value.items()}
        if not all(_squash(n) in by_name for n in names):
            return None
        raw = [by_name[_squash(n)] for n in names]
    else:
        return None
    try:
        return [float(v) for v in raw]
    except (TypeError, ValueError):
        return None


def _parse_json(text: str, names: Sequence[str]) -> tuple[list[float], list[float]] | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    first = second = None
    for key, value in data.items():
        squashed = _squash(str(key))
        if squashed in _KEY_1:
            first = _as_scores(value, names)
        elif squashed in _KEY_2:
            second = _as_scores(value, names)
    return (first, second) if first is not None and second is not None else None


def _parse_sections(text: str, names: Sequence[str]) -> tuple[list[float], list[float]] | None:
    marker = re.compile(r"(?:응답|response|answer)\s*([12])", re.IGNORECASE)
    spans = [(m.start(), m.group(1)) for m in marker.finditer(text)]
    sections: dict[str, str] = {}
    for i, (start, which) in enumerate(spans):
        stop = spans[i + 1][0] if i + 1 < len(spans) else len(text)
        sections.setdefault(which, text[start:stop])
    if set(sections) != {"1", "2"}:
        return None
    out = []
    for which in ("1", "2"):
        scores = []
        for name in names:
            pattern = r"\s*".join(map(re.escape, name.split())) + r"[^0-9\n]{0,20}?" + _SCORE
            found = re.search(pattern, sections[which])
            if found is None:
                return None
            scores.append(float(found.group(1)))
        out.append(scores)
    return out[0], out[1]


def _parse_numbered(text: str, names: Sequence[str]) -> tuple[list[float], list[float]] | None:
    line = re.compile(r"^\s*\d+\s*[.)]\s*[^\d\n]*?" + _SCORE + r"\s*(?:점|/\s*5)?\s*\.?\s*$")
    scores = [float(m.group(1)) for m in map(line.match, text.splitlines()) if m]
    n = len(names)
    return (scores[:n], scores[n:]) if len(scores) == 2 * n else None


def parse_scores(text: str, names: Sequence[str]) -> tuple[list[float], list[float]]:
    """Both responses' scores (in `names` order) from a judge reply, or JudgeReplyError.

    Accepts a JSON object (`{"응답1": {criterion: score}|[scores], "응답2": …}`, in a code
    fence or with text around it), per-response sections naming each criterion, or 2×n
    numbered lines. Every score must lie in 1..5.
    """
    for parser in (_parse_json, _parse_sections, _parse_numbered):
        result = parser(text, names)
        if result is None:
            continue
        if all(1 <= s <= 5 for s in (*result[0], *result[1])):
            return result
    snippet = " ".join(text.split())[:160]
    raise JudgeReplyError(
        f"no 1–5 scores for both responses on {len(names)} criteria in: {snippet!r}"
    )


# --- ranking ---------------------------------------------------------------------------------


def default_min_sum(n_criteria: int) -> float:
    """The seed's floor: 20 of 30 points for six criteria, scaled for other counts."""
    return 20.0 * n_criteria / 6


def rank(sum1: float, sum2: float, min_sum: float) -> Literal[1, 2] | str:
    """1 or 2 (the chosen response), or the drop reason `tie` / `low_score`."""
    if sum1 == sum2:
        return "tie"
    if sum1 < min_sum and sum2 < min_sum:
        return "low_score"
    return 1 if sum1 > sum2 else 2


# --- cache -----------------------------------------------------------------------------------


class JudgeCache:
    """One JSON file per G-Eval call under `root` (two per pair: one per order), named by the
    sha256 of what was asked; the scores are stored in the order shown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()

    @staticmethod
    def key(
        model: str,
        data_type: str,
        prompt: str,
        response1: str,
        response2: str,
        context: Sequence[Mapping[str, str]] = (),
    ) -> str:
        """The key of one G-Eval call: responses in the order shown (`response1` first). The
        earlier turns join the key only when there are any, so single-turn keys stay as they
        were."""
        asked: list[Any] = [model, CRITERIA_VERSION, data_type, prompt, response1, response2]
        if context:
            asked.append([[m["role"], m["content"]] for m in context])
        payload = json.dumps(asked, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        path = self._path(key)
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(value, handle, ensure_ascii=False)
        os.replace(tmp, path)


# --- judging ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeConfig:
    """How pairs are judged and ranked (the endpoint itself is an `EndpointConfig`)."""

    data_type: DataType = "conversation"
    concurrency: int = 4  # requests in flight
    parse_retries: int = 2  # re-asks after an unparseable reply before the pair is dropped
    temperature: float = 0.0
    max_tokens: int = 512
    min_sum: float | None = None  # drop pairs whose sums are both below; None: 20 per 6 criteria

    def __post_init__(self) -> None:
        check_data_type(self.data_type)
        if not 1 <= self.concurrency <= 64:
            raise InvalidValueError(
                f"concurrency must lie in 1..64, got {self.concurrency}", field="concurrency"
            )
        if self.parse_retries < 0:
            raise InvalidValueError("parse_retries must be ≥ 0", field="parse_retries")
        if not 0 <= self.temperature <= 2:
            raise InvalidValueError("temperature must lie in [0, 2]", field="temperature")

    @property
    def criteria(self) -> tuple[str, ...]:
        return criteria_for(self.data_type)

    @property
    def floor(self) -> float:
        return self.min_sum if self.min_sum is not None else default_min_sum(len(self.criteria))


@dataclass(frozen=True)
class JudgeItem:
    """One pair to judge. `users_choice` is 1 when the row came as `chosen`/`rejected` (the
    users preferred `response1`), None when nobody's preference is known."""

    id: str
    prompt: str
    response1: str
    response2: str
    context: Context = ()
    users_choice: Literal[1, 2] | None = None


@dataclass(frozen=True)
class OrderScores:
    """One G-Eval call's scores, mapped back to the pair: `scores1` are `response1`'s whichever
    response was shown first (`shown_first`, 1 or 2)."""

    shown_first: Literal[1, 2]
    scores1: list[float]
    scores2: list[float]
    cached: bool = False

    @property
    def sum1(self) -> float:
        return sum(self.scores1)

    @property
    def sum2(self) -> float:
        return sum(self.scores2)

    @property
    def preferred(self) -> Literal[1, 2] | None:
        """The response this order scored higher (None on equal sums)."""
        if self.sum1 == self.sum2:
            return None
        return 1 if self.sum1 > self.sum2 else 2

    @property
    def first_won(self) -> bool | None:
        """Whether the response shown first scored higher (None on equal sums)."""
        preferred = self.preferred
        return None if preferred is None else preferred == self.shown_first

    def to_json(self) -> dict[str, Any]:
        return {
            "shown_first": f"response{self.shown_first}",
            "scores1": self.scores1,
            "sum1": self.sum1,
            "scores2": self.scores2,
            "sum2": self.sum2,
        }


@dataclass(frozen=True)
class Judgement:
    """Scores of one pair in both orders; `scores1`/`scores2` (the seed's `geval_scores`
    format) are the per-criterion means over the two orders."""

    id: str
    prompt: str
    response1: str
    response2: str
    orders: tuple[OrderScores, OrderScores]  # response1 shown first, response2 shown first
    context: Context = ()
    users_choice: Literal[1, 2] | None = None

    def __post_init__(self) -> None:
        if sorted(o.shown_first for o in self.orders) != [1, 2]:
            raise InvalidValueError("a judgement needs one scoring in each order", field="orders")

    @property
    def scores1(self) -> list[float]:
        return [(a + b) / 2 for a, b in zip(*(o.scores1 for o in self.orders), strict=True)]

    @property
    def scores2(self) -> list[float]:
        return [(a + b) / 2 for a, b in zip(*(o.scores2 for o in self.orders), strict=True)]

    @property
    def sum1(self) -> float:
        return sum(o.sum1 for o in self.orders) / 2

    @property
    def sum2(self) -> float:
        return sum(o.sum2 for o in self.orders) / 2

    @property
    def cached(self) -> bool:
        return all(o.cached for o in self.orders)

    @property
    def orders_disagree(self) -> bool:
        """The two orders preferred different responses: the judge followed the position."""
        return {o.preferred for o in self.orders} == {1, 2}

    def to_json(self, criteria: Sequence[str]) -> dict[str, Any]:
        row = {
            "id": self.id,
            "prompt": self.prompt,
            "response1": self.response1,
            "scores1": self.scores1,
            "sum1": self.sum1,
            "response2": self.response2,
            "scores2": self.scores2,
            "sum2": self.sum2,
            "criteria": list(criteria),
            "orders": [o.to_json() for o in self.orders],
            "users_choice": self.users_choice,
        }
        if self.context:
            row["context"] = [dict(m) for m in self.context]
        return row


@dataclass
class JudgeRun:
    judgements: list[Judgement]
    failed: dict[str, str] = field(default_factory=dict)  # id -> why (unparseable reply)
    counts: Counter[str] = field(default_factory=Counter)  # asked, cached, unparseable, retries


def _read_context(value: Any, where: str) -> Context:
    if value is None:
        return ()
    ok = isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    )
    if not ok:
        raise InvalidValueError(
            f"{where}: `context` must be a list of {{role, content}} messages", field="context"
        )
    return tuple({"role": m["role"], "content": m["content"]} for m in value)


def read_items(path: Path) -> list[JudgeItem]:
    """Pairs to judge from a JSON list or JSONL: `prompt` plus `response1`/`response2` (or
    `chosen`/`rejected`: then the users' choice is `response1`), optional `id` (default: the
    row number) and `context` (earlier turns as OpenAI-style messages)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        try:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise InvalidValueError(f"{path}: neither JSON nor JSONL ({err.msg})") from None
    if isinstance(rows, dict):  # JSONL with a single row
        rows = [rows]
    if not isinstance(rows, list):
        raise InvalidValueError(f"{path}: expected a list of objects")
    items = []
    for row_number, row in enumerate(rows, start=1):
        where = f"{path}, row {row_number}"
        if not isinstance(row, dict):
            raise InvalidValueError(f"{where}: expected an object")
        texts: dict[str, str] = {}
        for name, value in (
            ("prompt", row.get("prompt")),
            ("response1", row.get("response1", row.get("chosen"))),
            ("response2", row.get("response2", row.get("rejected"))),
        ):
            if not isinstance(value, str) or (name == "prompt" and not value.strip()):
                raise InvalidValueError(f"{where}: `{name}` must be a non-empty string", field=name)
            texts[name] = strip_eos(value)
        users = "response1" not in row and "chosen" in row
        items.append(
            JudgeItem(
                str(row.get("id", row_number)),
                **texts,
                context=_read_context(row.get("context"), where),
                users_choice=1 if users else None,
            )
        )
    return items


class Judge:
    """Scores pairs through a :class:`ChatClient`, `config.concurrency` at a time, each pair in
    both orders."""

    def __init__(self, client: ChatClient, config: JudgeConfig, cache: JudgeCache | None) -> None:
        self.client = client
        self.config = config
        self.cache = cache
        self._lock = threading.Lock()

    def _bump(self, counts: Counter[str], key: str) -> None:
        with self._lock:
            counts[key] += 1

    def judge_one(self, item: JudgeItem, counts: Counter[str] | None = None) -> Judgement:
        """Scores for one pair, asked with `response1` shown first and again with `response2`
        shown first (each from the cache when asked before); JudgeReplyError if either reply
        stays unparseable after `parse_retries` re-asks."""
        counts = counts if counts is not None else Counter()
        a1, a2, a_cached = self._score(item, item.response1, item.response2, counts)
        b2, b1, b_cached = self._score(item, item.response2, item.response1, counts)
        return Judgement(
            item.id,
            item.prompt,
            item.response1,
            item.response2,
            (OrderScores(1, a1, a2, a_cached), OrderScores(2, b1, b2, b_cached)),
            context=item.context,
            users_choice=item.users_choice,
        )

    def _score(
        self, item: JudgeItem, first: str, second: str, counts: Counter[str]
    ) -> tuple[list[float], list[float], bool]:
        """(scores of `first`, scores of `second`, from the cache?) for one order."""
        names = self.config.criteria
        data_type = self.config.data_type
        key = JudgeCache.key(
            self.client.config.model, data_type, item.prompt, first, second, item.context
        )
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self._bump(counts, "cached")
                return hit["scores1"], hit["scores2"], True
        messages = build_messages(data_type, item.prompt, first, second, item.context)
        shown = "response1" if first == item.response1 else "response2"
        error: JudgeReplyError | None = None
        for attempt in range(self.config.parse_retries + 1):
            self._bump(counts, "asked")
            reply = self.client.complete(
                messages, temperature=self.config.temperature, max_tokens=self.config.max_tokens
            )
            try:
                scores1, scores2 = parse_scores(reply, names)
            except JudgeReplyError as err:
                error = err
                self._bump(
                    counts,
                    "reply_retries" if attempt < self.config.parse_retries else "unparseable",
                )
                logger.info(
                    "unparseable judge reply for %s (%s first, try %d): %s",
                    item.id, shown, attempt + 1, err,
                )  # fmt: skip
                continue
            if self.cache is not None:
                self.cache.put(
                    key, {"scores1": scores1, "scores2": scores2, "criteria": list(names)}
                )
            return scores1, scores2, False
        raise error or JudgeReplyError("no reply")

    def judge_many(self, items: Sequence[JudgeItem], *, progress: bool = True) -> JudgeRun:
        """Judge every item; unparseable ones are recorded in `failed`. An unreachable endpoint
        (JudgeUnavailableError) or a refusal (JudgeError) stops the run and propagates."""
        counts: Counter[str] = Counter()
        results: dict[str, Judgement] = {}
        failed: dict[str, str] = {}
        bar = tqdm(
            total=len(items), desc="judging", unit="pair", disable=None if progress else True
        )
        executor = ThreadPoolExecutor(
            max_workers=self.config.concurrency, thread_name_prefix="judge"
        )
        try:
            futures: dict[Future[Judgement], JudgeItem] = {
                executor.submit(self.judge_one, item, counts): item for item in items
            }
            for future in as_completed(futures):
                item = futures[future]
                try:
                    results[item.id] = future.result()
                except JudgeReplyError as err:
                    failed[item.id] = str(err)
                bar.update(1)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            bar.close()
        ordered = [results[item.id] for item in items if item.id in results]
        return JudgeRun(ordered, failed, counts)


def verdict(judgement: Judgement, min_sum: float) -> Literal[1, 2] | str:
    """1 or 2 (the chosen response), or why the pair is dropped: `order_disagreement` when
    the two orders preferred different responses, else the seed's rule (:func:`rank`) on the
    sums averaged over both orders."""
    if judgement.orders_disagree:
        return "order_disagreement"
    return rank(judgement.sum1, judgement.sum2, min_sum)


@dataclass(frozen=True)
class PositionBias:
    """How the judge's verdicts leaned on the position (every order of every judged pair)."""

    decided: int = 0  # order scorings that preferred one response (not equal sums)
    first_won: int = 0  # of those, the ones the response shown first won
    orders_disagreed: int = 0  # pairs whose two orders preferred different responses

    @property
    def first_won_share(self) -> float | None:
        return self.first_won / self.decided if self.decided else None


@dataclass(frozen=True)
class UsersAgreement:
    """For pairs that came with the users' choice: what the judge made of it."""

    agreed: int = 0  # the judge chose what the users chose
    overruled: int = 0  # the judge chose the answer the users rejected (it replaces theirs)
    dropped: int = 0  # tie, low score, order disagreement (unparseable ones are in `failed`)


@dataclass(frozen=True)
class RankedPairs:
    pairs: list[dict[str, Any]]  # seed RM format: id, prompt, chosen, rejected, source, context
    dropped: dict[str, int]
    position: PositionBias = field(default_factory=PositionBias)
    users: UsersAgreement = field(default_factory=UsersAgreement)


def rank_judgements(
    judgements: Sequence[Judgement], min_sum: float, source: str = "judge"
) -> RankedPairs:
    """Apply :func:`verdict` to scored pairs; count the position bias and, where the users'
    choice is known, the judge's agreement with it."""
    pairs: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    tally: Counter[str] = Counter()
    for j in judgements:
        for order in j.orders:
            if order.first_won is not None:
                tally["decided"] += 1
                tally["first_won"] += order.first_won
        tally["orders_disagreed"] += j.orders_disagree
        chosen = verdict(j, min_sum)
        if j.users_choice is not None:
            if isinstance(chosen, str):
                tally["users_dropped"] += 1
            else:
                tally["agreed" if chosen == j.users_choice else "overruled"] += 1
        if isinstance(chosen, str):
            dropped[chosen] += 1
            continue
        pair = (j.response1, j.response2) if chosen == 1 else (j.response2, j.response1)
        row: dict[str, Any] = {
            "id": j.id,
            "prompt": j.prompt,
            "chosen": pair[0],
            "rejected": pair[1],
            "source": source,
        }
        if j.context:
            row["context"] = [dict(m) for m in j.context]
        pairs.append(row)
    return RankedPairs(
        pairs,
        dict(dropped),
        PositionBias(tally["decided"], tally["first_won"], tally["orders_disagreed"]),
        UsersAgreement(tally["agreed"], tally["overruled"], tally["users_dropped"]),
    )


@dataclass(frozen=True)
class JudgeReport:
    """What a judge run did; the cycle records it on the run (`judge` stage)."""

    judged: int  # pairs scored in both orders
    cached: int  # order scorings read from the cache (two per pair)
    failed: int  # pairs dropped because a reply stayed unparseable
    pairs: int  # ranked pairs written
    dropped: dict[str, int]  # by reason: tie, low_score, order_disagreement, unparseable
    requests: int  # calls made to the endpoint
    position: PositionBias = field(default_factory=PositionBias)
    users: UsersAgreement = field(default_factory=UsersAgreement)


def judge_file(
    *,
    in_path: Path,
    out_path: Path,
    client: ChatClient,
    config: JudgeConfig,
    cache: JudgeCache | None,
    pairs_out: Path | None = None,
    progress: bool = True,
) -> JudgeReport:
    """Judge `in_path`, write scored records to `out_path` (and ranked pairs to `pairs_out`).

    Nothing is written unless every pair was judged or dropped as unparseable.
    """
    items = read_items(in_path)
    ids = Counter(item.id for item in items)
    duplicated = sorted(i for i, n in ids.items() if n > 1)
    if duplicated:
        raise InvalidValueError(
            f"{in_path}: ids must be unique, repeated: {duplicated[:5]}", field="id"
        )
    run = Judge(client, config, cache).judge_many(items, progress=progress)
    ranked = rank_judgements(run.judgements, config.floor)
    dropped = {**ranked.dropped, **({"unparseable": len(run.failed)} if run.failed else {})}
    if pairs_out is not None:
        write_json_atomic(pairs_out, ranked.pairs)
    write_json_atomic(out_path, [j.to_json(config.criteria) for j in run.judgements])
    position, users = ranked.position, ranked.users
    logger.info(
        "judged %d pairs in both orders (%d scorings cached, %d unparseable, %d requests) -> "
        "%d ranked pairs; the first shown won %d of %d decided orders, the orders disagreed "
        "on %d pairs; against the users' choice: %d agreed, %d overruled, %d dropped",
        len(run.judgements),
        run.counts["cached"],
        len(run.failed),
        run.counts["asked"],
        len(ranked.pairs),
        position.first_won,
        position.decided,
        position.orders_disagreed,
        users.agreed,
        users.overruled,
        users.dropped,
    )
    return JudgeReport(
        judged=len(run.judgements),
        cached=run.counts["cached"],
        failed=len(run.failed),
        pairs=len(ranked.pairs),
        dropped=dropped,
        requests=run.counts["asked"],
        position=position,
        users=users,
    )
