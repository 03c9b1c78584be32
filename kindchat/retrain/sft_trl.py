"""Causal-LM training with TRL's SFTTrainer: the base LM (plain text, packed) and SFT (KULLM
template, loss on the answer tokens by default). Imported by `sft.train_causal_lm` when a stage
trains with TRL (every stage but the first visit's, see `lean`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer
from trl import SFTConfig, SFTTrainer

from kindchat.retrain.hf_trainer import LogToFile, run_trainer, trainer_arguments


class CausalLmTrainer(SFTTrainer):
    """TRL's SFTTrainer (its data handling: packing, prompt/completion masks as -100 labels)
    with the model's own cross-entropy as the loss.

    TRL computes the loss through a chunked, fused LM head that also yields per-token entropy
    and top-1 accuracy for its logs: made for large vocabularies on a GPU. On CPU, for the
    embedded models, it took 2.2× the step time (micro base: 154–181 ms/step against 70–82 ms,
    the same loss to the third decimal, one run each on 2 cores), which a new user waits for
    before the first answer. The loss is the same masked mean over the label tokens.
    """

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        inputs["use_cache"] = False
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)


def train_with_trl(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    columns: dict[str, list[str]],
    config: Any,
    run_dir: Path,
    stage: str,
    packing: bool,
) -> tuple[PreTrainedModel, dict[str, Any]]:
    """SFTTrainer on `columns` (`text`, or `prompt` and `completion`) with `config` (an
    `sft.SftConfig`, read by its fields as every stage config is: `hf_trainer.trainer_arguments`);
    the trained model (LoRA merged in, if used) and the train metrics."""
    args = SFTConfig(
        **trainer_arguments(run_dir, config),
        max_length=config.max_length,
        packing=packing,
        packing_strategy="wrapped",
        completion_only_loss=config.completion_only_loss if not packing else None,
        dataset_num_proc=None,
    )
    trainer = CausalLmTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict(columns),
        processing_class=tokenizer,
        peft_config=config.lora.peft_config("CAUSAL_LM") if config.lora.enabled else None,
        callbacks=[LogToFile(stage)],
    )
    return run_trainer(trainer, config.lora.enabled, stage)
