"""Wire format of the HTTP API: the OpenAI chat schema plus kindchat's feedback and arena.

Routes stay thin: they take these models in and give them out. Field limits that do not depend
on settings are checked here (pydantic -> 422 naming the field); limits from settings (input
size, max_tokens) are checked in :mod:`kindchat.serve.services.answers`.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from kindchat.feedback.models import DayFeedback, FeedbackStats, RetrainRunPublic
from kindchat.models.registry import Manifest

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length"]


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


# ---- chat completions ------------------------------------------------------------------------
class ChatMessage(BaseModel):
    role: Role
    content: str = Field(description="The message text.")


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's `POST /v1/chat/completions` body (the fields kindchat honours, others ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1, description="Only one choice per request.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    user: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="The caller's session: a token from POST /v1/sessions (or the id of the "
        "session the credential already names).",
    )
    # kindchat extensions
    top_k: int | None = Field(None, ge=0, le=1000)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    min_tokens: int = Field(0, ge=0, description="No end of answer before this many tokens.")
    regenerate: str | None = Field(
        None, max_length=64, description="Id of an earlier answer this one regenerates."
    )
    conversation_id: str | None = Field(
        None,
        max_length=64,
        description="Continue this stored conversation of the `user` session (history, shares).",
    )
    edit_of: str | None = Field(
        None,
        max_length=64,
        description="With conversation_id: the stored user message the last message edits.",
    )
    follows: str | None = Field(
        None,
        max_length=64,
        description=(
            "With conversation_id: the stored message the last message follows, when that is "
            "not the latest branch (the user went back to an earlier version, ‹1/2›)."
        ),
    )
    continue_of: str | None = Field(
        None,
        max_length=64,
        description=(
            "A stored answer of the `user` session that was cut by the length limit: the model "
            "goes on from its last character, only the new text streams, and the stored answer "
            "grows in place. `messages` are its context (up to the question it answers)."
        ),
    )

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4 or any(not s or len(s) > 64 for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings of at most 64 characters")
        return stops

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessage
    finish_reason: FinishReason | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str = Field(description="The model version that answered.")
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    # kindchat extensions
    conversation_id: str | None = Field(None, description="Where the exchange is stored.")
    user_message_id: str | None = Field(None, description="The stored id of the last message.")


class DeltaMessage(BaseModel):
    role: Role | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: DeltaMessage
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# ---- models ----------------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "kindchat"
    version: str = Field(description="The registry version this name answers with now.")
    alias: str | None = None
    note: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- feedback --------------------------------------------------------------------------------
class FeedbackRequest(BaseModel):
    message_id: str = Field(min_length=1, max_length=64, description="A completion id.")
    rating: Literal[1, -1] = Field(description="1 for 👍, -1 for 👎.")
    reason: str | None = Field(None, max_length=128)
    comment: str | None = Field(None, max_length=4000)
    better_answer: str | None = Field(
        None,
        min_length=1,
        max_length=4000,
        description="The answer you would have liked instead: trains as better than this one.",
    )
    session_id: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="The voter's session token (default: the caller's signed session).",
    )


class FeedbackResponse(BaseModel):
    id: str
    message_id: str
    rating: int
    session_id: str


# ---- arena -----------------------------------------------------------------------------------
class BattleRequest(BaseModel):
    """A prompt (or a whole conversation) for two anonymous models to answer."""

    model_config = ConfigDict(extra="ignore")

    prompt: str | None = Field(None, description="A single user message (or use `messages`).")
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=256)
    session_id: str | None = Field(
        None, min_length=1, max_length=512, description="A session token (default: the caller's)."
    )
    models: list[str] | None = Field(
        None, min_length=2, max_length=2, description="Two model names (default: two aliases)."
    )
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)


class BattleAnswer(BaseModel):
    message_id: str
    content: str


class BattleResponse(BaseModel):
    id: str
    a: BattleAnswer
    b: BattleAnswer


class VoteRequest(BaseModel):
    winner: Literal["a", "b", "tie", "both_bad"]
    session_id: str | None = Field(
        None, min_length=1, max_length=512, description="A session token (default: the caller's)."
    )


class VoteResponse(BaseModel):
    id: str
    winner: str
    model_a: str | None
    version_a: str | None
    model_b: str | None
    version_b: str | None
    void_reason: str | None = Field(
        None, description="Why this vote does not count (an answer gave its model away)."
    )


class LeaderboardRow(BaseModel):
    model: str
    battles: int
    wins: int
    losses: int
    ties: int
    both_bad: int
    win_rate: float | None
    thumbs_up: int = 0
    thumbs_down: int = 0
    rating: float | None = Field(default=None, description="Elo or Bradley-Terry (base 1000).")
    rating_low: float | None = Field(default=None, description="2.5% bootstrap percentile.")
    rating_high: float | None = Field(default=None, description="97.5% bootstrap percentile.")


class PairwiseRow(BaseModel):
    """How `model` fared against `opponent` (one cell of the win-rate matrix)."""

    model: str
    opponent: str
    battles: int
    wins: int
    losses: int
    ties: int = Field(description="Ties and both-bad verdicts.")
    win_rate: float | None = Field(description="wins / (wins + losses); None if all tied.")


class Leaderboard(BaseModel):
    method: str = Field(description="How rows are ranked: tallies, elo or bt (Bradley-Terry).")
    rows: list[LeaderboardRow]
    pairs: list[PairwiseRow] = Field(default_factory=list, description="Win-rate matrix cells.")


# ---- health / admin --------------------------------------------------------------------------
class Health(BaseModel):
    status: Literal["ok", "degraded", "starting"] = Field(
        description="starting: nothing served yet (the first models are training)."
    )
    backend: str
    aliases: dict[str, str]
    loaded: list[str]
    queued: int
    running: int
    failures: dict[str, str]
    scheduler: Literal["off", "leader", "follower"] = Field(
        "off", description="The nightly retrain schedule here: off, or leading/following it."
    )


class ReloadResponse(BaseModel):
    aliases: dict[str, str]
    loaded: list[str]
    retired: list[str]
    failed: dict[str, str]
    reason: str


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# ---- admin: retrain, promote, roll back --------------------------------------------------------
class RetrainRequest(BaseModel):
    force: bool = Field(False, description="Retrain even with too little new feedback.")


class PromoteRequest(BaseModel):
    version: str = Field(min_length=1, max_length=128, description="A registered version id.")
    alias: str = Field("rlhf", min_length=1, max_length=64)


class RollbackRequest(BaseModel):
    alias: str = Field("rlhf", min_length=1, max_length=64)


class AliasChangeResponse(BaseModel):
    alias: str
    version: str = Field(description="The version the alias points at now.")
    previous: str | None = Field(description="The version it pointed at before.")


class Dashboard(BaseModel):
    """What the dashboard shows (`GET /v1/admin/dashboard`, and the UI's 대시보드 tab)."""

    stats: FeedbackStats
    per_day: list[DayFeedback]
    runs: list[RetrainRunPublic]
    versions: list[Manifest]
    aliases: dict[str, str]
    serving: dict[str, str] = Field(
        default_factory=dict, description="alias -> the version the engine answers with now"
    )
    serving_failures: dict[str, str] = Field(
        default_factory=dict,
        description="alias -> why its registry version is not served (e.g. the engine must be "
        "restarted for a full checkpoint); the old version keeps serving",
    )
    ppo_version: str | None = Field(None, description="The newest policy with a PPO log.")
    ppo_log: list[dict[str, float]] = Field(default_factory=list)
    challenger: dict[str, Any] = Field(default_factory=dict)
    bootstrap: dict[str, Any] = Field(
        default_factory=dict, description="The background bootstrap, as `GET /v1/bootstrap`."
    )
