"""The G-Eval judge against a real local OpenAI-compatible HTTP server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kindchat.feedback.errors import (
    InvalidValueError,
    JudgeError,
    JudgeReplyError,
    JudgeUnavailableError,
)
from kindchat.feedback.judge import (
    CRITERIA,
    JudgeCache,
    JudgeConfig,
    build_messages,
    criteria_for,
    judge_file,
    parse_scores,
    rank,
)
from kindchat.feedback.llm import ChatClient

SIX = list(CRITERIA)


def _pairs(path: Path, prompts: list[str]) -> Path:
    rows = [
        {
            "id": f"p{i}",
            "prompt": p,
            "response1": f"좋은 답 {i}",
            "response2": f"그냥 답 {i}<|endoftext|>",
        }
        for i, p in enumerate(prompts)
    ]
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def run_judge(openai_server: Any, make_client: Callable[..., ChatClient], tmp_path: Path) -> Any:
    """`run_judge(prompts, **JudgeConfig/EndpointConfig overrides)` -> JudgeReport."""

    def run(prompts: list[str], **kw: Any) -> Any:
        client_kw = {k: kw.pop(k) for k in ("timeout_s", "max_retries", "base_url") if k in kw}
        base_url = client_kw.pop("base_url", openai_server.base_url)
        return judge_file(
            in_path=_pairs(tmp_path / "pairs.json", prompts),
            out_path=tmp_path / "scored.json",
            pairs_out=tmp_path / "ranked.json",
            client=make_client(base_url, **client_kw),
            config=JudgeConfig(**{"concurrency": 2, **kw}),
            cache=JudgeCache(tmp_path / "cache"),
            progress=False,
        )

    return run


# --- parsing and ranking (no server) ----------------------------------------------------------


def test_parse_json_numbered_and_section_replies() -> None:
    as_json = json.dumps(
        {"응답 1": dict.fromkeys(SIX, 5), "응답 2": [1, 2, 3, 4, 5, 4]}, ensure_ascii=False
    )
    assert parse_scores(f"결과:\n```json\n{as_json}\n```", SIX) == ([5.0] * 6, [1, 2, 3, 4, 5, 4])
    numbered = "\n".join(
        f"{i}. {n}: {s}" for i, (n, s) in enumerate(zip(SIX * 2, [4] * 6 + [2] * 6, strict=True), 1)
    )
    assert parse_scores(numbered, SIX) == ([4.0] * 6, [2.0] * 6)
    sections = (
        "응답 1\n"
        + "\n".join(f"- {n}: 3점" for n in SIX)
        + "\n\n응답 2\n"
        + "\n".join(f"- {n} - 5/5" for n in SIX)
    )
    assert parse_scores(sections, SIX) == ([3.0] * 6, [5.0] * 6)


@pytest.mark.parametrize(
    "reply",
    [
        "",
        "두 응답 모두 좋습니다.",
        json.dumps({"응답1": [5, 5, 5, 5, 5], "응답2": [1, 1, 1, 1, 1]}),  # five scores for six
        json.dumps({"응답1": [9, 5, 5, 5, 5, 5], "응답2": [1, 1, 1, 1, 1, 1]}),  # out of range
        "1. 친근함: 5\n2. 무해함: 5",
    ],
)
def test_malformed_replies_raise_judge_reply_error(reply: str) -> None:
    with pytest.raises(JudgeReplyError):
        parse_scores(reply, SIX)


def test_ranking_rule_of_the_seed() -> None:
    assert rank(25, 22, 20) == 1
    assert rank(18, 21, 20) == 2
    assert rank(22, 22, 20) == "tie"
    assert rank(19, 15, 20) == "low_score"
    assert rank(20, 15, 20) == 1  # one sum reaches the floor


def test_prompts_name_every_criterion_and_both_responses() -> None:
    text = build_messages("translation", "번역해 줘", "답1", "답2")[-1]["content"]
    for name in criteria_for("translation"):
        assert name in text
    assert "진실성" not in build_messages("conversation", "x", "a", "b")[-1]["content"]
    assert "[응답 1]\n답1" in text and "[응답 2]\n답2" in text
    with pytest.raises(InvalidValueError):
        JudgeConfig(data_type="poetry")  # type: ignore[arg-type]


# --- against the server -------------------------------------------------------------------------


def test_good_replies_are_scored_ranked_and_cached(
    openai_server: Any, run_judge: Any, tmp_path: Path
) -> None:
    prompts = [
        "첫 질문",
        "[[numbered]] 둘째 질문",
        "[[fenced]] 셋째",
        "[[second]] 넷째",
        "[[tie]] 다섯",
        "[[low]] 여섯",
    ]
    report = run_judge(prompts)
    assert (report.judged, report.failed, report.requests, report.cached) == (6, 0, 6, 0)
    assert report.dropped == {"tie": 1, "low_score": 1}
    scored = json.loads((tmp_path / "scored.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in scored] == [f"p{i}" for i in range(6)]
    assert scored[0]["scores1"] == [5.0] * 6 and scored[0]["sum2"] == 18.0
    assert scored[0]["response2"] == "그냥 답 0"  # EOS stripped
    ranked = json.loads((tmp_path / "ranked.json").read_text(encoding="utf-8"))
    assert [(r["id"], r["chosen"]) for r in ranked] == [
        ("p0", "좋은 답 0"), ("p1", "좋은 답 1"), ("p2", "좋은 답 2"), ("p3", "그냥 답 3"),
    ]  # fmt: skip
    # a second run pays for nothing: every pair comes from the cache
    before = len(openai_server.requests)
    again = run_judge(prompts)
    assert (again.cached, again.requests) == (6, 0) and len(openai_server.requests) == before
    assert json.loads((tmp_path / "scored.json").read_text(encoding="utf-8")) == scored


def test_concurrency_limit_is_respected(openai_server: Any, run_judge: Any) -> None:
    run_judge([f"질문 {i}" for i in range(8)], concurrency=3)
    assert openai_server.max_in_flight == 3


def test_malformed_reply_is_reasked_then_dropped_and_counted(
    run_judge: Any, tmp_path: Path
) -> None:
    report = run_judge(["[[malformed-once]] 하나", "[[malformed]] 둘", "셋"], parse_retries=2)
    assert report.judged == 2 and report.failed == 1
    assert report.dropped.get("unparseable") == 1
    assert report.requests == 2 + 3 + 1  # once re-asked; always-bad asked 1 + 2 times
    ids = [r["id"] for r in json.loads((tmp_path / "scored.json").read_text(encoding="utf-8"))]
    assert ids == ["p0", "p2"]


def test_5xx_429_and_timeouts_are_retried(openai_server: Any, run_judge: Any) -> None:
    report = run_judge(
        ["[[5xx-twice]] 하나", "[[429-once]] 둘", "[[slow-once]] 셋"],
        timeout_s=0.5, max_retries=3,
    )  # fmt: skip
    assert (report.judged, report.failed) == (3, 0)
    assert sum(openai_server.seen.values()) == 3 + 2 + 1 + 1


def test_unreachable_judge_fails_clearly_and_writes_nothing(run_judge: Any, tmp_path: Path) -> None:
    dead = "http://127.0.0.1:9/v1"  # the discard port: nothing listens
    with pytest.raises(JudgeUnavailableError, match="unavailable after 2 tries"):
        run_judge(["하나", "둘"], base_url=dead, max_retries=1)
    assert not (tmp_path / "scored.json").exists() and not (tmp_path / "ranked.json").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_judge_that_keeps_failing_writes_nothing(run_judge: Any, tmp_path: Path) -> None:
    with pytest.raises(JudgeUnavailableError):
        run_judge(["괜찮은 질문", "[[5xx]] 계속 실패"], max_retries=2)
    assert not (tmp_path / "scored.json").exists()


def test_a_refusal_is_not_retried(openai_server: Any, run_judge: Any) -> None:
    openai_server.script = lambda text, n: openai_server.reply(status=401)
    with pytest.raises(JudgeError, match="refused the request \\(401"):
        run_judge(["하나"], max_retries=3)
    assert len(openai_server.requests) == 1


def test_bad_input_files_are_named(
    tmp_path: Path, openai_server: Any, make_client: Callable[..., ChatClient]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "x", "response1": "a"}]), encoding="utf-8")
    with pytest.raises(InvalidValueError, match="row 1: `response2`"):
        judge_file(
            in_path=bad, out_path=tmp_path / "o.json", client=make_client(openai_server.base_url),
            config=JudgeConfig(), cache=None, progress=False,
        )  # fmt: skip
