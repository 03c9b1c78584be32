"""`kindchat models import`: bring a local Hugging Face checkpoint into the registry.

The checkpoint is checked before anything is copied: its config must load, its architecture must
match the kind asked for (a causal LM for `sft`/`policy`/`base`, a one-label sequence classifier
for `rm`), and its weights and tokenizer must load. Then its files are copied into a new version
whose manifest records where it came from (the source path and the sha256 of every source file),
the architecture, the parameter count and whether it brought its own chat template. A checkpoint
without one gets the KULLM template written beside it (`chat_template.jinja`), so that it is
prompted the same way by kindchat, vLLM, SGLang and `transformers serve`.

Afterwards it is a version like any other: served, retrained, compared in the arena.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

from kindchat.errors import InvalidError
from kindchat.models.registry import MANIFEST, Manifest, ModelKind, Registry, sha256_file
from kindchat.models.template import KULLM_CHAT_TEMPLATE
from kindchat.models.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

CHAT_TEMPLATE_FILE = "chat_template.jinja"
IMPORT_KINDS: tuple[ModelKind, ...] = ("base", "sft", "policy", "rm")


class ImportRefusedError(InvalidError):
    """The directory cannot become a version of the asked kind (the message says why)."""


@dataclass(frozen=True)
class Checked:
    architecture: str
    model_type: str
    parameters: int
    own_chat_template: bool


def check_checkpoint(source: Path, kind: ModelKind) -> Checked:
    """Load `source` as a `kind` model; raise :class:`ImportRefusedError` with one reason if not."""

    if kind not in IMPORT_KINDS:
        raise ImportRefusedError(f"unknown kind {kind!r}; choose from {', '.join(IMPORT_KINDS)}")
    if not source.is_dir():
        raise ImportRefusedError(f"{source} is not a directory")
    if not (source / "config.json").is_file():
        raise ImportRefusedError(f"{source} has no config.json: not a Hugging Face checkpoint")
    try:
        config = AutoConfig.from_pretrained(str(source))
    except (OSError, ValueError, KeyError) as err:
        raise ImportRefusedError(
            f"{source}/config.json does not load: {_first_line(err)}"
        ) from None
    architecture = (getattr(config, "architectures", None) or ["?"])[0]
    model_type = str(getattr(config, "model_type", "?"))
    if kind == "rm":
        if not architecture.endswith("ForSequenceClassification"):
            raise ImportRefusedError(
                f"{source} is a {architecture}, not a reward model: an RM needs a "
                "sequence-classification head with one output (import it as sft, then train an "
                "RM with `kindchat retrain`)"
            )
        if getattr(config, "num_labels", 1) != 1:
            raise ImportRefusedError(
                f"{source} classifies into {config.num_labels} labels; a reward model has one"
            )
        if model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
            raise ImportRefusedError(f"transformers has no sequence classifier for {model_type}")
        auto = AutoModelForSequenceClassification
    else:
        if not architecture.endswith(("ForCausalLM", "LMHeadModel")):
            raise ImportRefusedError(
                f"{source} is a {architecture}, not a causal LM: a {kind} model generates text "
                "(import a reward model with --kind rm)"
            )
        if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ImportRefusedError(f"transformers has no causal LM for model type {model_type}")
        auto = AutoModelForCausalLM
    try:
        tokenizer = load_tokenizer(source)
    except Exception as err:  # noqa: BLE001 - any failure to load is the refusal's reason
        raise ImportRefusedError(
            f"the tokenizer in {source} does not load: {_first_line(err)}"
        ) from None
    if tokenizer.eos_token_id is None and kind != "rm":
        raise ImportRefusedError(
            f"the tokenizer in {source} has no EOS token: answers could not end"
        )
    try:
        model = auto.from_pretrained(str(source), dtype=torch.float32)
    except Exception as err:  # noqa: BLE001
        raise ImportRefusedError(
            f"the weights in {source} do not load: {_first_line(err)}"
        ) from None
    parameters = sum(p.numel() for p in model.parameters())
    template = getattr(tokenizer, "chat_template", None)
    return Checked(
        architecture, model_type, parameters, isinstance(template, str) and bool(template)
    )


def import_checkpoint(
    registry: Registry, source: Path, kind: ModelKind, alias: str | None = None
) -> Manifest:
    """Check `source`, copy it into a new `kind` version, and point `alias` at it if given."""
    source = source.expanduser().resolve()
    checked = check_checkpoint(source, kind)
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.name != MANIFEST)
    source_files = {str(p.relative_to(source)): sha256_file(p) for p in files}

    def write(path: Path) -> None:
        for file in files:
            target = path / file.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
        if not checked.own_chat_template:
            (path / CHAT_TEMPLATE_FILE).write_text(KULLM_CHAT_TEMPLATE, encoding="utf-8")

    manifest = registry.save(
        kind,
        write,
        config={
            "imported_from": str(source),
            "architecture": checked.architecture,
            "model_type": checked.model_type,
            "chat_template": "own" if checked.own_chat_template else "kullm (written on import)",
            "source_files": source_files,
        },
        metrics={"parameters": checked.parameters},
    )
    if alias:
        registry.set_alias(alias, manifest.version)
    logger.info(
        "imported %s (%s, %.1fM parameters) as %s",
        source,
        checked.architecture,
        checked.parameters / 1e6,
        manifest.version,
    )
    return manifest


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
