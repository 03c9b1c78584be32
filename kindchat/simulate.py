"""`kindchat simulate`: nights of simulated users, end to end, over the HTTP API.

The proof that the loop learns what users want — whatever they want. The users are a plug-in
(:mod:`kindchat.users`: a built-in name or `file.py:factory`); only their votes and thumbs reach
kindchat. Each night, against a kindchat server (started in this process, or `--url` for a
running one over the same `$KINDCHAT_HOME`):

1. **feedback** — the users chat (`POST /v1/chat/completions`, a 👍/👎 through `/v1/feedback`,
   often a regeneration after a 👎) and vote in arena battles (`/v1/arena/battles`, `/vote`);
2. **retrain** — the nightly cycle runs with the default method in a niced child process, as
   the scheduler runs it (guards, then a challenger enters the arena);
3. **challenger** — the same users keep voting in the arena until the challenger phase decides
   (promote or retire); the server decides, from the votes alone;
4. **report** — the users' mean `score` of the model that now serves, on the 100 unseen test
   prompts (mean and 95% interval), and KL to SFT. The score is the plug-in's own measure; it
   never reaches training or any gate.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from tqdm.auto import tqdm

from kindchat.config import Settings
from kindchat.feedback.db import init_db, session_scope
from kindchat.feedback.run_records import get_run
from kindchat.models.registry import Registry
from kindchat.retrain.admin import trigger_retrain
from kindchat.retrain.loop_config import RetrainConfig
from kindchat.seed import eval_prompt_keys, normalize_prompt, read_ppo_prompts, read_rm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulateConfig:
    """How many nights, how much feedback, and how the users reach the server."""

    nights: int = 1
    votes: int = 500  # arena votes + chat thumbs per night, about
    arena_share: float = 0.5  # of a night's prompts, the share that goes to the arena
    concurrency: int = 16  # requests in flight at most (the server batches them)
    max_tokens: int = 48  # answer budget
    challenger_max_battles: int = 2000  # stop driving the arena if still undecided
    score_samples: int = 2  # answers per test prompt for the report
    seed: int = 0
    people: int = 60  # simulated people, each with its own signed session and address
    read_chars_per_s: float = 40.0  # people read an answer before they vote (0: vote at once)

    def __post_init__(self) -> None:
        checks = [
            (self.nights >= 1, f"nights must be >= 1, got {self.nights}"),
            (self.votes >= 1, f"votes must be >= 1, got {self.votes}"),
            (0 <= self.arena_share <= 1, f"arena_share must lie in [0, 1], got {self.arena_share}"),
            (1 <= self.concurrency <= 64, f"concurrency must lie in 1..64, got {self.concurrency}"),
            (self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}"),
            (self.score_samples >= 1, f"score_samples must be >= 1, got {self.score_samples}"),
            (1 <= self.people <= 60_000, f"people must lie in 1..60000, got {self.people}"),
            (self.read_chars_per_s >= 0, "read_chars_per_s must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def night_prompts(data_dir: Any, n: int, seed: int) -> list[str]:
    """`n` user prompts from the seed's step-3 prompts (evaluation prompts left out)."""
    keys = eval_prompt_keys(data_dir)
    pool = [p.prompt for p in read_ppo_prompts(data_dir) if normalize_prompt(p.prompt) not in keys]
    rng = random.Random(seed)
    return rng.sample(pool, n) if n <= len(pool) else [rng.choice(pool) for _ in range(n)]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_in_thread(settings: Settings, timeout_s: float = 300.0) -> Iterator[str]:
    """A kindchat server on 127.0.0.1 in a daemon thread; yields its URL."""

    from kindchat.serve.app import create_app  # lazy: not needed with --url

    port = _free_port()
    # The simulator is the one proxy in front of its many people: trust its X-Forwarded-For.
    settings = settings.model_copy(update={"trusted_proxies": ["127.0.0.1"]})
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="kindchat-simulate-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the kindchat server did not start; see the log")
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


def person_address(index: int) -> str:
    """A private address per simulated person (10.77.0.1, 10.77.0.2, …)."""
    return f"10.77.{index // 250}.{index % 250 + 1}"


