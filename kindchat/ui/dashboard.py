"""The 대시보드 tab: feedback per day, 👍 ratio per version, retrain runs, the latest PPO curves,
RM accuracy per version; admin actions (promote, roll back, retrain) behind the admin token.

Everything comes from the service, as the API's `GET /v1/admin/dashboard` does
(`AdminService.dashboard`); admin actions call the service's `promote` / `rollback` /
`trigger_retrain` after the one admin check (`AdminService.check_admin`).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import gradio as gr
import pandas as pd

from kindchat.feedback.models import DayFeedback, FeedbackStats, RetrainRunPublic
from kindchat.models.manager import ReloadReport
from kindchat.models.registry import Manifest
from kindchat.serve.errors import AdminDisabledError, AdminTokenError
from kindchat.serve.protocol import Dashboard
from kindchat.serve.services import AdminService
from kindchat.ui import strings
from kindchat.ui.bootstrap import stages_frame
from kindchat.ui.common import OnLoad, ServicesRef, UserError, run_blocking, user_error

logger = logging.getLogger(__name__)

PROMOTABLE_KINDS = ("policy", "sft", "rm")


def per_day_frame(days: list[DayFeedback]) -> pd.DataFrame:
    rows = [
        {strings.DAY: d.day, strings.KIND: kind, strings.COUNT: count}
        for d in days
        for kind, count in (
            (strings.KIND_UP, d.thumbs_up),
            (strings.KIND_DOWN, d.thumbs_down),
            (strings.KIND_VOTE, d.votes),
        )
    ]
    return pd.DataFrame(rows, columns=[strings.DAY, strings.KIND, strings.COUNT])


def thumbs_frame(stats: FeedbackStats) -> pd.DataFrame:
    rows = [
        {
            strings.COL_VERSION: t.model_version or "unknown",
            strings.COL_THUMBS_UP: t.up,
            strings.COL_THUMBS_DOWN: t.down,
            strings.COL_RATIO: round(t.ratio, 3) if t.ratio is not None else None,
        }
        for t in stats.thumbs
    ]
    columns = [
        strings.COL_VERSION,
        strings.COL_THUMBS_UP,
        strings.COL_THUMBS_DOWN,
        strings.COL_RATIO,
    ]
    return pd.DataFrame(rows, columns=columns)


def runs_frame(runs: list[RetrainRunPublic]) -> pd.DataFrame:
    rows = [
        {
            strings.COL_RUN: run.id[:12],
            strings.COL_CREATED: run.created_at.strftime("%Y-%m-%d %H:%M"),
            strings.COL_STATUS: run.status,
            strings.COL_STAGE: run.stage or "",
            strings.COL_PROMOTED: strings.YES if run.promoted else strings.NO,
            strings.COL_METRICS: json.dumps(run.metrics or {}, ensure_ascii=False)[:300],
            strings.COL_ERROR: (run.error or "")[:200],
        }
        for run in runs
    ]
    columns = [
        strings.COL_RUN,
        strings.COL_CREATED,
        strings.COL_STATUS,
        strings.COL_STAGE,
        strings.COL_PROMOTED,
        strings.COL_METRICS,
        strings.COL_ERROR,
    ]
    return pd.DataFrame(rows, columns=columns)


def ppo_frame(log: list[dict[str, float]]) -> pd.DataFrame:
    rows = [
        {strings.STEP: int(row["step"]), strings.SERIES: label, strings.VALUE: float(row[key])}
        for row in log
        for key, label in (("reward_mean", strings.PPO_REWARD), ("kl", strings.PPO_KL))
        if key in row
    ]
    return pd.DataFrame(rows, columns=[strings.STEP, strings.SERIES, strings.VALUE])


def rm_frame(versions: list[Manifest], aliases: dict[str, str]) -> pd.DataFrame:
    """Held-out pairwise accuracy of every RM version (overall, with its interval)."""
    rows = []
    for m in versions:
        if m.kind != "rm":
            continue
        overall = (m.metrics.get("rm_eval") or {}).get("overall") or {}
        low, high = overall.get("accuracy_low"), overall.get("accuracy_high")
        ci = f"{low:.2f} ~ {high:.2f}" if low is not None and high is not None else ""
        names = sorted(a for a, v in aliases.items() if v == m.version)
        rows.append(
            {
                strings.COL_VERSION: m.version,
                strings.COL_ALIASES: ", ".join(names),
                strings.COL_ACCURACY: m.metrics.get("accuracy"),
                strings.COL_ACCURACY_CI: ci,
                strings.COL_GOLD: strings.YES if m.metrics.get("gold") else strings.NO,
            }
        )
    columns = [
        strings.COL_VERSION,
        strings.COL_ALIASES,
        strings.COL_ACCURACY,
        strings.COL_ACCURACY_CI,
        strings.COL_GOLD,
    ]
    return pd.DataFrame(rows, columns=columns)


def totals(data: Dashboard) -> str:
    s = data.stats
    aliases = ", ".join(f"{a} → {v}" for a, v in sorted(data.aliases.items()))
    counts = strings.TOTALS.format(
        conversations=s.conversations,
        messages=s.messages,
        ratings=s.ratings,
        battles=s.battles,
        voted=s.voted_battles,
    )
    text = f"{counts}  \n{strings.ALIASES_NOW.format(aliases=aliases or '-')}"
    for alias, why in sorted(data.serving_failures.items()):
        serving = data.serving.get(alias, "-")
        text += "  \n" + strings.NOT_SERVED.format(alias=alias, serving=serving, why=why)
    return text


def challenger_text(challenger: dict[str, Any]) -> str:
    """The challenge in progress and its live record, or the mode when there is none."""
    active = challenger.get("active")
    if challenger.get("promotion") == "offline":
        return strings.CHALLENGER_OFFLINE
    if not active:
        return strings.CHALLENGER_NONE
    votes = active["wins"] + active["losses"] + active["ties"]
    rate = active.get("now_win_rate")
    interval = (
        strings.CHALLENGER_INTERVAL.format(
            rate=rate, low=active["now_win_rate_low"], high=active["now_win_rate_high"]
        )
        if rate is not None
        else "-"
    )
    return strings.CHALLENGER_ACTIVE.format(
        version=active["version"],
        champion=active["champion"],
        wins=active["wins"],
        losses=active["losses"],
        ties=active["ties"],
        votes=votes,
        min_votes=active["min_votes"],
        interval=interval,
        deadline=active["deadline"][:16].replace("T", " "),
        share=round(100 * challenger.get("share", 0)),
    )


def challenger_frame(history: list[dict[str, Any]]) -> pd.DataFrame:
    columns = [strings.COL_VERSION, strings.COL_DECISION, strings.COL_RECORD, strings.COL_WHY]
    rows = [
        [
            h.get("version"),
            strings.DECISIONS.get(h.get("action", ""), h.get("action")),
            f"{h.get('wins', 0)}-{h.get('losses', 0)}-{h.get('ties', 0)}",
            h.get("reason", ""),
        ]
        for h in history
    ]
    return pd.DataFrame(rows, columns=columns)


async def refresh(admin: AdminService, token: str = "") -> tuple[Any, ...]:
    """The dashboard's data, for the admin token only (as `GET /v1/admin/dashboard`); without
    it every panel stays empty and the intro says how to unlock it."""
    if not admin.is_admin(token):
        return (
            gr.update(visible=False),
            strings.DASHBOARD_LOCKED,
            None,
            None,
            None,
            gr.LinePlot(value=None, label=strings.PPO_TITLE_EMPTY),
            None,
            "",
            None,
            gr.Dropdown(choices=[]),
        )
    try:
        data = await run_blocking(admin.dashboard)
    except Exception as err:
        raise user_error(err) from err
    title = (
        strings.PPO_TITLE.format(version=data.ppo_version)
        if data.ppo_version
        else strings.PPO_TITLE_EMPTY
    )
    promotable = [m.version for m in data.versions if m.kind in PROMOTABLE_KINDS]
    return (
        gr.update(value=stages_frame(data.bootstrap), visible=bool(data.bootstrap.get("stages"))),
        totals(data),
        per_day_frame(data.per_day),
        thumbs_frame(data.stats),
        runs_frame(data.runs),
        gr.LinePlot(value=ppo_frame(data.ppo_log), label=title),
        rm_frame(data.versions, data.aliases),
        challenger_text(data.challenger),
        challenger_frame(data.challenger.get("history", [])),
        gr.Dropdown(choices=list(reversed(promotable))),
    )


# ---- admin ------------------------------------------------------------------------------------
def check_admin(admin: AdminService, token: str) -> None:
    """The service's admin check, its refusals in Korean."""
    try:
        admin.check_admin(token)
    except AdminDisabledError:
        raise UserError(strings.ADMIN_DISABLED) from None
    except AdminTokenError:
        raise UserError(strings.ADMIN_WRONG) from None


