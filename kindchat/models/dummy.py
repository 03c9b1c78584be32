"""Random-weight checkpoints in a preset's shape, as a foreign model would arrive (vLLM's
``--load-format dummy`` idea): for serving benchmarks, where only the shape matters, and to try
`kindchat models import` end to end without a model hub.

The checkpoint is what a Llama-family release looks like, not what kindchat trains: a
SentencePiece-style BPE tokenizer (``▁`` word boundaries, ``<s>``/``</s>``, no pad token) and its
own chat template, the SOLAR / KULLM3 one (``### User:`` / ``### Assistant:``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import SentencePieceBPETokenizer
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from kindchat.models.presets import Preset

# The chat template of KULLM3 (SOLAR-style), each answer closed by the EOS.
SOLAR_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- if message['content'] -%}{{- '### System:\\n' + message['content'] + '\\n\\n' -}}{%- endif -%}"
    "{%- elif message['role'] == 'user' -%}"
    "{{- '### User:\\n' + message['content'] + '\\n\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '### Assistant:\\n' + message['content'] + eos_token + '\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '### Assistant:\\n' -}}{%- endif -%}"
)


def sentencepiece_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A Llama-style SentencePiece BPE tokenizer trained on `texts` (no pad token)."""
    core = SentencePieceBPETokenizer()
    core.train_from_iterator(
        texts, vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=2048,
        chat_template=SOLAR_CHAT_TEMPLATE,
    )


def write_dummy_checkpoint(out: Path, preset: Preset, texts: Sequence[str], seed: int = 0) -> Path:
    """Write a random-weight model of `preset`'s shape with its own tokenizer to `out`."""
    tokenizer = sentencepiece_tokenizer(texts, preset.vocab_size)
    config = preset.model_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.eos_token_id)
    config.bos_token_id = tokenizer.bos_token_id
    config.pad_token_id = None  # as released Llama checkpoints: the loader pads with EOS
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