class Users:
    """The plug-in at the end of an HTTP client: chats, rates, votes; counts what it did.

    `config.people` simulated people share the work; each has its own signed session (from
    POST /v1/sessions), its own address (X-Forwarded-For, read by a server that trusts the
    simulator as its proxy), and reads an answer before voting on it, as a person would."""

    def __init__(self, client: httpx.Client, users: Any, config: SimulateConfig) -> None:
        self.client = client
        self.users = users
        self.config = config
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._rng = random.Random(config.seed)
        self._people: dict[int, dict[str, str]] = {}
        # People read at once, each at their pace; what they send waits for one of
        # `concurrency` slots (the server batches what is in flight).
        self._in_flight = threading.BoundedSemaphore(config.concurrency)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def person(self, index: int) -> dict[str, str]:
        """The headers of person `index % people` (its session made on first use)."""
        index %= self.config.people
        with self._lock:
            known = self._people.get(index)
        if known is not None:
            return known
        address = {"X-Forwarded-For": person_address(index)}
        made = self._post("/v1/sessions", {}, address)
        headers = {**address, "Authorization": f"Bearer {made['token']}"}
        with self._lock:
            return self._people.setdefault(index, headers)

    def _post(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        for _ in range(20):  # a polite client: 429 -> wait as told, then again
            with self._in_flight:
                response = self.client.post(path, json=body, headers=headers)
            if response.status_code != 429:
                break
            self._count("rate_limited")
            time.sleep(float(response.headers.get("retry-after", "1")))
        if response.status_code >= 400:
            raise RuntimeError(f"POST {path} -> {response.status_code}: {response.text[:300]}")
        return dict(response.json())

    def _read(self, *texts: str) -> None:
        if self.config.read_chars_per_s > 0:
            time.sleep(sum(map(len, texts)) / self.config.read_chars_per_s)

    def battle(self, prompt: str, who: int, seed: int) -> dict[str, Any]:
        headers = self.person(who)
        body = self._post(
            "/v1/arena/battles",
            {"prompt": prompt, "max_tokens": self.config.max_tokens, "seed": seed},
            headers,
        )
        a, b = body["a"]["content"], body["b"]["content"]
        winner = self.users.vote(prompt, a, b)
        self._read(a, b)
        result = self._post(f"/v1/arena/battles/{body['id']}/vote", {"winner": winner}, headers)
        self._count(f"vote_{winner}")
        return result

    def chat(self, prompt: str, who: int, seed: int) -> None:
        headers = self.person(who)
        messages = [{"role": "user", "content": prompt}]
        request = {
            "model": "kindchat-rlhf",
            "messages": messages,
            "max_tokens": self.config.max_tokens,
            "seed": seed,
        }
        reply = self._post("/v1/chat/completions", request, headers)
        value = self._rate(prompt, reply, headers)
        with self._lock:
            retry = value == -1 and self._rng.random() < 0.5
        if retry:  # a 👎 often makes people try again: a sibling answer, rated too
            again = self._post(
                "/v1/chat/completions",
                {**request, "seed": seed + 1, "regenerate": reply["id"]},
                headers,
            )
            self._rate(prompt, again, headers)
            self._count("regenerations")

    def _rate(self, prompt: str, reply: dict[str, Any], headers: dict[str, str]) -> int | None:
        text = reply["choices"][0]["message"]["content"] or ""
        value = self.users.rate(prompt, text)
        if value is None:
            self._count("no_rating")
            return None
        self._read(text)
        self._post("/v1/feedback", {"message_id": reply["id"], "rating": value}, headers)
        self._count("thumb_up" if value > 0 else "thumb_down")
        return int(value)


def drive(tasks: list[tuple[int, Any]], people: int, desc: str) -> None:
    """Run `(person, task)` pairs as people do: every person at once, each one's tasks in
    order (one person never votes on two things at the same time, so the anomaly rules see
    the pace a person has); requests in flight are capped in :class:`Users`."""
    queues: dict[int, list[Any]] = {}
    for person, task in tasks:
        queues.setdefault(person % people, []).append(task)
    with tqdm(total=len(tasks), desc=desc, leave=False) as bar:

        def one_person(queue: list[Any]) -> None:
            for task in queue:
                task()
                bar.update(1)

        with ThreadPoolExecutor(max(1, len(queues))) as pool:
            for future in [pool.submit(one_person, queue) for queue in queues.values()]:
                future.result()


@dataclass
class NightReport:
    night: int
    feedback: dict[str, int]
    run: dict[str, Any]
    challenger: dict[str, Any] | None
    served_before: str
    served_after: str
    score: dict[str, float]
    kl_sft: float | None
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "night": self.night,
            "feedback": self.feedback,
            "run": self.run,
            "challenger": self.challenger,
            "served_before": self.served_before,
            "served_after": self.served_after,
            "score": self.score,
            "kl_sft": self.kl_sft,
            "seconds": round(self.seconds, 1),
        }