def unlock(admin: AdminService, token: str) -> tuple[Any, str]:
    """Show the admin actions when the token matches (each action checks it again)."""
    check_admin(admin, token)
    return gr.update(visible=True), strings.ADMIN_OK


def swap_note(report: ReloadReport) -> str:
    if not report.failed:
        return ""
    failed = ", ".join(f"{alias}: {why}" for alias, why in report.failed.items())
    return strings.SWAP_FAILED.format(failed=failed)


async def promote(admin: AdminService, token: str, version: str, alias: str) -> str:
    check_admin(admin, token)
    if not version or not alias:
        raise UserError(strings.PROMOTE_PICK)
    try:
        change, report = await admin.promote(version, alias)
    except Exception as err:
        raise user_error(err) from err
    return strings.PROMOTED.format(alias=change.alias, version=change.version) + swap_note(report)


async def rollback(admin: AdminService, token: str, alias: str) -> str:
    check_admin(admin, token)
    try:
        change, report = await admin.rollback(alias)
    except Exception as err:
        raise user_error(err) from err
    return strings.ROLLED_BACK.format(alias=change.alias, version=change.version) + swap_note(
        report
    )


async def retrain(admin: AdminService, token: str, force: bool) -> str:
    check_admin(admin, token)
    try:
        run = await admin.trigger_retrain(force=force)
    except Exception as err:
        raise user_error(err) from err
    return strings.RETRAIN_STARTED.format(run_id=run.id)


