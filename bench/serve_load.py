"""Load test of `kindchat serve` against its peers, on the same model directory, in one run.

Servers, each a real HTTP server in a subprocess, one after the other:

1. kindchat with continuous batching (`max_batch_size` = clients);
2. kindchat generating one request at a time (`max_batch_size` = 1);
3. `transformers serve` on the same directory, without batching;
4. `transformers serve --continuous-batching` (transformers' paged-attention batching; it
   crashes on GPT-NeoX, so the default model is a Llama);
5. vLLM (`scripts/vllm-cpu serve`: the CPU build in its own venv here; on a GPU host point
   `--vllm` at any `vllm serve`-compatible command), the engine kindchat's `openai` backend
   talks to in production.

Each of `--clients` clients streams `--requests` answers of up to `--max-tokens` tokens (kindchat
gets `min_tokens` = `max_tokens`; `transformers serve` refuses that field, and a random-weight
model rarely says EOS early: tokens/s counts the tokens each server reports). Prints aggregate
completion tokens/s, time to first token p50/p95, and kindchat's ratio to each peer.

    python bench/serve_load.py                                  # random-weight tiny-llama
    python bench/serve_load.py --home /tmp/kc_tiny --alias sft  # a registered model
    python bench/serve_load.py --clients 1 --requests 8          # latency, one client
    python bench/serve_load.py --requests 4 --pairs 6 --skip kindchat "kindchat one at a time" \
        "transformers serve" "transformers serve --continuous-batching" vllm "kindchat → vllm"
                                    # the layer against vLLM alone, with intervals (issue #28)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

logger = logging.getLogger("bench.serve_load")

SERVER = """
import sys, uvicorn
from kindchat.config import Settings
from kindchat.serve.app import create_app
home, alias = sys.argv[1], sys.argv[2]
batch, threads, port = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
settings = Settings(home=home, serve_aliases=[alias], max_batch_size=batch, max_queue=1024,
                    alias_poll_s=0, torch_threads=threads, log_level="WARNING",
                    rate_limits=False)  # one address plays every client
uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
            proxy_headers=False)
"""

SAMPLINGS = ("product", "plain")  # kindchat's default sampling, or plain temperature sampling


def sampling_fields(name: str) -> dict[str, object]:
    """What kindchat and vLLM are both asked to sample with, besides the temperature."""
    if name == "plain":
        return {"top_p": 1.0, "repetition_penalty": 1.0}
    from kindchat.models.generation import DEFAULT_SAMPLING  # lazy, as in prepare_model

    return {
        "top_p": DEFAULT_SAMPLING.top_p,
        "repetition_penalty": DEFAULT_SAMPLING.repetition_penalty,
    }


PROMPTS = [
    "안녕하세요, 오늘 기분이 어때요?",
    "한국의 수도는 어디인가요?",
    "친구에게 생일 축하 메시지를 써 주세요.",
    "건강하게 사는 방법을 알려 주세요.",
]


@dataclass
class RunResult:
    mode: str
    batch_size: int
    requests: int
    tokens: int
    seconds: float
    ttft: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def ttft_pct(self, q: float) -> float:
        ordered = sorted(self.ttft)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def stream_one(
    client: httpx.AsyncClient,
    model: str,
    prompt: str,
    max_tokens: int,
    seed: int,
    extra: dict[str, object],
) -> tuple[float, int]:
    """(time to first token, completion tokens) of one streamed answer."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        **{k: (max_tokens if v == "max_tokens" else v) for k, v in extra.items()},
        "temperature": 0.7,
        "seed": seed,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return (first if first is not None else time.perf_counter() - start), tokens


async def load(
    url: str, model: str, clients: int, requests: int, max_tokens: int, extra: dict[str, object]
) -> tuple[int, float, list[float]]:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await stream_one(client, model, PROMPTS[0], 8, 0, extra)  # warm-up

        async def user(index: int) -> list[tuple[float, int]]:
            return [
                await stream_one(
                    client,
                    model,
                    PROMPTS[(index + r) % len(PROMPTS)],
                    max_tokens,
                    index * 100 + r,
                    extra,
                )
                for r in range(requests)
            ]

        start = time.perf_counter()
        results = await asyncio.gather(*(user(i) for i in range(clients)))
        seconds = time.perf_counter() - start
    flat = [item for per_user in results for item in per_user]
    return sum(t for _, t in flat), seconds, [ttft for ttft, _ in flat]


