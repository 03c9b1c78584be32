"""The `hf` backend: a transformers causal LM on CPU or GPU, continuously batched."""

from __future__ import annotations

from pathlib import Path

from kindchat.models.backends.local import LocalBackend
from kindchat.models.loading import load_causal_lm


class HFBackend(LocalBackend):
    name = "hf"

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        device: str | None = None,
        max_batch_size: int = 16,
        max_queue: int = 64,
        label: str = "model",
    ) -> HFBackend:
        model, tokenizer = load_causal_lm(path, device)
        return cls(
            model, tokenizer, max_batch_size=max_batch_size, max_queue=max_queue, label=label
        )
