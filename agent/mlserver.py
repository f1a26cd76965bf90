"""Async client for MLServer's REST control API (health and model repository)."""

from __future__ import annotations

import asyncio
import enum
import json
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiohttp

from agent.errors import MLServerError

# Loading can take a long time (large artifacts); unloading and the rest should be quick.
LOAD_TIMEOUT_S = 3600.0
CONTROL_TIMEOUT_S = 120.0
LIVE_TIMEOUT_S = 5.0


class ModelState(enum.StrEnum):
    UNKNOWN = "UNKNOWN"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"

    @classmethod
    def parse(cls, text: object) -> ModelState:
        try:
            return cls(str(text).upper())
        except ValueError:
            return cls.UNKNOWN


@dataclass(frozen=True, slots=True)
class RepositoryModel:
    name: str
    version: str
    state: ModelState


class MLServerClient:
    """One aiohttp session against one MLServer; use as ``async with`` (or call ``close``)."""

    def __init__(self, base_url: str) -> None:
        self._base_url = base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily: aiohttp sessions must be made inside the running loop.
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def is_live(self) -> bool:
        try:
            timeout = aiohttp.ClientTimeout(total=LIVE_TIMEOUT_S)
            async with self._client().get(f"{self._base_url}/v2/health/live", timeout=timeout) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def model_ready(self, name: str) -> bool:
        """Whether MLServer serves ``name`` ready: a registry lookup (404 when it does not know it),
        unlike the repository index, which scans and parses every model's settings on disk."""
        url = f"{self._base_url}/v2/models/{name}/ready"
        try:
            timeout = aiohttp.ClientTimeout(total=LIVE_TIMEOUT_S)
            async with self._client().get(url, timeout=timeout) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MLServerError(f"MLServer request {url} failed: {exc}") from exc

    async def wait_live(self, timeout_s: float, *, poll_s: float = 0.25) -> None:
        deadline = time.monotonic() + timeout_s
        while not await self.is_live():
            if time.monotonic() >= deadline:
                raise MLServerError(f"MLServer at {self._base_url} was not live after {timeout_s:g}s")
            await asyncio.sleep(poll_s)

    async def index(self, *, timeout_s: float = CONTROL_TIMEOUT_S) -> list[RepositoryModel]:
        body = await self._post("/v2/repository/index", {}, timeout_s=timeout_s)
        if not isinstance(body, list):
            raise MLServerError(f"unexpected repository index from MLServer: {body!r}")
        return [
            RepositoryModel(
                name=str(item["name"]),
                version=str(item.get("version") or ""),
                state=ModelState.parse(item.get("state")),
            )
            for item in body
            if isinstance(item, dict) and item.get("name")
        ]

    async def load(self, name: str) -> None:
        await self._post(f"/v2/repository/models/{name}/load", None, timeout_s=LOAD_TIMEOUT_S)

    async def unload(self, name: str) -> None:
        """Unload ``name``; a model MLServer does not know counts as already unloaded."""
        try:
            await self._post(f"/v2/repository/models/{name}/unload", None, timeout_s=CONTROL_TIMEOUT_S)
        except MLServerError as exc:
            if exc.status != 404:
                raise

    async def _post(self, path: str, payload: dict[str, Any] | None, *, timeout_s: float) -> Any:
        url = f"{self._base_url}{path}"
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        try:
            async with self._client().post(url, json=payload, timeout=timeout) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    raise MLServerError(_error_text(resp.status, text), status=resp.status)
                return await resp.json(content_type=None) if text else None
        except aiohttp.ClientError as exc:
            raise MLServerError(f"MLServer request {path} failed: {exc}") from exc
        except TimeoutError as exc:
            raise MLServerError(f"MLServer request {path} timed out after {timeout_s:g}s") from exc


def _error_text(status: int, text: str) -> str:
    """MLServer answers {"error": "..."}; FastAPI validation answers {"detail": ...}."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = body.get("error") or body.get("detail")
        if detail:
            return f"MLServer error {status}: {detail}"
    return f"MLServer error {status}: {text.strip() or 'no body'}"
