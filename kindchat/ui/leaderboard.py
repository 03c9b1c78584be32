"""The 리더보드 tab: Elo and Bradley–Terry with 95% intervals, battle counts, win-rate matrix.

The numbers come from :meth:`ArenaService.leaderboard`, the same code as `GET /v1/leaderboard`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import gradio as gr
import pandas as pd

from kindchat.serve.protocol import Leaderboard, LeaderboardRow, PairwiseRow
from kindchat.serve.services import ArenaService
from kindchat.ui import strings
from kindchat.ui.common import OnLoad, ServicesRef, friendly_name, run_blocking, user_error

DASH = "–"


def interval(row: LeaderboardRow | None) -> str:
    if row is None or row.rating_low is None or row.rating_high is None:
        return DASH
    return f"{row.rating_low:.0f} ~ {row.rating_high:.0f}"


def rating(row: LeaderboardRow | None) -> float | str:
    return DASH if row is None or row.rating is None else round(row.rating, 1)


def percent(value: float | None) -> str:
    return DASH if value is None else f"{value:.0%}"


ALIAS_ORDER = ("rlhf", "challenger", "sft", "base")  # the name people know a version by


def display_names(models: Sequence[str], aliases: dict[str, str]) -> dict[str, str]:
    """What people call each version: 추천 모델, 도전 모델, 기본 대화 모델 for the served aliases,
    이전 모델 (2026.12.4) for the rest; versions of one day told apart by their time. The
    version ids themselves stay in the detail column."""
    names = {}
    for model in models:
        served = [alias for alias in ALIAS_ORDER if aliases.get(alias) == model]
        names[model] = friendly_name(served[0] if served else model)
    counts = Counter(names.values())
    for model, name in list(names.items()):
        if counts[name] > 1:
            found = VERSION_TIME.search(model)
            at = f" {found.group(1)}:{found.group(2)}" if found else ""
            # 이전 모델 (2026.12.4 14:30): the time inside the date's parentheses
            names[model] = f"{name[:-1]}{at})" if at and name.endswith(")") else model
    counts = Counter(names.values())  # two of one minute: their ids (names are table keys)
    for model, name in list(names.items()):
        if counts[name] > 1:
            names[model] = model
    return names


VERSION_TIME = re.compile(r"-\d{8}-(\d{2})(\d{2})\d{2}")


def ranking_table(elo: Leaderboard, bt: Leaderboard, names: dict[str, str]) -> pd.DataFrame:
    """One row per model, in Elo order: both ratings with intervals, tallies and thumbs
    (`names`: what people call each version, from :func:`display_names`)."""
    by_bt = {row.model: row for row in bt.rows}
    records = []
    for rank, row in enumerate(elo.rows, start=1):
        other = by_bt.get(row.model)
        records.append(
            {
                strings.COL_RANK: rank,
                strings.COL_MODEL: names[row.model],
                strings.COL_ELO: rating(row),
                strings.COL_ELO_CI: interval(row),
                strings.COL_BT: rating(other),
                strings.COL_BT_CI: interval(other),
                strings.COL_BATTLES: row.battles,
                strings.COL_WINS: row.wins,
                strings.COL_LOSSES: row.losses,
                strings.COL_TIES: row.ties,
                strings.COL_BOTH_BAD: row.both_bad,
                strings.COL_WIN_RATE: percent(row.win_rate),
                strings.COL_THUMBS_UP: row.thumbs_up,
                strings.COL_THUMBS_DOWN: row.thumbs_down,
                strings.COL_VERSION: row.model,  # the detail, last
            }
        )
    return pd.DataFrame(records, columns=RANKING_COLUMNS)


RANKING_COLUMNS = [
    strings.COL_RANK,
    strings.COL_MODEL,
    strings.COL_ELO,
    strings.COL_ELO_CI,
    strings.COL_BT,
    strings.COL_BT_CI,
    strings.COL_BATTLES,
    strings.COL_WINS,
    strings.COL_LOSSES,
    strings.COL_TIES,
    strings.COL_BOTH_BAD,
    strings.COL_WIN_RATE,
    strings.COL_THUMBS_UP,
    strings.COL_THUMBS_DOWN,
    strings.COL_VERSION,
]


def win_matrix(
    pairs: Sequence[PairwiseRow], order: Sequence[str], names: dict[str, str]
) -> pd.DataFrame:
    """Row model's win rate against the column model (decided battles), with battle counts."""
    cells = {(p.model, p.opponent): p for p in pairs}
    models = [m for m in order if any(m in key for key in cells)]
    labels = [names[m] for m in models]
    rows = []
    for me, label in zip(models, labels, strict=True):
        row: dict[str, Any] = {strings.MATRIX_CORNER: label}
        for other, other_label in zip(models, labels, strict=True):
            cell = cells.get((me, other))
            row[other_label] = (
                DASH if cell is None else f"{percent(cell.win_rate)} ({cell.battles})"
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=[strings.MATRIX_CORNER, *labels])


def load_boards(arena: ArenaService) -> tuple[Leaderboard, Leaderboard]:
    return arena.leaderboard("elo"), arena.leaderboard("bt")


async def refresh(arena: ArenaService) -> tuple[Any, Any, str]:
    try:
        elo, bt = await run_blocking(load_boards, arena=arena)
    except Exception as err:
        raise user_error(err) from err
    aliases = arena.served_aliases()
    battles = sum(p.battles for p in elo.pairs) // 2
    rated = [row.model for row in elo.rows]
    if battles == 0:
        summary = strings.LEADERBOARD_EMPTY
    else:
        summary = strings.LEADERBOARD_SUMMARY.format(battles=battles, models=len(rated))
    names = display_names(rated, aliases)  # one name per model in both tables
    return ranking_table(elo, bt, names), win_matrix(elo.pairs, rated, names), summary


def build_leaderboard_tab(services: ServicesRef) -> OnLoad:
    gr.Markdown(strings.LEADERBOARD_INTRO)
    with gr.Accordion(strings.LEADERBOARD_METHOD_TITLE, open=False):
        gr.Markdown(strings.LEADERBOARD_METHOD)
    summary = gr.Markdown(strings.LEADERBOARD_EMPTY, elem_id="leaderboard-summary")
    table = gr.Dataframe(
        headers=RANKING_COLUMNS,
        label=strings.LEADERBOARD_TABLE_LABEL,
        show_label=False,
        interactive=False,
        wrap=True,
        elem_id="leaderboard-table",
    )
    gr.Markdown(strings.MATRIX_TITLE)
    matrix = gr.Dataframe(
        label=strings.MATRIX_LABEL,
        show_label=False,
        interactive=False,
        wrap=True,
        elem_id="leaderboard-matrix",
    )
    button = gr.Button(strings.REFRESH, size="sm", elem_id="leaderboard-refresh")

    async def on_refresh() -> tuple[Any, Any, str]:
        return await refresh(services().arena)

    button.click(on_refresh, [], [table, matrix, summary])

    async def on_load(session_id: str) -> tuple[Any, Any, str]:
        return await on_refresh()

    return OnLoad(on_load, [], [table, matrix, summary], on_open=False, on_select=True)
