"""The `ppo` preference method, and PPO itself as in DeepSpeed-Chat step 3.

**A PPO run** (:func:`train_ppo`: `kindchat train ppo`, bootstrap's `ppo` stage, the method's
last stage). Four models, built apart from training (:func:`build_rlhf_models`): the actor and a
frozen reference from SFT (or the serving policy at night, still anchored to SFT), a critic and
a frozen reward model from the RM. One step = one rollout batch:
  1. sample answers to a batch of prompts with the actor (the serving template, left padding);
  2. score them: actor and reference log-probs, critic values, RM score at the last token;
  3. per-token rewards −β·KL plus the clipped RM score on the last token; GAE;
  4. `ppo_epochs` passes of mini-batches: clipped policy loss on the actor, clipped value loss
     on the critic, each with gradient clipping (or a DeepSpeed engine doing the same);
  5. metrics to `ppo_log.jsonl`; every `checkpoint_every` steps a checkpoint to resume from.
The math lives in `ppo_math.py` (small pure functions, hand-checked tests). Every
hyper-parameter, the optimiser's included, is a :class:`PpoConfig` field; a preset's budget
(:func:`ppo_config`) overrides some of them.

**The nightly method** (`METHOD`, :func:`train`, config :class:`PpoMethodConfig`):
  1. ``rm`` — fine-tune the *current* RM on the export's pairs (`warm_start`), so that a few
     hundred fresh votes are not diluted in the seed's 2,500 pairs; with `warm_start=False` a
     fresh RM is trained from the base LM on seed + feedback, as bootstrap does;
  2. ``rm_gate`` — the new RM's accuracy on the seed's held-out pairs may fall at most
     `rm_gate_margin` below the current RM's (it must not forget what it knew);
  3. ``ppo`` — PPO from the serving policy against the new RM, the per-token KL penalty anchored
     to SFT (not to yesterday's policy, so drift cannot compound over nights), rollouts on the
     seed's step-3 prompts plus the export's prompts.
The new RM is promoted together with the policy (alias `rm`).

Simplified against DeepSpeed-Chat, plainly: the learning rates are constant (DeepSpeed-Chat warms
them up and decays them), no pre-training loss is mixed into the actor's (InstructGPT's
PPO-ptx), and advantages are whitened per batch by default (`whiten_advantages`, as TRL does).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from kindchat.config import Settings
from kindchat.models.generation import (
    left_pad,
    response_mask,
    sample_with_logits,
)
from kindchat.models.loading import load_causal_lm, load_reward_model
from kindchat.models.presets import Preset
from kindchat.models.registry import Manifest, Registry
from kindchat.models.template import prompt_format
from kindchat.retrain.common import (
    LoraOptions,
    config_dict,
    ensure_distributed_env,
    new_run_dir,
    register_model,
)
from kindchat.retrain.errors import RetrainError
from kindchat.retrain.evaluate import response_logits
from kindchat.retrain.gates import rm_gate
from kindchat.retrain.methods import Method, MethodJob, MethodRefusedError, MethodResult
from kindchat.retrain.ppo_log import LOG_FILE, read_log
from kindchat.retrain.ppo_math import (
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    gae,
    kl_penalized_rewards,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
)
from kindchat.retrain.reward import RmConfig, rm_config, score_sequences, token_values
from kindchat.retrain.rm_eval import accuracy_metrics
from kindchat.retrain.stages import eval_rm, train_rm
from kindchat.seed import eval_prompt_keys, fingerprint, normalize_prompt, read_ppo_prompts

logger = logging.getLogger(__name__)
CHECKPOINT = "checkpoint"
PPO_KEEP = ("reward_start", "reward_end", "kl_end", "steps")  # the night's record of the run
RM_KEEP = ("accuracy", "train_pairs", "loss_first", "loss_last")


# ---- configuration --------------------------------------------------------------------------
@dataclass
class PpoConfig:
    """Hyper-parameters of a PPO run (defaults: DeepSpeed-Chat step 3 / the VAIV seed)."""

    steps: int = 100  # rollout batches (PPO iterations)
    batch_size: int = 8  # prompts per rollout batch
    mini_batch_size: int = 8  # rollouts per optimiser step (divides batch_size)
    ppo_epochs: int = 1  # passes over each rollout batch
    max_prompt_tokens: int = 128  # prompt budget (template included); longer prompts cut left
    max_new_tokens: int = 64  # answer budget
    temperature: float = 1.0  # rollout sampling temperature
    top_p: float = 1.0  # rollout nucleus sampling
    actor_lr: float = 1e-5  # actor learning rate (AdamW, constant)
    critic_lr: float = 5e-5  # critic learning rate (AdamW, constant)
    adam_beta1: float = 0.9  # AdamW β1 of actor and critic
    adam_beta2: float = 0.95  # AdamW β2 of actor and critic (DeepSpeed-Chat's)
    adam_epsilon: float = 1e-8  # AdamW ε of actor and critic
    weight_decay: float = 0.0  # AdamW decoupled weight decay of actor and critic
    max_grad_norm: float = 1.0  # gradient clipping of actor and critic (global L2 norm)
    kl_coef: float = 0.1  # β of the per-token KL penalty to the reference
    reward_clip: float = 5.0  # RM score clipped to ±reward_clip
    gamma: float = 1.0  # GAE discount γ
    lam: float = 0.95  # GAE λ
    policy_clip: float = 0.2  # PPO ratio clip ε (actor)
    value_clip: float = 0.2  # value clip ε (critic)
    whiten_advantages: bool = True  # normalise advantages per batch (TRL; DS-Chat does not)
    ema_decay: float | None = None  # keep an EMA of the actor (e.g. 0.992) and save it
    checkpoint_every: int = 25  # steps between checkpoints; 0: none
    max_prompts: int | None = None  # use a slice of the prompts
    exclude_eval_prompts: bool = True  # keep rm/*_test.json prompts out of rollouts
    actor_lora: LoraOptions = field(default_factory=LoraOptions)  # LoRA on the actor
    critic_lora: LoraOptions = field(default_factory=LoraOptions)  # LoRA on the critic
    deepspeed: Path | None = None  # a DeepSpeed JSON config: actor and critic become engines
    seed: int = 0  # prompt order, mini-batch order and (through torch) the rollouts

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (
                1 <= self.mini_batch_size <= self.batch_size
                and self.batch_size % self.mini_batch_size == 0,
                f"mini_batch_size ({self.mini_batch_size}) must divide batch_size ({self.batch_size})",
            ),
            (self.ppo_epochs >= 1, f"ppo_epochs must be >= 1, got {self.ppo_epochs}"),
            (
                self.max_prompt_tokens >= 1,
                f"max_prompt_tokens must be >= 1, got {self.max_prompt_tokens}",
            ),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must lie in (0, 1], got {self.top_p}"),
            (self.actor_lr > 0, f"actor_lr must be > 0, got {self.actor_lr}"),
            (self.critic_lr > 0, f"critic_lr must be > 0, got {self.critic_lr}"),
            (0 <= self.adam_beta1 < 1, f"adam_beta1 must lie in [0, 1), got {self.adam_beta1}"),
            (0 <= self.adam_beta2 < 1, f"adam_beta2 must lie in [0, 1), got {self.adam_beta2}"),
            (self.adam_epsilon > 0, f"adam_epsilon must be > 0, got {self.adam_epsilon}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}"),
            (self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}"),
            (self.reward_clip > 0, f"reward_clip must be > 0, got {self.reward_clip}"),
            (0 <= self.gamma <= 1, f"gamma must lie in [0, 1], got {self.gamma}"),
            (0 <= self.lam <= 1, f"lam must lie in [0, 1], got {self.lam}"),
            (self.policy_clip > 0, f"policy_clip must be > 0, got {self.policy_clip}"),
            (self.value_clip > 0, f"value_clip must be > 0, got {self.value_clip}"),
            (
                self.ema_decay is None or 0 < self.ema_decay < 1,
                f"ema_decay must lie in (0, 1), got {self.ema_decay}",
            ),
            (
                self.checkpoint_every >= 0,
                f"checkpoint_every must be >= 0, got {self.checkpoint_every}",
            ),
            (
                self.max_prompts is None or self.max_prompts >= 1,
                f"max_prompts must be >= 1 or unset, got {self.max_prompts}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PpoConfig:
        """A run's saved `config.json` (fields it lacks, from older runs, take their defaults)."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        for key in ("actor_lora", "critic_lora"):
            if isinstance(kwargs.get(key), dict):
                kwargs[key] = LoraOptions(**kwargs[key])
        if kwargs.get("deepspeed"):
            kwargs["deepspeed"] = Path(kwargs["deepspeed"])
        return cls(**kwargs)

    def optimizer(self, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
        """AdamW over `params` with this config's settings (one per model: its own LR)."""
        return torch.optim.AdamW(
            params,
            lr=lr,
            betas=(self.adam_beta1, self.adam_beta2),
            eps=self.adam_epsilon,
            weight_decay=self.weight_decay,
            fused=True,  # the same update in one kernel per step
        )


def ppo_config(preset: Preset) -> PpoConfig:
    """PpoConfig with the preset's PPO budget (`models/presets.py`); the rest at its defaults."""
    b = preset.ppo
    return PpoConfig(
        steps=b.steps,
        batch_size=b.batch_size,
        mini_batch_size=b.mini_batch_size,
        max_new_tokens=b.max_new_tokens,
        max_prompt_tokens=preset.seq_len - b.max_new_tokens,
        actor_lr=b.actor_lr,
        critic_lr=b.critic_lr,
    )


@dataclass
class PpoMethodConfig:
    """The `ppo` method's night: one RM run, the RM gate, one PPO run."""

    rm: RmConfig = field(default_factory=RmConfig)  # the reward model's run
    ppo: PpoConfig = field(default_factory=PpoConfig)  # the policy's run
    warm_start: bool = True  # fine-tune the current RM on the export's pairs (else base + seed)
    rm_gate_margin: float = 0.02  # new RM accuracy >= current RM accuracy - margin
    rm_alias: str = "rm"  # promoted with the policy

    def __post_init__(self) -> None:
        if not 0 <= self.rm_gate_margin <= 1:
            raise ValueError(f"rm_gate_margin must lie in [0, 1], got {self.rm_gate_margin}")
        if not self.rm_alias.strip():
            raise ValueError("rm_alias must name an alias, got an empty string")


def night_config(preset: Preset) -> PpoMethodConfig:
    """The preset's RM budget (one pass over the export's pairs when warm-starting) and PPO."""
    rm = replace(rm_config(preset, preset.rm), max_steps=-1, epochs=1.0, max_records=None)
    return PpoMethodConfig(rm=rm, ppo=ppo_config(preset))


# ---- rollouts and the four models ------------------------------------------------------------------------
@dataclass(frozen=True)
class Rollout:
    """One scored rollout batch. B rollouts, P prompt tokens (left-padded), R response tokens."""

    sequences: torch.Tensor  # [B, P+R] prompt and response ids
    attention_mask: torch.Tensor  # [B, P+R] 1 on real tokens
    response_mask: torch.Tensor  # [B, R] 1 on response tokens up to and including EOS
    prompt_length: int  # P
    old_logprobs: torch.Tensor  # [B, R] log π_old(a_t | s_t) of the sampling actor
    ref_logprobs: torch.Tensor  # [B, R] log π_ref(a_t | s_t)
    old_values: torch.Tensor  # [B, R] critic V(s_t) at sampling time
    scores: torch.Tensor  # [B] reward-model score of the whole answer (unclipped)
    rewards: torch.Tensor  # [B, R] KL-penalised per-token rewards
    advantages: torch.Tensor  # [B, R] GAE advantages (whitened if configured)
    returns: torch.Tensor  # [B, R] value targets
    entropy: torch.Tensor  # [B, R] entropy of the actor at each response position

    def take(self, index: torch.Tensor) -> Rollout:
        """The rollouts at `index` (a mini-batch), without the columns that are padding in all
        of them: the common left padding of their prompts and the common tail after their
        answers. Positions come from the attention mask, so every result is unchanged."""
        rows = {
            f.name: getattr(self, f.name)[index]
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        first = int(rows["attention_mask"][:, : self.prompt_length].any(dim=0).long().argmax())
        used = rows["response_mask"].any(dim=0).nonzero()
        length = int(used.max()) + 1 if used.numel() else 1
        end = self.prompt_length + length
        trimmed = {}
        for name, value in rows.items():
            if name in _SEQUENCE_FIELDS:  # [B, P+R]
                value = value[:, first:end]
            elif value.dim() == 2:  # per-token [B, R]
                value = value[:, :length]
            trimmed[name] = value  # scores [B] as they are
        return Rollout(prompt_length=self.prompt_length - first, **trimmed)


_SEQUENCE_FIELDS = ("sequences", "attention_mask")  # [B, P+R]; every other 2-D field is [B, R]


class Trainable:
    """A trained model and its optimiser: plain PyTorch, or a DeepSpeed engine from a config."""

    def __init__(
        self, model: PreTrainedModel, lr: float, config: PpoConfig, ds_config: dict | None
    ) -> None:
        self.max_grad_norm = config.max_grad_norm
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = config.optimizer(params, lr)
        self.engine: Any = None
        if ds_config is not None:
            # lazy: DeepSpeed only with a DeepSpeed config
            import deepspeed

            ensure_distributed_env()
            self.engine, self.optimizer, _, _ = deepspeed.initialize(
                model=model, optimizer=optimizer, model_parameters=params, config=ds_config
            )
            self.module: PreTrainedModel = self.engine.module
        else:
            self.module, self.optimizer = model, optimizer

    def step(self, loss: torch.Tensor) -> None:
        if self.engine is not None:  # clipping and zeroing are in the engine's config
            self.engine.backward(loss)
            self.engine.step()
            return
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def save_state(self, path: Path) -> None:
        if self.engine is not None:
            self.engine.save_checkpoint(str(path), tag="latest")
        else:
            path.mkdir(parents=True, exist_ok=True)
            torch.save(
                {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict()},
                path / "state.pt",
            )

    def load_state(self, path: Path) -> None:
        if self.engine is not None:
            self.engine.load_checkpoint(str(path), tag="latest")
        else:
            state = torch.load(path / "state.pt", weights_only=True)
            self.module.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])


