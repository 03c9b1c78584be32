"""Byte-level BPE tokenizer trained on the seed text, saved as a Hugging Face tokenizer dir."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from kindchat.models.adapters import base_dir
from kindchat.models.template import KULLM_CHAT_TEMPLATE

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a GPT-NeoX-style byte-level BPE on `texts`.

    `<|endoftext|>` is the EOS (and BOS, as in GPT-NeoX), `<|padding|>` the pad token. Byte-level
    means any text, Korean or not, round-trips exactly. The KULLM template is its chat template,
    so every model built on it is prompted the same way here and in vLLM, SGLang or
    `transformers serve`.
    """
    if vocab_size < 300:
        raise ValueError(
            f"vocab_size must be at least 300 (256 bytes + specials), got {vocab_size}"
        )
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="right",
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
        chat_template=KULLM_CHAT_TEMPLATE,
    )


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a model directory, whatever its kind (fast `tokenizer.json`, or a
    SentencePiece `tokenizer.model` that transformers converts). A checkpoint without a pad
    token pads with its EOS (Llama-family checkpoints): everything downstream keeps the EOS
    that ends an answer apart from the padding after it. A LoRA adapter version speaks its
    base's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir(path)))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
