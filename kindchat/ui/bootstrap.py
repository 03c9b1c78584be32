"""The banner over every tab while better models train in the background: the stage, how many
are done, an estimate of the time left; and, once, the news when a new model starts answering.

It polls `AdminService.bootstrap` (what `GET /v1/bootstrap` returns) every few seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from kindchat.ui import strings
from kindchat.ui.common import ServicesRef, run_blocking

POLL_S = 3.0
NOTICE_S = 30.0  # how long the news of a new model stays up


@dataclass
class BannerState:
    seen: str | None = None  # the served `rlhf` version this page knows
    notice: str = ""
    notice_until: float = 0.0


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return strings.SECONDS.format(n=max(5, int(round(seconds / 5) * 5)))
    return strings.MINUTES.format(n=int(round(seconds / 60)))


def banner_text(view: dict[str, Any], state: BannerState, now: float) -> tuple[str, BannerState]:
    """The banner's Markdown ("" hides it) and the page's new state."""
    served = (view.get("served") or {}).get("rlhf")
    if state.seen is not None and served is not None and served != state.seen:
        state = BannerState(
            served, strings.BOOTSTRAP_NEW_MODEL.format(version=served), now + NOTICE_S
        )
    elif state.seen is None:
        state = BannerState(served, state.notice, state.notice_until)
    lines = [state.notice] if state.notice and now < state.notice_until else []
    if view.get("active") and view.get("stage"):
        stages = view.get("stages") or []
        done = sum(1 for s in stages if s["status"] == "done")
        banner = strings.BOOTSTRAP_FIRST_BANNER if view.get("first") else strings.BOOTSTRAP_BANNER
        lines.append(
            banner.format(
                stage=strings.BOOTSTRAP_STAGES.get(view["stage"], view["stage"]),
                done=done,
                total=len(stages),
                eta=eta_text(view.get("eta_s")),
            )
        )
    return "\n\n".join(lines), state


def stages_frame(view: dict[str, Any]) -> pd.DataFrame:
    """The stages for the dashboard: name, status, progress, seconds."""
    rows = [
        {
            strings.COL_BOOT_STAGE: strings.BOOTSTRAP_STAGES.get(s["name"], s["name"]),
            strings.COL_BOOT_STATUS: strings.BOOTSTRAP_STATUS.get(s["status"], s["status"]),
            strings.COL_BOOT_PROGRESS: f"{round(100 * s['progress'])}%",
            strings.COL_BOOT_SECONDS: s["seconds"] if s["seconds"] is not None else "",
        }
        for s in view.get("stages") or []
    ]
    columns = [
        strings.COL_BOOT_STAGE,
        strings.COL_BOOT_STATUS,
        strings.COL_BOOT_PROGRESS,
        strings.COL_BOOT_SECONDS,
    ]
    return pd.DataFrame(rows, columns=columns)


def build_banner(services: ServicesRef) -> None:
    """The banner (hidden while nothing trains) and its timer."""
    state = gr.State(BannerState())
    banner = gr.Markdown("", visible=False, elem_id="bootstrap-banner")
    timer = gr.Timer(POLL_S)

    async def refresh(current: BannerState) -> tuple[Any, BannerState]:
        view = await run_blocking(services().admin.bootstrap)
        text, new = banner_text(view, current, time.time())
        return gr.update(value=text, visible=bool(text)), new

    timer.tick(refresh, [state], [banner, state], show_progress="hidden")
