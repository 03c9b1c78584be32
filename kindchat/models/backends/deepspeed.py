"""The `deepspeed` backend: `deepspeed.init_inference` around the transformers model.

On CUDA the model's layers are replaced by DeepSpeed's fused inference kernels
(`replace_with_kernel_inject=True`); those keep their own KV cache, so requests are batched in
waves through `generate` (:class:`WaveEngine`). On CPU there is no injection: DeepSpeed wraps the
model unchanged and requests join the running batch step by step (:class:`BatchEngine`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from kindchat.models.backends.local import LocalBackend
from kindchat.models.engine import WaveEngine
from kindchat.models.loading import load_causal_lm, pick_device, pick_dtype

logger = logging.getLogger(__name__)


class DeepSpeedBackend(LocalBackend):
    name = "deepspeed"

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        device: str | None = None,
        max_batch_size: int = 16,
        max_queue: int = 64,
        kernel_inject: bool | None = None,
        label: str = "model",
    ) -> DeepSpeedBackend:
        """Load the model and hand it to DeepSpeed; `kernel_inject` defaults to "on CUDA"."""
        # lazy: DeepSpeed is heavy and probes accelerators on import; only this backend needs it
        import deepspeed

        dev = pick_device(device)
        inject = dev.type == "cuda" if kernel_inject is None else kernel_inject
        if inject and dev.type != "cuda":
            raise ValueError("DeepSpeed kernel injection needs a CUDA device; drop kernel_inject")
        model, tokenizer = load_causal_lm(path, str(dev))
        ds_engine: Any = deepspeed.init_inference(
            model,
            dtype=pick_dtype(dev),
            replace_with_kernel_inject=inject,
            tensor_parallel={"tp_size": 1},
        )
        module = ds_engine.module
        logger.info(
            "deepspeed inference for %s on %s (kernel injection %s)",
            label,
            dev,
            "on" if inject else "off",
        )
        backend = cls(
            module,
            tokenizer,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            forward=ds_engine,
            label=label,
        )
        backend.ds_engine = ds_engine
        if inject:
            backend.engine = WaveEngine(
                module,
                tokenizer,
                max_batch_size=max_batch_size,
                max_queue=max_queue,
                generate=module.generate,
                name=f"deepspeed:{label}",
            )
        return backend

    ds_engine: Any = None

    async def close(self) -> None:
        await super().close()
        self.ds_engine = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
