"""Shared fixtures (seed data dir, fresh settings, micro models bootstrapped once per session) and
the suite's hooks: `slow` and `browser` marks read from the fixtures a test uses, two speed-ups."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from kindchat.config import DEFAULT_DATA_DIR, Settings
from tests.helpers import free_port, server_process

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Fixtures that make a test slow wherever it is: a real PostgreSQL or redis server, or a second
# bootstrapped model family (~45 s of training). `scripts/test --fast` leaves such tests out.
SLOW_FIXTURES = frozenset(
    {
        "postgres_server",
        "postgres_url",
        "redis_url",
        "micro_llama_settings",
        "micro_llama_copy",
        "vllm_server",
    }
)


def freeze_heap() -> None:
    """Collect garbage, then move every live object to the collector's permanent generation
    (`gc.freeze`): later collections skip them. Each model a test server closes runs
    `gc.collect()`; over the heap of torch, transformers and gradio that takes ~0.3 s, and the
    suite closes hundreds of models. Objects made afterwards are collected as usual."""
    import gc

    gc.collect()
    gc.freeze()


def pytest_collection_finish(session: pytest.Session) -> None:
    freeze_heap()  # every test module and the libraries it imports are loaded by now


def share_tls_context() -> None:
    """One default TLS context for every httpx client the tests make.

    Each `httpx.get(...)`/`httpx.post(...)` builds a client, and each client a TLS context that
    parses the whole CA bundle (30-60 ms), although the tests speak plain HTTP to 127.0.0.1:
    hundreds of calls, tens of seconds. A client asking for the default context (verify on,
    no client certificate) gets one built once; any other request builds its own as before.
    Skipped when httpx's transport module no longer has this hook (a speed-up, nothing more).
    """
    try:
        from httpx._transports import default as transport
    except ImportError:  # pragma: no cover - another httpx layout
        return
    make = getattr(transport, "create_ssl_context", None)
    if make is None:  # pragma: no cover
        return
    shared = make()

    def create_ssl_context(
        verify: object = True, cert: object = None, trust_env: bool = True
    ) -> object:
        if verify is True and cert is None and trust_env:
            return shared
        return make(verify=verify, cert=cert, trust_env=trust_env)

    transport.create_ssl_context = create_ssl_context


def pytest_configure(config: pytest.Config) -> None:
    share_tls_context()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `slow` every test that uses a fixture of `SLOW_FIXTURES`, by argument or through a
    parameter that names it (`request.getfixturevalue(param)`), and `browser` every test that
    uses the `browser` fixture (headless Chromium, tests/ui/conftest.py)."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        named = {value for value in params.values() if isinstance(value, str)}
        fixtures = set(getattr(item, "fixturenames", ())) | named
        if SLOW_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)
        if "browser" in fixtures:
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("KINDCHAT_DATA_DIR", DEFAULT_DATA_DIR))
    if not (path / "sft").is_dir():
        pytest.fail(f"seed data not found at {path}; set KINDCHAT_DATA_DIR")
    return path


@pytest.fixture
def settings(tmp_path: Path, data_dir: Path) -> Settings:
    """Fresh, empty state for one test."""
    s = Settings(home=tmp_path / "home", data_dir=data_dir)
    s.ensure_dirs()
    return s


@pytest.fixture(scope="session")
def micro_settings(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Settings:
    """Settings whose registry holds micro `base` and `sft` models (bootstrapped once, ~30 s).

    Treat it as read-only: tests that register versions or move aliases copy it first
    (see `micro_copy`).
    """
    from kindchat.models.presets import get_preset
    from kindchat.retrain.bootstrap import run_bootstrap

    s = Settings(home=tmp_path_factory.mktemp("micro") / "home", data_dir=data_dir)
    run_bootstrap(s, get_preset("micro"))
    freeze_heap()  # what training imported and cached stays for the session
    return s


@pytest.fixture(scope="session")
def micro_llama_settings(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Settings:
    """Like `micro_settings`, on the Llama family (preset `micro-llama`, ~50 s). Read-only."""
    from kindchat.models.presets import get_preset
    from kindchat.retrain.bootstrap import run_bootstrap

    s = Settings(home=tmp_path_factory.mktemp("micro-llama") / "home", data_dir=data_dir)
    run_bootstrap(s, get_preset("micro-llama"))
    return s


def copy_home(settings: Settings, tmp_path: Path) -> Settings:
    """A private, writable copy of `settings`' registry and state under `tmp_path`."""
    import shutil

    home = tmp_path / "home"
    shutil.copytree(settings.home, home, ignore=shutil.ignore_patterns("logs", "runs"))
    s = Settings(home=home, data_dir=settings.data_dir)
    s.ensure_dirs()
    return s


