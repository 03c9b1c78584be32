"""Model shapes and training budgets of the embedded models (`micro` for tests, `tiny` for the demo).

Each shape comes in two families: GPT-NeoX (KULLM v2 / Polyglot-Ko; `micro`, `tiny`) and Llama
(KULLM3 / SOLAR and most Korean models of 2025–26; `micro-llama`, `tiny-llama`). A real
checkpoint is not a preset: bring it in with `kindchat models import DIR`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from transformers import GPTNeoXConfig, LlamaConfig, PretrainedConfig


@dataclass(frozen=True)
class StageBudget:
    """How much one training stage may do."""

    max_steps: int = -1  # -1: run `epochs` full epochs
    epochs: float = 1.0
    batch_size: int = 8
    learning_rate: float = 1e-3
    max_records: int | None = None  # cap on the records read (micro runs use a slice)
    seed: int = 0


@dataclass(frozen=True)
class PpoBudget:
    """What a preset spends on PPO: set explicitly by every preset; the other PPO settings
    keep their one default, in `kindchat.retrain.ppo.PpoConfig`."""

    steps: int
    batch_size: int
    mini_batch_size: int
    max_new_tokens: int
    actor_lr: float
    critic_lr: float


@dataclass(frozen=True)
class Preset:
    """A model shape (GPT-NeoX or Llama) plus what bootstrap spends on each stage."""

    name: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    seq_len: int  # training length and max_position_embeddings
    ppo: PpoBudget
    base: StageBudget = field(default_factory=StageBudget)
    sft: StageBudget = field(default_factory=StageBudget)
    rm: StageBudget = field(default_factory=StageBudget)
    gold_rm: StageBudget = field(default_factory=StageBudget)  # the judge: other seed, more data
    architecture: str = "gpt_neox"  # or "llama"

    def model_config(self, tokenizer_vocab: int, eos_id: int, pad_id: int) -> PretrainedConfig:
        if self.architecture == "llama":
            return LlamaConfig(
                vocab_size=tokenizer_vocab,
                hidden_size=self.hidden_size,
                num_hidden_layers=self.num_layers,
                num_attention_heads=self.num_heads,
                num_key_value_heads=max(1, self.num_heads // 2),  # grouped-query, as Llama 3
                intermediate_size=8 * self.hidden_size // 3 // 32 * 32 or 4 * self.hidden_size,
                max_position_embeddings=self.seq_len,
                tie_word_embeddings=False,
                bos_token_id=eos_id,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
            )
        if self.architecture != "gpt_neox":
            raise ValueError(f"unknown architecture {self.architecture!r}")
        return GPTNeoXConfig(
            vocab_size=tokenizer_vocab,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=4 * self.hidden_size,
            max_position_embeddings=self.seq_len,
            rotary_pct=0.25,
            use_parallel_residual=True,
            tie_word_embeddings=False,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
        )


PRESETS: dict[str, Preset] = {
    # Seconds to train: every test and `bootstrap --preset micro` (< 1 min on 2 cores).
    "micro": Preset(
        name="micro",
        vocab_size=1024,
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        seq_len=256,
        base=StageBudget(max_steps=120, batch_size=16, learning_rate=3e-3, max_records=600),
        sft=StageBudget(max_steps=60, batch_size=16, learning_rate=2e-3, max_records=400),
        rm=StageBudget(max_steps=30, batch_size=8, learning_rate=1e-3, max_records=240),
        gold_rm=StageBudget(
            max_steps=40, batch_size=8, learning_rate=1e-3, max_records=320, seed=1
        ),
        ppo=PpoBudget(
            steps=3,
            batch_size=8,
            mini_batch_size=4,
            max_new_tokens=16,
            actor_lr=1e-4,
            critic_lr=1e-4,
        ),
    ),
    # The demo default: 7.3M parameters (8k vocab, hidden 256, 4 layers), ~2.7k tok/s on 2 cores.
    # Bootstrap measured 15 min on 2 quiet cores: base LM 480 steps (~1M tokens, ~0.7 epoch of
    # the seed text, ~6 min), SFT one epoch (~3.7 min), RM and gold RM 150 steps each (~1,200
    # pairs, ~1.5 min each), PPO 100 steps of 16 rollouts (~2 min), then the policy evaluation
    # on the 100 test prompts. A 7M actor needs a larger PPO step than KULLM's 1e-5 to move
    # within 100 updates; the KL penalty keeps it near SFT.
    "tiny": Preset(
        name="tiny",
        vocab_size=8000,
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        seq_len=256,
        base=StageBudget(max_steps=480, batch_size=8, learning_rate=2e-3),
        sft=StageBudget(epochs=1.0, batch_size=8, learning_rate=5e-4),
        rm=StageBudget(max_steps=150, batch_size=8, learning_rate=3e-4),
        gold_rm=StageBudget(max_steps=150, batch_size=8, learning_rate=3e-4, seed=1),
        ppo=PpoBudget(
            steps=100,
            batch_size=16,
            mini_batch_size=8,
            max_new_tokens=48,
            actor_lr=1e-4,
            critic_lr=1e-4,
        ),
    ),
}


def _llama(preset: Preset) -> Preset:
    """The same shape and budgets as a Llama (grouped-query attention, SwiGLU, RMSNorm)."""
    return replace(preset, name=f"{preset.name}-llama", architecture="llama")


PRESETS["micro-llama"] = _llama(PRESETS["micro"])
PRESETS["tiny-llama"] = _llama(PRESETS["tiny"])


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None