def served_version(registry: Registry) -> str:
    aliases = registry.aliases()
    return aliases.get("rlhf") or aliases["sft"]


def score_served(settings: Settings, users: Any, config: SimulateConfig) -> tuple[Any, Any]:
    """The users' mean score of the serving policy on the unseen test prompts; KL to SFT."""
    from kindchat.retrain.user_eval import score_policy  # lazy: torch, only when scoring

    registry = Registry.for_settings(settings)
    prompts = [p.prompt for p in read_rm(settings.data_dir, "test")]
    scores = score_policy(
        registry.resolve(served_version(registry)),
        prompts,
        users.score,
        sft_dir=registry.resolve("sft"),
        samples=config.score_samples,
    )
    return scores.mean, scores.kl_sft


def run_night(
    night: int,
    settings: Settings,
    url: str,
    users: Any,
    config: SimulateConfig,
    retrain: RetrainConfig,
) -> NightReport:
    start = time.perf_counter()
    registry = Registry.for_settings(settings)
    before = served_version(registry)
    prompts = night_prompts(settings.data_dir, config.votes, config.seed * 1000 + night)
    n_arena = round(len(prompts) * config.arena_share)
    with httpx.Client(base_url=url, timeout=600) as client:
        actor = Users(client, users, config)
        tasks = [
            (i, lambda p=p, i=i: actor.battle(p, i, night * 100_000 + i))
            for i, p in enumerate(prompts[:n_arena])
        ] + [
            (n_arena + i, lambda p=p, i=i: actor.chat(p, n_arena + i, night * 100_000 + i))
            for i, p in enumerate(prompts[n_arena:])
        ]
        drive(tasks, config.people, f"night {night}: feedback")
        feedback = dict(actor.counts)
        logger.info("night %d feedback: %s", night, feedback)
        run = trigger_retrain(settings, config=retrain, wait=True)
        challenger = None
        if run.status == "challenging":
            pool = night_prompts(settings.data_dir, 2000, config.seed * 1000 + night + 500)
            challenger = judge_challenger(client, actor, config, night, pool)
    with session_scope(init_db(settings)) as session:
        final = get_run(session=session, run_id=run.id)
    mean, kl = score_served(settings, users, config)
    return NightReport(
        night=night,
        feedback=feedback,
        run={
            "id": final.id,
            "status": final.status,
            "stage": final.stage,
            "error": final.error,
            "method": retrain.method,
            "guards": (final.metrics or {}).get("guards", {}).get("passed"),
            "produced": final.produced_versions,
        },
        challenger=challenger,
        served_before=before,
        served_after=served_version(Registry.for_settings(settings)),
        score=mean.as_dict(),
        kl_sft=kl,
        seconds=time.perf_counter() - start,
    )


def judge_challenger(
    client: httpx.Client, actor: Users, config: SimulateConfig, night: int, pool: list[str]
) -> dict[str, Any] | None:
    """Keep the users voting in the arena until the server decides the challenge; the
    decision as the server recorded it (or the open record when it stayed undecided)."""
    battles = 0
    chunk_size = max(4 * config.concurrency, config.people)
    with tqdm(desc=f"night {night}: challenger", leave=False) as bar:
        while battles < config.challenger_max_battles:
            state = client.get("/v1/challenger").json()
            if state["active"] is None:
                history = state["history"]
                return dict(history[0]) if history else None
            chunk = [
                (k, lambda k=k: actor.battle(pool[k % len(pool)], k, night * 1_000_000 + k))
                for k in range(battles, battles + chunk_size)
            ]
            drive(chunk, config.people, "arena")
            battles += len(chunk)
            bar.update(len(chunk))
    state = client.get("/v1/challenger").json()
    return {"undecided_after": battles, **(state["active"] or {})}


def simulate(
    settings: Settings,
    users: Any,
    config: SimulateConfig,
    retrain: RetrainConfig,
    url: str | None = None,
) -> list[NightReport]:
    """Run `config.nights` nights (own server unless `url`); one report per night."""
    mean, kl = score_served(settings, users, config)
    start_version = served_version(Registry.for_settings(settings))
    logger.info("start: %s, users' score %s, KL %.3f", start_version, mean, kl or 0.0)
    reports = [NightReport(0, {}, {}, None, start_version, start_version, mean.as_dict(), kl, 0.0)]
    server = serve_in_thread(settings) if url is None else _given(url)
    with server as base_url:
        for night in range(1, config.nights + 1):
            reports.append(run_night(night, settings, base_url, users, config, retrain))
    return reports