@dataclass
class RlhfModels:
    """The four models of step 3 (DeepSpeed-Chat's `DeepSpeedRLHFEngine`)."""

    actor: Trainable
    critic: Trainable
    reference: PreTrainedModel
    reward: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    ema: PreTrainedModel | None = None


def deepspeed_config(path: Path, config: PpoConfig) -> dict[str, Any]:
    """Read a DeepSpeed JSON and fill what PPO decides: batch sizes and gradient clipping."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    data.update(
        train_micro_batch_size_per_gpu=config.mini_batch_size,
        train_batch_size=config.mini_batch_size * int(os.environ.get("WORLD_SIZE", "1")),
        gradient_accumulation_steps=1,
        gradient_clipping=config.max_grad_norm,
        zero_allow_untested_optimizer=True,
    )
    data.pop("optimizer", None)  # kindchat passes its own AdamW (one per model, own LR)
    data.pop("scheduler", None)
    return data


def build_rlhf_models(
    sft_dir: Path, rm_dir: Path, config: PpoConfig, reference_dir: Path | None = None
) -> RlhfModels:
    """Actor from `sft_dir` (the SFT model, or the serving policy at night), reference from
    `reference_dir` (default: the same model; at night SFT, the KL anchor), critic and reward
    from the RM."""
    actor, tokenizer = load_causal_lm(sft_dir)
    reference, _ = load_causal_lm(reference_dir or sft_dir)
    critic, _ = load_reward_model(rm_dir)
    reward, _ = load_reward_model(rm_dir)
    for frozen in (reference, reward):
        frozen.requires_grad_(False)
    if config.actor_lora.enabled:
        # lazy: peft only when LoRA is on
        from peft import get_peft_model

        actor = get_peft_model(actor, config.actor_lora.peft_config("CAUSAL_LM"))
    if config.critic_lora.enabled:
        # lazy: peft only when LoRA is on
        from peft import get_peft_model

        critic = get_peft_model(critic, config.critic_lora.peft_config("SEQ_CLS"))
    actor.train()
    critic.train()
    ds = {
        name: deepspeed_config(config.deepspeed, config) if config.deepspeed else None
        for name in ("actor", "critic")
    }
    ema = copy.deepcopy(actor).requires_grad_(False) if config.ema_decay else None
    return RlhfModels(
        actor=Trainable(actor, config.actor_lr, config, ds["actor"]),
        critic=Trainable(critic, config.critic_lr, config, ds["critic"]),
        reference=reference,
        reward=reward,
        tokenizer=tokenizer,
        ema=ema,
    )


def _response_values(
    critic: PreTrainedModel,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
) -> torch.Tensor:
    """[B, R] V(s_t): the critic at the position that generated each response token."""
    return token_values(critic, sequences, attention_mask)[:, prompt_length - 1 : -1]


# ---- training ------------------------------------------------------------------------------
class PpoTrainer:
    """Runs PPO steps over a prompt list and logs each step to `run_dir/ppo_log.jsonl`."""

    def __init__(
        self, models: RlhfModels, prompts: list[str], config: PpoConfig, run_dir: Path
    ) -> None:
        if not prompts:
            raise ValueError("PPO needs at least one prompt")
        self.models = models
        self.config = config
        self.run_dir = run_dir
        self.step_index = 0
        order = list(prompts)
        random.Random(config.seed).shuffle(order)
        self.prompts = order
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(
            json.dumps(asdict(config), default=str, indent=2), encoding="utf-8"
        )

    # ---- rollouts ---------------------------------------------------------------------------
    def next_prompts(self) -> list[str]:
        start = (self.step_index * self.config.batch_size) % len(self.prompts)
        batch = [
            self.prompts[(start + i) % len(self.prompts)] for i in range(self.config.batch_size)
        ]
        fmt = prompt_format(self.models.tokenizer)
        return [fmt.single(p) for p in batch]

    @torch.no_grad()
    def make_rollout(self, prompts: list[str]) -> Rollout:
        m, c = self.models, self.config
        tok = m.tokenizer
        encoded = [
            tok(p, add_special_tokens=False)["input_ids"][-c.max_prompt_tokens :] for p in prompts
        ]
        prompt_ids, prompt_mask = left_pad(encoded, tok.pad_token_id)
        actor = m.actor.module
        actor.eval()
        # The sampling pass already computed the actor's logits at every response position:
        # log π_old and the entropy come from them, with no second forward pass of the actor.
        responses, logits = sample_with_logits(
            actor,
            prompt_ids,
            prompt_mask,
            c.max_new_tokens,
            tok.eos_token_id,
            tok.pad_token_id,
            c.temperature,
            c.top_p,
        )
        actor.train()
        mask = response_mask(responses, tok.eos_token_id)
        sequences = torch.cat([prompt_ids, responses], dim=1)
        attention = torch.cat([prompt_mask, mask], dim=1)
        mask = mask.float()
        p = prompt_ids.size(1)
        old_logprobs = logprobs_from_logits(logits, responses)
        entropy = entropy_from_logits(logits)
        del logits
        ref_logprobs = logprobs_from_logits(
            response_logits(m.reference, sequences, attention, p), responses
        )
        old_values = _response_values(m.critic.module, sequences, attention, p) * mask
        scores = score_sequences(m.reward, sequences, attention)
        rewards = kl_penalized_rewards(
            scores, old_logprobs, ref_logprobs, mask, c.kl_coef, c.reward_clip
        )
        advantages, returns = gae(rewards, old_values, mask, c.gamma, c.lam)
        if c.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return Rollout(
            sequences=sequences,
            attention_mask=attention,
            response_mask=mask,
            prompt_length=p,
            old_logprobs=old_logprobs,
            ref_logprobs=ref_logprobs,
            old_values=old_values,
            scores=scores,
            rewards=rewards,
            advantages=advantages,
            returns=returns,
            entropy=entropy,
        )

    # ---- optimisation -----------------------------------------------------------------------
    def minibatches(self, size: int) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + self.step_index)
        for _ in range(self.config.ppo_epochs):
            order = torch.randperm(size, generator=generator)
            for start in range(0, size, self.config.mini_batch_size):
                yield order[start : start + self.config.mini_batch_size]

    def train_minibatch(self, mb: Rollout) -> dict[str, float]:
        m, c = self.models, self.config
        responses = mb.sequences[:, mb.prompt_length :]
        logits = response_logits(m.actor.module, mb.sequences, mb.attention_mask, mb.prompt_length)
        logprobs = logprobs_from_logits(logits, responses)
        policy_loss, clip_fraction = clipped_policy_loss(
            logprobs, mb.old_logprobs, mb.advantages, mb.response_mask, c.policy_clip
        )
        self._check("policy loss", policy_loss)
        m.actor.step(policy_loss)
        values = _response_values(
            m.critic.module, mb.sequences, mb.attention_mask, mb.prompt_length
        )
        value_loss = clipped_value_loss(
            values, mb.old_values, mb.returns, mb.response_mask, c.value_clip
        )
        self._check("value loss", value_loss)
        m.critic.step(value_loss)
        return {
            "policy_loss": policy_loss.item(),
            "value_loss": value_loss.item(),
            "clip_fraction": clip_fraction.item(),
        }

    def _check(self, what: str, value: torch.Tensor) -> None:
        if not torch.isfinite(value).all():
            raise FloatingPointError(
                f"PPO {what} is not finite at step {self.step_index + 1}; stopping without "
                "saving (lower the learning rates or check the reward model)"
            )

    @torch.no_grad()
    def update_ema(self) -> None:
        ema, decay = self.models.ema, self.config.ema_decay
        if ema is None or decay is None:
            return
        for target, source in zip(
            ema.parameters(), self.models.actor.module.parameters(), strict=True
        ):
            target.lerp_(source.detach(), 1.0 - decay)

    def step(self) -> dict[str, float]:
        """One PPO iteration; returns its metrics (also appended to the JSONL log)."""
        started = time.perf_counter()
        rollout = self.make_rollout(self.next_prompts())
        self._check("reward", rollout.scores)
        losses: list[dict[str, float]] = [
            self.train_minibatch(rollout.take(index))
            for index in self.minibatches(rollout.scores.size(0))
        ]
        self.update_ema()
        self.step_index += 1
        mask = rollout.response_mask
        kl_per_sequence = ((rollout.old_logprobs - rollout.ref_logprobs) * mask).sum(dim=1)
        seconds = time.perf_counter() - started
        metrics = {
            "step": self.step_index,
            "reward_mean": rollout.scores.mean().item(),
            "reward_clipped_mean": rollout.scores.clamp(
                -self.config.reward_clip, self.config.reward_clip
            )
            .mean()
            .item(),
            "kl": kl_per_sequence.mean().item(),
            "policy_loss": sum(x["policy_loss"] for x in losses) / len(losses),
            "value_loss": sum(x["value_loss"] for x in losses) / len(losses),
            "clip_fraction": sum(x["clip_fraction"] for x in losses) / len(losses),
            "response_length": mask.sum(dim=1).mean().item(),
            "entropy": masked_mean(rollout.entropy, mask).item(),
            "value_mean": masked_mean(rollout.old_values, mask).item(),
            "return_mean": masked_mean(rollout.returns, mask).item(),
            "seconds": seconds,
            "samples_per_s": rollout.scores.size(0) / seconds,
        }
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"PPO metrics {bad} are not finite at step {self.step_index}")
        with (self.run_dir / LOG_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(metrics) + "\n")
        return metrics

    def train(self, progress: bool = True) -> list[dict[str, float]]:
        """Run the remaining steps, checkpointing every `checkpoint_every` steps."""
        history = []
        bar = tqdm(
            total=self.config.steps, initial=self.step_index, desc="ppo", disable=not progress
        )
        while self.step_index < self.config.steps:
            metrics = self.step()
            history.append(metrics)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics['kl']:.3f}")
            logger.debug("ppo step %d: %s", self.step_index, metrics)
            every = self.config.checkpoint_every
            if every and self.step_index % every == 0 and self.step_index < self.config.steps:
                self.save_checkpoint()
        bar.close()
        return history

    # ---- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write actor, critic, optimisers, EMA and RNG state; replace the previous one."""
        final = self.run_dir / CHECKPOINT
        tmp = self.run_dir / f".{CHECKPOINT}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.models.actor.save_state(tmp / "actor")
        self.models.critic.save_state(tmp / "critic")
        extra: dict[str, Any] = {"step": self.step_index, "torch_rng": torch.get_rng_state()}
        if self.models.ema is not None:
            extra["ema"] = self.models.ema.state_dict()
        torch.save(extra, tmp / "trainer.pt")
        old = self.run_dir / f".{CHECKPOINT}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        logger.info("ppo checkpoint at step %d in %s", self.step_index, final)
        return final

    def load_checkpoint(self) -> int:
        """Restore the latest checkpoint; drop log lines written after it. Returns its step."""
        path = self.run_dir / CHECKPOINT
        if not (path / "trainer.pt").is_file():
            raise FileNotFoundError(f"no PPO checkpoint in {self.run_dir} to resume from")
        self.models.actor.load_state(path / "actor")
        self.models.critic.load_state(path / "critic")
        extra = torch.load(path / "trainer.pt", weights_only=True)
        self.step_index = int(extra["step"])
        torch.set_rng_state(extra["torch_rng"])
        if self.models.ema is not None and "ema" in extra:
            self.models.ema.load_state_dict(extra["ema"])
        log = self.run_dir / LOG_FILE
        if log.is_file():
            kept = [
                line
                for line in log.read_text(encoding="utf-8").splitlines()
                if line and json.loads(line)["step"] <= self.step_index
            ]
            log.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        logger.info("resumed PPO from step %d", self.step_index)
        return self.step_index

    def final_actor(self) -> PreTrainedModel:
        """The model to register: the EMA if kept, else the actor; LoRA merged; eval mode."""
        model = self.models.ema if self.models.ema is not None else self.models.actor.module
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.eval()
        return model


