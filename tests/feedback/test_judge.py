"""The G-Eval judge against a real local OpenAI-compatible HTTP server; both orders of a pair,
and a judge that prefers whatever it sees first."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict
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
    Judgement,
    OrderScores,
    PositionBias,
    UsersAgreement,
    build_messages,
    criteria_for,
    judge_file,
    parse_scores,
    rank,
    rank_judgements,
    verdict,
)
from kindchat.feedback.llm import ChatClient

SIX = list(CRITERIA)


def _pairs(path: Path, prompts: list[str]) -> Path:
    rows = [
        {
            "id": f"p{i}",
            "prompt": p,
            "response1": f"좋은 답 {i}입니다",  # the longer: the fake judge prefers it
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


def _judgement(first_shown: tuple[int, int], second_shown: tuple[int, int]) -> Judgement:
    """A pair scored (response1, response2) = `first_shown` with response1 shown first and
    `second_shown` with response2 shown first, every criterion alike."""
    orders = tuple(
        OrderScores(shown, [float(a)] * 6, [float(b)] * 6)  # type: ignore[arg-type]
        for shown, (a, b) in ((1, first_shown), (2, second_shown))
    )
    return Judgement("x", "질문", "답 1", "답 2", orders, users_choice=1)  # type: ignore[arg-type]


def test_the_orders_are_averaged_and_a_disagreement_is_no_flip() -> None:
    agreed = _judgement((5, 3), (4, 4))  # second order a tie: the mean decides
    assert (agreed.sum1, agreed.sum2, agreed.scores1) == (27.0, 21.0, [4.5] * 6)
    assert verdict(agreed, 20) == 1 and not agreed.orders_disagree
    # each order prefers what it shows first; the mean leans to response2 (the cap of 5 cut
    # response1's bonus), but that is the position speaking: dropped, not flipped
    biased = _judgement((5, 4), (3, 5))
    assert biased.sum2 > biased.sum1 and biased.orders_disagree
    assert verdict(biased, 20) == "order_disagreement"
    ranked = rank_judgements([agreed, biased], 20)
    assert [p["chosen"] for p in ranked.pairs] == ["답 1"]
    assert ranked.dropped == {"order_disagreement": 1}
    assert ranked.position == PositionBias(decided=3, first_won=3, orders_disagreed=1)
    assert ranked.users == UsersAgreement(agreed=1, overruled=0, dropped=1)


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
    assert (report.judged, report.failed, report.requests, report.cached) == (6, 0, 12, 0)
    assert report.dropped == {"tie": 1, "low_score": 1}
    # a judge that looks at the answers: both orders agree, the first shown won only by merit
    assert report.position == PositionBias(decided=10, first_won=5, orders_disagreed=0)
    assert report.users == UsersAgreement()  # response1/response2 rows: no users' choice
    scored = json.loads((tmp_path / "scored.json").read_text(encoding="utf-8"))
    assert [r["id"] for r in scored] == [f"p{i}" for i in range(6)]
    assert scored[0]["scores1"] == [5.0] * 6 and scored[0]["sum2"] == 18.0
    assert scored[0]["response2"] == "그냥 답 0"  # EOS stripped
    ranked = json.loads((tmp_path / "ranked.json").read_text(encoding="utf-8"))
    assert [(r["id"], r["chosen"]) for r in ranked] == [
        ("p0", "좋은 답 0입니다"), ("p1", "좋은 답 1입니다"), ("p2", "좋은 답 2입니다"),
        ("p3", "그냥 답 3"),
    ]  # fmt: skip
    # a second run pays for nothing: both orders of every pair come from the cache
    before = len(openai_server.requests)
    again = run_judge(prompts)
    assert (again.cached, again.requests) == (12, 0) and len(openai_server.requests) == before
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
    # once-bad: each order re-asked once; always-bad: the first order asked 1 + 2 times, then
    # the pair is given up; good: one request per order
    assert report.requests == 2 * 2 + 3 + 2
    ids = [r["id"] for r in json.loads((tmp_path / "scored.json").read_text(encoding="utf-8"))]
    assert ids == ["p0", "p2"]


def test_5xx_429_and_timeouts_are_retried(openai_server: Any, run_judge: Any) -> None:
    report = run_judge(
        ["[[5xx-twice]] 하나", "[[429-once]] 둘", "[[slow-once]] 셋"],
        timeout_s=0.5, max_retries=3,
    )  # fmt: skip
    assert (report.judged, report.failed) == (3, 0)
    assert sum(openai_server.seen.values()) == 2 * (3 + 2 + 2)  # per order: 503×2, 429, slow


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


# --- both orders, a position-biased judge, the users' choice ------------------------------------


def _user_pairs(path: Path, rows: list[tuple[str, str]]) -> Path:
    """Rows as the export writes them: the users' `chosen` first, `rejected` second."""
    out = [
        {"id": f"u{i}", "prompt": f"질문 {i}", "chosen": chosen, "rejected": rejected}
        for i, (chosen, rejected) in enumerate(rows)
    ]
    path.write_text(json.dumps(out, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def judge_users(
    openai_server: Any, make_client: Callable[..., ChatClient], tmp_path: Path
) -> Callable[[list[tuple[str, str]]], Any]:
    def run(rows: list[tuple[str, str]]) -> Any:
        return judge_file(
            in_path=_user_pairs(tmp_path / "users.json", rows),
            out_path=tmp_path / "scored.json",
            pairs_out=tmp_path / "ranked.json",
            client=make_client(openai_server.base_url),
            config=JudgeConfig(concurrency=2),
            cache=JudgeCache(tmp_path / "cache"),
            progress=False,
        )

    return run


def test_every_pair_is_shown_in_both_orders(openai_server: Any, run_judge: Any) -> None:
    run_judge(["하나", "둘"])
    shown = {
        openai_server.shown_answers(r["messages"][-1]["content"]) for r in openai_server.requests
    }
    for i in range(2):
        good, plain = f"좋은 답 {i}입니다", f"그냥 답 {i}"
        assert {(good, plain), (plain, good)} <= shown
    assert len(openai_server.requests) == 4


def test_a_judge_that_prefers_what_it_sees_first_abstains_and_is_counted(
    openai_server: Any, judge_users: Any, tmp_path: Path
) -> None:
    # a real scorer, deterministic and blind to the answers: 5 for the first shown, 3 after it
    openai_server.script = openai_server.judge_script(lambda answer, shown: 5 if shown == 1 else 3)
    rows = [("안녕하세요, 반가워요!", "뭐"), ("짧아", "조금 더 긴 답입니다"), ("같은", "같은 길이")]
    report = judge_users(rows)
    # shown one order only (the users' choice first), it would have agreed with every user
    assert report.pairs == 0 and report.dropped == {"order_disagreement": 3}
    assert report.position == PositionBias(decided=6, first_won=6, orders_disagreed=3)
    assert report.users == UsersAgreement(agreed=0, overruled=0, dropped=3)
    # what the cycle records on the run (asdict of the report) carries the same counts
    recorded = asdict(report)
    assert recorded["position"]["orders_disagreed"] == 3 and recorded["users"]["dropped"] == 3
    assert json.loads((tmp_path / "ranked.json").read_text(encoding="utf-8")) == []
    scored = json.loads((tmp_path / "scored.json").read_text(encoding="utf-8"))
    assert {(r["sum1"], r["sum2"], r["users_choice"]) for r in scored} == {(24.0, 24.0, 1)}
    assert [o["shown_first"] for o in scored[0]["orders"]] == ["response1", "response2"]
    assert (scored[0]["orders"][0]["sum1"], scored[0]["orders"][1]["sum1"]) == (30.0, 18.0)


def _quality_plus_first_bonus(answer: str, shown: int) -> int:
    """An answer's quality tag `[qN]`, plus one point when it is shown first (at most 5)."""
    found = re.search(r"\[q(\d)\]", answer)
    assert found is not None
    return min(5, int(found.group(1)) + (1 if shown == 1 else 0))


def test_a_mild_position_bias_averages_out_and_overrulings_are_counted(
    openai_server: Any, judge_users: Any, tmp_path: Path
) -> None:
    openai_server.script = openai_server.judge_script(_quality_plus_first_bonus)
    rows = [
        ("[q4] 친절한 답", "[q3] 무심한 답"),  # the users chose the better one
        ("[q3] 무심한 답", "[q4] 친절한 답"),  # the users chose the worse one
        ("[q3] 이 답", "[q3] 저 답"),  # as good as each other: only the position differs
    ]
    report = judge_users(rows)
    # one order (chosen first) would give: agreed, tie (dropped), chosen (agreed)
    assert report.users == UsersAgreement(agreed=1, overruled=1, dropped=1)
    assert report.dropped == {"order_disagreement": 1}
    assert report.position == PositionBias(decided=4, first_won=4, orders_disagreed=1)
    ranked = json.loads((tmp_path / "ranked.json").read_text(encoding="utf-8"))
    assert [(r["id"], r["chosen"], r["rejected"]) for r in ranked] == [
        ("u0", "[q4] 친절한 답", "[q3] 무심한 답"),
        ("u1", "[q4] 친절한 답", "[q3] 무심한 답"),
    ]


def test_earlier_turns_are_shown_to_the_judge_and_kept(
    openai_server: Any, make_client: Callable[..., ChatClient], tmp_path: Path
) -> None:
    context = [
        {"role": "user", "content": "내 이름은 민수야"},
        {"role": "assistant", "content": "반가워요!"},
    ]
    rows = [
        {"id": "m", "prompt": "내 이름 뭐야?", "chosen": "민수 님이에요.", "rejected": "몰라",
         "context": context},
        {"id": "s", "prompt": "내 이름 뭐야?", "chosen": "민수 님이에요.", "rejected": "몰라"},
    ]  # fmt: skip
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    report = judge_file(
        in_path=pairs, out_path=tmp_path / "scored.json", pairs_out=tmp_path / "ranked.json",
        client=make_client(openai_server.base_url), config=JudgeConfig(),
        cache=JudgeCache(tmp_path / "cache"), progress=False,
    )  # fmt: skip
    assert report.requests == 4 and report.cached == 0  # the context makes another question
    texts = [r["messages"][-1]["content"] for r in openai_server.requests]
    with_history = [t for t in texts if "[이전 대화]" in t]
    assert len(with_history) == 2
    assert "사용자: 내 이름은 민수야\n어시스턴트: 반가워요!" in with_history[0]
    ranked = {r["id"]: r for r in json.loads((tmp_path / "ranked.json").read_text("utf-8"))}
    assert ranked["m"]["context"] == context and "context" not in ranked["s"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{**rows[0], "context": "민수"}], ensure_ascii=False), "utf-8")
    with pytest.raises(InvalidValueError, match="row 1: `context` must be a list"):
        judge_file(
            in_path=bad, out_path=tmp_path / "o.json", client=make_client(openai_server.base_url),
            config=JudgeConfig(), cache=None, progress=False,
        )  # fmt: skip
