"""`kindchat models import`: a foreign Llama-family checkpoint becomes a registered version;
directories that cannot be one are refused with one line, and nothing is registered."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kindchat.cli import app
from kindchat.config import Settings
from kindchat.models.dummy import SOLAR_CHAT_TEMPLATE, write_dummy_checkpoint
from kindchat.models.importer import CHAT_TEMPLATE_FILE, ImportRefusedError, import_checkpoint
from kindchat.models.presets import get_preset
from kindchat.models.registry import Registry, sha256_file
from kindchat.models.template import KULLM_CHAT_TEMPLATE, prompt_format
from kindchat.models.tokenizer import load_tokenizer
from kindchat.seed import corpus_texts


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A random-weight micro Llama as a release ships it: own SentencePiece BPE tokenizer, own
    (SOLAR / KULLM3) chat template, no pad token."""
    out = tmp_path_factory.mktemp("release") / "micro-llama"
    return write_dummy_checkpoint(out, get_preset("micro-llama"), corpus_texts(data_dir)[:500])


def test_import_registers_a_checked_copy(llama_dir: Path, settings: Settings) -> None:
    registry = Registry(settings.models_dir)
    manifest = import_checkpoint(registry, llama_dir, "sft", alias="sft")
    assert registry.aliases()["sft"] == manifest.version
    config = manifest.config
    assert config["imported_from"] == str(llama_dir.resolve())
    assert config["architecture"] == "LlamaForCausalLM" and config["chat_template"] == "own"
    assert manifest.metrics["parameters"] > 100_000
    sources = config["source_files"]
    assert sources["model.safetensors"] == sha256_file(llama_dir / "model.safetensors")
    assert manifest.files["model.safetensors"] == sources["model.safetensors"]
    copy = registry.verify(manifest.version)
    assert load_tokenizer(copy).chat_template == SOLAR_CHAT_TEMPLATE
    assert prompt_format(load_tokenizer(copy)).name == "chat_template"


def test_a_checkpoint_without_a_template_gets_kullm(
    llama_dir: Path, settings: Settings, tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(llama_dir, bare)
    (bare / CHAT_TEMPLATE_FILE).unlink(missing_ok=True)
    tok_config = json.loads((bare / "tokenizer_config.json").read_text())
    tok_config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(tok_config))
    assert load_tokenizer(bare).chat_template is None
    registry = Registry(settings.models_dir)
    manifest = import_checkpoint(registry, bare, "policy")
    assert manifest.config["chat_template"] == "kullm (written on import)"
    tokenizer = load_tokenizer(registry.path(manifest.version))
    assert tokenizer.chat_template == KULLM_CHAT_TEMPLATE


def _broken_weights(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    weights = dst / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return dst


def _seq_cls_with_labels(src: Path, dst: Path, labels: int) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["architectures"] = ["LlamaForSequenceClassification"]
    config["id2label"] = {str(i): f"L{i}" for i in range(labels)}
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize(
    ("case", "kind", "reason"),
    [
        ("missing", "sft", "is not a directory"),
        ("no-config", "sft", "has no config.json"),
        ("causal-as-rm", "rm", "not a reward model"),
        ("classifier-as-sft", "sft", "not a causal LM"),
        ("three-labels-rm", "rm", "3 labels"),
        ("broken-weights", "sft", "weights in"),
        ("bad-kind", "judge", "unknown kind"),
    ],
)
def test_refusals_register_nothing(
    case: str, kind: str, reason: str, llama_dir: Path, settings: Settings, tmp_path: Path
) -> None:
    source = {
        "missing": lambda: tmp_path / "nowhere",
        "no-config": lambda: (
            Path(shutil.copytree(llama_dir, tmp_path / "c")).joinpath("config.json").unlink()
            or tmp_path / "c"
        ),
        "causal-as-rm": lambda: llama_dir,
        "classifier-as-sft": lambda: _seq_cls_with_labels(llama_dir, tmp_path / "cls", 1),
        "three-labels-rm": lambda: _seq_cls_with_labels(llama_dir, tmp_path / "cls3", 3),
        "broken-weights": lambda: _broken_weights(llama_dir, tmp_path / "broken"),
        "bad-kind": lambda: llama_dir,
    }[case]()
    registry = Registry(settings.models_dir)
    with pytest.raises(ImportRefusedError, match=reason):
        import_checkpoint(registry, source, kind)  # type: ignore[arg-type]
    assert registry.versions() == [] and registry.aliases() == {}


def test_cli_imports_and_refuses_in_one_line(llama_dir: Path, settings: Settings) -> None:
    runner = CliRunner()
    home = ["--home", str(settings.home), "--data-dir", str(settings.data_dir)]
    ok = runner.invoke(app, [*home, "models", "import", str(llama_dir), "--alias", "sft"])
    assert ok.exit_code == 0, ok.output
    assert "LlamaForCausalLM" in ok.output and "alias sft" in ok.output
    refused = runner.invoke(app, [*home, "models", "import", str(llama_dir), "--kind", "rm"])
    assert refused.exit_code == 2
    assert "not a reward model" in refused.output and "Traceback" not in refused.output
    assert len(Registry(settings.models_dir).versions()) == 1


def test_a_sentencepiece_only_checkpoint_imports_and_answers(
    settings: Settings, tmp_path: Path
) -> None:
    """A Llama checkpoint that ships only a SentencePiece `tokenizer.model` (no tokenizer.json,
    no pad token, no chat template) loads, imports, and answers in the KULLM format."""
    import io

    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from kindchat.models.generation import SamplingParams, generate_batch
    from kindchat.models.loading import load_causal_lm

    source = tmp_path / "spm-llama"
    source.mkdir()
    model_file = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_texts(settings.data_dir)[:1500]),
        model_writer=model_file,
        vocab_size=1500,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=0.995,
        minloglevel=2,
    )
    (source / "tokenizer.model").write_bytes(model_file.getvalue())
    (source / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>"})
    )
    tokenizer = load_tokenizer(source)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2
    assert (
        tokenizer.decode(tokenizer("반가워요", add_special_tokens=False)["input_ids"]) == "반가워요"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(source)
    registry = Registry(settings.models_dir)
    manifest = import_checkpoint(registry, source, "sft")
    assert manifest.config["chat_template"] == "kullm (written on import)"
    model, loaded = load_causal_lm(registry.path(manifest.version))
    prompt = prompt_format(loaded).single("안녕")
    assert prompt.endswith("### 응답:\n")
    [answer] = generate_batch(model, loaded, [prompt], SamplingParams(max_new_tokens=4))
    assert 1 <= len(answer.response_ids) <= 4
