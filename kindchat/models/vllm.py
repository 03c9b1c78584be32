"""Registry versions served by one vLLM server, adapters loaded and unloaded at run time.

With `KINDCHAT_OPENAI_LORA=true` (backend `openai`), kindchat serves its registry aliases
through a vLLM started on a registered version (the *base*, served under its version id) with
`--enable-lora` and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`. The model manager loads versions
through :class:`VllmLoader` as it loads them into its own engine, so hot swap works the same:

- the base version answers as vLLM's base model;
- a LoRA adapter version over that base is loaded into vLLM under its version id
  (`POST /v1/load_lora_adapter`), the alias routes there, and when no alias needs it any more
  and its last request finished, the manager closes it and it is unloaded
  (`POST /v1/unload_lora_adapter`): a challenger opened, a promotion, a rollback — no restart,
  the same vLLM process before and after;
- any other full checkpoint cannot be served without restarting vLLM on it: loading it fails
  with :class:`EngineRestartNeededError`, whose one line the manager logs and reports (`GET
  /healthz`, the dashboard), and the alias keeps serving its old version — never a half state.
"""

from __future__ import annotations

import logging
from pathlib import Path

import httpx

from kindchat.config import Settings
from kindchat.models.backends.base import BackendUnavailableError, GenerationBackend
from kindchat.models.backends.openai_server import OpenAIBackend
from kindchat.models.registry import Registry, RegistryError

logger = logging.getLogger(__name__)


class EngineRestartNeededError(RegistryError):
    """The version is a full checkpoint the running engine does not serve."""


class VllmAdapterBackend(OpenAIBackend):
    """An adapter served by vLLM under its version id; closing it unloads it from vLLM."""

    def __init__(self, loader: VllmLoader, version: str, base_dir: Path) -> None:
        super().__init__(
            loader.base_url,
            model=version,
            api_key=loader.api_key,
            model_dir=base_dir,
            stream_interval=loader.stream_interval,
        )
        self._loader = loader
        self._version = version

    async def close(self) -> None:
        await super().close()
        await self._loader.unload(self._version)


class VllmLoader:
    """The manager's loader for a vLLM server (see the module's docstring)."""

    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        if not settings.openai_base_url:
            raise ValueError(
                "KINDCHAT_OPENAI_LORA needs the vLLM server's URL: set KINDCHAT_OPENAI_BASE_URL"
            )
        self.base_url = settings.openai_base_url.rstrip("/")
        self.api_key = settings.openai_api_key
        self.stream_interval = settings.openai_stream_interval
        self.registry = registry or Registry.for_settings(settings)
        # where vLLM finds the registry (compose: the same volume, the same path)
        self.remote_root = Path(settings.openai_registry_dir or self.registry.root)
        self._headers = {"Authorization": f"Bearer {self.api_key}"}

    # ---- what vLLM serves -------------------------------------------------------------------
    def served_base(self) -> tuple[str, str | None]:
        """(the served name of vLLM's base model, the registry version it is, if any)."""
        try:
            response = httpx.get(f"{self.base_url}/models", headers=self._headers, timeout=30)
            response.raise_for_status()
        except httpx.HTTPError as err:
            raise BackendUnavailableError(
                f"vLLM at {self.base_url} is unreachable: {err}"
            ) from None
        bases = [m for m in response.json()["data"] if not m.get("parent")]
        if not bases:
            raise BackendUnavailableError(f"{self.base_url} lists no base model")
        card = bases[0]
        for candidate in (card["id"], Path(str(card.get("root") or "")).name):
            if candidate and self.registry.is_version(candidate):
                return str(card["id"]), candidate
        return str(card["id"]), None

    def __call__(self, version: str, path: Path) -> GenerationBackend:
        """The backend that serves `version` through vLLM (an adapter is loaded first)."""
        served, base_version = self.served_base()
        manifest = self.registry.manifest(version)
        if version == base_version:
            return OpenAIBackend(
                self.base_url,
                model=served,
                api_key=self.api_key,
                model_dir=path,
                stream_interval=self.stream_interval,
            )
        if manifest.base is None:
            raise EngineRestartNeededError(
                f"{version} is a full checkpoint and vLLM at {self.base_url} serves "
                f"{base_version or served}: restart vLLM on {version} to serve it (compose: "
                "`docker compose restart vllm`), or train adapters (KINDCHAT_ADAPTER=lora)"
            )
        if manifest.base != base_version:
            raise EngineRestartNeededError(
                f"{version} is a LoRA adapter over {manifest.base}, and vLLM at {self.base_url} "
                f"serves {base_version or served}: restart vLLM on {manifest.base} to serve it"
            )
        self.load(version)
        return VllmAdapterBackend(self, version, self.registry.path(manifest.base))

    # ---- runtime LoRA -----------------------------------------------------------------------
    def load(self, version: str) -> None:
        """Load the adapter `version` into vLLM under its version id (already loaded: fine)."""
        body = {"lora_name": version, "lora_path": str(self.remote_root / version)}
        try:
            response = httpx.post(
                f"{self.base_url}/load_lora_adapter", json=body, headers=self._headers, timeout=300
            )
        except httpx.HTTPError as err:
            raise BackendUnavailableError(
                f"vLLM at {self.base_url} is unreachable: {err}"
            ) from None
        if response.status_code == 404:
            raise EngineRestartNeededError(
                f"vLLM at {self.base_url} cannot load adapters at run time: start it with "
                "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
            )
        if response.status_code >= 400 and "already" not in response.text.lower():
            raise BackendUnavailableError(
                f"vLLM refused adapter {version} ({response.status_code}): {response.text[:300]}"
            )
        logger.info("vLLM at %s serves adapter %s", self.base_url, version)

    async def unload(self, version: str) -> None:
        """Unload the adapter `version` from vLLM (its requests have finished)."""
        try:
            async with httpx.AsyncClient(timeout=60, headers=self._headers) as client:
                response = await client.post(
                    f"{self.base_url}/unload_lora_adapter", json={"lora_name": version}
                )
        except httpx.HTTPError as err:
            logger.warning("could not unload adapter %s from vLLM: %s", version, err)
            return
        if response.status_code >= 400:
            logger.warning(
                "vLLM did not unload adapter %s (%s): %s",
                version,
                response.status_code,
                response.text[:200],
            )
            return
        logger.info("vLLM at %s unloaded adapter %s", self.base_url, version)