def summarize(history: list[dict[str, float]], window: int = 5) -> dict[str, float]:
    """Reward and KL at the start and end of a run (means over `window` steps)."""
    if not history:
        return {}
    head, tail = history[:window], history[-window:]

    def mean(rows: list[dict[str, float]], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows)

    return {
        "reward_start": mean(head, "reward_mean"),
        "reward_end": mean(tail, "reward_mean"),
        "kl_end": mean(tail, "kl"),
        "kl_max": max(r["kl"] for r in history),
        "reward_mean": mean(tail, "reward_mean"),
        "kl": mean(tail, "kl"),
        "steps": history[-1]["step"],
        "samples_per_s": sum(r["samples_per_s"] for r in history) / len(history),
    }


# ---- the registered stage -------------------------------------------------------------------
def ppo_prompts(settings: Settings, config: PpoConfig, extra: list[str] | None = None) -> list[str]:
    """Seed step-3 prompts (+ live prompts), evaluation prompts left out, deduplicated."""
    prompts = [p.prompt for p in read_ppo_prompts(settings.data_dir)] + list(extra or [])
    keys = eval_prompt_keys(settings.data_dir) if config.exclude_eval_prompts else frozenset()
    seen: set[str] = set()
    out = []
    for prompt in prompts:
        key = normalize_prompt(prompt)
        if key and key not in keys and key not in seen:
            seen.add(key)
            out.append(prompt)
    if config.max_prompts is not None:
        out = out[: config.max_prompts]
    return out


