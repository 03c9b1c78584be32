"""One settings object for the whole product (pydantic-settings, `KINDCHAT_*` env, CLI overrides)."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# `../shared/data/vaiv` beside the checkout: kindchat/config.py -> kindchat -> checkout -> parent.
_CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = _CHECKOUT.parent / "shared" / "data" / "vaiv"


class Settings(BaseSettings):
    """Every setting of the product, one flat object grouped by concern (a comment opens each
    group; most groups share a name prefix):

    1. state and seed data — `home`, `registry_dir`, `data_dir`, `log_level`;
    2. the feedback store and the G-Eval judge — `db_url`, `judge_*`;
    3. moderation — `moderation_*`;
    4. serving: the backend, the engine's batch and limits, the API — `host`, `port`,
       `backend`, `openai_*`, `tgi_url`, `serve_aliases`, `max_*`, `default_max_tokens`,
       `admin_token`, `public_url`, `metrics_public`, …;
    5. the nightly retrain — `retrain_*`, `background_preset`;
    6. promotion and the challenger phase — `promotion`, `challenger_*`;
    7. who may speak and how often — `access_mode`, `session_*`, `api_keys`,
       `trusted_proxies`, `rate_limit*`;
    8. what one voice may weigh in training — `influence_*`, `anomaly_*`.

    Every field reads `KINDCHAT_<NAME>` from the environment. CLI flags default to "not given"
    and override a field only when given; method hyper-parameters are not settings but fields of
    each method's config (`retrain/*.py`), defaulted there.
    """

    model_config = SettingsConfigDict(env_prefix="KINDCHAT_", extra="ignore")

    home: Path = Field(Path("var"), description="State: models, database, logs, runs.")
    registry_dir: Path | None = Field(
        None,
        description="The model registry; default $KINDCHAT_HOME/models. Several hosts point this "
        "at one shared directory (NFS, a volume) and keep their own home.",
    )
    data_dir: Path = Field(
        DEFAULT_DATA_DIR, description="Seed data (sft/, rm/, geval_scores/, ppo/)."
    )
    log_level: str = Field("INFO", description="Log level of the console and the log file.")

    # Feedback store and judge (kindchat.feedback).
    db_url: str | None = Field(
        None, description="Feedback database URL; default SQLite at $KINDCHAT_HOME/kindchat.db."
    )
    judge_base_url: str | None = Field(
        None, description="OpenAI-compatible judge/generator endpoint; default: OpenAI's."
    )
    judge_model: str = Field("gpt-4", description="Model name sent to the judge endpoint.")
    judge_api_key: SecretStr | None = Field(
        None, description="Judge endpoint key; default $OPENAI_API_KEY (local servers need none)."
    )
    judge_concurrency: int = Field(4, ge=1, le=64, description="Judge requests in flight.")
    judge_timeout_s: float = Field(60.0, gt=0, description="Seconds per judge request.")
    judge_max_retries: int = Field(4, ge=0, description="Retries on timeouts, 429 and 5xx.")

    # Moderation of what users send and what answers say (kindchat.feedback.moderation).
    moderation_lexicon: Path | None = Field(
        None, description="A moderation lexicon (JSON) instead of kindchat's (feedback/data)."
    )
    moderation_base_url: str | None = Field(
        None, description="An OpenAI-compatible /moderations endpoint, asked after the lexicon."
    )
    moderation_api_key: str = Field("EMPTY", description="API key of the moderation endpoint.")
    moderation_model: str | None = Field(None, description="Model of the moderation endpoint.")

    # Serving (kindchat.serve, kindchat.models.backends / engine / manager).
    host: str = Field("127.0.0.1", description="Address `kindchat serve` listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port of `kindchat serve` (0: any free).")
    backend: str = Field(
        "hf",
        pattern="^(hf|deepspeed|tgi|openai)$",
        description=(
            "Generation backend: hf (transformers, in process), deepspeed, openai (an "
            "OpenAI-compatible server: vLLM, SGLang, llama.cpp, transformers serve), or tgi "
            "(a Text Generation Inference server; in maintenance upstream since Dec 2025)."
        ),
    )
    tgi_url: str | None = Field(None, description="TGI server URL for backend=tgi.")
    openai_base_url: str | None = Field(
        None, description="Base URL (…/v1) of the OpenAI-compatible server for backend=openai."
    )
    openai_api_key: str = Field("EMPTY", description="API key for backend=openai.")
    openai_models: list[str] = Field(
        default_factory=list,
        description=(
            "Served model name per alias for backend=openai: 'alias=name' items, or one bare "
            "name for every alias (empty: the server's first model)."
        ),
    )
    openai_stream_interval: int = Field(
        4,
        ge=1,
        description="backend=openai on vLLM: tokens per streamed event to ask the engine for "
        "(vLLM's `stream_interval`; the first token still comes alone, at once). The layer's "
        "work is per event: 4 makes it about a quarter per token. 1: one event per token. "
        "Other servers always stream per token.",
    )
    openai_lora: bool = Field(
        False,
        description="backend=openai on a vLLM with --enable-lora and runtime LoRA updating: "
        "serve the registry's aliases through it, loading LoRA adapter versions as aliases "
        "move (promotion without a restart; kindchat/models/vllm.py).",
    )
    openai_registry_dir: Path | None = Field(
        None,
        description="The model registry as the vLLM server sees it, for adapter paths (unset: "
        "the same path as here).",
    )
    device: str | None = Field(None, description="Torch device for local backends (auto if unset).")
    torch_threads: int | None = Field(
        None, ge=1, description="CPU threads for torch in `serve` (unset: torch's default)."
    )
    serve_aliases: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["rlhf", "sft"],
        description="Registry aliases served as `kindchat-<alias>` (comma-separated, or a JSON "
        "list); the first is the default.",
    )
    max_batch_size: int = Field(16, ge=1, le=1024, description="Sequences generated together.")
    max_queue: int = Field(64, ge=0, description="Requests waiting beyond the batch; then 429.")
    max_input_chars: int = Field(8000, ge=1, description="Characters over all messages, at most.")
    max_input_tokens: int = Field(1536, ge=1, description="Prompt tokens after the template.")
    default_max_tokens: int = Field(128, ge=1, description="max_tokens when a request sets none.")
    max_tokens_limit: int = Field(1024, ge=1, description="Largest max_tokens a request may ask.")
    alias_poll_s: float = Field(
        2.0, ge=0, description="Seconds between aliases.json checks (0: off)."
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token for /v1/admin/*; admin routes are off when unset."
    )
    retry_after_s: int = Field(2, ge=1, description="Retry-After sent with 429/503.")
    public_url: str | None = Field(
        None,
        pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
        description="The address users reach kindchat at (https://chat.example.kr): share links "
        "are built from it, never from a request's Host. Unset: http://<host>:<port> of a "
        "specific bind, a path alone (/shared/…) on a wildcard bind.",
    )
    metrics_public: bool | None = Field(
        None,
        description="Serve /metrics to anyone; off: only with the admin token. Unset: public on "
        "a loopback bind (127.0.0.1, ::1, localhost) without trusted proxies, admin-only "
        "otherwise.",
    )

    # What is kept, and for how long (README "What kindchat keeps").
    retention_days: float | None = Field(
        None,
        gt=0,
        description="Remove a conversation, its ratings and its battles this many days after "
        "its last message, on the scheduler (and with `kindchat feedback purge`); unset: keep.",
    )
    retention_check_s: float = Field(
        3600.0, gt=0, description="How often the scheduler removes what retention_days expired."
    )

    # Nightly retraining (kindchat.retrain.cycle / scheduler).
    retrain_schedule: bool = Field(
        False, description="Run the retrain scheduler inside `kindchat serve`."
    )
    retrain_cron: str = Field(
        "0 3 * * *", description="When to retrain (crontab: m h dom mon dow)."
    )
    retrain_timezone: str = Field("Asia/Seoul", description="Time zone of retrain_cron.")
    retrain_misfire_grace_s: int = Field(
        3600, ge=1, description="A run missed while down still starts this many seconds late."
    )
    retrain_leader_check_s: float = Field(
        15.0,
        gt=0,
        description="How often a server that does not lead the schedule checks whether the "
        "leader is gone (and takes over).",
    )
    retrain_preset: str = Field("tiny", description="Budgets of a retrain cycle (micro, tiny).")
    retrain_method: str = Field(
        "kto",
        description="The nightly preference method: a name in kindchat.retrain.methods.METHODS.",
    )
    retrain_min_new_pairs: int = Field(
        50,
        ge=0,
        description="Training rows (pairs, and single thumbs for KTO) needed in the night's "
        "window (retrain_window_days), else skip.",
    )
    retrain_window_days: float | None = Field(
        30.0,
        gt=0,
        description="A night trains on the feedback of this many days (unset: all of it); the "
        "check, the anomaly judgement and the export share the window (docs/learning.md).",
    )
    retrain_judge: bool = Field(
        False, description="Re-rank feedback pairs with the G-Eval judge (KINDCHAT_JUDGE_*)."
    )
    adapter: str = Field(
        "auto",
        pattern="^(auto|lora|full)$",
        description="What a night registers: lora (a LoRA adapter over the serving policy's "
        "base), full (a whole checkpoint), or auto (lora once the policy is an adapter or its "
        "base has 1B parameters or more; docs/serving.md).",
    )
    background_preset: str | None = Field(
        None,
        description="While serving, bootstrap this preset (e.g. tiny) in a niced background "
        "process; each stage hot-swaps in as it lands. Unset: no background training.",
    )
    first_preset: str | None = Field(
        "micro",
        description="When a server with a background preset starts with no model at all, this "
        "small preset's base LM and SFT train first, at full priority (~20 s on 2 cores), and "
        "answer until the background preset's models land. Unset: wait for those.",
    )
    retrain_nice: int = Field(10, ge=0, le=19, description="os.nice of the training process.")
    # Who promotes a retrained policy: the users in the arena, or the gold RM offline.
    promotion: str = Field(
        "arena",
        pattern="^(arena|offline)$",
        description="arena: a challenger phase decides from votes; offline: the gold-RM gate.",
    )
    challenger_share: float = Field(
        0.5, ge=0, le=1, description="Share of new arena battles given to the challenger."
    )
    challenger_min_votes: int = Field(
        40, ge=1, description="Challenger-vs-champion votes before any decision."
    )
    challenger_rule: str = Field(
        "sequential",
        pattern="^(sequential|fixed)$",
        description="sequential: decide as soon as a test valid at every look allows "
        "(bench/challenger_decisions.py); fixed: the 95% interval from challenger_min_votes on.",
    )
    challenger_deadline_hours: float = Field(
        24.0, gt=0, description="An undecided challenger is retired after this long."
    )
    challenger_check_s: float = Field(
        60.0, ge=0, description="How often a server checks the challenger's deadline (0: never)."
    )
    challenger_min_sessions: int = Field(
        20, ge=1, description="Distinct voting sessions needed before a challenger is decided."
    )
    challenger_votes_per_session: int = Field(
        5, ge=1, description="Votes of one session that count in a challenger's record, at most."
    )
    challenger_min_origins: int = Field(
        10,
        ge=1,
        description="Distinct origins (client addresses; each API key's session its own) needed "
        "before a challenger is decided.",
    )
    challenger_votes_per_origin: int = Field(
        20, ge=1, description="Votes of one origin (all its sessions) that count, at most."
    )

    # Who may speak (kindchat.serve.auth) and how often (kindchat.serve.ratelimit).
    access_mode: str = Field(
        "open",
        pattern="^(open|keyed)$",
        description="open: anyone may get a signed session (POST /v1/sessions, the UI's cookie) "
        "and chat without one; keyed: every API call needs an API key or a session minted with "
        "one (the UI still issues its cookie sessions, limited per address).",
    )
    session_secret: SecretStr | None = Field(
        None,
        description="Signs session tokens and cookies; default: generated on first start and "
        "kept in $KINDCHAT_HOME/session_secret. Servers behind one load balancer share one.",
    )
    session_secrets_old: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Earlier secrets, comma-separated: their tokens are still accepted (rotation).",
    )
    session_max_age_s: int = Field(
        30 * 24 * 3600, ge=60, description="Seconds a session token or cookie stays valid."
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="API keys, comma-separated, each 'name:key' (or a bare key, named by its "
        "hash); a key speaks as one client, `key:<name>`.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Addresses or networks (comma-separated) of reverse proxies whose "
        "X-Forwarded-For names the client; from anyone else the header is ignored.",
    )
    rate_limits: bool = Field(True, description="Rate-limit chat, feedback, arena and sessions.")
    rate_limit_storage: str = Field(
        "memory://",
        description="Where the counters live (the `limits` library's URI): memory:// per "
        "process; redis://host:6379 to share them between servers.",
    )
    rate_limit_strategy: str = Field(
        "sliding-window-counter",
        pattern="^(sliding-window-counter|fixed-window|moving-window)$",
        description="The `limits` strategy: sliding-window-counter (two counters a limit), "
        "fixed-window (one; bursts at window edges), moving-window (exact, costs a timestamp a "
        "hit).",
    )
    rate_limit_session: str = Field(
        "30/minute",
        description="Per signed session and endpoint group (chat, …). With memory:// keep the "
        "windows short (every live key is swept 100 times a second); day limits want redis://.",
    )
    rate_limit_api_key: str = Field("600/minute", description="Per API key and endpoint group.")
    rate_limit_address: str = Field(
        "120/minute", description="Per client address and endpoint group (anonymous, open mode)."
    )
    rate_limit_new_sessions: str = Field(
        "20/hour", description="New sessions per client address (POST /v1/sessions, UI cookies)."
    )

    # What one voice may weigh in a night's training data (kindchat.feedback.influence).
    influence_cap_share: float = Field(
        0.02, ge=0, le=1, description="One session's share of a night's feedback rows, at most…"
    )
    influence_cap_min: int = Field(20, ge=1, description="…or this many rows if that is more.")
    influence_origin_cap_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="All sessions minted for one client address together, at most this share…",
    )
    influence_origin_cap_min: int = Field(
        100, ge=1, description="…or this many rows if that is more."
    )
    anomaly_filter: bool = Field(
        True, description="Leave out votes of sessions that vote like a script (manifest counts)."
    )
    anomaly_read_chars_per_s: float = Field(
        60.0,
        gt=0,
        description="A vote sooner after its answer than this reading speed allows "
        "is too fast for a person.",
    )
    anomaly_min_votes: int = Field(
        10, ge=2, description="Votes a session needs before its pattern is judged."
    )

    def share_base(self) -> str:
        """What share links start with (no trailing slash; "" for a path-only link)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        if self.host in ("0.0.0.0", "::", "") or self.port == 0:
            return ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def metrics_open(self) -> bool:
        """Whether /metrics answers without the admin token (`metrics_public`)."""
        if self.metrics_public is not None:
            return self.metrics_public
        # Behind a trusted proxy a loopback bind still serves the internet: admin-only then.
        return not self.trusted_proxies and self.host in ("127.0.0.1", "::1", "localhost")

    @field_validator("session_secrets_old", "api_keys", "trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("serve_aliases", mode="before")
    @classmethod
    def _alias_list(cls, value: Any) -> Any:
        """`sft,rlhf` or a JSON list (`["rlhf"]`, as compose.yaml writes it)."""
        if isinstance(value, str) and value.lstrip().startswith("["):
            return json.loads(value)
        return cls._comma_separated(value)

    @cached_property
    def models_dir(self) -> Path:
        return self.registry_dir if self.registry_dir is not None else self.home / "models"

    @cached_property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @cached_property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    def ensure_dirs(self) -> None:
        for path in (self.home, self.models_dir, self.logs_dir, self.runs_dir):
            path.mkdir(parents=True, exist_ok=True)
