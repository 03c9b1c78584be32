"""The 아레나 tab: one prompt, two anonymous streamed answers, a vote that reveals the models."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import gradio as gr

from kindchat.models.backends.base import GenerationOptions
from kindchat.serve.protocol import ChatMessage
from kindchat.serve.services import Answer, AnswerRequest, AnswerService, ArenaService, Services
from kindchat.ui import strings
from kindchat.ui.common import (
    OnLoad,
    ServicesRef,
    UserError,
    friendly_name,
    model_choices,
    run_blocking,
    user_error,
    user_message,
    warning,
)
from kindchat.ui.guard import action
from kindchat.ui.state import ArenaRound

logger = logging.getLogger(__name__)

VERDICTS = ("a", "b", "tie", "both_bad")
Update = tuple[Any, ...]


async def open_both(service: AnswerService, requests: Sequence[AnswerRequest]) -> list[Answer]:
    """Open both answers together (one batch); if one fails, release the other and raise."""
    opened = await asyncio.gather(*(service.open(r) for r in requests), return_exceptions=True)
    errors = [o for o in opened if isinstance(o, BaseException)]
    if errors:
        for answer in opened:
            if isinstance(answer, Answer):
                await service.abandon(answer)
        raise errors[0]
    return [o for o in opened if isinstance(o, Answer)]


async def stream_both(service: AnswerService, answers: Sequence[Answer]) -> AsyncIterator[None]:
    """Generate both answers at once; yield whenever either text grew. Errors re-raise."""
    grew: asyncio.Queue[bool] = asyncio.Queue()

    async def pump(answer: Answer) -> None:
        try:
            async with contextlib.aclosing(service.deltas(answer)) as pieces:
                async for _ in pieces:
                    grew.put_nowait(True)
        finally:
            grew.put_nowait(False)

    tasks = [asyncio.create_task(pump(a)) for a in answers]
    try:
        finished = 0
        while finished < len(tasks):
            items = [await grew.get()]
            while not grew.empty():  # coalesce pieces that arrived together
                items.append(grew.get_nowait())
            finished += items.count(False)
            yield
        for task in tasks:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def battle(
    services: Services, state: ArenaRound, prompt: str, model_a: str, model_b: str
) -> AsyncIterator[ArenaRound]:
    """Ask two models (random sides), stream both answers, then store the battle."""
    service, arena = services.answers, services.arena
    messages = service.check_messages([ChatMessage(role="user", content=prompt)])
    chosen = [m for m in (model_a, model_b) if m]
    if len(chosen) == 1 or (len(chosen) == 2 and chosen[0] == chosen[1]):
        raise UserError(strings.ARENA_SAME_MODEL)
    verdict = await run_blocking(service.moderator.check, text=prompt)
    if verdict.flagged:  # a refusal on both sides is nothing to vote on: no battle
        raise UserError(strings.ARENA_FLAGGED)
    names = arena.battle_models(chosen or None)
    params = service.sampling(max_tokens=None, temperature=None, top_p=None)
    requests = [
        AnswerRequest(name, messages, params, GenerationOptions(), state.session_id, arena=True)
        for name in names
    ]
    answers = await open_both(service, requests)
    state = ArenaRound(session_id=state.session_id, prompt=prompt)
    async for _ in stream_both(service, answers):
        state.answers = [a.text for a in answers]
        yield state
    state.answers = [a.text for a in answers]
    state.battle_id = await arena.store_battle(state.session_id, answers[0], answers[1])
    yield state


def vote_buttons(interactive: bool) -> list[Any]:
    return [gr.update(interactive=interactive) for _ in VERDICTS]


def round_update(state: ArenaRound, status: str, votable: bool, prompt: Any) -> Update:
    return (state.panel(0), state.panel(1), state, status, *vote_buttons(votable), prompt)


async def start(
    services: Services, state: ArenaRound, prompt: str, model_a: str, model_b: str
) -> AsyncIterator[Update]:
    before = state
    try:
        yield round_update(
            ArenaRound(session_id=state.session_id, prompt=prompt),
            strings.ARENA_STREAMING,
            False,
            gr.update(interactive=False),
        )
        async for current in battle(services, state, prompt, model_a, model_b):
            done = current.battle_id is not None
            status = strings.ARENA_VOTE_NOW if done else strings.ARENA_STREAMING
            yield round_update(current, status, done, gr.update(interactive=False))
    except Exception as err:  # said on the status line and in a toast; the input stays usable
        message = user_message(err, services.answers.limits.max_input_chars)
        warning(message, duration=8)
        yield round_update(before, f"⚠️ {message}", False, gr.update(interactive=True))


async def vote(arena: ArenaService, state: ArenaRound, verdict: str) -> Update:
    """Record the verdict, reveal both models, disable the buttons."""
    if state.battle_id is None or state.verdict is not None:
        warning(strings.ARENA_NO_BATTLE)
        return state, gr.update(), *vote_buttons(False), gr.update()
    try:
        result = await arena.vote(
            battle_id=state.battle_id, session_id=state.session_id, winner=verdict
        )
    except Exception as err:
        raise user_error(err) from err
    state.verdict = verdict
    reveal = strings.ARENA_REVEAL.format(
        a=friendly_name(result.model_a or str(result.version_a)),
        b=friendly_name(result.model_b or str(result.version_b)),
    )
    reveal += "  \n" + strings.ARENA_VERSIONS.format(a=result.version_a, b=result.version_b)
    mine = strings.ARENA_YOUR_VOTE.format(verdict=strings.ARENA_VERDICTS[verdict])
    void = f"  \n{strings.ARENA_VOIDED}" if result.void_reason else ""
    # the next step is a new battle: an empty input for the next question
    following = gr.update(value="", interactive=True, placeholder=strings.ARENA_NEXT_PLACEHOLDER)
    return (
        state,
        f"{reveal}  \n{mine}{void}  \n{strings.ARENA_NEXT}",
        *vote_buttons(False),
        following,
    )


def new_round(state: ArenaRound) -> Update:
    fresh = ArenaRound(session_id=state.session_id)
    return round_update(fresh, strings.ARENA_WAITING, False, gr.update(interactive=True, value=""))


def build_arena_tab(services: ServicesRef) -> OnLoad:
    state = gr.State(ArenaRound())
    gr.Markdown(strings.ARENA_INTRO)
    with gr.Accordion(strings.ARENA_CHOOSE, open=False):
        with gr.Row():
            model_a = gr.Dropdown(label=strings.ARENA_MODEL_A, choices=[], elem_id="arena-model-a")
            model_b = gr.Dropdown(label=strings.ARENA_MODEL_B, choices=[], elem_id="arena-model-b")
    with gr.Row(equal_height=True):
        panel_a = gr.Chatbot(
            label=strings.ARENA_MODEL_A,
            height=360,
            sanitize_html=True,
            allow_tags=False,
            feedback_options=None,
            elem_id="arena-a",
        )
        panel_b = gr.Chatbot(
            label=strings.ARENA_MODEL_B,
            height=360,
            sanitize_html=True,
            allow_tags=False,
            feedback_options=None,
            elem_id="arena-b",
        )
    status = gr.Markdown(strings.ARENA_WAITING, elem_id="arena-status")
    with gr.Row():
        buttons = [
            gr.Button(label, interactive=False, elem_id=f"arena-vote-{verdict}")
            for verdict, label in zip(
                VERDICTS,
                (strings.VOTE_A, strings.VOTE_B, strings.VOTE_TIE, strings.VOTE_BOTH_BAD),
                strict=True,
            )
        ]
    with gr.Row():
        prompt = gr.Textbox(
            label=strings.ARENA_PROMPT_LABEL,  # what a screen reader says
            placeholder=strings.ARENA_PROMPT_PLACEHOLDER,
            show_label=False,
            scale=5,
            elem_id="arena-input",
        )
        send = gr.Button(strings.ARENA_SEND, variant="primary", scale=1, elem_id="arena-send")
    again = gr.Button(strings.NEW_ROUND, elem_id="arena-new")

    @action("arena")
    async def on_start(
        state: ArenaRound, prompt: str, model_a: str, model_b: str
    ) -> AsyncIterator[Update]:
        async for update in start(services(), state, prompt, model_a, model_b):
            yield update

    round_outputs = [panel_a, panel_b, state, status, *buttons, prompt]
    gr.on(
        [prompt.submit, send.click],
        on_start,
        [state, prompt, model_a, model_b],
        round_outputs,
        concurrency_id="generate",
    )
    for verdict, button in zip(VERDICTS, buttons, strict=True):

        @action("arena")
        async def on_vote(state: ArenaRound, verdict: str = verdict) -> Update:
            return await vote(services().arena, state, verdict)

        button.click(on_vote, [state], [state, status, *buttons, prompt])
    again.click(new_round, [state], round_outputs)

    def on_load(session_id: str) -> Update:
        choices = [(strings.ARENA_AUTO, ""), *model_choices(services().answers)]
        return (
            ArenaRound(session_id=session_id),
            gr.Dropdown(choices=choices, value=""),
            gr.Dropdown(choices=choices, value=""),
        )

    return OnLoad(on_load, [], [state, model_a, model_b])