@pytest.fixture
def micro_copy(micro_settings: Settings, tmp_path: Path) -> Settings:
    """A private, writable copy of the micro registry for one test."""
    return copy_home(micro_settings, tmp_path)


@pytest.fixture
def micro_llama_copy(micro_llama_settings: Settings, tmp_path: Path) -> Settings:
    """A private, writable copy of the micro Llama registry for one test."""
    return copy_home(micro_llama_settings, tmp_path)


# ---- a real PostgreSQL for the store tests ---------------------------------------------------
def _pg_bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (initdb + pg_ctl, run as the `postgres` user
    when the tests run as root: the server refuses root); its base URL. Skipped only where no
    server binary is installed (`.ci/run` installs one)."""
    import getpass
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile

    bindir = _pg_bindir()
    if bindir is None:
        if os.environ.get("KINDCHAT_REQUIRE_POSTGRES"):
            pytest.fail("no PostgreSQL server binary: apt-get install -y postgresql")
        pytest.skip("no PostgreSQL server binary (apt-get install -y postgresql)")
    root = Path(tempfile.mkdtemp(prefix="kc-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    elif getpass.getuser() == "root":  # pragma: no cover
        pytest.skip("cannot drop root to run PostgreSQL")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    data = root / "data"

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    run(
        str(bindir / "initdb"),
        "-D",
        str(data),
        "-A",
        "trust",
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--no-sync",
    )
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    )
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(root / "log"),
        "-w",
        "start",
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the session's PostgreSQL server, for one test."""
    import uuid

    import psycopg

    name = f"kc_{uuid.uuid4().hex[:12]}"
    plain = postgres_server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(f"{plain}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_server}/{name}"


def _new_session(url: str, **headers: str) -> str:
    """A signed session token from the server at `url` (POST /v1/sessions), as a client gets."""
    import httpx

    made = httpx.post(f"{url}/v1/sessions", headers=headers, timeout=30)
    assert made.status_code == 201, made.text
    return str(made.json()["token"])


@pytest.fixture(scope="session")
def new_session() -> object:
    """`new_session(url, **headers)`: a signed session token from a running server."""
    return _new_session


# ---- a real redis-server for the shared rate-limit counters ------------------------------------
@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on 127.0.0.1 (Debian's package; `.ci/run` installs it), no
    persistence; its URL. Skipped only where no server binary is installed."""
    import shutil
    import socket
    import subprocess
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("KINDCHAT_REQUIRE_REDIS"):
            pytest.fail("no redis-server binary: apt-get install -y redis-server")
        pytest.skip("no redis-server binary (apt-get install -y redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("redis-server did not start")
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


# ---- a real vLLM (its CPU build) for the openai backend and the adapter loop -----------------
@dataclass(frozen=True)
class VllmServer:
    url: str  # …/v1
    pid: int
    base_version: str  # the registered version it serves, under its version id
    directory: Path
    log: Path


@pytest.fixture(scope="session")
def vllm_server(micro_llama_settings: Settings) -> Iterator[VllmServer]:
    """vLLM's CPU build (`scripts/vllm-cpu`: its own venv, built once into ~/.cache and reused)
    serving the micro Llama's `rlhf` version under its version id, with LoRA adapters loadable
    at run time — as compose.yaml runs it on a GPU. Skipped where the venv cannot be built (no
    package index), unless KINDCHAT_REQUIRE_VLLM is set (`.ci/run`): then it fails."""
    import subprocess

    from kindchat.models.registry import Registry

    script = Path(__file__).resolve().parents[1] / "scripts" / "vllm-cpu"
    required = bool(os.environ.get("KINDCHAT_REQUIRE_VLLM"))
    logs = micro_llama_settings.home.parent / "vllm"
    logs.mkdir(exist_ok=True)
    built = subprocess.run(
        [str(script), "install"], capture_output=True, text=True, timeout=1800, check=False
    )
    if built.returncode != 0:
        (logs / "install.log").write_text(built.stderr, encoding="utf-8")
        message = f"could not build vLLM's CPU venv; see {logs / 'install.log'}"
        if required:
            pytest.fail(message)
        pytest.skip(message)
    registry = Registry(micro_llama_settings.models_dir)
    version = registry.aliases()["rlhf"]
    directory = registry.path(version)
    port = free_port()
    log = logs / "server.log"
    env = {
        **os.environ,
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    command = [
        str(script),
        "serve",
        str(directory),
        "--port",
        str(port),
        "--served-model-name",
        version,
        "--max-model-len",
        "256",
        "--enable-lora",
        "--max-lora-rank",
        "16",
        "--max-loras",
        "4",
    ]
    base = f"http://127.0.0.1:{port}"
    with server_process("vLLM", command, f"{base}/v1/models", log, env, timeout=300) as proc:
        yield VllmServer(f"{base}/v1", proc.pid, version, directory, log)
