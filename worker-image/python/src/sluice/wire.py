"""The worker <-> broker wire protocol, as documented in ``worker-image/wire/src/lib.rs`` (the Rust crate
``sluice-wire`` is its single home; this module mirrors it field for field).

All endpoints are ``POST`` with JSON bodies in ``camelCase``:

* ``/v1/claim`` -- long poll for up to ``capacity`` tasks (:class:`Task`), at most ``waitSeconds`` long;
* ``/v1/tasks/heartbeat`` -- keeps an attempt alive; may be held by the broker up to ``waitSeconds`` and is
  answered at once with ``cancel: true`` when the attempt is cancelled;
* ``/v1/tasks/complete`` / ``/v1/tasks/fail`` -- report the attempt's result; answered only once persisted.

A ``409`` answer means the attempt is fenced (stale or unknown): the worker stops working on it and stops
retrying. ``401``/``403``/``503``/other ``5xx``: back off and retry. ``413`` on a completion: report a
non-retryable ``OutputTooLarge`` failure instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

CLAIM_PATH = "/v1/claim"
HEARTBEAT_PATH = "/v1/tasks/heartbeat"
COMPLETE_PATH = "/v1/tasks/complete"
FAIL_PATH = "/v1/tasks/fail"

AUTHORIZATION_HEADER = "Authorization"
BEARER_PREFIX = "Bearer "
TOKEN_AUDIENCE = "sluice-broker"

#: The longest long poll a worker may ask for, in seconds.
MAX_WAIT_SECONDS = 30
#: Failure messages keep their last this many bytes.
MAX_ERROR_MESSAGE_BYTES = 2048


class env:  # noqa: N801 - a namespace of constants, like the Rust module `sluice_wire::env`
    """Names of the environment variables of the worker protocol."""

    BROKER_URL = "SLUICE_BROKER_URL"
    POOL = "SLUICE_POOL"
    TOKEN_PATH = "SLUICE_TOKEN_PATH"
    WORKER_NAME = "SLUICE_WORKER_NAME"
    POD_NAME = "POD_NAME"
    POD_NAMESPACE = "POD_NAMESPACE"
    CONCURRENCY = "SLUICE_CONCURRENCY"
    SHUTDOWN_GRACE_SECONDS = "SLUICE_SHUTDOWN_GRACE_SECONDS"


class error_types:  # noqa: N801 - mirrors `sluice_wire::error_types`
    """Well-known error types produced by Sluice itself; handlers may use any other."""

    ERROR = "Error"
    WORKER_SHUTDOWN = "WorkerShutdown"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    CANCELLED = "Cancelled"
    HANDLER_PANICKED = "HandlerPanicked"
    INVALID_INPUT = "InvalidInput"
    INVALID_OUTPUT = "InvalidOutput"
    OUTPUT_TOO_LARGE = "OutputTooLarge"
    UNKNOWN_HANDLER = "UnknownHandler"
    WORKER_LOST = "WorkerLost"


@dataclass(frozen=True)
class FlowRunRef:
    """Which FlowRun a task belongs to."""

    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class Task:
    """One attempt of one step (or one forEach instance of a step) handed to a worker."""

    id: str
    attempt: int
    handler: str
    input: Any
    heartbeat_interval_seconds: int
    flow_run: FlowRunRef
    step: str
    deadline: Optional[str] = None
    instance: Optional[int] = None

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> "Task":
        flow_run = value.get("flowRun") or {}
        return cls(
            id=str(value["id"]),
            attempt=int(value["attempt"]),
            handler=str(value["handler"]),
            input=value.get("input"),
            heartbeat_interval_seconds=max(1, int(value.get("heartbeatIntervalSeconds") or 1)),
            flow_run=FlowRunRef(
                namespace=str(flow_run.get("namespace", "")),
                name=str(flow_run.get("name", "")),
                uid=str(flow_run.get("uid", "")),
            ),
            step=str(value.get("step", "")),
            deadline=value.get("deadline"),
            instance=value.get("instance"),
        )


def claim_request(
    *,
    pool: str,
    worker: str,
    handlers: list[str],
    capacity: int,
    wait_seconds: int,
    namespace: Optional[str],
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "pool": pool,
        "worker": worker,
        "handlers": handlers,
        "capacity": capacity,
        "waitSeconds": wait_seconds,
    }
    if namespace:
        body["namespace"] = namespace
    return body


def heartbeat_request(task: Task, worker: str, wait_seconds: int) -> dict[str, Any]:
    body: dict[str, Any] = {"id": task.id, "attempt": task.attempt, "worker": worker}
    if wait_seconds:
        body["waitSeconds"] = wait_seconds
    return body


def complete_request(task: Task, worker: str, output: Any) -> dict[str, Any]:
    return {"id": task.id, "attempt": task.attempt, "worker": worker, "output": output}


def fail_request(task: Task, worker: str, error: Mapping[str, Any], retryable: bool) -> dict[str, Any]:
    return {
        "id": task.id,
        "attempt": task.attempt,
        "worker": worker,
        "error": dict(error),
        "retryable": retryable,
    }


def truncate_message(message: str, max_bytes: int = MAX_ERROR_MESSAGE_BYTES) -> str:
    """Keeps the last ``max_bytes`` bytes of ``message`` (on a character boundary), prefixed with ``…`` when
    cut: the end of an error is where the cause usually is."""
    encoded = message.encode("utf-8")
    if len(encoded) <= max_bytes:
        return message
    ellipsis = "…"
    keep = max(0, max_bytes - len(ellipsis.encode("utf-8")))
    tail = encoded[len(encoded) - keep :]
    # Skip continuation bytes so the tail starts on a character boundary.
    start = 0
    while start < len(tail) and (tail[start] & 0xC0) == 0x80:
        start += 1
    return ellipsis + tail[start:].decode("utf-8")
