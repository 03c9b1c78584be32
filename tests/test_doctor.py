"""`kindchat doctor` on a healthy setup and on broken ones: each finding names its fix."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kindchat.cli import app
from kindchat.config import Settings
from kindchat.models.registry import Registry

runner = CliRunner()


def doctor(settings: Settings, data_dir: Path | None = None):  # noqa: ANN201
    data = str(data_dir or settings.data_dir)
    return runner.invoke(app, ["--home", str(settings.home), "--data-dir", data, "doctor"])


def lines(output: str, check: str) -> list[str]:
    return [line for line in output.splitlines() if f" {check}:" in line]


@pytest.fixture(autouse=True)
def free_port(monkeypatch: pytest.MonkeyPatch) -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    monkeypatch.setenv("KINDCHAT_PORT", str(port))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return port


def test_a_healthy_setup(micro_copy: Settings) -> None:
    result = doctor(micro_copy)
    for check in ("torch", "disk", "seed data", "database", "models", "port"):
        assert lines(result.output, check)[0].startswith("✓"), result.output
    if "✗" not in result.output and "!" not in result.output:
        assert result.exit_code == 0 and "all is well" in result.output


def test_missing_seed_data(micro_copy: Settings, tmp_path: Path) -> None:
    result = doctor(micro_copy, data_dir=tmp_path / "nowhere")
    assert result.exit_code == 1
    [line] = lines(result.output, "seed data")
    assert line.startswith("✗") and "fix:" in line and "KINDCHAT_DATA_DIR" in line
    assert "Traceback" not in result.output


def test_port_in_use(micro_copy: Settings, free_port: int) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port))
        busy.listen()
        result = doctor(micro_copy)
    assert result.exit_code == 1
    [line] = lines(result.output, "port")
    assert line.startswith("✗") and "in use" in line and f"--port {free_port + 1}" in line


def test_a_damaged_model_and_an_unreachable_database(
    micro_copy: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(micro_copy.models_dir)
    version = registry.aliases()["rlhf"]
    weights = next((registry.root / version).glob("*.safetensors"))
    with weights.open("ab") as handle:
        handle.write(b"\0")
    monkeypatch.setenv("KINDCHAT_DB_URL", "postgresql+psycopg://nobody@127.0.0.1:9/kindchat")
    result = doctor(micro_copy)
    assert result.exit_code == 1
    [models] = lines(result.output, "models")
    assert models.startswith("✗") and "checksum" in models and "rollback" in models
    [database] = lines(result.output, "database")
    assert database.startswith("✗") and "cannot reach" in database and "KINDCHAT_DB_URL" in database
