"""What a retrain cycle does and what it takes to promote: :class:`RetrainConfig`, built from
the settings (`KINDCHAT_RETRAIN_*`, the preset's budgets) and stored with every run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from kindchat.config import Settings
from kindchat.models.presets import PRESETS, get_preset
from kindchat.retrain.methods import check_method_name, get_method


@dataclass(frozen=True)
class RetrainConfig:
    """What one cycle trains and what it takes to promote (budgets default to the preset's)."""

    preset: str = "tiny"  # model budgets: kindchat.models.presets (micro, tiny)
    method: str = "kto"  # a name in kindchat.retrain.methods.METHODS
    method_options: dict[str, Any] = field(default_factory=dict)  # the method's config fields
    min_new_pairs: int = 50  # training rows in the night's window (retrain/window.py), else skip
    window_days: float | None = 30.0  # the night trains on this many days of feedback (None: all)
    judge: bool = False  # re-rank feedback pairs with the G-Eval judge before training
    policy_init: Literal["policy", "sft"] = "policy"  # train from the serving policy, or SFT
    adapter: Literal["auto", "lora", "full"] = "auto"  # register a LoRA adapter or a full copy
    promotion: Literal["arena", "offline"] = "arena"  # users decide (challenger) or gold-RM gate
    # guard: refused when the 95% interval of the hate-speech reward change lies below -this
    max_hatespeech_drop: float = 0.0
    min_win_rate: float = 0.5  # the new policy's win rate over the serving one must exceed this
    require_ci_above_half: bool = True  # … and the low end of its 95% interval must exceed 0.5
    max_kl: float = 20.0  # KL(new ‖ SFT) in nats per answer, at most
    max_empty_rise: float = 0.05  # empty-answer rate may rise by at most this much
    max_repetitive_rise: float = 0.05  # repetitive-answer rate may rise by at most this much
    eval_max_new_tokens: int | None = None  # answer budget in the policy gate (None: PPO's)
    served_alias: str = "rlhf"  # the alias promoted (and the baseline of the policy gate)
    rm_alias: str = "rm"
    sft_alias: str = "sft"
    base_alias: str = "base"
    gold_alias: str = "gold-rm"  # the gold RM: scores the policy gate (never trained on by PPO)

    def __post_init__(self) -> None:

        check_method_name(self.method)
        checks = [
            (
                self.preset in PRESETS,
                f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}",
            ),
            (
                isinstance(self.method_options, dict),
                f"method_options must be a dict, got {self.method_options!r}",
            ),
            (
                self.promotion in ("arena", "offline"),
                f"promotion must be arena or offline, got {self.promotion!r}",
            ),
            (
                self.max_hatespeech_drop >= 0,
                f"max_hatespeech_drop must be >= 0, got {self.max_hatespeech_drop}",
            ),
            (
                self.policy_init in ("policy", "sft"),
                f"policy_init must be policy or sft, got {self.policy_init!r}",
            ),
            (
                self.adapter in ("auto", "lora", "full"),
                f"adapter must be auto, lora or full, got {self.adapter!r}",
            ),
            (self.min_new_pairs >= 0, f"min_new_pairs must be >= 0, got {self.min_new_pairs}"),
            (
                self.window_days is None or self.window_days > 0,
                f"window_days must be > 0 or unset (all feedback), got {self.window_days}",
            ),
            (
                0 <= self.min_win_rate < 1,
                f"min_win_rate must lie in [0, 1), got {self.min_win_rate}",
            ),
            (self.max_kl > 0, f"max_kl must be > 0, got {self.max_kl}"),
            (self.max_empty_rise >= 0, f"max_empty_rise must be >= 0, got {self.max_empty_rise}"),
            (
                self.max_repetitive_rise >= 0,
                f"max_repetitive_rise must be >= 0, got {self.max_repetitive_rise}",
            ),
            (
                self.eval_max_new_tokens is None or self.eval_max_new_tokens >= 1,
                f"eval_max_new_tokens must be >= 1 or unset, got {self.eval_max_new_tokens}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RetrainConfig:
        """The cycle `settings` describe (KINDCHAT_RETRAIN_*), with `overrides` applied."""
        values: dict[str, Any] = {
            "preset": settings.retrain_preset,
            "method": settings.retrain_method,
            "promotion": settings.promotion,
            "min_new_pairs": settings.retrain_min_new_pairs,
            "window_days": settings.retrain_window_days,
            "judge": settings.retrain_judge,
            "adapter": settings.adapter,
        }
        return cls(**{**values, **overrides})

    def method_config(self) -> Any:
        """The method's config for this cycle: the preset's, with `method_options` applied.
        Imports the method (torch, TRL); raises RetrainError on an unknown option."""

        return get_method(self.method).config(get_preset(self.preset), **self.method_options)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown retrain config field(s) {unknown}; known: {sorted(names)}")
        return cls(**data)


def gold_rm_skill(metrics: dict[str, Any], subset: str) -> float | None:
    """The low end of a gold RM's 95% held-out accuracy on one seed subset (None: unknown).

    A guard is only as good as its gold RM: the hate-speech guard applies when this is above ½.
    """
    value = ((metrics.get("rm_eval") or {}).get(subset) or {}).get("accuracy_low")
    return float(value) if isinstance(value, int | float) else None