def build_admin(services: ServicesRef) -> tuple[Any, list[Any]]:
    """The admin accordion: token box, then (hidden until it matches) the actions. Returns the
    token box, the version picker and the events after which the dashboard should refresh."""
    with gr.Accordion(strings.ADMIN_TITLE, open=False):
        with gr.Row():
            token = gr.Textbox(
                label=strings.ADMIN_TOKEN,
                placeholder=strings.ADMIN_TOKEN_PLACEHOLDER,
                type="password",
                scale=4,
                elem_id="admin-token",
            )
            unlock_button = gr.Button(strings.ADMIN_UNLOCK, scale=1, elem_id="admin-unlock")
        note = gr.Markdown(elem_id="admin-note")
        with gr.Group(visible=False, elem_id="admin-actions") as actions:
            with gr.Row():
                version = gr.Dropdown(
                    label=strings.PROMOTE_VERSION, choices=[], scale=3, elem_id="admin-version"
                )
                alias = gr.Dropdown(
                    label=strings.PROMOTE_ALIAS,
                    choices=["rlhf", "sft", "rm"],
                    value="rlhf",
                    allow_custom_value=True,
                    scale=1,
                )
                promote_button = gr.Button(strings.PROMOTE, scale=1, elem_id="admin-promote")
            with gr.Row():
                back_alias = gr.Dropdown(
                    label=strings.ROLLBACK_ALIAS,
                    choices=["rlhf", "sft", "rm"],
                    value="rlhf",
                    allow_custom_value=True,
                    scale=3,
                )
                rollback_button = gr.Button(strings.ROLLBACK, scale=1, elem_id="admin-rollback")
            with gr.Row():
                force = gr.Checkbox(label=strings.RETRAIN_FORCE, value=False, scale=3)
                retrain_button = gr.Button(strings.RETRAIN, scale=1, elem_id="admin-retrain")

    async def on_unlock(token: str) -> tuple[Any, str]:
        return unlock(services().admin, token)

    async def on_promote(token: str, version: str, alias: str) -> str:
        return await promote(services().admin, token, version, alias)

    async def on_rollback(token: str, alias: str) -> str:
        return await rollback(services().admin, token, alias)

    async def on_retrain(token: str, force: bool) -> str:
        return await retrain(services().admin, token, force)

    unlocked = gr.on([token.submit, unlock_button.click], on_unlock, [token], [actions, note])
    changed = [
        unlocked,
        promote_button.click(on_promote, [token, version, alias], [note]),
        rollback_button.click(on_rollback, [token, back_alias], [note]),
        retrain_button.click(on_retrain, [token, force], [note]),
    ]
    return token, version, changed


def build_dashboard_tab(services: ServicesRef) -> OnLoad:
    gr.Markdown(strings.DASHBOARD_INTRO)
    stages = gr.Dataframe(
        interactive=False,
        visible=False,
        label=strings.BOOTSTRAP_TITLE,
        elem_id="dashboard-bootstrap",
    )
    summary = gr.Markdown(elem_id="dashboard-totals")
    with gr.Row():
        per_day = gr.BarPlot(
            x=strings.DAY,
            y=strings.COUNT,
            color=strings.KIND,
            label=strings.FEEDBACK_PER_DAY,
            elem_id="dashboard-per-day",
        )
        ppo = gr.LinePlot(
            x=strings.STEP,
            y=strings.VALUE,
            color=strings.SERIES,
            label=strings.PPO_TITLE_EMPTY,
            elem_id="dashboard-ppo",
        )
    with gr.Row():
        with gr.Column():
            gr.Markdown(f"#### {strings.THUMBS_TITLE}")
            thumbs = gr.Dataframe(interactive=False, elem_id="dashboard-thumbs")
        with gr.Column():
            gr.Markdown(f"#### {strings.RM_TITLE}")
            rm = gr.Dataframe(interactive=False, elem_id="dashboard-rm")
    gr.Markdown(f"#### {strings.CHALLENGER_TITLE}")
    challenger = gr.Markdown(elem_id="dashboard-challenger")
    decisions = gr.Dataframe(interactive=False, wrap=True, elem_id="dashboard-decisions")
    gr.Markdown(f"#### {strings.RUNS_TITLE}")
    runs = gr.Dataframe(interactive=False, wrap=True, elem_id="dashboard-runs")
    button = gr.Button(strings.REFRESH, size="sm", elem_id="dashboard-refresh")
    token, version, changed = build_admin(services)

    outputs = [stages, summary, per_day, thumbs, runs, ppo, rm, challenger, decisions, version]

    async def on_refresh(token: str) -> tuple[Any, ...]:
        return await refresh(services().admin, token)

    button.click(on_refresh, [token], outputs)
    for event in changed:
        event.success(on_refresh, [token], outputs)

    async def on_load(session_id: str, token: str) -> tuple[Any, ...]:
        return await on_refresh(token)

    return OnLoad(on_load, [token], outputs, on_open=False, on_select=True)