def train_ppo(
    settings: Settings,
    registry: Registry,
    sft_ref: str,
    rm_ref: str,
    config: PpoConfig,
    resume: Path | None = None,
    extra_prompts: list[str] | None = None,
    run_dir: Path | None = None,
    reference_ref: str | None = None,
) -> Manifest:
    """PPO of the SFT model against the RM (DeepSpeed-Chat step 3); register a `policy`.

    With `resume`, the run in that directory continues from its last checkpoint with its own
    config (the `config` argument is then ignored). `run_dir` names a new run's directory.
    `reference_ref` is the KL anchor when the actor starts elsewhere than SFT (a night's PPO
    starts from the serving policy and stays anchored to SFT).
    """
    if resume is not None:
        saved = resume / "config.json"
        if not saved.is_file():
            raise FileNotFoundError(f"{resume} is not a PPO run directory (no config.json)")
        config = PpoConfig.from_json(json.loads(saved.read_text(encoding="utf-8")))
    torch.manual_seed(config.seed)
    sft_dir, rm_dir = registry.resolve(sft_ref), registry.resolve(rm_ref)
    prompts = ppo_prompts(settings, config, extra_prompts)
    logger.info("ppo: %d prompts, %d steps of %d", len(prompts), config.steps, config.batch_size)
    reference_dir = registry.resolve(reference_ref) if reference_ref else None
    models = build_rlhf_models(sft_dir, rm_dir, config, reference_dir)
    run_dir = resume or run_dir or new_run_dir(settings.runs_dir, "ppo")
    trainer = PpoTrainer(models, prompts, config, run_dir)
    if resume is not None:
        trainer.load_checkpoint()
    trainer.train()
    metrics = summarize(read_log(run_dir))
    metrics["run_dir"] = str(run_dir)
    return register_model(
        registry,
        "policy",
        trainer.final_actor(),
        models.tokenizer,
        parents=[registry.version_of(ref) for ref in (sft_ref, rm_ref, reference_ref) if ref],
        config={
            "stage": config_dict(config),
            "algorithm": "ppo",
            "sft": sft_ref,
            "rm": rm_ref,
            "reference": reference_ref or sft_ref,
        },
        metrics=metrics,
        data_fingerprint=fingerprint(prompts),
        extra_files=[run_dir / LOG_FILE],
    )


