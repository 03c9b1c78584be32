"""`kindchat feedback export|stats|migrate`, and `kindchat judge` and `kindchat augment`."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kindchat.cli.common import console, friendly, given, negated
from kindchat.config import Settings
from kindchat.feedback.errors import InvalidValueError
from kindchat.feedback.moderation import load_moderator

logger = logging.getLogger(__name__)

app = typer.Typer(
    help="The feedback database and the reward data built from it.", no_args_is_help=True
)


def parse_since(value: str | None) -> datetime | None:
    """An ISO date or datetime (`2025-01-31`, `2025-01-31T22:00`, `…+09:00`); naive = UTC."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidValueError(
            f"--since must be an ISO date or datetime such as 2025-01-31T22:00, got {value!r}",
            field="since",
        ) from None


def _counts_table(title: str, rows: dict[str, Any], *columns: str) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for key, value in rows.items():
        cells = [str(v) for v in value.values()] if isinstance(value, dict) else [str(value)]
        table.add_row(key, *cells)
    return table


@app.command("export")
@friendly
def export_command(
    ctx: typer.Context,
    out_arg: Annotated[
        Path | None, typer.Argument(metavar="OUT", help="The output directory (or --out).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Directory for train.json, test.json, manifest.json.")
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="json: kindchat's files (train/test/unpaired/sft.json); hf: a datasets-loadable "
            "folder (preference, unpaired, sft as Parquet splits, and a dataset card). "
            "Default json.",
        ),
    ] = None,
    push_to_hub: Annotated[
        str | None,
        typer.Option(help="With --format hf: upload to this hub dataset repo (user/name)."),
    ] = None,
    since: Annotated[str | None, typer.Option(help="Only feedback since (ISO, UTC).")] = None,
    seed: Annotated[
        bool | None, typer.Option(help="Merge the seed's rm/*_train.json (default).")
    ] = None,
    test_fraction: Annotated[float | None, typer.Option(help="Held-out share of prompts.")] = None,
    min_answer_chars: Annotated[int | None, typer.Option(help="Drop shorter answers.")] = None,
    max_similarity: Annotated[
        float | None, typer.Option(help="Drop pairs whose answers reach this ROUGE-L F1.")
    ] = None,
    include_eval_prompts: Annotated[
        bool | None, typer.Option(help="Keep pairs on the seed's evaluation prompts.")
    ] = None,
    keep_contradictions: Annotated[
        bool | None, typer.Option(help="Keep a pair even when its reverse is kept too.")
    ] = None,
) -> None:
    """Rebuild training data from every signal: pairs (battles, sibling thumbs, better
    answers) merged with the seed, unpaired thumbs for KTO, better answers for SFT
    (defaults: ExportConfig)."""
    from kindchat.feedback.db import init_db, session_scope
    from kindchat.feedback.export import ExportConfig, export_reward_data
    from kindchat.feedback.influence import InfluenceConfig

    settings: Settings = ctx.obj
    fmt = fmt or "json"
    if fmt not in ("json", "hf"):
        raise InvalidValueError(f"--format must be json or hf, got {fmt!r}", field="format")
    if out is not None and out_arg is not None and out != out_arg:
        raise InvalidValueError("give the output directory once (OUT or --out)", field="out")
    out = out or out_arg
    if out is None:
        raise InvalidValueError("name the output directory: OUT or --out DIR", field="out")
    if push_to_hub is not None and fmt != "hf":
        raise InvalidValueError("--push-to-hub needs --format hf", field="push_to_hub")
    config = ExportConfig(
        **given(
            test_fraction=test_fraction,
            min_answer_chars=min_answer_chars,
            max_similarity=max_similarity,
            include_seed=seed,
            exclude_eval_prompts=negated(include_eval_prompts),
            drop_contradictions=negated(keep_contradictions),
        ),
        influence=InfluenceConfig.from_settings(settings),
    )
    engine = init_db(settings)
    hf_rows: dict[str, dict[str, int]] = {}
    with session_scope(engine) as session:
        what = {
            "session": session,
            "data_dir": settings.data_dir,
            "out_dir": out,
            "config": config,
            "since": parse_since(since),
            "moderator": load_moderator(settings.moderation_lexicon),
        }
        if fmt == "hf":
            from kindchat.feedback.hf_dataset import export_hf

            hf = export_hf(**what)
            report, hf_rows = hf.report, hf.rows
        else:
            report = export_reward_data(**what)
    if report.signals:
        console.print(_counts_table("training rows per signal", report.signals, "rule", "rows"))
    console.print(_counts_table(f"pairs in {out}", report.counts, "source", "train", "test"))
    if report.dropped:
        console.print(_counts_table("dropped", report.dropped, "reason", "rows"))
    if report.personal_data:
        console.print(
            _counts_table("personal data replaced", report.personal_data, "kind", "values")
        )
    influence, anomalous = report.influence, report.influence["anomalous"]
    console.print(
        f"influence: at most {influence['cap']} rows per session; "
        f"{influence['capped_sessions']} session(s) capped ({influence['dropped_by_cap']} rows); "
        f"{anomalous['sessions']} anomalous session(s) {anomalous['by_reason']}, "
        f"{anomalous['votes_excluded']} vote(s) left out"
    )
    console.print(
        f"{report.train} train / {report.test} test pairs, {report.unpaired} unpaired "
        f"(KTO), {report.demonstrations} demonstrations (SFT); fingerprint {report.fingerprint}"
    )
    if hf_rows:
        splits = ", ".join(f"{c}/{s} {n}" for c, sp in hf_rows.items() for s, n in sp.items())
        console.print(
            f"datasets folder {out}: {splits}; load with "
            f"datasets.load_dataset('{out}', 'preference')"
        )
    if push_to_hub is not None:
        from kindchat.feedback.hf_dataset import push_to_hub as push

        console.print(f"pushed to {push(out, push_to_hub)}")


