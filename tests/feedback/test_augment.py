"""Self-Instruct against a real local OpenAI-compatible HTTP server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kindchat.feedback.augment import AugmentConfig, augment_file, parse_instructions
from kindchat.feedback.errors import InvalidValueError, JudgeUnavailableError
from kindchat.feedback.llm import ChatClient
from kindchat.seed import read_sft_file

SEED_TASKS = [
    "주말에 할 만한 취미를 추천해 주세요.",
    "스트레스를 푸는 방법을 알려 주세요.",
    "감기에 걸렸을 때 좋은 음식은?",
]


@pytest.fixture
def sft_seed(tmp_path: Path) -> Path:
    root = tmp_path / "seed" / "sft"
    root.mkdir(parents=True)
    rows = [{"id": f"c{i}", "instruction": t, "output": "답"} for i, t in enumerate(SEED_TASKS)]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (root / "conversation.jsonl").write_text(text, encoding="utf-8")
    return root.parent


def test_parse_instructions_reads_numbered_and_bulleted_lines() -> None:
    reply = "\n".join(
        ["새로운 과제:", '4. 과제: "봄 시를 써 주세요."', "5) 지시문: 요리법을 알려 줘"]
        + ["- 영어로 번역해 줘", "설명 문장"]
    )
    assert parse_instructions(reply) == [
        "봄 시를 써 주세요.",
        "요리법을 알려 줘",
        "영어로 번역해 줘",
    ]


def test_self_instruct_filters_and_answers(
    openai_server: Any, make_client: Callable[..., ChatClient], sft_seed: Path, tmp_path: Path
) -> None:
    openai_server.instruction_batches = [
        "\n".join([
            "1. 오늘 날씨에 어울리는 옷을 추천해 주세요.",
            "2. 오늘 날씨에 어울리는 옷을 추천해 주세요!",  # near-duplicate of the line above
            '3. ""',  # empty
            "4. " + "아주 긴 과제 " * 60,  # too long
            "5. 이 사진 속 인물을 설명해 주세요.",  # needs an image
            "6. 짧다",  # too short (3 characters < 4)
        ]),
        "죄송하지만 과제를 만들 수 없습니다.",  # nothing numbered
        "\n".join([
            "1. 주말에 할 만한 취미를 추천해 주세요!",  # near-duplicate of a seed task
            "2. 친구에게 보낼 생일 축하 메시지를 써 주세요.",
            "3. 봄을 세 문장으로 묘사해 주세요.",
            "4. 이건 이미 충분해서 버려질 과제입니다.",
        ]),
    ]  # fmt: skip
    config = AugmentConfig(
        num_instructions=3, seed_tasks_per_prompt=2, new_per_request=5, subsets=("conversation",)
    )
    out = tmp_path / "new.jsonl"
    result = augment_file(
        data_dir=sft_seed, out_path=out, client=make_client(openai_server.base_url), config=config
    )
    assert result.requests == 3
    assert dict(result.dropped) == {
        "near_duplicate": 2, "empty": 1, "too_long": 1, "non_text": 1, "too_short": 1,
        "unparseable_reply": 1,
    }  # fmt: skip
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["instruction"] for r in records] == [
        "오늘 날씨에 어울리는 옷을 추천해 주세요.",
        "친구에게 보낼 생일 축하 메시지를 써 주세요.",
        "봄을 세 문장으로 묘사해 주세요.",
    ]
    assert all(r["output"] == f"답변: {r['instruction']}" for r in records)
    first = records[0]
    assert first["source"] == "self-instruct" and first["input"] is None
    assert first["provenance"]["model"] == "judge-test"
    assert first["provenance"]["request"] == 1
    assert len(first["provenance"]["seed_task_ids"]) == 2
    assert all(i.startswith("conversation/c") for i in first["provenance"]["seed_task_ids"])
    # the seed prompt shows the sampled tasks and asks for the configured count
    request_text = openai_server.requests[0]["messages"][-1]["content"]
    assert "새로운 과제 5개" in request_text
    # the output is valid seed SFT data
    assert [r.instruction for r in read_sft_file(out)] == [r["instruction"] for r in records]


def test_unreachable_endpoint_writes_nothing(
    make_client: Callable[..., ChatClient], sft_seed: Path, tmp_path: Path
) -> None:
    out = tmp_path / "new.jsonl"
    with pytest.raises(JudgeUnavailableError):
        augment_file(
            data_dir=sft_seed,
            out_path=out,
            client=make_client("http://127.0.0.1:9/v1", max_retries=1),
            config=AugmentConfig(num_instructions=2, subsets=("conversation",)),
        )
    assert not out.exists()


@pytest.mark.parametrize(
    "bad",
    [
        {"num_instructions": 0},
        {"rouge_threshold": 0},
        {"rouge_threshold": 1.2},
        {"min_chars": 10, "max_chars": 5},
        {"subsets": ("poetry",)},
        {"new_per_request": 0},
        {"concurrency": 0},
    ],
)
def test_augment_config_checks(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidValueError):
        AugmentConfig(**bad)