# ---- the nightly method ---------------------------------------------------------------------
def current_accuracy(job: MethodJob, max_length: int) -> float | None:
    """The serving RM's held-out accuracy: from its manifest, else measured now."""
    if job.rm is None:
        return None
    accuracy = job.registry.manifest(job.rm).metrics.get("accuracy")
    if isinstance(accuracy, int | float):
        return float(accuracy)
    results = eval_rm(job.settings, job.registry, job.rm, max_length)
    return float(accuracy_metrics(results)["accuracy"])


def train(job: MethodJob, config: PpoMethodConfig) -> MethodResult:
    """RM (warm start) → RM gate → PPO from the serving policy, anchored to SFT."""
    if job.data.pairs is None:
        raise RetrainError("ppo needs preference pairs for its reward model; the export has none")
    job.progress.enter("rm")
    warm = config.warm_start and job.rm is not None
    init = job.rm if warm else job.base
    if init is None:
        raise RetrainError("no reward model and no base LM to train one from")
    rm_run = replace(config.rm, extra_data=[job.data.pairs], seed_data=not warm)
    rm = train_rm(job.settings, job.registry, init, rm_run)
    job.progress.produced_version(rm.version)
    job.progress.record(
        "rm",
        {"version": rm.version, "init": init, "warm_start": warm}
        | {k: rm.metrics.get(k) for k in RM_KEEP},
    )

    job.progress.enter("rm_gate")
    before = current_accuracy(job, config.rm.max_length)
    gate = rm_gate(float(rm.metrics["accuracy"]), before, config.rm_gate_margin)
    job.progress.record("rm_gate", gate.as_dict())
    if not gate.passed:
        raise MethodRefusedError("; ".join(gate.reasons))

    job.progress.enter("ppo")
    policy = train_ppo(
        job.settings,
        job.registry,
        job.policy,
        rm.version,
        config.ppo,
        extra_prompts=job.data.prompts,
        run_dir=job.run_dir,
        reference_ref=job.sft,
    )
    metrics = {k: v for k, v in policy.metrics.items() if k in PPO_KEEP}
    metrics["rm"] = rm.version
    return MethodResult(
        policy.version,
        [rm.version, policy.version],
        metrics,
        promote={config.rm_alias: rm.version},
    )


METHOD = Method(
    name="ppo",
    summary="RM warm-started on the export's pairs, then PPO from the serving policy",
    config_type=PpoMethodConfig,
    default_config=night_config,
    train=train,
)