@app.command("purge")
@friendly
def purge_command(
    ctx: typer.Context,
    days: Annotated[
        float | None,
        typer.Option(help="Remove conversations idle this long (default KINDCHAT_RETENTION_DAYS)."),
    ] = None,
) -> None:
    """Retention now: remove conversations whose last message is older than --days, with their
    ratings and battles (the server does this on its schedule when KINDCHAT_RETENTION_DAYS is
    set)."""
    from datetime import timedelta

    from kindchat.feedback.db import init_db, session_scope
    from kindchat.feedback.models import utcnow
    from kindchat.feedback.store import purge_expired

    settings: Settings = ctx.obj
    days = days if days is not None else settings.retention_days
    if days is None or days <= 0:
        raise InvalidValueError("give --days N (> 0) or set KINDCHAT_RETENTION_DAYS", field="days")
    before = utcnow() - timedelta(days=days)
    with session_scope(init_db(settings)) as session:
        removed = purge_expired(session=session, before=before)
    console.print(
        f"removed {removed['conversations']} conversation(s), {removed['messages']} message(s), "
        f"{removed['ratings']} rating(s), {removed['battles']} battle(s) last active before "
        f"{before.isoformat(timespec='seconds')}"
    )


@app.command("stats")
@friendly
def stats_command(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(help="Only feedback since (ISO, UTC).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Messages per model version and day, 👍 ratio and arena tallies per version."""
    from kindchat.feedback.db import init_db, session_scope
    from kindchat.feedback.statistics import feedback_stats

    settings: Settings = ctx.obj
    with session_scope(init_db(settings)) as session:
        stats = feedback_stats(session=session, since=parse_since(since))
    if as_json:
        console.print_json(stats.model_dump_json())
        return
    console.print(
        f"{stats.conversations} conversations, {stats.messages} messages, {stats.ratings} "
        f"ratings, {stats.voted_battles}/{stats.battles} battles voted"
    )
    thumbs = Table(title="ratings per model version")
    for column in ("version", "👍", "👎", "ratio"):
        thumbs.add_column(column)
    for t in stats.thumbs:
        ratio = "-" if t.ratio is None else f"{t.ratio:.2f}"
        thumbs.add_row(str(t.model_version), str(t.up), str(t.down), ratio)
    console.print(thumbs)
    votes = Table(title="arena per model version")
    for column in ("version", "battles", "wins", "losses", "ties", "both bad"):
        votes.add_column(column)
    for v in stats.votes:
        votes.add_row(
            str(v.model_version), *map(str, (v.battles, v.wins, v.losses, v.ties, v.both_bad))
        )
    console.print(votes)


@app.command("migrate")
@friendly
def migrate_command(ctx: typer.Context) -> None:
    """Create or upgrade the feedback database schema (the apps also do this on start)."""
    from kindchat.feedback.db import current_revision, database_url, init_db

    settings: Settings = ctx.obj
    engine = init_db(settings)
    url = engine.url.render_as_string(hide_password=True)
    console.print(f"{url} at revision {current_revision(engine)}")
    logger.debug("migrated %s", database_url(settings))


@friendly
def judge_command(
    ctx: typer.Context,
    in_path: Annotated[
        Path,
        typer.Option(
            "--in", help="Pairs: JSON/JSONL, prompt + response1/response2 or chosen/rejected."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Scored pairs (seed geval_scores format).")],
    data_type: Annotated[
        str | None,
        typer.Option("--type", help="conversation (default), hatespeech or translation."),
    ] = None,
    pairs_out: Annotated[
        Path | None, typer.Option(help="Also write ranked pairs in the seed RM format.")
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="KINDCHAT_JUDGE_BASE_URL.")] = None,
    model: Annotated[str | None, typer.Option(help="KINDCHAT_JUDGE_MODEL.")] = None,
    api_key: Annotated[str | None, typer.Option(help="KINDCHAT_JUDGE_API_KEY.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds per request.")] = None,
    max_retries: Annotated[int | None, typer.Option(help="Retries on 429/5xx/timeouts.")] = None,
    parse_retries: Annotated[
        int | None, typer.Option(help="Re-asks after a malformed reply.")
    ] = None,
    min_sum: Annotated[
        float | None,
        typer.Option(help="Drop pairs whose sums are both below (default 20/6 per criterion)."),
    ] = None,
    cache: Annotated[bool, typer.Option(help="Reuse earlier judgements.")] = True,
) -> None:
    """Score pairs with a G-Eval judge and rank them by the seed's rule."""
    from kindchat.feedback.judge import JudgeCache, JudgeConfig, judge_file
    from kindchat.feedback.llm import ChatClient, EndpointConfig

    settings: Settings = ctx.obj
    endpoint = EndpointConfig.from_settings(
        settings,
        base_url=base_url,
        model=model,
        api_key=api_key,
        timeout_s=timeout,
        max_retries=max_retries,
    )
    config = JudgeConfig(
        **given(data_type=data_type, parse_retries=parse_retries, min_sum=min_sum),
        concurrency=concurrency or settings.judge_concurrency,
    )
    report = judge_file(
        in_path=in_path,
        out_path=out,
        client=ChatClient(endpoint),
        config=config,
        cache=JudgeCache(settings.home / "cache" / "judge") if cache else None,
        pairs_out=pairs_out,
    )
    position, users = report.position, report.users
    console.print(
        f"judged {report.judged} pairs in both orders ({report.cached} scorings from cache, "
        f"{report.requests} requests), {report.failed} unparseable -> {out}"
    )
    console.print(
        f"position bias: the answer shown first won {position.first_won} of {position.decided} "
        f"orders; the two orders disagreed on {position.orders_disagreed} pairs (dropped)"
    )
    if users.agreed + users.overruled + users.dropped:
        console.print(
            f"against the users' choice: {users.agreed} agreed, {users.overruled} overruled, "
            f"{users.dropped} dropped"
        )
    if pairs_out is not None:
        console.print(f"{report.pairs} ranked pairs -> {pairs_out}; dropped {report.dropped}")


@friendly
def augment_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="New SFT tasks (jsonl).")],
    num: Annotated[int | None, typer.Option(help="New instructions to keep.")] = None,
    seed_tasks: Annotated[int | None, typer.Option(help="Seed tasks shown per request.")] = None,
    per_request: Annotated[int | None, typer.Option(help="Instructions asked per request.")] = None,
    max_requests: Annotated[int | None, typer.Option(help="Give up after this many.")] = None,
    rouge_threshold: Annotated[float | None, typer.Option(help="Near-duplicate ROUGE-L.")] = None,
    subset: Annotated[
        list[str] | None, typer.Option(help="Seed SFT subset(s) to sample (repeatable).")
    ] = None,
    answer: Annotated[
        bool | None, typer.Option(help="Answer the new instructions too (default).")
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="KINDCHAT_JUDGE_BASE_URL.")] = None,
    model: Annotated[str | None, typer.Option(help="KINDCHAT_JUDGE_MODEL.")] = None,
    api_key: Annotated[str | None, typer.Option(help="KINDCHAT_JUDGE_API_KEY.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Answers in flight.")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
) -> None:
    """Grow the SFT data with Self-Instruct through an OpenAI-compatible endpoint (defaults:
    AugmentConfig)."""
    from kindchat.feedback.augment import AugmentConfig, augment_file
    from kindchat.feedback.llm import ChatClient, EndpointConfig

    settings: Settings = ctx.obj
    endpoint = EndpointConfig.from_settings(
        settings, base_url=base_url, model=model, api_key=api_key
    )
    config = AugmentConfig(
        **given(
            num_instructions=num,
            seed_tasks_per_prompt=seed_tasks,
            new_per_request=per_request,
            max_requests=max_requests,
            rouge_threshold=rouge_threshold,
            answer=answer,
            seed=seed,
            subsets=tuple(subset) if subset else None,
        ),
        concurrency=concurrency or settings.judge_concurrency,
    )
    result = augment_file(
        data_dir=settings.data_dir, out_path=out, client=ChatClient(endpoint), config=config
    )
    console.print(
        f"{len(result.records)} new tasks -> {out} after {result.requests} requests; "
        f"dropped {json.dumps(dict(result.dropped), ensure_ascii=False)}"
    )
