"""`kindchat eval rm|policy`: reward-model accuracy and policy win rates."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer
from rich.table import Table

from kindchat.cli.common import console, friendly, given, registry_of
from kindchat.config import Settings

logger = logging.getLogger(__name__)

app = typer.Typer(help="Evaluate reward models and policies.", no_args_is_help=True)


@app.command("rm")
@friendly
def eval_rm_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="Reward model: alias, version or directory.")] = "rm",
    max_length: Annotated[
        int | None, typer.Option(help="Tokens the RM reads (default: RmConfig's).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Pairwise accuracy on the seed's held-out rm/*_test.json, per set, beside the seed's RM."""
    from kindchat.retrain.reward import RmConfig
    from kindchat.retrain.rm_eval import SEED_RM_ACCURACY
    from kindchat.retrain.stages import eval_rm

    settings: Settings = ctx.obj
    length = RmConfig().max_length if max_length is None else max_length
    results = eval_rm(settings, registry_of(settings), model, length)
    if as_json:
        console.print_json(json.dumps({r.name: r.as_dict() for r in results}))
        return
    table = Table(title=f"reward model {model}: pairwise accuracy on rm/*_test.json")
    for column in ("set", "n", "accuracy", "95% interval", "seed RM-1.3b", "chosen", "rejected"):
        table.add_column(column)
    for r in results:
        seed_acc = SEED_RM_ACCURACY.get(r.name)
        table.add_row(
            r.name,
            str(r.accuracy.n),
            f"{r.accuracy.value:.3f}",
            f"[{r.accuracy.low:.2f}, {r.accuracy.high:.2f}]",
            f"{seed_acc:.3f}" if seed_acc is not None else "",
            f"{r.chosen_mean:.3f}",
            f"{r.rejected_mean:.3f}",
        )
    console.print(table)


@app.command("policy")
@friendly
def eval_policy_command(
    ctx: typer.Context,
    policy: Annotated[str, typer.Option(help="Policy A.")] = "rlhf",
    baseline: Annotated[str, typer.Option(help="Policy B.")] = "sft",
    gold_rm: Annotated[str, typer.Option(help="Gold RM that PPO did not optimise.")] = "gold-rm",
    sft: Annotated[str, typer.Option(help="Reference for the KL estimate.")] = "sft",
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Win rate of A over B on the unseen rm/*_test.json prompts, judged by the gold RM
    (sampling defaults: PolicyEvalConfig)."""
    from kindchat.retrain.policy_eval import PolicyEvalConfig
    from kindchat.retrain.stages import eval_policy

    settings: Settings = ctx.obj
    config = PolicyEvalConfig(
        **given(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    )
    results = eval_policy(settings, registry_of(settings), policy, baseline, gold_rm, config, sft)
    if as_json:
        console.print_json(json.dumps({r.name: r.as_dict() for r in results}))
        return
    table = Table(title=f"{policy} vs {baseline}, judged by {gold_rm}")
    for column in (
        "set",
        "n",
        "win rate",
        "95% interval",
        "reward A",
        "reward B",
        "KL(A||SFT)",
        "empty A/B",
        "repetitive A/B",
    ):
        table.add_column(column)
    for r in results:
        table.add_row(
            r.name,
            str(r.win_rate.n),
            f"{r.win_rate.value:.3f}",
            f"[{r.win_rate.low:.2f}, {r.win_rate.high:.2f}]",
            f"{r.reward_a:.3f}",
            f"{r.reward_b:.3f}",
            f"{r.kl_a_sft:.2f}",
            f"{r.empty_a:.2f}/{r.empty_b:.2f}",
            f"{r.repetitive_a:.2f}/{r.repetitive_b:.2f}",
        )
    console.print(table)
