"""Self-Instruct augmentation: new Korean SFT tasks from the seed's, through any chat endpoint.

`kindchat augment --out new.jsonl --num 50` repeats: sample `seed_tasks_per_prompt` seed tasks
into a Korean prompt, ask the endpoint for `new_per_request` new instructions, parse the
numbered lines, and keep an instruction only if it is neither empty, too short, too long, nor
about non-text input, and its ROUGE-L F1 against every seed instruction and every instruction
kept so far stays below `rouge_threshold` (0.7, as in Self-Instruct). Each kept instruction is
then answered by the same endpoint. Output: the seed's SFT jsonl format (`id`, `instruction`,
`input`, `output`) plus `source` and `provenance` (model, endpoint, seed task ids, request).
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from kindchat.feedback.errors import InvalidValueError
from kindchat.feedback.files import write_jsonl_atomic
from kindchat.feedback.llm import ChatClient
from kindchat.feedback.models import utcnow
from kindchat.feedback.textsim import RougeIndex, Tokenizer
from kindchat.seed import SFT_SUBSETS, SftRecord, read_sft

logger = logging.getLogger(__name__)

SOURCE = "self-instruct"
NON_TEXT_WORDS: tuple[str, ...] = ("이미지", "사진", "동영상", "음성", "첨부", "그래프를 그려")


@dataclass(frozen=True)
class AugmentConfig:
    """Self-Instruct knobs; every one has a default and a check."""

    num_instructions: int = 20  # new instructions to keep
    seed_tasks_per_prompt: int = 3  # seed tasks shown as examples in each request
    new_per_request: int = 5  # instructions asked for per request
    max_requests: int | None = None  # give up after this many; None: 4× what is needed
    rouge_threshold: float = 0.7  # drop an instruction this similar to anything kept
    rouge_tokens: Tokenizer = "char"  # ROUGE-L over characters (Korean) or whitespace words
    min_chars: int = 4  # shorter instructions are dropped
    max_chars: int = 300  # longer instructions are dropped
    non_text_words: tuple[str, ...] = NON_TEXT_WORDS  # instructions needing non-text input
    subsets: tuple[str, ...] = SFT_SUBSETS  # seed SFT subsets to sample from
    temperature: float = 0.8  # for new instructions
    answer: bool = True  # answer each kept instruction through the endpoint
    answer_temperature: float = 0.3
    max_tokens: int = 768
    concurrency: int = 4  # answers in flight
    seed: int = 0  # sampling of seed tasks

    def __post_init__(self) -> None:
        checks = [
            (self.num_instructions >= 1, "num_instructions", "must be ≥ 1"),
            (self.seed_tasks_per_prompt >= 1, "seed_tasks_per_prompt", "must be ≥ 1"),
            (1 <= self.new_per_request <= 50, "new_per_request", "must lie in 1..50"),
            (self.max_requests is None or self.max_requests >= 1, "max_requests", "must be ≥ 1"),
            (0 < self.rouge_threshold <= 1, "rouge_threshold", "must lie in (0, 1]"),
            (self.rouge_tokens in ("char", "word"), "rouge_tokens", "must be 'char' or 'word'"),
            (0 <= self.min_chars <= self.max_chars, "min_chars", "must be ≥ 0 and ≤ max_chars"),
            (0 <= self.temperature <= 2, "temperature", "must lie in [0, 2]"),
            (0 <= self.answer_temperature <= 2, "answer_temperature", "must lie in [0, 2]"),
            (1 <= self.concurrency <= 64, "concurrency", "must lie in 1..64"),
            (not set(self.subsets) - set(SFT_SUBSETS), "subsets", f"must be among {SFT_SUBSETS}"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise InvalidValueError(f"{name} {rule}, got {getattr(self, name)!r}", field=name)

    @property
    def request_budget(self) -> int:
        if self.max_requests is not None:
            return self.max_requests
        return 4 * -(-self.num_instructions // self.new_per_request)


def build_prompt(examples: Sequence[SftRecord], n: int) -> list[dict[str, str]]:
    """The Self-Instruct request: `examples` as numbered tasks, asking for `n` new ones."""
    shown = "\n".join(f"{i}. {' '.join(r.prompt.split())}" for i, r in enumerate(examples, 1))
    text = (
        "당신은 한국어 AI 어시스턴트를 가르칠 과제(지시문)를 만드는 사람입니다.\n"
        f"아래 예시 과제를 참고하여, 예시와 겹치지 않는 새로운 과제 {n}개를 만들어 주세요.\n\n"
        "요구 사항:\n"
        "- 자연스러운 한국어로 씁니다.\n"
        "- 일상 대화, 고민 상담, 설명, 글쓰기, 분류, 번역 등 유형을 다양하게 합니다.\n"
        "- 친절하고 무해한 어시스턴트가 글로 답할 수 있어야 합니다. 이미지, 음성, 파일 등 "
        "텍스트가 아닌 입력이나 출력이 필요한 과제는 만들지 않습니다.\n"
        "- 각 과제는 한두 문장으로 씁니다.\n"
        "- 답은 쓰지 말고, 번호를 붙인 과제만 한 줄에 하나씩 나열하세요.\n\n"
        f"예시 과제:\n{shown}\n\n새로운 과제:"
    )
    return [{"role": "user", "content": text}]


_NUMBERED = re.compile(r"^\s*(?:\d+\s*[.)]|[-*•])\s*(.+?)\s*$")
_LABEL = re.compile(r"^(?:과제|지시문|명령어|instruction)\s*\d*\s*[:：]\s*", re.IGNORECASE)


def parse_instructions(reply: str) -> list[str]:
    """The numbered (or bulleted) lines of a reply, without labels and quotes."""
    out = []
    for line in reply.splitlines():
        match = _NUMBERED.match(line)
        if match is None:
            continue
        text = _LABEL.sub("", match.group(1)).strip().strip("\"'“”‘’").strip()
        out.append(text)
    return out


@dataclass
class AugmentResult:
    records: list[dict[str, Any]]
    dropped: Counter[str] = field(default_factory=Counter)
    requests: int = 0


@dataclass(frozen=True)
class _Candidate:
    instruction: str
    seed_ids: tuple[str, ...]
    request: int


class SelfInstruct:
    """Generates, filters and answers new instructions through one :class:`ChatClient`."""

    def __init__(
        self, client: ChatClient, config: AugmentConfig, seed_tasks: Sequence[SftRecord]
    ) -> None:
        if len(seed_tasks) < config.seed_tasks_per_prompt:
            raise InvalidValueError(
                f"need at least {config.seed_tasks_per_prompt} seed tasks, got {len(seed_tasks)}",
                field="seed_tasks_per_prompt",
            )
        self.client = client
        self.config = config
        self.seed_tasks = list(seed_tasks)
        self.index = RougeIndex(config.rouge_tokens, config.rouge_threshold)
        for record in self.seed_tasks:
            self.index.add(record.prompt)

    def reason_to_drop(self, instruction: str) -> str | None:
        """Why `instruction` cannot be kept (None: keep it). Checks the index last."""
        length = len(instruction.strip())
        if not length:
            return "empty"
        if length < self.config.min_chars:
            return "too_short"
        if length > self.config.max_chars:
            return "too_long"
        if any(word in instruction for word in self.config.non_text_words):
            return "non_text"
        if self.index.most_similar(instruction) >= self.config.rouge_threshold:
            return "near_duplicate"
        return None

    def generate(self, dropped: Counter[str]) -> tuple[list[_Candidate], int]:
        rng = random.Random(self.config.seed)
        kept: list[_Candidate] = []
        requests = 0
        bar = tqdm(
            total=self.config.num_instructions, desc="instructions", unit="task", disable=None
        )
        try:
            while (
                len(kept) < self.config.num_instructions and requests < self.config.request_budget
            ):
                examples = rng.sample(self.seed_tasks, self.config.seed_tasks_per_prompt)
                requests += 1
                reply = self.client.complete(
                    build_prompt(examples, self.config.new_per_request),
                    temperature=self.config.temperature,
                    max_tokens=self.config.max_tokens,
                )
                parsed = parse_instructions(reply)
                if not parsed:
                    dropped["unparseable_reply"] += 1
                for instruction in parsed:
                    if len(kept) >= self.config.num_instructions:
                        break
                    reason = self.reason_to_drop(instruction)
                    if reason is not None:
                        dropped[reason] += 1
                        continue
                    self.index.add(instruction)
                    seed_ids = tuple(f"{r.subset}/{r.id}" for r in examples)
                    kept.append(_Candidate(instruction, seed_ids, requests))
                    bar.update(1)
        finally:
            bar.close()
        if len(kept) < self.config.num_instructions:
            logger.warning(
                "kept %d of %d instructions after %d requests (dropped: %s)",
                len(kept),
                self.config.num_instructions,
                requests,
                dict(dropped),
            )
        return kept, requests

    def answer(self, candidates: Sequence[_Candidate], dropped: Counter[str]) -> list[str | None]:
        lock = threading.Lock()

        def one(candidate: _Candidate) -> str | None:
            text = self.client.complete(
                [{"role": "user", "content": candidate.instruction}],
                temperature=self.config.answer_temperature,
                max_tokens=self.config.max_tokens,
            ).strip()
            if not text:
                with lock:
                    dropped["empty_answer"] += 1
                return None
            return text

        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            results = pool.map(one, candidates)
            return list(tqdm(results, total=len(candidates), desc="answers", disable=None))

    def run(self) -> AugmentResult:
        dropped: Counter[str] = Counter()
        candidates, requests = self.generate(dropped)
        answers: list[str | None] = (
            self.answer(candidates, dropped) if self.config.answer else [""] * len(candidates)
        )
        created = utcnow().isoformat()
        records = []
        for candidate, output in zip(candidates, answers, strict=True):
            if output is None:
                continue
            digest = hashlib.sha256(candidate.instruction.encode("utf-8")).hexdigest()[:12]
            records.append(
                {
                    "id": f"selfinstruct_{digest}",
                    "instruction": candidate.instruction,
                    "input": None,
                    "output": output,
                    "source": SOURCE,
                    "provenance": {
                        "model": self.client.config.model,
                        "endpoint": self.client.where,
                        "seed_task_ids": list(candidate.seed_ids),
                        "request": candidate.request,
                        "rouge_threshold": self.config.rouge_threshold,
                        "created_at": created,
                    },
                }
            )
        return AugmentResult(records, dropped, requests)


def augment_file(
    *, data_dir: Path, out_path: Path, client: ChatClient, config: AugmentConfig
) -> AugmentResult:
    """Run Self-Instruct from the seed SFT tasks and write `out_path` (jsonl) atomically."""
    seed_tasks = read_sft(data_dir, config.subsets)
    result = SelfInstruct(client, config, seed_tasks).run()
    write_jsonl_atomic(out_path, result.records)
    logger.info(
        "wrote %d new tasks to %s after %d requests (dropped: %s)",
        len(result.records),
        out_path,
        result.requests,
        dict(result.dropped),
    )
    return result
