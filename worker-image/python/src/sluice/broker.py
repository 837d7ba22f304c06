"""The broker's four calls over HTTP, and the backoff used between retries."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional

import httpx

from .config import Config
from .errors import BrokerError
from .wire import (
    AUTHORIZATION_HEADER,
    BEARER_PREFIX,
    CLAIM_PATH,
    COMPLETE_PATH,
    FAIL_PATH,
    HEARTBEAT_PATH,
    Task,
)


class Backoff:
    """Doubling delays from ``initial`` up to ``maximum``; each delay is drawn in ``[d/2, d]`` so that workers
    that lost the broker at the same moment do not come back in step."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.current = initial

    def next_delay(self) -> float:
        ceiling = self.current
        self.current = min(self.current * 2, self.maximum)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.current = self.initial


class BrokerClient:
    """A thin HTTP client of the broker: one method per endpoint, no retries (the worker loop retries).

    Every request re-reads the token file, because the kubelet rotates projected tokens.
    """

    def __init__(self, config: Config, *, transport: Optional[httpx.AsyncBaseTransport] = None) -> None:
        self._base_url = config.broker_url.rstrip("/")
        self._token_path = Path(config.token_path) if config.token_path else None
        self._request_timeout = config.request_timeout
        # No pool limit below the worker's needs: a claim, and a held heartbeat per running task, at once.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=max(8, config.concurrency * 2))
        self._http = httpx.AsyncClient(
            transport=transport,
            limits=limits,
            timeout=httpx.Timeout(config.request_timeout, connect=5.0),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def claim(self, request: dict[str, Any]) -> list[Task]:
        """``POST /v1/claim``: waits up to ``request["waitSeconds"]`` for tasks."""
        timeout = self._request_timeout + float(request.get("waitSeconds", 0))
        answer = await self._post(CLAIM_PATH, request, timeout)
        return [Task.from_json(task) for task in answer.get("tasks") or []]

    async def heartbeat(self, request: dict[str, Any]) -> bool:
        """``POST /v1/tasks/heartbeat``: returns whether the worker must cancel the attempt; the broker may hold
        it up to ``request["waitSeconds"]``."""
        timeout = self._request_timeout + float(request.get("waitSeconds", 0))
        answer = await self._post(HEARTBEAT_PATH, request, timeout)
        return bool(answer.get("cancel", False))

    async def complete(self, request: dict[str, Any]) -> bool:
        """``POST /v1/tasks/complete``: answered once the output is persisted; returns ``duplicate``."""
        answer = await self._post(COMPLETE_PATH, request, self._request_timeout)
        return bool(answer.get("duplicate", False))

    async def fail(self, request: dict[str, Any]) -> bool:
        """``POST /v1/tasks/fail``: answered once the failure is persisted; returns ``duplicate``."""
        answer = await self._post(FAIL_PATH, request, self._request_timeout)
        return bool(answer.get("duplicate", False))

    async def _post(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        headers = {}
        token = self._token(path)
        if token is not None:
            headers[AUTHORIZATION_HEADER] = BEARER_PREFIX + token
        try:
            response = await self._http.post(
                self._base_url + path,
                json=body,
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=5.0),
            )
        except httpx.HTTPError as exc:
            raise BrokerError(path, f"{type(exc).__name__}: {exc}") from exc
        if response.status_code == 200:
            try:
                answer = response.json()
            except ValueError as exc:
                raise BrokerError(path, f"the answer is not JSON: {exc}") from exc
            return answer if isinstance(answer, dict) else {}
        code: Optional[str] = None
        message = response.text
        try:
            error = response.json()
            if isinstance(error, dict):
                code = error.get("code")
                message = str(error.get("message", message))
        except ValueError:
            pass
        raise BrokerError(path, message, status=response.status_code, code=code)

    def _token(self, path: str) -> Optional[str]:
        if self._token_path is None:
            return None
        try:
            return self._token_path.read_text().strip()
        except OSError as exc:
            raise BrokerError(path, f"reading the token {self._token_path}: {exc}") from exc
