"""The KULLM template: single turn, stacked multi-turn, truncation of the oldest turns."""

from __future__ import annotations

from pathlib import Path

import pytest

from kindchat.config import Settings
from kindchat.models.template import KULLM, ConversationError, PromptTooLongError, kullm_prompt

build_prompt = KULLM.prompt

HEADER = "아래는 작업을 설명하는 명령어입니다. 요청을 적절히 완료하는 응답을 작성하세요."


def test_single_turn_is_exactly_the_kullm_template() -> None:
    expected = f"{HEADER}\n\n### 명령어:\n오늘 날씨 어때?\n\n### 응답:\n"
    assert kullm_prompt("오늘 날씨 어때?") == expected
    assert build_prompt([{"role": "user", "content": "오늘 날씨 어때?"}]) == expected


CONVERSATION = [
    {"role": "user", "content": "첫 질문"},
    {"role": "assistant", "content": "첫 답"},
    {"role": "user", "content": "둘째 질문"},
    {"role": "assistant", "content": "둘째 답"},
    {"role": "user", "content": "마지막 질문"},
]


def test_multi_turn_stacks_earlier_turns() -> None:
    assert build_prompt(CONVERSATION) == (
        f"{HEADER}\n\n### 명령어:\n첫 질문\n\n### 응답:\n첫 답\n\n"
        "### 명령어:\n둘째 질문\n\n### 응답:\n둘째 답\n\n"
        "### 명령어:\n마지막 질문\n\n### 응답:\n"
    )


def test_truncation_drops_oldest_turns_first() -> None:
    full = build_prompt(CONVERSATION)
    without_first = build_prompt(CONVERSATION[2:])
    only_last = build_prompt(CONVERSATION[4:])
    assert build_prompt(CONVERSATION, len, len(full)) == full
    assert build_prompt(CONVERSATION, len, len(full) - 1) == without_first
    assert build_prompt(CONVERSATION, len, len(only_last)) == only_last
    with pytest.raises(PromptTooLongError, match="over the budget"):
        build_prompt(CONVERSATION, len, len(only_last) - 1)


def test_system_message_replaces_header() -> None:
    text = build_prompt(
        [{"role": "system", "content": "너는 친절한 비서야."}, {"role": "user", "content": "안녕"}]
    )
    assert text.startswith("너는 친절한 비서야.\n\n### 명령어:\n안녕")


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "assistant", "content": "x"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        [{"role": "tool", "content": "a"}],
    ],
)
def test_bad_conversations(messages: list[dict[str, str]]) -> None:
    with pytest.raises(ConversationError):
        build_prompt(messages)


# ---- the format belongs to the model ---------------------------------------------------------
CONVERSATIONS = [
    [{"role": "user", "content": "오늘 날씨 어때?"}],
    CONVERSATION,
    [{"role": "system", "content": "너는 친구처럼 말해."}, *CONVERSATION],
    [{"role": "system", "content": "   "}, *CONVERSATION[:3]],
    [
        {"role": "user", "content": "하나"},
        {"role": "user", "content": "둘"},
        {"role": "assistant", "content": "셋"},
        {"role": "assistant", "content": "넷"},
        {"role": "user", "content": "다섯"},
    ],
]


@pytest.mark.parametrize("family", ["micro_settings", "micro_llama_settings"])
def test_registered_models_carry_the_kullm_chat_template(
    family: str, request: pytest.FixtureRequest
) -> None:
    """A model kindchat trained (either family) is prompted through its own chat template, and
    that template renders exactly the KULLM text, so any engine serving the directory agrees."""
    from kindchat.models.registry import Registry
    from kindchat.models.template import KULLM_CHAT_TEMPLATE, prompt_format
    from kindchat.models.tokenizer import load_tokenizer

    settings = request.getfixturevalue(family)
    registry = Registry(settings.models_dir)
    for alias in ("base", "sft", "rm", "rlhf"):
        tokenizer = load_tokenizer(registry.resolve(alias))
        assert tokenizer.chat_template == KULLM_CHAT_TEMPLATE, alias
    fmt = prompt_format(tokenizer)
    assert fmt.name == "kullm"
    for messages in CONVERSATIONS:
        direct = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert direct == fmt.prompt(messages) == KULLM.prompt(messages)


