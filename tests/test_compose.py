"""compose.yaml (vLLM + PostgreSQL + kindchat) is consistent with the code: every KINDCHAT_
variable is a setting, the generator's served name is the one kindchat asks for, the image
builds from this Dockerfile with the PostgreSQL driver. `docker compose config` checks the
file too where the compose plugin exists (it cannot pull images here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kindchat.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))


def test_compose_matches_the_settings() -> None:
    services = compose()["services"]
    assert set(services) == {"db", "vllm", "kindchat"}
    env = services["kindchat"]["environment"]
    fields = set(Settings.model_fields)
    for name in env:
        assert name.startswith("KINDCHAT_") and name[9:].lower() in fields, name
    values = {k: re.sub(r"\$\{[^}]*:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}
    settings = Settings(
        **{
            k[9:].lower(): (json.loads(v) if v.startswith("[") else v)
            for k, v in values.items()
            if v
        }
    )
    assert settings.backend == "openai" and settings.db_url.startswith("postgresql+psycopg://")
    assert settings.openai_base_url == "http://vllm:8001/v1"
    command = " ".join(services["vllm"]["command"])
    assert '--served-model-name "$$base"' in command and "--port 8001" in command
    assert "--enable-lora" in command  # adapters load at run time: a promotion needs no restart
    assert services["vllm"]["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert settings.openai_lora and settings.adapter == "lora"
    assert services["kindchat"]["build"] == "." and (ROOT / "Dockerfile").is_file()
    assert '".[postgres]"' in (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert services["kindchat"]["depends_on"]["db"]["condition"] == "service_healthy"


def test_docker_compose_config_accepts_it() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    done = subprocess.run(
        [docker, "compose", "-f", str(ROOT / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
