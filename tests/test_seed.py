"""Seed readers on the real seed data and on hand-made good and malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kindchat.seed import (
    EOS_TEXT,
    SeedDataError,
    corpus_texts,
    eval_prompt_keys,
    read_geval,
    read_geval_file,
    read_ppo_prompts,
    read_ppo_prompts_file,
    read_rm,
    read_rm_file,
    read_sft,
    read_sft_file,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


class TestRealSeed:
    def test_counts_and_subsets(self, data_dir: Path) -> None:
        sft = read_sft(data_dir)
        assert len(sft) == 1495 + 490 + 476
        assert {r.subset for r in sft} == {"conversation", "hatespeech", "evol"}
        assert len(read_rm(data_dir, "train")) == 1037 + 487 + 960
        test = read_rm(data_dir, "test")
        assert [
            sum(p.subset == s for p in test) for s in ("conversation", "hatespeech", "translation")
        ] == [40, 20, 40]
        assert len(read_ppo_prompts(data_dir)) == 3608
        assert len(read_geval(data_dir)) == 1310 + 609

    def test_eos_is_stripped_everywhere(self, data_dir: Path) -> None:
        for pair in read_rm(data_dir, "train") + read_rm(data_dir, "test"):
            assert EOS_TEXT not in pair.chosen[-len(EOS_TEXT) :]
            assert not pair.rejected.endswith(EOS_TEXT)
        for g in read_geval(data_dir):
            assert not g.response1.endswith(EOS_TEXT) and not g.response2.endswith(EOS_TEXT)

    def test_geval_judge_failures_are_marked_incomplete(self, data_dir: Path) -> None:
        records = read_geval(data_dir)
        incomplete = [g for g in records if not g.complete]
        assert 0 < len(incomplete) < 10  # the seed has a handful of 0 ("not scored") criteria

    def test_eval_prompts_left_out_of_corpus(self, data_dir: Path) -> None:
        keys = eval_prompt_keys(data_dir)
        assert len(keys) == 100
        texts = set(corpus_texts(data_dir, keys))
        assert not any(" ".join(t.split()) in keys for t in texts)


class TestGoodFiles:
    def test_sft_jsonl(self, tmp_path: Path) -> None:
        rows = [
            {"id": 7, "instruction": "안녕?", "output": "안녕하세요!"},
            {"id": "x", "instruction": "번역", "input": "hello", "output": "안녕"},
        ]
        path = write(
            tmp_path / "sft" / "evol.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n\n"
        )
        records = read_sft_file(path)
        assert [r.id for r in records] == ["7", "x"]
        assert records[1].prompt == "번역\n\nhello"
        assert records[0].subset == "evol"

    def test_rm_strips_eos(self, tmp_path: Path) -> None:
        raw = [
            {"prompt": "p", "chosen": f"좋아요{EOS_TEXT}", "rejected": f"싫어{EOS_TEXT}{EOS_TEXT}"}
        ]
        pair = read_rm_file(write(tmp_path / "hatespeech_train.json", json.dumps(raw)))[0]
        assert (pair.chosen, pair.rejected, pair.subset) == ("좋아요", "싫어", "hatespeech")

    def test_geval_and_ppo(self, tmp_path: Path) -> None:
        raw = [
            {
                "id": "a",
                "prompt": "p",
                "response1": "r1",
                "scores1": [5, 5, 4, 4, 5, 5],
                "sum1": 28,
                "response2": "r2",
                "scores2": [1, 1, 1, 1, 1, 1],
                "sum2": 6,
            }
        ]
        g = read_geval_file(write(tmp_path / "conversation_scores.json", json.dumps(raw)))[0]
        assert g.complete and g.sum1 == 28
        ppo = read_ppo_prompts_file(
            write(tmp_path / "p.json", json.dumps([{"id": "1", "prompt": "q"}]))
        )
        assert ppo[0].prompt == "q"


class TestMalformed:
    @pytest.mark.parametrize(
        ("content", "expected"),
        [
            (
                '{"id": 1, "instruction": "a", "output": "b"}\n{"id": 2, "instruction": "a"}\n',
                "row 2: output: Field required",
            ),
            ('{"id": 1, "instruction": "a", "output": "b"}\nnot json\n', "row 2: invalid JSON"),
            ('{"id": 1, "instruction": "", "output": "b"}\n', "row 1: instruction"),
            ("[1, 2]\n", "row 1: expected a JSON object"),
        ],
    )
    def test_sft_rows(self, tmp_path: Path, content: str, expected: str) -> None:
        path = write(tmp_path / "conversation.jsonl", content)
        with pytest.raises(SeedDataError, match=expected) as info:
            read_sft_file(path)
        assert str(path) in str(info.value)

    def test_rm_not_a_list(self, tmp_path: Path) -> None:
        with pytest.raises(SeedDataError, match="expected a JSON list"):
            read_rm_file(write(tmp_path / "x_train.json", '{"prompt": "a"}'))

    def test_rm_bad_json(self, tmp_path: Path) -> None:
        with pytest.raises(SeedDataError, match="invalid JSON at line 2"):
            read_rm_file(write(tmp_path / "x_train.json", '[\n{"prompt": }]'))

    def test_rm_missing_field_names_row(self, tmp_path: Path) -> None:
        raw = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b"}]
        with pytest.raises(SeedDataError, match=r"row 2: rejected: Field required"):
            read_rm_file(write(tmp_path / "x_train.json", json.dumps(raw)))

    def test_geval_score_out_of_range_and_bad_sum(self, tmp_path: Path) -> None:
        base = {
            "id": "a",
            "prompt": "p",
            "response1": "r",
            "response2": "s",
            "scores1": [5, 5],
            "sum1": 10,
            "scores2": [1, 1],
            "sum2": 2,
        }
        path = write(
            tmp_path / "c_scores.json", json.dumps([base, {**base, "scores1": [5, 9], "sum1": 14}])
        )
        with pytest.raises(SeedDataError, match=r"row 2: scores1: .*must lie in 1..5"):
            read_geval_file(path)
        path = write(tmp_path / "c_scores.json", json.dumps([{**base, "sum2": 3}]))
        with pytest.raises(SeedDataError, match=r"row 1: .*sum2=3"):
            read_geval_file(path)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(SeedDataError, match="file not found"):
            read_ppo_prompts_file(tmp_path / "nope.json")

    def test_unknown_subset(self, data_dir: Path) -> None:
        with pytest.raises(ValueError, match="unknown subset"):
            read_rm(data_dir, "train", ["poetry"])
