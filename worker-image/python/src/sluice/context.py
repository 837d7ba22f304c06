"""``StepContext``: what a handler knows about the attempt it runs, and its cancellation signal."""

from __future__ import annotations

import asyncio
import enum
import threading
from datetime import datetime, timezone
from typing import Optional

from .errors import FatalError, RetryableError, StepError
from .wire import FlowRunRef, Task, error_types


class CancelReason(enum.Enum):
    """Why a step's context was cancelled."""

    #: The broker asked the worker to stop (heartbeat answer ``cancel: true``, e.g. the FlowRun was cancelled).
    REQUESTED = "Requested"
    #: The broker refused a heartbeat with 409: another attempt owns the step now; nothing will be reported.
    FENCED = "Fenced"
    #: The attempt's deadline passed.
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    #: The worker is shutting down and the grace period ran out.
    SHUTDOWN = "Shutdown"

    def to_step_error(self) -> StepError:
        """The failure a handler reports when it stops because of this reason."""
        if self is CancelReason.REQUESTED:
            return FatalError(error_types.CANCELLED, "the step was cancelled")
        if self is CancelReason.FENCED:
            return RetryableError(
                "the attempt is no longer current (the step was given to another attempt)",
                error_type=error_types.CANCELLED,
            )
        if self is CancelReason.DEADLINE_EXCEEDED:
            return RetryableError("the attempt's deadline passed", error_type=error_types.DEADLINE_EXCEEDED)
        return RetryableError(
            "the worker shut down before the step finished", error_type=error_types.WORKER_SHUTDOWN
        )


class StepCancelled(Exception):
    """Raised by :meth:`StepContext.raise_if_cancelled` and :meth:`StepContext.sleep` once the context is
    cancelled; the worker reports it as the cancellation's failure (see :meth:`CancelReason.to_step_error`)."""

    def __init__(self, reason: CancelReason) -> None:
        super().__init__(f"step cancelled: {reason.value}")
        self.reason = reason


class StepContext:
    """The context of one attempt, handed to the handler with its input.

    Long-running handlers watch the cancellation -- ``await ctx.cancelled()``, ``ctx.is_cancelled``,
    ``await ctx.sleep(s)`` (raises once cancelled), or from a sync handler ``ctx.wait_cancelled(timeout)`` --
    and stop: the worker waits a short grace period for the handler to return, then cancels an ``async``
    handler's task (``asyncio.CancelledError`` inside it) and reports the cancellation's failure.
    """

    def __init__(self, task: Task, worker: str, loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        self._task = task
        self._worker = worker
        self._reason: Optional[CancelReason] = None
        self._lock = threading.Lock()
        self._thread_event = threading.Event()
        self._loop = loop
        self._event: Optional[asyncio.Event] = None
        self._deadline = _parse_deadline(task.deadline)

    # -- identity -------------------------------------------------------------------------------------------

    @property
    def task_id(self) -> str:
        """The task's opaque id; ``(task_id, attempt)`` is unique: a good idempotency key."""
        return self._task.id

    @property
    def attempt(self) -> int:
        """The attempt number (1-based)."""
        return self._task.attempt

    @property
    def handler(self) -> str:
        return self._task.handler

    @property
    def flow_run(self) -> FlowRunRef:
        return self._task.flow_run

    @property
    def namespace(self) -> str:
        return self._task.flow_run.namespace

    @property
    def flow_run_name(self) -> str:
        return self._task.flow_run.name

    @property
    def step(self) -> str:
        return self._task.step

    @property
    def instance(self) -> Optional[int]:
        """The forEach instance index, for forEach steps."""
        return self._task.instance

    @property
    def deadline(self) -> Optional[datetime]:
        """When the attempt times out (UTC), if the step has a timeout."""
        return self._deadline

    @property
    def worker(self) -> str:
        return self._worker

    # -- cancellation ---------------------------------------------------------------------------------------

    @property
    def is_cancelled(self) -> bool:
        """Whether the context was cancelled (safe from any thread)."""
        return self._thread_event.is_set()

    @property
    def cancel_reason(self) -> Optional[CancelReason]:
        """Why the context was cancelled, once it was."""
        return self._reason

    def cancellation_error(self) -> StepError:
        """The failure to report for the cancellation (``Cancelled`` if it was not cancelled)."""
        return (self._reason or CancelReason.REQUESTED).to_step_error()

    async def cancelled(self) -> CancelReason:
        """Completes when the context is cancelled; returns the reason."""
        if not self.is_cancelled:
            await self._async_event().wait()
        assert self._reason is not None
        return self._reason

    def wait_cancelled(self, timeout: Optional[float] = None) -> bool:
        """For sync handlers (run in a thread): blocks up to ``timeout`` seconds; ``True`` once cancelled."""
        return self._thread_event.wait(timeout)

    def raise_if_cancelled(self) -> None:
        """Raises :class:`StepCancelled` once the context is cancelled."""
        if self._reason is not None:
            raise StepCancelled(self._reason)

    async def sleep(self, seconds: float) -> None:
        """Sleeps ``seconds``, or raises :class:`StepCancelled` as soon as the context is cancelled."""
        self.raise_if_cancelled()
        try:
            await asyncio.wait_for(self._async_event().wait(), timeout=seconds)
        except asyncio.TimeoutError:
            return
        self.raise_if_cancelled()

    def cancel(self, reason: CancelReason) -> None:
        """Cancels the context for ``reason`` (the first reason wins). The worker calls this; tests may too."""
        with self._lock:
            if self._reason is not None:
                return
            self._reason = reason
        self._thread_event.set()
        event = self._event
        if event is not None and self._loop is not None:
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is self._loop:
                event.set()
            else:
                self._loop.call_soon_threadsafe(event.set)

    def _async_event(self) -> asyncio.Event:
        if self._event is None:
            self._loop = asyncio.get_running_loop()
            self._event = asyncio.Event()
            if self.is_cancelled:
                self._event.set()
        return self._event

    def __repr__(self) -> str:
        return (
            f"StepContext(flow_run={self.namespace}/{self.flow_run_name}, step={self.step!r}, "
            f"attempt={self.attempt}, cancelled={self._reason})"
        )


def _parse_deadline(text: Optional[str]) -> Optional[datetime]:
    """Parses an RFC 3339 deadline; an unparsable one is ignored (the broker enforces it anyway)."""
    if not text:
        return None
    value = text.strip()
    if value.endswith("Z") or value.endswith("z"):
        value = value[:-1] + "+00:00"
    # Python < 3.11 accepts at most 6 fractional digits.
    if "." in value:
        head, _, rest = value.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        value = f"{head}.{digits[:6].ljust(6, '0')}{rest}"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)