def start(
    mode: str,
    command: list[str],
    health: str,
    args: argparse.Namespace,
    cwd: Path | None = None,
    **env: str,
) -> tuple[subprocess.Popen[bytes], str] | str:
    """`command` (listening on the port at its end) started and healthy: (process, url), or
    why not."""
    port = free_port()
    full_env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", **env}
    log = open(args.log_dir / f"{mode.replace(' ', '_')}.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [*command, str(port)], env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if httpx.get(f"{url}{health}", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            stop(server)
            return f"did not start (see {log.name})"
        time.sleep(0.2)


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()


def front_env(engine_url: str, alias: str) -> dict[str, str]:
    """What makes a kindchat serve `alias` from the vLLM at `engine_url` (`--backend openai`)."""
    return {
        "KINDCHAT_BACKEND": "openai",
        "KINDCHAT_OPENAI_BASE_URL": f"{engine_url}/v1",
        "KINDCHAT_OPENAI_MODELS": json.dumps([f"{alias}=bench"]),
    }


def run_server(
    mode: str,
    command: list[str],
    health: str,
    model: str,
    batch: int,
    args: argparse.Namespace,
    extra: dict[str, object],
    upstream: list[str] | None = None,
) -> RunResult | str:
    """Start `command`, load it, stop it; the result, or why the server could not be measured.
    With `upstream` (vLLM), that starts first and `command` is kindchat in front of it
    (`--backend openai`)."""
    servers: list[subprocess.Popen[bytes]] = []
    try:
        env: dict[str, str] = {}
        if upstream is not None:
            engine = start(f"{mode} engine", upstream, "/v1/models", args)
            if isinstance(engine, str):
                return engine
            servers.append(engine[0])
            env = front_env(engine[1], args.alias)
        started = start(mode, command, health, args, **env)
        if isinstance(started, str):
            return started
        servers.append(started[0])
        url = started[1]
        logger.info("%s: %d clients x %d requests", mode, args.clients, args.requests)
        spy = None
        if args.profile is not None and upstream is not None:  # the serving process, under load
            spy = subprocess.Popen(
                ["py-spy", "record", "--pid", str(started[0].pid), "--rate", "200"]
                + ["--format", "raw", "--output", str(args.profile), "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # attached
        try:
            tokens, seconds, ttft = asyncio.run(
                load(url, model, args.clients, args.requests, args.max_tokens, extra)
            )
        except httpx.HTTPError as err:
            return f"failed under load: {type(err).__name__} (see {args.log_dir})"
        finally:
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
                spy.wait(60)
                print_profile(args.profile)
    finally:
        for server in reversed(servers):
            stop(server)
    return RunResult(mode, batch, args.clients * args.requests, tokens, seconds, ttft)


# Student's t, 97.5th percentile, by degrees of freedom (a 95% two-sided interval of a mean)
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


def mean_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean with its 95% t interval (none for fewer than two values)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = T975.get(len(values) - 1, 2.0) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def run_pairs(
    kindchat_command: list[str],
    kc_model: str,
    engine_command: list[str],
    args: argparse.Namespace,
    extra: dict[str, object],
) -> list[dict[str, RunResult]] | str:
    """vLLM and kindchat in front of it (and, with `--before`, a second kindchat from that
    checkout) started once, then `args.pairs` rounds that load each once, in an order that
    rotates from round to round: [{mode: result}], or why not."""
    servers: list[subprocess.Popen[bytes]] = []
    rounds: list[dict[str, RunResult]] = []
    try:
        engine = start("pairs engine", engine_command, "/v1/models", args)
        if isinstance(engine, str):
            return engine
        servers.append(engine[0])
        env = front_env(engine[1], args.alias)
        targets = {"vllm": (engine[1], "bench", extra)}
        if args.direct_interval > 1:  # vLLM direct, its clients asking for the layer's interval
            direct = {**extra, "stream_interval": args.direct_interval}
            targets[direct_mode(args.direct_interval)] = (engine[1], "bench", direct)
        fronts = [("kindchat → vllm", None)]
        if args.before is not None:
            fronts.append(("before → vllm", args.before))
        scratch = Path(tempfile.mkdtemp(prefix="kc-bench-pairs-"))
        for number, (mode, checkout) in enumerate(fronts):
            own = {"KINDCHAT_DB_URL": f"sqlite:///{scratch / f'front-{number}.db'}"}  # not shared
            if checkout is not None:  # that checkout's kindchat, ahead of the installed one
                own["PYTHONPATH"] = str(checkout.resolve())
            front = start(
                f"pairs {mode}", kindchat_command, "/healthz", args, cwd=checkout, **env, **own
            )
            if isinstance(front, str):
                return front
            servers.append(front[0])
            targets[mode] = (front[1], kc_model, extra)
        modes = list(targets)
        for index in range(args.pairs):
            runs: dict[str, RunResult] = {}
            for mode in modes[index % len(modes) :] + modes[: index % len(modes)]:
                url, model, fields = targets[mode]
                tokens, seconds, ttft = asyncio.run(
                    load(url, model, args.clients, args.requests, args.max_tokens, fields)
                )
                runs[mode] = RunResult(
                    mode, args.clients, args.clients * args.requests, tokens, seconds, ttft
                )
            rounds.append(runs)
            logger.info(
                "round %d: %s",
                index + 1,
                ", ".join(f"{mode} {run.tokens_per_s:.0f} tok/s" for mode, run in runs.items()),
            )
    except httpx.HTTPError as err:
        return f"failed under load: {type(err).__name__} (see {args.log_dir})"
    finally:
        for server in reversed(servers):
            stop(server)
    return rounds


def direct_mode(interval: int) -> str:
    return f"vllm, {interval} per event"


def print_pairs(console: Console, rounds: list[dict[str, RunResult]]) -> None:
    fronts = [mode for mode in rounds[0] if mode != "vllm"]
    table = Table(title=f"the layer against vLLM, all kept up, {len(rounds)} rotating rounds")
    table.add_column("round", justify="right")
    table.add_column("vLLM tok/s", justify="right")
    for mode in fronts:
        table.add_column(f"{mode}: ÷ vLLM", justify="right")
        table.add_column("TTFT p50 +s", justify="right")
    ratios: dict[str, list[float]] = {mode: [] for mode in fronts}
    extra_ttft: dict[str, list[float]] = {mode: [] for mode in fronts}
    for index, runs in enumerate(rounds, 1):
        engine = runs["vllm"]
        cells = [str(index), f"{engine.tokens_per_s:.0f}"]
        for mode in fronts:
            ratios[mode].append(runs[mode].tokens_per_s / engine.tokens_per_s)
            extra_ttft[mode].append(
                statistics.median(runs[mode].ttft) - statistics.median(engine.ttft)
            )
            cells += [f"{ratios[mode][-1]:.2f}", f"{extra_ttft[mode][-1]:+.3f}"]
        table.add_row(*cells)
    console.print(table)
    for mode in fronts:
        ratio, low, high = mean_interval(ratios[mode])
        ttft, ttft_low, ttft_high = mean_interval(extra_ttft[mode])
        console.print(
            f"{mode}: {ratio:.2f}× [{low:.2f}, {high:.2f}] vLLM's tokens/s; TTFT p50 "
            f"{ttft:+.3f} s [{ttft_low:+.3f}, {ttft_high:+.3f}] against vLLM (mean of "
            f"{len(rounds)} rounds, 95% t intervals)"
        )
    direct = next((mode for mode in fronts if mode.startswith("vllm, ")), None)
    for mode in fronts:  # against vLLM direct with the same events per token as the layer's
        if direct is None or mode == direct:
            continue
        ratio, low, high = mean_interval(
            [runs[mode].tokens_per_s / runs[direct].tokens_per_s for runs in rounds]
        )
        console.print(f"{mode}: {ratio:.2f}× [{low:.2f}, {high:.2f}] the tokens/s of {direct}")
    if "before → vllm" in fronts:
        after, before = "kindchat → vllm", "before → vllm"
        diff = [a - b for a, b in zip(ratios[after], ratios[before], strict=True)]
        mean, low, high = mean_interval(diff)
        console.print(
            f"this checkout − --before: {mean:+.3f} [{low:+.3f}, {high:+.3f}] in ÷ vLLM "
            "(paired by round)"
        )


LINE = re.compile(r":\d+\)$")


def print_profile(path: Path, top: int = 25) -> None:
    """The functions where the serving process spent its samples: self and inclusive shares
    (py-spy's raw format: one collapsed stack per line, then its count)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [LINE.sub(")", frame) for frame in stack.split(";")]  # per function
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    table = Table(title=f"profile of kindchat → vllm under load ({total} samples, {path})")
    for column in ("function", "self %", "inclusive %"):
        table.add_column(column, justify="right" if column != "function" else "left")
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        table.add_row(frame[:90], f"{100 * n / total:.1f}", f"{100 * inclusive[frame] / total:.1f}")
    Console().print(table)


def prepare_model(args: argparse.Namespace) -> tuple[Path, str, Path]:
    """(kindchat home, alias, model directory): the given registry, or a random-weight
    checkpoint of `--preset` imported into a scratch registry."""
    if args.home is not None:
        from kindchat.models.registry import Registry

        return args.home, args.alias, Registry(args.home / "models").resolve(args.alias)
    from kindchat.config import Settings
    from kindchat.models.dummy import write_dummy_checkpoint
    from kindchat.models.importer import import_checkpoint
    from kindchat.models.presets import get_preset
    from kindchat.models.registry import Registry
    from kindchat.seed import corpus_texts

    scratch = Path(tempfile.mkdtemp(prefix="kc-bench-"))
    settings = Settings(home=scratch / "home")
    settings.ensure_dirs()
    source = write_dummy_checkpoint(
        scratch / args.preset, get_preset(args.preset), corpus_texts(settings.data_dir)[:4000]
    )
    registry = Registry(settings.models_dir)
    manifest = import_checkpoint(registry, source, "sft", alias=args.alias)
    return settings.home, args.alias, registry.path(manifest.version)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=None, help="A kindchat home (registry).")
    parser.add_argument("--alias", default="sft")
    parser.add_argument("--preset", default="tiny-llama", help="Shape of the random model.")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2, help="Answers per client.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of every server.")
    parser.add_argument(
        "--sampling",
        choices=SAMPLINGS,
        default="product",
        help="What kindchat and vLLM are asked to sample with (temperature 0.7 in both): "
        "product = kindchat's defaults (top-p 0.95, repetition penalty 1.1), plain = neither.",
    )
    parser.add_argument("--log-dir", type=Path, default=Path("logs/bench"))
    parser.add_argument("--skip", nargs="*", default=[], help="Modes to leave out.")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy the kindchat in front of vLLM while loaded; print its top functions.",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="Also keep vLLM and kindchat in front of it up and load them N times each, "
        "rotating the order (direct, layer; layer, direct; …): the layer's ratio and TTFT difference "
        "with 95%% intervals over the pairs, free of the servers' start-up and of the drift "
        "between separate runs.",
    )
    parser.add_argument(
        "--before",
        type=Path,
        default=None,
        help="With --pairs: a second kindchat in front of the same vLLM, from this checkout "
        "(e.g. `git worktree add /tmp/before <commit>`), loaded in the same rounds.",
    )
    parser.add_argument(
        "--direct-interval",
        type=int,
        default=0,
        help="With --pairs: also load vLLM direct with clients asking for this many tokens per "
        "event (vLLM's stream_interval, as kindchat's openai backend asks: "
        "KINDCHAT_OPENAI_STREAM_INTERVAL), and compare the layer with that too.",
    )
    parser.add_argument(
        "--vllm",
        default=str(Path(__file__).resolve().parents[1] / "scripts" / "vllm-cpu") + " serve",
        help="The command that starts vLLM on a model directory (then its flags).",
    )
    args = parser.parse_args()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    home, alias, directory = prepare_model(args)
    kc_model = f"kindchat-{alias}"
    transformers_cli = shutil.which("transformers") or str(
        Path(sys.executable).with_name("transformers")
    )

    def kindchat(batch: int) -> list[str]:
        return [sys.executable, "-c", SERVER, str(home), alias, str(batch), str(args.threads)]

    def transformers_serve(*flags: str) -> list[str]:
        return [transformers_cli, "serve", str(directory), *flags, "--port"]

    def vllm() -> list[str]:
        from transformers import AutoConfig

        positions = AutoConfig.from_pretrained(str(directory)).max_position_embeddings
        return [
            *args.vllm.split(),
            str(directory),
            "--served-model-name",
            "bench",
            "--max-model-len",
            str(positions),
            "--max-num-seqs",
            str(max(args.clients, 1)),
            "--port",
        ]

    # kindchat and vLLM draw with the same sampling: kindchat sends the engine what it is given,
    # or its own defaults (repetition penalty 1.1, top-p 0.95), which cost vLLM on CPU about
    # twice the work per token of plain temperature sampling; a comparison that lets them
    # differ measures the sampling, not the layer.
    exact = {"min_tokens": "max_tokens", **sampling_fields(args.sampling)}
    plan = [
        ("kindchat", kindchat(args.clients), "/healthz", kc_model, args.clients, exact),
        ("kindchat one at a time", kindchat(1), "/healthz", kc_model, 1, exact),
        ("transformers serve", transformers_serve(), "/v1/models", str(directory), 1, {}),
        (
            "transformers serve --continuous-batching",
            transformers_serve("--continuous-batching"),
            "/v1/models",
            str(directory),
            args.clients,
            {},
        ),
        ("vllm", vllm(), "/v1/models", "bench", args.clients, exact),
    ]
    results: dict[str, RunResult | str] = {}
    for mode, command, health, model, batch, extra in plan:
        if mode in args.skip:
            continue
        results[mode] = run_server(mode, command, health, model, batch, args, extra)
    if "kindchat → vllm" not in args.skip:  # the product's layer in front of the engine
        results["kindchat → vllm"] = run_server(
            "kindchat → vllm",
            kindchat(args.clients),
            "/healthz",
            kc_model,
            args.clients,
            args,
            exact,
            upstream=vllm(),
        )

    table = Table(
        title=f"{args.clients} streaming clients x {args.requests} answers x {args.max_tokens} "
        f"tokens ({directory.name}, {args.threads} torch thread(s) per server, "
        f"{args.sampling} sampling)"
    )
    for column in (
        "server",
        "max batch",
        "answers",
        "tokens",
        "seconds",
        "tokens/s",
        "TTFT p50 s",
        "TTFT p95 s",
        "kindchat ×",
    ):
        table.add_column(column, justify="right")
    ours = results.get("kindchat")
    layer, engine = results.get("kindchat → vllm"), results.get("vllm")
    for mode, run in results.items():
        if isinstance(run, str):
            table.add_row(mode, "", "", "", "", run, "", "", "")
            continue
        ratio = (
            f"{ours.tokens_per_s / run.tokens_per_s:.2f}"
            if isinstance(ours, RunResult) and run is not ours
            else ""
        )
        table.add_row(
            mode,
            str(run.batch_size),
            str(run.requests),
            str(run.tokens),
            f"{run.seconds:.1f}",
            f"{run.tokens_per_s:.0f}",
            f"{statistics.median(run.ttft):.3f}",
            f"{run.ttft_pct(0.95):.3f}",
            ratio,
        )
    console = Console(width=160)
    if results:  # none when every mode was skipped for --pairs
        console.print(table)
        console.print("kindchat ×: kindchat's tokens/s divided by that server's (higher is better)")
    if isinstance(layer, RunResult) and isinstance(engine, RunResult):
        console.print(
            f"kindchat in front of vLLM: {layer.tokens_per_s / engine.tokens_per_s:.2f}× vLLM's "
            f"tokens/s; TTFT p50 {statistics.median(layer.ttft) - statistics.median(engine.ttft):+.3f}"
            " s against vLLM direct"
        )
    if args.pairs > 0:
        paired = run_pairs(kindchat(args.clients), kc_model, vllm(), args, exact)
        if isinstance(paired, str):
            console.print(f"pairs: {paired}")
        else:
            print_pairs(console, paired)


if __name__ == "__main__":
    main()
