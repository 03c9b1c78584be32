"""Multi-turn context, end to end: store → export → every trainer's input, as serving built it.

If any step drops the earlier turns (the store's mining, the export files, the readers, the
DPO/KTO/RM datasets), a trainer sees a later turn as a one-turn prompt and this test fails.
"""

from __future__ import annotations

from pathlib import Path

from kindchat.config import Settings
from kindchat.feedback import store
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.export import ExportConfig, export_reward_data
from kindchat.models.registry import Registry
from kindchat.models.template import prompt_format
from kindchat.models.tokenizer import load_tokenizer
from kindchat.retrain.dpo import feedback_pairs, preference_dataset
from kindchat.retrain.kto import examples_from_files, kto_dataset
from kindchat.retrain.methods import PreferenceData
from kindchat.retrain.reward import pairs_dataset
from kindchat.seed import read_examples_file

HISTORY = [
    {"role": "user", "content": "내일 부산에 여행 가요"},
    {"role": "assistant", "content": "멋지네요! 해운대에 들러 보세요."},
]
PROMPT = "거기 맛집도 알려 줘"
OTHER = "부산에서 꼭 먹어야 할 건?"


def record_chat(settings: Settings) -> None:
    """One multi-turn chat: two answers to the last turn (👍, 👎), a 👎 with a better answer."""
    engine = init_db(settings)
    with session_scope(engine) as s:
        conv = store.create_conversation(session=s, session_id="u")
        for message in [*HISTORY, {"role": "user", "content": PROMPT}]:
            store.record_message(session=s, conversation_id=conv.id, **message)
        good = store.record_message(
            session=s, conversation_id=conv.id, role="assistant", content="돼지국밥 어떠세요?"
        )
        bad = store.record_message(
            session=s,
            conversation_id=conv.id,
            role="assistant",
            content="검색해 보세요, 저는 몰라요.",
            parent_id=good.id,
        )
        store.rate(session=s, message_id=good.id, session_id="u", value=1)
        store.rate(session=s, message_id=bad.id, session_id="u", value=-1)
        other = store.create_conversation(session=s, session_id="v")
        for message in [*HISTORY, {"role": "user", "content": OTHER}]:
            store.record_message(session=s, conversation_id=other.id, **message)
        lonely = store.record_message(
            session=s, conversation_id=other.id, role="assistant", content="그건 잘 모르겠어요."
        )
        store.rate(
            session=s,
            message_id=lonely.id,
            session_id="v",
            value=-1,
            better_answer="밀면과 씨앗호떡이 유명해요! 남포동에 가 보세요.",
        )


def test_context_reaches_every_trainer_input(micro_settings: Settings, tmp_path: Path) -> None:
    settings = micro_settings.model_copy(update={"home": tmp_path / "home"})
    settings.ensure_dirs()
    record_chat(settings)
    out = tmp_path / "export"
    with session_scope(init_db(settings)) as s:
        export_reward_data(
            session=s,
            data_dir=settings.data_dir,
            out_dir=out,
            config=ExportConfig(test_fraction=0.0, include_seed=False),
        )
    data = PreferenceData.from_export(out)
    tokenizer = load_tokenizer(Registry(micro_settings.models_dir).resolve("sft"))
    # What serving builds for this conversation (the backend's prompt format).
    served = prompt_format(tokenizer).prompt([*HISTORY, {"role": "user", "content": PROMPT}])
    assert HISTORY[1]["content"] in served

    served_other = prompt_format(tokenizer).prompt([*HISTORY, {"role": "user", "content": OTHER}])

    pairs = feedback_pairs(data.pairs, settings.data_dir)  # the 👍/👎 pair, the better answer
    assert len(pairs) == 2 and all(p.context == HISTORY for p in pairs)
    dpo_rows = preference_dataset(pairs, tokenizer, 256)
    assert set(dpo_rows["prompt"]) == {served, served_other}

    examples = examples_from_files(data.pairs, data.unpaired)
    assert len(examples) == 5  # 2 pairs → 4 rows, + the lone 👎
    kto_rows = kto_dataset(examples, tokenizer, 256, seed=0)
    assert sorted(kto_rows["prompt"]) == sorted([served] * 2 + [served_other] * 3)

    rm_rows = pairs_dataset(tokenizer, pairs, 256)
    for ids in rm_rows["chosen_ids"]:
        text = tokenizer.decode(ids)
        assert "해운대" in text and (PROMPT in text or OTHER in text)

    [demo] = read_examples_file(data.demonstrations)  # type: ignore[arg-type]
    assert demo.context == HISTORY and demo.completion.startswith("밀면")


def test_a_long_history_drops_its_oldest_turns_like_serving(micro_settings: Settings) -> None:
    from kindchat.retrain.data import example_prompt

    tokenizer = load_tokenizer(Registry(micro_settings.models_dir).resolve("sft"))
    history = []
    for i in range(12):
        history += [
            {"role": "user", "content": f"Q{i:02d}"},
            {"role": "assistant", "content": f"A{i:02d}"},
        ]
    full = example_prompt(tokenizer, PROMPT, history)
    assert "Q00" in full and "A11" in full  # no budget: everything
    budget = len(tokenizer(full, add_special_tokens=False)["input_ids"]) - 1
    text = example_prompt(tokenizer, PROMPT, history, max_tokens=budget)
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= budget
    assert text.endswith(f"### 명령어:\n{PROMPT}\n\n### 응답:\n")
    assert "A11" in text and "Q00" not in text  # the oldest turn went first