def test_a_foreign_chat_template_is_used_everywhere(
    tmp_path: Path, micro_llama_settings: Settings
) -> None:
    """A Llama-family checkpoint with its own (SOLAR / KULLM3) template: serving, training and
    evaluation prompts all come from it, and truncation still drops the oldest turns."""
    from kindchat.models.dummy import SOLAR_CHAT_TEMPLATE, write_dummy_checkpoint
    from kindchat.models.presets import get_preset
    from kindchat.models.template import prompt_format
    from kindchat.models.tokenizer import load_tokenizer
    from kindchat.retrain.data import example_prompt, prompt_completion_columns
    from kindchat.seed import SftRecord, corpus_texts

    texts = corpus_texts(micro_llama_settings.data_dir)[:500]
    path = write_dummy_checkpoint(tmp_path / "llama", get_preset("micro-llama"), texts)
    tokenizer = load_tokenizer(path)
    assert tokenizer.chat_template == SOLAR_CHAT_TEMPLATE
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # none shipped: pads with EOS
    fmt = prompt_format(tokenizer)
    assert fmt.name == "chat_template"
    system = [{"role": "system", "content": "너는 상담사야."}, *CONVERSATION]
    text = fmt.prompt(system)
    assert text.startswith("### System:\n너는 상담사야.\n\n### User:\n첫 질문\n\n")
    assert "### Assistant:\n첫 답</s>\n\n" in text and text.endswith("### Assistant:\n")
    assert "### 명령어" not in text
    # Oldest turns first, the system prompt kept.
    short = fmt.prompt(system, len, len(fmt.prompt([system[0], *CONVERSATION[2:]])))
    assert short.startswith("### System:") and "첫 질문" not in short and "둘째 질문" in short
    # Training data in the same format as serving.
    record = SftRecord(id="1", subset="t", instruction="오늘 날씨 어때?", input="", output="맑아요")
    columns = prompt_completion_columns([record], tokenizer)
    assert (
        columns["prompt"]
        == [fmt.single(record.prompt)]
        == ["### User:\n오늘 날씨 어때?\n\n### Assistant:\n"]
    )
    assert example_prompt(tokenizer, "마지막 질문", CONVERSATION[:4]) == fmt.prompt(CONVERSATION)


def test_eos_is_kept_when_pad_is_eos(tmp_path: Path, micro_llama_settings: Settings) -> None:
    """Without a pad token the EOS pads too; an answer that ends still counts as finished and
    keeps its EOS (the policy evaluation's KL sums over it)."""
    import torch

    from kindchat.models.dummy import write_dummy_checkpoint
    from kindchat.models.generation import SamplingParams, generate_batch
    from kindchat.models.loading import load_causal_lm
    from kindchat.models.presets import get_preset
    from kindchat.models.template import prompt_format
    from kindchat.seed import corpus_texts

    texts = corpus_texts(micro_llama_settings.data_dir)[:500]
    path = write_dummy_checkpoint(tmp_path / "llama", get_preset("micro-llama"), texts)
    model, tokenizer = load_causal_lm(path)
    eos = tokenizer.eos_token_id
    assert tokenizer.pad_token_id == eos
    # An output head that always says EOS: the left-padded batch ends at once, with pad == EOS.
    head = model.lm_head
    prompts = [prompt_format(tokenizer).single(p) for p in ("안녕", "주말에 뭐 할까? 아주 긴 질문")]
    params = SamplingParams(max_new_tokens=6, do_sample=False)
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.zero_()
        biased.bias.zero_()
        biased.bias[eos] = 10.0
    model.lm_head = biased
    done = generate_batch(model, tokenizer, prompts, params)
    for g in done:
        assert eos in g.response_ids and g.response_ids == [eos] and g.text == ""  # finished
