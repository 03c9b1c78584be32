"""`kindchat simulate`: simulated users vote in the arena, then one retrain cycle runs.

The loop's end-to-end proof. A kindchat server is started in this process (or `--url` targets a
running one over the same `$KINDCHAT_HOME`); N battles go through its HTTP API
(`POST /v1/arena/battles`, then `/vote`), each judged by a voter that prefers the answer the gold
RM scores higher — with Bradley–Terry randomness (`scale`) and some plain noise (a random vote
with probability `noise`). Then one retrain cycle runs in a niced child process, as the nightly
job would, and the report gives the new policy's win rate over the serving one under the gold
RM with its 95% interval — or why a gate refused.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from kindchat.config import Settings
from kindchat.feedback.models import RetrainRunPublic
from kindchat.models.registry import Registry
from kindchat.retrain.cycle import RetrainConfig
from kindchat.seed import eval_prompt_keys, normalize_prompt, read_ppo_prompts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulateConfig:
    """How the simulated users behave."""

    votes: int = 500  # arena battles voted on
    concurrency: int = 4  # battles in flight (the server batches them)
    noise: float = 0.1  # probability that a user votes at random
    scale: float = 0.5  # Bradley–Terry scale on the gold-RM score gap (0: always the better)
    max_tokens: int = 48  # answer budget per side
    seed: int = 0
    judge_max_length: int = 256  # tokens the gold RM reads

    def __post_init__(self) -> None:
        checks = [
            (self.votes >= 1, f"votes must be >= 1, got {self.votes}"),
            (1 <= self.concurrency <= 64, f"concurrency must lie in 1..64, got {self.concurrency}"),
            (0 <= self.noise <= 1, f"noise must lie in [0, 1], got {self.noise}"),
            (self.scale >= 0, f"scale must be >= 0, got {self.scale}"),
            (self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class GoldVoter:
    """Prefers the answer the gold RM scores higher: P(a) = σ((r_a − r_b) / scale), plus noise."""

    def __init__(self, judge_dir: Path, config: SimulateConfig) -> None:
        from kindchat.models.loading import load_reward_model

        self.model, self.tokenizer = load_reward_model(judge_dir)
        self.config = config
        self.rng = random.Random(config.seed)
        self._lock = threading.Lock()  # one scorer and one RNG shared by the worker threads

    def choose(self, prompt: str, answer_a: str, answer_b: str) -> str:
        from kindchat.retrain.reward import score_texts

        with self._lock:
            score_a, score_b = score_texts(
                self.model,
                self.tokenizer,
                [prompt, prompt],
                [answer_a, answer_b],
                self.config.judge_max_length,
            )
            if self.rng.random() < self.config.noise:
                return self.rng.choice("ab")
            gap = score_a - score_b
            if self.config.scale == 0:
                return "a" if gap > 0 else "b" if gap < 0 else "tie"
            p_a = 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, gap / self.config.scale))))
            return "a" if self.rng.random() < p_a else "b"


def battle_prompts(data_dir: Path, n: int, seed: int) -> list[str]:
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
    import uvicorn

    from kindchat.serve.app import create_app

    port = _free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
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


@dataclass
class BattleTally:
    votes: Counter[str] = field(default_factory=Counter)  # a, b, tie
    wins: Counter[str] = field(default_factory=Counter)  # model version -> battles won
    battles: Counter[str] = field(default_factory=Counter)  # model version -> battles fought


def drive_battles(
    url: str, prompts: list[str], voter: GoldVoter, config: SimulateConfig
) -> BattleTally:
    """One battle per prompt through the HTTP API, voted by `voter`; the tallies."""
    tally = BattleTally()
    lock = threading.Lock()

    def one(index: int, prompt: str, client: httpx.Client) -> None:
        session_id = f"simulated-{config.seed}-{index}"
        battle = client.post(
            "/v1/arena/battles",
            json={
                "prompt": prompt,
                "session_id": session_id,
                "max_tokens": config.max_tokens,
                "seed": config.seed * 100_003 + index,
            },
        )
        battle.raise_for_status()
        body = battle.json()
        winner = voter.choose(prompt, body["a"]["content"], body["b"]["content"])
        vote = client.post(
            f"/v1/arena/battles/{body['id']}/vote",
            json={"winner": winner, "session_id": session_id},
        )
        vote.raise_for_status()
        result = vote.json()
        sides = {"a": result["version_a"] or "?", "b": result["version_b"] or "?"}
        with lock:
            tally.votes[winner] += 1
            for version in sides.values():
                tally.battles[version] += 1
            if winner in sides:
                tally.wins[sides[winner]] += 1

    with (
        httpx.Client(base_url=url, timeout=600) as client,
        ThreadPoolExecutor(config.concurrency) as pool,
    ):
        futures = [pool.submit(one, i, p, client) for i, p in enumerate(prompts)]
        for done, future in enumerate(futures, start=1):
            future.result()
            if done % 50 == 0 or done == len(futures):
                logger.info("simulate: %d/%d battles voted", done, len(futures))
    return tally


def wait_until_served(url: str, alias: str, version: str, timeout_s: float = 60.0) -> bool:
    """Whether the server at `url` serves `version` under `alias` within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < deadline:
            if client.get("/healthz").json().get("aliases", {}).get(alias) == version:
                return True
            time.sleep(0.5)
    return False


