"""How much one night of votes teaches each preference method: the table behind the default.

One simulated night (kindchat.nights): the users (a plug-in, kindchat.users) chat with the
serving policy and vote in its arena — about `--votes` votes and thumbs, every answer sampled
on-policy (the server's sampler and default sampling, a request seed per answer) and stored as
the server stores it. The feedback is exported once
(`kindchat feedback export` without seed pairs) and every method trains from that same export,
from the serving policy, anchored to SFT, with its nightly defaults (the preset's budget).

Each new policy and the serving one then answer the 100 unseen test prompts (`rm/*_test.json`,
never in any training set), `--samples` answers each; the users' `score` (used here only, never
in training) gives the mean per prompt. Printed per method: the score, the paired gain over the
serving policy with its 95% bootstrap interval over prompts, KL(new ‖ SFT) in nats per answer,
and the wall time of training on this machine.

    python bench/learn_per_vote.py --home var --users polite          # the tiny bootstrap
    python bench/learn_per_vote.py --home var --users concise --json bench/results/concise.json
    python bench/learn_per_vote.py --home var --users my_users.py:factory

Run it on a quiet machine (one heavy job at a time): it trains three models.

`--second-night` measures the nightly training window (`kindchat/retrain/window.py`): the
first method's policy is promoted, the same users spend a second night with it, and each
method then trains from it twice — on the nightly window (`retrain_window_days`: both nights)
and on the feedback given since the promotion only (the promoted policy's own answers, the
alternative the window was chosen against). Both are scored against the promoted policy on
the unseen prompts, with the paired difference (window − since promotion) and its interval.

    python bench/learn_per_vote.py --home var --users concise --methods kto --second-night
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path("var"), help="KINDCHAT_HOME with models")
    parser.add_argument("--users", default="polite", help="built-in name or file.py:factory")
    parser.add_argument("--votes", type=int, default=500, help="votes + thumbs in the night")
    parser.add_argument("--methods", default="kto,dpo,ppo", help="comma-separated method names")
    parser.add_argument("--preset", default="tiny", help="budgets of the methods (micro, tiny)")
    parser.add_argument("--samples", type=int, default=2, help="answers per test prompt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--option", action="append", default=[], help="METHOD.NAME=VALUE")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument(
        "--second-night",
        action="store_true",
        help="promote the first method's policy, spend a second night on it, and compare "
        "training on the nightly window with training on the feedback since the promotion",
    )
    args = parser.parse_args(argv)

    from kindchat.config import Settings
    from kindchat.feedback.db import init_db, session_scope
    from kindchat.feedback.export import ExportConfig, export_reward_data
    from kindchat.logs import setup_logging
    from kindchat.models.presets import get_preset
    from kindchat.models.registry import Registry
    from kindchat.nights import NightConfig, simulate_night
    from kindchat.retrain.methods import (
        MethodJob,
        MethodRefusedError,
        PreferenceData,
        get_method,
    )
    from kindchat.retrain.policy_eval import PolicyEvalConfig
    from kindchat.retrain.user_eval import paired_gain, score_policy
    from kindchat.retrain.window import training_window
    from kindchat.seed import eval_prompt_keys, normalize_prompt, read_ppo_prompts, read_rm
    from kindchat.users import load_users

    console = Console()
    scratch = Path(tempfile.mkdtemp(prefix="learn-per-vote-"))
    settings = Settings(home=args.home, db_url=f"sqlite:///{scratch / 'night.db'}")
    setup_logging(settings.logs_dir)
    registry = Registry(settings.models_dir)
    aliases = registry.aliases()
    served = aliases.get("rlhf") or aliases["sft"]
    sft = aliases["sft"]
    preset = get_preset(args.preset)
    methods = [get_method(name.strip()) for name in args.methods.split(",") if name.strip()]
    options: dict[str, dict[str, object]] = {}
    for item in args.option:
        name, _, value = item.partition("=")
        method, _, field = name.partition(".")
        try:
            options.setdefault(method, {})[field] = json.loads(value)
        except json.JSONDecodeError:
            options.setdefault(method, {})[field] = value
    gold = aliases.get("gold-rm")
    kwargs = {"judge_dir": registry.resolve(gold)} if args.users == "gold-rm" and gold else {}
    users = load_users(args.users, **kwargs)

    keys = eval_prompt_keys(settings.data_dir)
    pool = [p.prompt for p in read_ppo_prompts(settings.data_dir)]
    pool = [p for p in pool if normalize_prompt(p) not in keys]
    test_prompts = [p.prompt for p in read_rm(settings.data_dir, "test")]

    console.print(f"night: {args.votes} votes/thumbs by '{args.users}' users on {served}")
    engine = init_db(settings)
    start = time.perf_counter()
    counts = simulate_night(
        engine,
        registry.resolve(served),
        served,
        users,
        pool,
        NightConfig(votes=args.votes, seed=args.seed, max_new_tokens=preset.ppo.max_new_tokens),
    )
    night_s = time.perf_counter() - start

    def export(name: str, since: object) -> tuple[Any, Any]:
        """The night's training data as the nightly cycle exports it, from `since` on."""
        with session_scope(engine) as session:
            report = export_reward_data(
                session=session,
                data_dir=settings.data_dir,
                out_dir=scratch / name,
                config=ExportConfig(include_seed=False),
                since=since,  # type: ignore[arg-type]
            )
        return report, PreferenceData.from_export(scratch / name)

    window = training_window(settings.retrain_window_days)
    report, data = export("export", window.since)
    console.print(f"feedback {dict(counts)} in {night_s:.0f} s; training rows {report.signals}")

    eval_config = PolicyEvalConfig(max_new_tokens=preset.ppo.max_new_tokens, seed=args.seed)

    def score(policy_dir: Path) -> Any:
        """The users' scores of a policy's answers to the unseen prompts."""
        return score_policy(
            policy_dir,
            test_prompts,
            users.score,
            sft_dir=registry.resolve(sft),
            samples=args.samples,
            config=eval_config,
        )

    before = score(registry.resolve(served))
    rows = [
        {
            "method": "(serving)",
            "version": served,
            "score": before.mean.as_dict(),
            "gain": None,
            "kl_sft": before.kl_sft,
            "train_s": 0.0,
        }
    ]

    def train_and_score(
        method: Any, policy: str, baseline: Any, data: Any, label: str
    ) -> tuple[dict[str, Any], Any]:
        config = method.config(preset, **options.get(method.name, {}))
        job = MethodJob(
            settings=settings,
            registry=registry,
            policy=policy,
            sft=sft,
            rm=aliases.get("rm"),
            base=aliases.get("base"),
            data=data,
            run_dir=scratch / label,
        )
        console.print(f"training {label} …")
        start = time.perf_counter()
        try:
            result = method.train(job, config)
        except MethodRefusedError as refusal:  # e.g. PPO's RM gate: reported, not hidden
            console.print(f"{label}: refused: {refusal}")
            return {"method": label, "refused": str(refusal)}, None
        train_s = time.perf_counter() - start
        after = score(registry.path(result.policy))
        gain = paired_gain(after, baseline)
        console.print(f"{label}: gain {gain}, KL {after.kl_sft:.2f}, {train_s:.0f} s")
        row = {
            "method": label,
            "version": result.policy,
            "score": after.mean.as_dict(),
            "gain": gain.as_dict(),
            "kl_sft": after.kl_sft,
            "train_s": round(train_s, 1),
        }
        return row, after

    first: str | None = None
    for method in methods:
        row, scores = train_and_score(method, served, before, data, method.name)
        rows.append(row)
        if first is None and scores is not None:
            first = str(row["version"])

    second: dict[str, Any] = {}
    if args.second_night and first is not None:
        registry.set_alias("rlhf", first)  # the promotion: a new window opens now
        console.print(f"second night: '{args.users}' users on the promoted {first}")
        counts2 = simulate_night(
            engine,
            registry.resolve(first),
            first,
            users,
            pool,
            NightConfig(
                votes=args.votes, seed=args.seed + 1, max_new_tokens=preset.ppo.max_new_tokens
            ),
        )
        promoted = score(registry.path(first))
        rows.append(
            {
                "method": "(promoted)",
                "version": first,
                "score": promoted.mean.as_dict(),
                "gain": paired_gain(promoted, before).as_dict(),
                "kl_sft": promoted.kl_sft,
                "train_s": 0.0,
            }
        )
        window = training_window(settings.retrain_window_days)
        promoted_at = registry.alias_set_at("rlhf")
        report_w, data_w = export("export-window", window.since)
        report_p, data_p = export("export-since-promotion", promoted_at)
        second = {
            "feedback": dict(counts2),
            "window": window.as_dict(),
            "window_rows": report_w.signals,
            "since_promotion_rows": report_p.signals,
            "window_minus_since_promotion": {},
        }
        console.print(f"window rows {report_w.signals}; since promotion {report_p.signals}")
        for method in methods:
            row_w, scores_w = train_and_score(
                method, first, promoted, data_w, f"{method.name} · window"
            )
            row_p, scores_p = train_and_score(
                method, first, promoted, data_p, f"{method.name} · since promotion"
            )
            rows.extend([row_w, row_p])
            if scores_w is not None and scores_p is not None:
                diff = paired_gain(scores_w, scores_p)
                second["window_minus_since_promotion"][method.name] = diff.as_dict()
                console.print(f"{method.name}: window − since promotion {diff}")

    table = Table(
        title=f"one night of {args.votes} votes by '{args.users}' users, "
        f"{len(test_prompts)} unseen prompts × {args.samples} answers"
    )
    for column in (
        "method",
        "users' score",
        "gain over its start [95% CI]",
        "KL to SFT",
        "train s",
    ):
        table.add_column(column)
    for row in rows:
        if "refused" in row:
            table.add_row(str(row["method"]), "refused", str(row["refused"]), "", "")
            continue
        score = row["score"]
        gain = row["gain"]
        table.add_row(
            str(row["method"]),
            f"{score['value']:.3f} [{score['low']:.3f}, {score['high']:.3f}]",
            ""
            if gain is None
            else f"{gain['value']:+.3f} [{gain['low']:+.3f}, {gain['high']:+.3f}]",
            "" if row["kl_sft"] is None else f"{row['kl_sft']:.2f}",
            f"{row['train_s']:.0f}",
        )
    console.print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "users": args.users,
                    "votes": args.votes,
                    "feedback": dict(counts),
                    "signals": report.signals,
                    "rows": rows,
                    "second_night": second,
                },
                ensure_ascii=False,
                indent=1,
            ),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
