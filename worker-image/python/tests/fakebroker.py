"""A scripted broker behind ``httpx.MockTransport``: the wire protocol without a network or an operator."""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Optional

import httpx

from sluice import Config

_ids = itertools.count(1)


def task(handler: str = "h", input: Any = None, *, attempt: int = 1, interval: int = 1, **extra: Any) -> dict:
    n = next(_ids)
    body = {
        "id": f"ns/run-{n}/step@uid-{n}",
        "attempt": attempt,
        "handler": handler,
        "input": input,
        "heartbeatIntervalSeconds": interval,
        "flowRun": {"namespace": "ns", "name": f"run-{n}", "uid": f"uid-{n}"},
        "step": "step",
    }
    body.update(extra)
    return body


@dataclass
class Request:
    path: str
    body: dict
    authorization: Optional[str]
    at: float


@dataclass
class FakeBroker:
    """Hands out ``queued`` tasks to claims; answers heartbeats (held up to their ``waitSeconds``, at once
    with ``cancel: true`` for ids in ``cancelled``, 409 for ids in ``fenced``) and reports (200, or the next
    scripted status of ``statuses[path]``)."""

    queued: list[dict] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)
    fenced: set[str] = field(default_factory=set)
    statuses: dict[str, list[int]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    reports: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.changed = asyncio.Event()
        self.reported = asyncio.Event()

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def enqueue(self, *tasks: dict) -> None:
        self.queued.extend(tasks)
        self.changed.set()

    def cancel(self, task_id: str) -> None:
        self.cancelled.add(task_id)
        self.changed.set()

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def of(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    async def wait_reports(self, n: int, timeout: float = 10.0) -> list[Request]:
        async def enough() -> None:
            while len(self.reports) < n:
                self.reported.clear()
                await self.reported.wait()

        await asyncio.wait_for(enough(), timeout)
        return self.reports

    async def handle(self, request: httpx.Request) -> httpx.Response:
        loop = asyncio.get_running_loop()
        body = json.loads(request.content or b"{}")
        path = request.url.path
        self.requests.append(Request(path, body, request.headers.get("Authorization"), loop.time()))
        scripted = self.statuses.get(path)
        if scripted:
            status = scripted.pop(0)
            if status != 200:
                code = {401: "unauthorized", 403: "forbidden", 409: "staleAttempt", 413: "payloadTooLarge"}
                return httpx.Response(
                    status, json={"code": code.get(status, "unavailable"), "message": f"scripted {status}"}
                )
        if path == "/v1/claim":
            return await self._claim(body, loop)
        if path == "/v1/tasks/heartbeat":
            return await self._heartbeat(body, loop)
        self.reports.append(self.requests[-1])
        self.reported.set()
        return httpx.Response(200, json={"duplicate": False})

    async def _claim(self, body: dict, loop: asyncio.AbstractEventLoop) -> httpx.Response:
        deadline = loop.time() + body.get("waitSeconds", 0)
        while not self.queued:
            left = deadline - loop.time()
            if left <= 0:
                return httpx.Response(200, json={"tasks": []})
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass
        capacity = body["capacity"]
        handed, self.queued = self.queued[:capacity], self.queued[capacity:]
        return httpx.Response(200, json={"tasks": handed})

    async def _heartbeat(self, body: dict, loop: asyncio.AbstractEventLoop) -> httpx.Response:
        task_id = body["id"]
        deadline = loop.time() + body.get("waitSeconds", 0)
        while True:
            if task_id in self.fenced:
                return httpx.Response(409, json={"code": "staleAttempt", "message": "attempt is stale"})
            if task_id in self.cancelled:
                return httpx.Response(200, json={"cancel": True})
            left = deadline - loop.time()
            if left <= 0:
                return httpx.Response(200, json={"cancel": False})
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass


def config(**changes: Any) -> Config:
    """A fast configuration for tests: short polls, grace periods and backoff."""
    base = Config(
        broker_url="http://broker.test",
        pool="ns/pool",
        worker_name="w-1",
        wait_seconds=1,
        cancel_grace=0.3,
        shutdown_grace=2.0,
        report_grace=1.0,
        backoff_initial=0.01,
        backoff_max=0.05,
    )
    return base.with_(**changes)