@dataclass
class SimulationReport:
    tally: BattleTally
    run: RetrainRunPublic
    served_before: str | None
    served_after: str | None
    hot_swapped: bool | None  # the server answered with the new version (None: not promoted)

    @property
    def gate(self) -> dict[str, Any]:
        return dict((self.run.metrics or {}).get("policy_gate", {}))

    def summary(self) -> str:
        gate, run = self.gate, self.run
        lines = [
            f"{sum(self.tally.votes.values())} votes: {dict(self.tally.votes)}; "
            f"wins per version: {dict(self.tally.wins)} of {dict(self.tally.battles)}",
            f"retrain run {run.id}: {run.status} (stage {run.stage})",
        ]
        if "win_rate" in gate:
            lines.append(
                f"new policy vs {gate.get('baseline')} under the gold RM: win rate "
                f"{gate['win_rate']:.3f} [95% {gate['win_rate_low']:.3f}, "
                f"{gate['win_rate_high']:.3f}] over {gate['n']} prompts; KL to SFT "
                f"{gate['kl_a_sft']:.2f}"
            )
        if run.error:
            lines.append(f"why not promoted: {run.error}")
        if run.promoted:
            lines.append(
                f"promoted {self.served_after} (was {self.served_before}); "
                f"server hot-swapped: {self.hot_swapped}"
            )
        return "\n".join(lines)


def simulate(
    settings: Settings,
    config: SimulateConfig,
    retrain: RetrainConfig,
    url: str | None = None,
) -> SimulationReport:
    """Drive `config.votes` battles (own server unless `url`), then run one retrain cycle."""
    from kindchat.retrain.admin import trigger_retrain

    registry = Registry(settings.models_dir)
    voter = GoldVoter(registry.resolve(retrain.gold_alias), config)
    prompts = battle_prompts(settings.data_dir, config.votes, config.seed)
    served_before = registry.aliases().get(retrain.served_alias)
    server = serve_in_thread(settings) if url is None else _given(url)
    with server as base_url:
        tally = drive_battles(base_url, prompts, voter, config)
        logger.info("simulate: votes %s; running one retrain cycle", dict(tally.votes))
        run = trigger_retrain(settings, config=retrain, wait=True)
        served_after = registry.aliases().get(retrain.served_alias)
        hot_swapped = None
        if run.promoted and served_after is not None:
            hot_swapped = wait_until_served(base_url, retrain.served_alias, served_after)
    return SimulationReport(tally, run, served_before, served_after, hot_swapped)


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url
