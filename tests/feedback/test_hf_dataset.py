"""`kindchat feedback export --format hf`: the feedback as standard datasets — loaded by
`datasets` as Parquet, and trained one step by TRL's DPOTrainer and KTOTrainer, unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from datasets import load_dataset
from sqlmodel import Session

from kindchat.config import Settings
from kindchat.feedback import store
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.export import ExportConfig
from kindchat.feedback.hf_dataset import export_hf
from kindchat.feedback.influence import InfluenceConfig

CONFIG = ExportConfig(include_seed=False, influence=InfluenceConfig(anomaly_filter=False))
ANSWERS = [
    (
        "라면 맛있게 끓이는 법 알려줘",
        "물이 끓으면 면과 스프를 넣고 4분 정도 끓여 보세요!",
        "저는 잘 몰라요.",
    ),
    ("비 오는 날 뭐 하면 좋을까?", "따뜻한 차 마시면서 책 읽는 건 어때요?", "그냥 자요 뭐."),
    ("영어 공부 어떻게 시작해?", "하루 10분씩 쉬운 글을 소리 내어 읽어 보세요.", "알아서 하세요."),
    ("잠이 안 와", "따뜻한 우유 한 잔과 가벼운 스트레칭이 도움이 될 거예요.", "폰 그만 봐요."),
]


def fill(session: Session) -> None:
    """👍/👎 siblings (pairs), single thumbs (unpaired), a better answer (SFT), two turns."""
    for i, (prompt, good, bad) in enumerate(ANSWERS):
        conversation = store.create_conversation(session=session, session_id=f"u{i}")
        if i == 0:  # a second turn: the context travels with the row
            for role, text in (("user", "안녕!"), ("assistant", "안녕하세요, 반가워요!")):
                store.record_message(
                    session=session, conversation_id=conversation.id, role=role, content=text
                )
        store.record_message(
            session=session, conversation_id=conversation.id, role="user", content=prompt
        )
        up = store.record_message(
            session=session, conversation_id=conversation.id, role="assistant", content=good,
            model_version="v1",
        )  # fmt: skip
        down = store.record_message(
            session=session, conversation_id=conversation.id, role="assistant", content=bad,
            model_version="v2", parent_id=up.id,
        )  # fmt: skip
        store.rate(session=session, message_id=up.id, session_id=f"u{i}", value=1)
        store.rate(
            session=session, message_id=down.id, session_id=f"u{i}", value=-1,
            better_answer=f"{good} 제 번호 010-5555-{1000 + i}로 물어봐도 돼요." if i == 1 else None,
        )  # fmt: skip
    for i, text in enumerate(["고마워", "좋은 하루!"]):  # single thumbs, each its own context
        conversation = store.create_conversation(session=session, session_id=f"t{i}")
        store.record_message(
            session=session, conversation_id=conversation.id, role="user", content=text
        )
        answer = store.record_message(
            session=session, conversation_id=conversation.id, role="assistant",
            content="천만에요, 또 찾아 주세요!" if i == 0 else "뭐래.", model_version="v1",
        )  # fmt: skip
        store.rate(session=session, message_id=answer.id, session_id=f"t{i}", value=1 - 2 * i)


def test_the_export_loads_with_datasets_and_trains_one_step_of_dpo_and_kto(
    micro_settings: Settings, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path / "home", data_dir=micro_settings.data_dir)
    with session_scope(init_db(settings)) as session:
        fill(session)
        out = tmp_path / "hf"
        result = export_hf(session=session, data_dir=settings.data_dir, out_dir=out, config=CONFIG)
    rows = result.rows
    assert rows["preference"]["train"] + rows["preference"]["test"] == 5  # 4 rated + 1 better
    assert rows["unpaired"] == {"train": 2} and rows["sft"] == {"train": 1}

    files = {
        config: {split: str(out / config / f"{split}.parquet") for split, n in splits.items() if n}
        for config, splits in rows.items()
    }
    preference = load_dataset("parquet", data_files=files["preference"])
    unpaired = load_dataset("parquet", data_files=files["unpaired"])
    sft = load_dataset("parquet", data_files=files["sft"])
    every = [row for split in preference.values() for row in split]
    assert set(preference["train"].column_names) == {"id", "source", "prompt", "chosen", "rejected"}
    two_turns = next(r for r in every if len(r["prompt"]) == 3)
    assert [m["role"] for m in two_turns["prompt"]] == ["user", "assistant", "user"]
    assert all(r["chosen"][0]["role"] == "assistant" for r in every)
    assert sorted(r["label"] for r in unpaired["train"]) == [False, True]
    [demo] = sft["train"]
    assert demo["messages"][-1]["role"] == "assistant"
    assert "<전화번호>" in demo["messages"][-1]["content"]  # no number leaves
    assert "010-5555" not in json.dumps(every + list(sft["train"]), ensure_ascii=False)

    # The card's configs header is what load_dataset(dir, config) and the hub read.
    card = (out / "README.md").read_text("utf-8")
    assert card.startswith("---\nconfigs:") and "license: unknown" in card
    assert "| phone | 2 |" in card and "| v1 |" in card and "| battle" not in card
    by_card = load_dataset(str(out), "preference")
    assert by_card["train"].num_rows == rows["preference"]["train"]

    # TRL trains on them as they are.
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    from kindchat.models.registry import Registry

    model_dir = Registry.for_settings(micro_settings).resolve("sft")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.chat_template  # the KULLM template kindchat serves with
    common = dict(
        max_steps=1, per_device_train_batch_size=2, report_to=[], use_cpu=True,
        save_strategy="no", logging_steps=1, max_length=128,
    )  # fmt: skip
    for trainer_cls, config_cls, dataset in (
        (DPOTrainer, DPOConfig, preference["train"]),
        (KTOTrainer, KTOConfig, unpaired["train"]),
    ):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        before = [p.detach().clone() for p in model.parameters()]
        trainer = trainer_cls(
            model=model,
            args=config_cls(output_dir=str(tmp_path / trainer_cls.__name__), **common),
            train_dataset=dataset,
            processing_class=tokenizer,
        )
        trainer.train()
        assert trainer.state.global_step == 1
        loss = trainer.state.log_history[0]["loss"]
        assert loss == loss  # a number, not NaN
        assert any(not p.equal(b) for p, b in zip(model.parameters(), before, strict=True))


def test_the_cli_writes_the_folder_and_refuses_bad_formats(tmp_path: Path, data_dir: Path) -> None:
    env = {
        "KINDCHAT_HOME": str(tmp_path / "home"),
        "KINDCHAT_DATA_DIR": str(data_dir),
        "COLUMNS": "200",
    }
    settings = Settings(home=tmp_path / "home", data_dir=data_dir)
    with session_scope(init_db(settings)) as session:
        fill(session)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        import os

        return subprocess.run(
            [sys.executable, "-m", "kindchat", "feedback", "export", *args],
            capture_output=True, text=True, env={**os.environ, **env}, timeout=300,
        )  # fmt: skip

    done = cli(str(tmp_path / "out"), "--format", "hf", "--no-seed")
    assert done.returncode == 0, done.stderr
    assert "preference/train 5" in done.stdout and "phone" in done.stdout, done.stdout
    assert (tmp_path / "out" / "unpaired" / "train.parquet").exists()
    bad = cli(str(tmp_path / "bad"), "--format", "csv")
    assert bad.returncode == 2 and "--format must be json or hf" in bad.stderr
    assert "Traceback" not in bad.stderr
    hub = cli(str(tmp_path / "bad"), "--push-to-hub", "me/data")
    assert hub.returncode == 2 and "needs --format hf" in hub.stderr
