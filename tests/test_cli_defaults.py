"""One source for every default: a CLI flag that sets a config field defaults to None ("not
given"), so the config dataclass decides, and what a command trains with is the config's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import typer
from typer.testing import CliRunner

from kindchat.cli import app
from kindchat.cli.common import given, negated
from kindchat.config import Settings
from kindchat.models.registry import Registry
from kindchat.retrain.reward import RmConfig

# Options with a value of their own: which model or preset a command acts on, how it prints,
# and switches that are the command's own (not a config field). Everything else is None.
NOT_CONFIG: dict[str, set[str]] = {
    "bootstrap": {"preset", "if_missing"},
    "judge": {"cache"},
    "simulate": {"users", "as_json"},
    "doctor": {"preset"},
    "train sft": {"base"},
    "train rm": {"init", "gold"},
    "train ppo": {"sft", "rm", "preset"},
    "train dpo": {"sft"},
    "train kto": {"init", "reference"},
    "eval rm": {"model", "as_json"},
    "eval policy": {"policy", "baseline", "gold_rm", "sft", "as_json"},
    "models list": {"as_json"},
    "models import": {"kind"},
    "models dummy": {"preset", "seed"},
    "models gc": {"keep", "min_age_hours", "dry_run"},  # run_gc's arguments, not a config
    "models promote": {"alias"},
    "models rollback": {"alias"},
    "feedback stats": {"as_json"},
    "retrain run": {"force", "child"},
    "retrain status": {"limit", "as_json"},
}


def commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from commands(sub, (*path, name))
    else:
        yield " ".join(path), command


def test_every_option_that_sets_a_config_field_defaults_to_not_given() -> None:
    found = dict(commands(typer.main.get_command(app)))
    assert {"train rm", "train kto", "eval policy", "feedback export", "simulate"} <= set(found)
    with_values = {
        (path, param.name): param.default
        for path, command in found.items()
        for param in command.params
        if param.default is not None
        and param.name != "help"
        and param.name not in NOT_CONFIG.get(path, set())
        and type(param).__name__ != "TyperArgument"
    }
    assert with_values == {}


def test_given_and_negated() -> None:
    assert given(a=None, b=0, c=False, d="") == {"b": 0, "c": False, "d": ""}
    assert (negated(None), negated(True), negated(False)) == (None, False, True)


def test_train_rm_trains_at_rm_configs_learning_rate(micro_copy: Settings) -> None:
    registry = Registry(micro_copy.models_dir)
    before = {m.version for m in registry.versions("rm")}
    result = CliRunner().invoke(
        app,
        [
            "--home",
            str(micro_copy.home),
            "--data-dir",
            str(micro_copy.data_dir),
            "train",
            "rm",
            "--max-steps",
            "1",
            "--max-records",
            "8",
            "--max-length",
            "64",
        ],
    )
    assert result.exit_code == 0, result.output
    [new] = [m for m in registry.versions("rm") if m.version not in before]
    stage = new.config["stage"]
    assert stage["learning_rate"] == RmConfig().learning_rate == 3e-4
    assert (stage["max_steps"], stage["max_length"], stage["batch_size"]) == (1, 64, 8)
