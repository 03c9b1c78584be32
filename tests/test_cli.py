"""The command line on micro models: answers in Korean, clear errors, no stack traces."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from kindchat.cli import app
from kindchat.config import Settings
from kindchat.models.registry import Registry
from tests.helpers import heavy_imports

runner = CliRunner()
HANGUL = re.compile(r"[가-힣]")


def run(settings: Settings, *args: str):  # noqa: ANN201
    return runner.invoke(
        app, ["--home", str(settings.home), "--data-dir", str(settings.data_dir), *args]
    )


def test_generate_prints_korean(micro_settings: Settings) -> None:
    result = run(micro_settings, "generate", "안녕하세요", "--seed", "0", "--max-new-tokens", "24")
    assert result.exit_code == 0, result.output
    assert HANGUL.search(result.stdout)


def test_models_list_shows_versions_and_perplexity(micro_settings: Settings) -> None:
    result = run(micro_settings, "models", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    kinds = {row["kind"]: row for row in rows}
    assert {"base", "sft"} <= set(kinds)
    assert kinds["sft"]["aliases"] == ["sft"]
    assert kinds["sft"]["metrics"]["heldout_ppl"] < kinds["sft"]["metrics"]["heldout_ppl_before"]
    table = run(micro_settings, "models", "list")
    assert "heldout_ppl=" in table.stdout


def test_user_errors_exit_2_without_traceback(micro_settings: Settings) -> None:
    for args, message in [
        (["generate", "   "], "prompt is empty"),
        (["generate", "안녕", "--model", "nope"], "unknown model 'nope'"),
        (["generate", "안녕", "--top-p", "0"], "top_p must lie in"),
        (["bootstrap", "--preset", "huge"], "unknown preset 'huge'"),
    ]:
        result = run(micro_settings, *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output
        assert "Traceback" not in result.output


def test_bad_data_dir_is_a_clear_error(micro_copy: Settings, tmp_path: Path) -> None:
    """The models are there; only the data dir is empty: the error names the missing seed file
    under it, and nothing is trained or registered."""
    empty = tmp_path / "no-seed"
    empty.mkdir()
    before = [m.version for m in Registry(micro_copy.models_dir).versions("sft")]
    result = runner.invoke(
        app,
        [
            "--home",
            str(micro_copy.home),
            "--data-dir",
            str(empty),
            "train",
            "sft",
            "--max-steps",
            "1",
        ],
    )
    assert result.exit_code == 2, result.output
    [error] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert str(empty / "sft") in error and "file not found" in error, result.output
    assert "Traceback" not in result.output
    assert [m.version for m in Registry(micro_copy.models_dir).versions("sft")] == before


def test_the_command_line_starts_the_first_models_before_the_heavy_imports() -> None:
    """`kindchat serve` starts its first-models child after importing the command line and the
    background module: on a fresh install every module is compiled at its first import, so
    neither may pull the database's libraries (~2 s cold) nor torch in before the child starts."""
    heavy = {"sqlalchemy", "sqlmodel", "alembic", "torch", "transformers", "gradio"}
    assert heavy_imports("import kindchat.cli, kindchat.retrain.background", heavy) == []
