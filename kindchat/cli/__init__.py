"""The `kindchat` command line: one Typer app assembled from one module per command group.

=============  ===============================================================
module         commands
=============  ===============================================================
`train`        `bootstrap`, `train sft|rm|ppo|dpo|kto`
`eval`         `eval rm|policy`
`models`       `models list|import|dummy|gc|promote|rollback`, `generate`
`feedback`     `feedback export|stats|migrate`, `judge`, `augment`
`retrain`      `retrain run|status`
`serve`        `serve`
`simulate`     `simulate`
`doctor`       `doctor`
=============  ===============================================================

Shared helpers (consoles, the error → exit code mapping) live in `common`, below every group.
Heavy libraries (torch, transformers, TRL) are imported inside the commands that need them, so
`kindchat --help` and light commands start in a moment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kindchat.cli import doctor, feedback, models, retrain, serve, simulate, train
from kindchat.cli import eval as eval_cli
from kindchat.config import Settings
from kindchat.logs import setup_logging

app = typer.Typer(
    help="kindchat: a friendly, harmless Korean chat assistant improved by RLHF.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option(help="State directory (KINDCHAT_HOME).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Seed data (KINDCHAT_DATA_DIR).")] = None,
) -> None:
    overrides = {k: v for k, v in {"home": home, "data_dir": data_dir}.items() if v is not None}
    settings = Settings(**overrides)
    settings.ensure_dirs()
    setup_logging(settings.logs_dir, settings.log_level)
    ctx.obj = settings


app.add_typer(train.app, name="train")
app.add_typer(eval_cli.app, name="eval")
app.add_typer(models.app, name="models")
app.add_typer(feedback.app, name="feedback")
app.add_typer(retrain.app, name="retrain")
app.command("bootstrap")(train.bootstrap)
app.command("generate")(models.generate)
app.command("judge")(feedback.judge_command)
app.command("augment")(feedback.augment_command)
app.command("serve")(serve.serve)
app.command("simulate")(simulate.simulate_command)
app.command("doctor")(doctor.doctor)
