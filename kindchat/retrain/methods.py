"""Preference methods as plug-ins: the one place that knows which methods exist.

A method turns the night's exported feedback into a new policy version. Each lives in one
module with its config dataclass and a `METHOD` object whose `train(job, config)` takes the
current policy (`job.policy`) and the exported data (`job.data`) and returns the registered
version. The cycle and both CLIs look methods up here by name and know nothing else.

Adding a method = one new module defining `METHOD = Method(...)` + one line in `METHODS`.
(OpenRLHF picks its advantage estimator in one place the same way.)
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from kindchat.config import Settings
from kindchat.errors import InvalidError
from kindchat.models.presets import Preset
from kindchat.models.registry import Registry
from kindchat.retrain.errors import RetrainError
from kindchat.seed import fingerprint

logger = logging.getLogger(__name__)

# name -> "module:attribute" of its Method (imported on first use: torch/TRL are heavy).
METHODS: dict[str, str] = {
    "ppo": "kindchat.retrain.ppo:METHOD",  # warm-started RM, then PPO (DeepSpeed-Chat step 3)
    "dpo": "kindchat.retrain.dpo:METHOD",  # TRL DPOTrainer on the export's pairs
    "kto": "kindchat.retrain.kto:METHOD",  # TRL KTOTrainer on pairs and single 👍/👎 alike
}


class UnknownMethodError(RetrainError, InvalidError):
    """A method name that is not registered; the message lists the choices."""


class MethodRefusedError(RetrainError):
    """A method's own check said no (e.g. PPO's RM gate): the run ends `refused`, not failed."""


class Progress(Protocol):
    """Where a method reports its stages (the cycle's run recorder; a no-op elsewhere)."""

    def enter(self, stage: str) -> None: ...

    def record(self, stage: str, values: dict[str, Any]) -> None: ...

    def produced_version(self, version: str) -> None: ...


class QuietProgress:
    """Progress that goes nowhere: `kindchat train …` and the benches."""

    def enter(self, stage: str) -> None:
        pass

    def record(self, stage: str, values: dict[str, Any]) -> None:
        pass

    def produced_version(self, version: str) -> None:
        pass


@dataclass(frozen=True)
class PreferenceData:
    """What a feedback export gave a method (files as `kindchat feedback export` writes them)."""

    pairs: Path | None = None  # train.json: prompt/chosen/rejected (+ context)
    unpaired: Path | None = None  # unpaired.json: prompt/completion/label (KTO)
    demonstrations: Path | None = None  # sft.json: users' better answers
    prompts: list[str] = field(default_factory=list)  # live prompts (PPO rollouts)

    @classmethod
    def from_export(cls, out_dir: Path) -> PreferenceData:
        def present(name: str) -> Path | None:
            path = out_dir / name
            return path if path.is_file() else None

        prompts: list[str] = []
        for name in ("train.json", "unpaired.json"):
            path = present(name)
            if path is not None:
                prompts.extend(row["prompt"] for row in json.loads(path.read_text("utf-8")))
        return cls(
            pairs=present("train.json"),
            unpaired=present("unpaired.json"),
            demonstrations=present("sft.json"),
            prompts=list(dict.fromkeys(prompts)),
        )


@dataclass(frozen=True)
class MethodJob:
    """Everything a method gets: where it starts, what it is anchored to, and the data."""

    settings: Settings
    registry: Registry
    policy: str  # version the new policy starts from: the serving one
    sft: str  # the anchor: DPO/KTO's reference and PPO's KL target
    rm: str | None
    base: str | None
    data: PreferenceData
    run_dir: Path
    progress: Progress = field(default_factory=QuietProgress)
    adapter: bool = False  # train a LoRA adapter over the policy's base, saved unmerged


@dataclass(frozen=True)
class MethodResult:
    """The registered policy, every version produced on the way, and the figures to record."""

    policy: str
    produced: list[str]
    metrics: dict[str, Any]
    promote: dict[str, str] = field(default_factory=dict)  # other aliases to move with it


@dataclass(frozen=True)
class Method:
    """A preference method: its name, config type, how a preset sizes it, and its `train`."""

    name: str
    summary: str
    config_type: type
    default_config: Callable[[Preset], Any]  # the preset's budget for one night
    train: Callable[[MethodJob, Any], MethodResult]
    uses_unpaired: bool = False  # learns from single 👍/👎 (not only pairs)

    def config(self, preset: Preset, **overrides: Any) -> Any:
        """The preset's config with `overrides` applied; `a.b` sets field `b` of the nested
        config `a` (e.g. `ppo.steps` of the ppo method). None values are ignored; unknown
        names are refused with the known ones."""
        return with_options(self.default_config(preset), overrides, self.name)


def with_options(config: Any, options: dict[str, Any], method: str) -> Any:
    """`config` (a dataclass) with `options` applied, dotted names reaching nested configs."""
    direct: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for name, value in options.items():
        if value is None:
            continue
        head, dot, rest = name.partition(".")
        if dot:
            nested.setdefault(head, {})[rest] = value
        else:
            direct[name] = value
    known = {f.name for f in fields(config)} if is_dataclass(config) else set()
    unknown = sorted(set(direct) - known) + sorted(
        f"{h}.*" for h in nested if h not in known or not is_dataclass(getattr(config, h))
    )
    if unknown:
        raise RetrainError(f"method {method!r} has no setting(s) {unknown}; known: {sorted(known)}")
    for head, sub in nested.items():
        direct[head] = with_options(getattr(config, head), sub, f"{method}.{head}")
    return replace(config, **direct) if direct else config


def load_policy_and_anchor(job: MethodJob, config: Any) -> tuple[Any, Any, Any, str | None]:
    """(trainable policy from `job.policy`, frozen reference, tokenizer, adapter base).

    Full weights: the reference is `job.sft`, loaded beside the policy. With `job.adapter`: a
    LoRA policy over the policy's base (:func:`~kindchat.retrain.common.load_adapter_policy`),
    whose reference is that base with the adapter off (None here: TRL's way, one model)."""
    # lazy: the registry stays torch-free
    from kindchat.models.loading import load_causal_lm
    from kindchat.retrain.common import load_adapter_policy

    if job.adapter:
        model, tokenizer, base = load_adapter_policy(job.registry, job.policy, config.lora)
        return model, None, tokenizer, base
    model, tokenizer = load_causal_lm(job.registry.resolve(job.policy))
    reference, _ = load_causal_lm(job.registry.resolve(job.sft))
    model.train()
    return model, reference, tokenizer, None


def register_policy(
    job: MethodJob,
    model: Any,
    tokenizer: Any,
    *,
    algorithm: str,
    config: Any,
    metrics: dict[str, Any],
    data_fingerprint: str,
    base: str | None = None,
) -> MethodResult:
    """Register a policy trained from `job.policy` against `job.sft` (with `base`: a LoRA
    adapter over that version, anchored to it); the method's result."""
    from kindchat.retrain.common import config_dict, register_model  # lazy: see above

    manifest = register_model(
        job.registry,
        "policy",
        model,
        tokenizer,
        parents=[job.policy, job.sft],
        config={
            "stage": config_dict(config),
            "algorithm": algorithm,
            "init": job.policy,
            "reference": base or job.sft,
            "format": "lora" if base else "full",
        },
        metrics=metrics,
        data_fingerprint=data_fingerprint,
        base=base,
    )
    return MethodResult(manifest.version, [manifest.version], metrics)


Row = TypeVar("Row")
Fit = Callable[[Any, Any, Any, Sequence[Row], Any, Path], tuple[Any, dict[str, Any]]]


def train_anchored(
    job: MethodJob,
    config: Any,
    rows: Sequence[Row],
    fit: Fit[Row],
    *,
    algorithm: str,
    what: str,
    minimum: int = 1,
) -> MethodResult:
    """The path every reference-anchored method shares (DPO, KTO): keep the first
    `config.max_records` rows, refuse fewer than `minimum`, load the policy (`job.policy`) and
    its frozen reference (`job.sft`), `fit(model, reference, tokenizer, rows, config, run_dir)`,
    register the trained policy with the rows' fingerprint."""
    if config.max_records is not None:
        rows = rows[: config.max_records]
    if len(rows) < minimum:
        raise RetrainError(f"{algorithm} needs at least {minimum} {what}, the data has {len(rows)}")
    job.progress.enter(algorithm)
    logger.info(
        "%s: %d %s, from %s anchored to %s", algorithm, len(rows), what, job.policy, job.sft
    )
    model, reference, tokenizer, base = load_policy_and_anchor(job, config)
    model, metrics = fit(model, reference, tokenizer, rows, config, job.run_dir)
    return register_policy(
        job,
        model,
        tokenizer,
        algorithm=algorithm,
        config=config,
        metrics=metrics,
        data_fingerprint=fingerprint(rows),
        base=base,
    )


def method_names() -> list[str]:
    return sorted(METHODS)


def get_method(name: str) -> Method:
    """The registered method called `name`, or :class:`UnknownMethodError` naming the choices."""
    target = METHODS.get(name)
    if target is None:
        raise UnknownMethodError(
            f"unknown preference method {name!r}; choose from {', '.join(method_names())}"
        )
    module_name, _, attribute = target.partition(":")
    method = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(method, Method) or method.name != name:
        raise RetrainError(f"{target} is not the Method {name!r}")
    return method


def check_method_name(name: str) -> str:
    """`name` if it is registered (no import), else :class:`UnknownMethodError`."""
    if name not in METHODS:
        raise UnknownMethodError(
            f"unknown preference method {name!r}; choose from {', '.join(method_names())}"
        )
    return name
