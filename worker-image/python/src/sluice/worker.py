"""``Worker``: registers handlers and runs the claim loop, with the semantics of the Rust SDK
(``worker-image/src/worker.rs`` and ``task.rs``)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, TypeVar, Union

import httpx

from .broker import Backoff, BrokerClient
from .config import Config
from .context import CancelReason, StepCancelled, StepContext
from .errors import BrokerError, ConfigError, FatalError, StepError, step_error_from
from .handler import Handler
from .wire import (
    Task,
    claim_request,
    complete_request,
    error_types,
    fail_request,
    heartbeat_request,
)

log = logging.getLogger("sluice.worker")

F = TypeVar("F", bound=Callable[..., Any])

#: How long after the start of an attempt its first heartbeat goes out.
FIRST_HEARTBEAT_DELAY = 0.2


@dataclass
class _Complete:
    output: Any


@dataclass
class _Fail:
    error: dict[str, Any]
    retryable: bool


_Report = Union[_Complete, _Fail]


class Worker:
    """A Sluice worker: named step handlers and the loop that claims tasks for them from the broker.

    .. code-block:: python

        from dataclasses import dataclass
        from sluice import FatalError, StepContext, Worker

        @dataclass
        class Charge:
            order: str
            amount: float

        worker = Worker.from_env()  # SLUICE_BROKER_URL, SLUICE_POOL, SLUICE_TOKEN_PATH, SLUICE_CONCURRENCY...

        @worker.handler("charge_payment")
        async def charge(ctx: StepContext, charge: Charge) -> dict:
            if charge.amount > 10_000:
                raise FatalError("card_declined", "over the limit")
            return {"paymentId": f"{charge.order}-{ctx.attempt}"}

        worker.run()  # until SIGTERM/SIGINT, then drains

    The loop:

    * long-polls ``/v1/claim`` with as many free slots as it has (``concurrency``), backing off on broker
      errors (401, 403, 503, 5xx, unreachable);
    * runs each task's handler next to one held heartbeat at a time (the broker holds each for up to the
      task's interval and answers at once when the attempt is cancelled); ``cancel: true`` (or a passed
      deadline) cancels the handler's :class:`StepContext`; a 409 fences the attempt: the context is
      cancelled and nothing is reported;
    * reports the result, retrying with backoff until the broker acknowledges it; a 409 ends the attempt
      silently;
    * on shutdown (SIGTERM/SIGINT in :meth:`run`/:meth:`serve`, or :meth:`shutdown`): stops claiming (a claim in
      flight is abandoned, so nothing more is handed out), lets in-flight handlers finish within
      ``shutdown_grace``, then cancels the rest and fails them as retryable (``WorkerShutdown``) so the broker
      hands them to another worker at once.
    """

    def __init__(
        self,
        config: Config,
        *,
        concurrency: Optional[int] = None,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        if concurrency is not None:
            config = config.with_(concurrency=concurrency)
        self.config = config
        self._handlers: dict[str, Handler] = {}
        self._transport = transport
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._shutdown: Optional[asyncio.Event] = None
        self._shutdown_requested = False
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, *, concurrency: Optional[int] = None) -> "Worker":
        """A worker configured from the environment (:meth:`Config.from_env`)."""
        return cls(Config.from_env(), concurrency=concurrency)

    # -- registration ---------------------------------------------------------------------------------------

    def handler(self, name: str) -> Callable[[F], F]:
        """Registers the decorated function as the handler of tasks named ``name``::

            @worker.handler("charge")
            async def charge(ctx: StepContext, order: Order) -> Receipt: ...

        See :class:`sluice.handler.Handler` for the signatures and input types accepted."""

        def register(function: F) -> F:
            self.register(name, function)
            return function

        return register

    def register(self, name: str, function: Callable[..., Any]) -> "Worker":
        """Registers ``function`` as the handler of tasks named ``name`` (the decorator's plain form)."""
        if not name:
            raise ValueError("a handler name must not be empty")
        if name in self._handlers:
            raise ValueError(f"handler {name!r} is registered twice")
        self._handlers[name] = Handler(name, function)
        return self

    @property
    def handler_names(self) -> list[str]:
        """The names of the registered handlers, sorted."""
        return sorted(self._handlers)

    # -- running --------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Runs until SIGTERM or SIGINT (or :meth:`shutdown`), then shuts down gracefully. Blocks; sets up
        logging (level from ``SLUICE_LOG_LEVEL``, default INFO) when the program has not."""
        if not logging.getLogger().handlers:
            logging.basicConfig(
                level=os.environ.get("SLUICE_LOG_LEVEL", "INFO").upper(),
                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            )
        asyncio.run(self.serve())

    async def serve(self, *, handle_signals: bool = True) -> None:
        """Runs in the current event loop until SIGTERM/SIGINT (when ``handle_signals``) or :meth:`shutdown`,
        then drains."""
        if not self._handlers:
            raise ConfigError("no handler registered")
        self.config.validate()
        loop = asyncio.get_running_loop()
        with self._lock:
            self._loop = loop
            self._shutdown = asyncio.Event()
            if self._shutdown_requested:
                self._shutdown.set()
        installed: list[int] = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(signum, self._on_signal, signum)
                    installed.append(signum)
                except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix loops
                    pass
        claim_loop = _ClaimLoop(self.config, dict(self._handlers), self._transport)
        try:
            await claim_loop.run_until(self._shutdown)
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            await claim_loop.close()

    def shutdown(self) -> None:
        """Starts the graceful shutdown (as SIGTERM does): no more claims, in-flight tasks get the grace
        period. Safe from any thread, before or while :meth:`serve` runs."""
        with self._lock:
            self._shutdown_requested = True
            loop, event = self._loop, self._shutdown
        if loop is None or event is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    def _on_signal(self, signum: int) -> None:
        log.info("%s received", signal.Signals(signum).name)
        self.shutdown()


class _ClaimLoop:
    """The state of a running worker."""

    def __init__(
        self,
        config: Config,
        handlers: dict[str, Handler],
        transport: Optional[httpx.AsyncBaseTransport],
    ) -> None:
        self.config = config
        self.handlers = handlers
        self.client = BrokerClient(config, transport=transport)
        self.free = config.concurrency
        self.slot_freed = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        # Set when the shutdown grace period has run out: stop at once and fail as retryable.
        self.force_stop = asyncio.Event()

    async def close(self) -> None:
        await self.client.aclose()

    async def run_until(self, shutdown: asyncio.Event) -> None:
        claiming = asyncio.ensure_future(self._claim_until_shutdown())
        stopping = asyncio.ensure_future(shutdown.wait())
        try:
            done, _ = await asyncio.wait({claiming, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Abandoning the claim in flight closes its connection: the broker hands nothing to it.
            for future in (claiming, stopping):
                future.cancel()
            await asyncio.gather(claiming, stopping, return_exceptions=True)
        if claiming in done and not claiming.cancelled() and claiming.exception() is not None:
            log.error("the claim loop failed: %r", claiming.exception())
        await self._drain()

    async def _claim_until_shutdown(self) -> None:
        config = self.config
        backoff = Backoff(config.backoff_initial, config.backoff_max)
        handlers = sorted(self.handlers)
        log.info(
            "worker started: pool=%s worker=%s handlers=%s concurrency=%d",
            config.pool,
            config.worker_name,
            handlers,
            config.concurrency,
        )
        while True:
            while self.free <= 0:
                self.slot_freed.clear()
                await self.slot_freed.wait()
            capacity = self.free
            request = claim_request(
                pool=config.pool,
                worker=config.worker_name,
                handlers=handlers,
                capacity=capacity,
                wait_seconds=config.wait_seconds,
                namespace=config.namespace,
            )
            try:
                tasks = await self.client.claim(request)
            except BrokerError as exc:
                delay = backoff.next_delay()
                log.warning("claim failed; backing off %.2fs: %s", delay, exc)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            if len(tasks) > capacity:
                log.warning(
                    "broker handed out %d tasks for %d slots; running them all", len(tasks), capacity
                )
            for task in tasks:
                self._start(task)

    def _start(self, task: Task) -> None:
        log.debug("claimed %s attempt %d (%s)", task.id, task.attempt, task.handler)
        self.free -= 1
        runner = asyncio.ensure_future(self._run_task(task))
        self.tasks.add(runner)

        def finished(future: "asyncio.Future[None]") -> None:
            self.tasks.discard(runner)
            self.free += 1
            self.slot_freed.set()
            if not future.cancelled() and future.exception() is not None:
                log.error("task runner of %s ended abnormally: %r", task.id, future.exception())

        runner.add_done_callback(finished)

    async def _drain(self) -> None:
        config = self.config
        log.info(
            "shutting down: no more claims (%d in flight, grace %.1fs)", len(self.tasks), config.shutdown_grace
        )
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=config.shutdown_grace)
            if pending:
                log.warning("grace period over: failing the %d remaining tasks as retryable", len(pending))
                self.force_stop.set()
                _, pending = await asyncio.wait(pending, timeout=config.report_grace)
                if pending:
                    log.warning("%d failure reports were not acknowledged in time", len(pending))
                    for runner in pending:
                        runner.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
        log.info("worker stopped")

    # -- one attempt ----------------------------------------------------------------------------------------

    async def _run_task(self, task: Task) -> None:
        handler = self.handlers.get(task.handler)
        if handler is None:
            log.warning("no handler registered for %s (%s)", task.id, task.handler)
            error = FatalError(
                error_types.UNKNOWN_HANDLER,
                f"worker {self.config.worker_name} has no handler {task.handler!r}",
            )
            await self._send_report(task, _Fail(error.to_wire(), False))
            return
        ctx = StepContext(task, self.config.worker_name, asyncio.get_running_loop())
        report = await self._supervise(task, ctx, handler)
        if ctx.cancel_reason is CancelReason.FENCED:
            log.info("attempt %s/%d fenced by the broker; not reporting", task.id, task.attempt)
            return
        await self._send_report(task, report)

    async def _supervise(self, task: Task, ctx: StepContext, handler: Handler) -> _Report:
        """Runs the handler next to heartbeats, the deadline and the shutdown deadline."""
        running = asyncio.ensure_future(handler.call(ctx, task.input))
        stop = asyncio.ensure_future(self._stop_reason(task, ctx))
        try:
            await asyncio.wait({running, stop}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            running.cancel()
            stop.cancel()
            raise
        if running.done():
            stop.cancel()
            await asyncio.gather(stop, return_exceptions=True)
            return self._finished(task, ctx, running)
        reason = stop.result()
        running.cancel()
        log.warning("handler of %s/%d dropped after cancellation (%s)", task.id, task.attempt, reason.value)
        error = reason.to_step_error()
        return _Fail(error.to_wire(), error.retryable)

    def _finished(self, task: Task, ctx: StepContext, running: "asyncio.Future[Any]") -> _Report:
        if running.cancelled():
            error = ctx.cancellation_error()
            return _Fail(error.to_wire(), error.retryable)
        exc = running.exception()
        if exc is None:
            return _Complete(running.result())
        if isinstance(exc, StepCancelled):
            error: StepError = exc.reason.to_step_error()
        elif isinstance(exc, asyncio.CancelledError):
            error = ctx.cancellation_error()
        elif isinstance(exc, Exception):
            error = step_error_from(exc)
        else:  # SystemExit, KeyboardInterrupt, ... raised inside a handler
            error = StepError(
                error_types.HANDLER_PANICKED, f"handler raised {type(exc).__name__}: {exc}", retryable=True
            )
        log.info("handler of %s/%d failed (retryable=%s): %s", task.id, task.attempt, error.retryable, error)
        return _Fail(error.to_wire(), error.retryable)

    async def _stop_reason(self, task: Task, ctx: StepContext) -> CancelReason:
        """Completes with the reason the handler must stop, after giving it ``cancel_grace`` to stop by itself
        (none for a shutdown)."""
        watchers = {
            asyncio.ensure_future(self._forced()): None,
            asyncio.ensure_future(self._deadline(ctx)): None,
            asyncio.ensure_future(self._heartbeats(task)): None,
        }
        try:
            done, _ = await asyncio.wait(set(watchers), return_when=asyncio.FIRST_COMPLETED)
            reason: CancelReason = next(iter(done)).result()
        finally:
            for watcher in watchers:
                watcher.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        ctx.cancel(reason)
        if reason is not CancelReason.SHUTDOWN:
            # Give the handler a moment to notice and return its own answer.
            try:
                await asyncio.wait_for(self.force_stop.wait(), timeout=self.config.cancel_grace)
            except asyncio.TimeoutError:
                pass
        return reason

    async def _forced(self) -> CancelReason:
        await self.force_stop.wait()
        return CancelReason.SHUTDOWN

    async def _deadline(self, ctx: StepContext) -> CancelReason:
        deadline = ctx.deadline
        if deadline is None:
            await asyncio.Event().wait()  # never
        else:
            await asyncio.sleep(max(0.0, deadline.timestamp() - time.time()))
        return CancelReason.DEADLINE_EXCEEDED

    async def _heartbeats(self, task: Task) -> CancelReason:
        """Heartbeats until the broker asks to cancel or fences the attempt. Each heartbeat asks the broker to
        hold it for one interval (answered at once on a cancel), and the next goes out as soon as it is
        answered, but never more often than one per interval."""
        interval = max(1, task.heartbeat_interval_seconds)
        request = heartbeat_request(task, self.config.worker_name, interval)
        loop = asyncio.get_running_loop()
        next_at = loop.time() + min(float(interval), FIRST_HEARTBEAT_DELAY)
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = loop.time() + interval
            try:
                cancel = await self.client.heartbeat(request)
            except BrokerError as exc:
                if exc.fenced:
                    log.warning("heartbeat of %s/%d refused: attempt fenced: %s", task.id, task.attempt, exc)
                    return CancelReason.FENCED
                log.warning("heartbeat of %s/%d failed: %s", task.id, task.attempt, exc)
                continue
            if cancel:
                log.info("broker asked to cancel %s/%d", task.id, task.attempt)
                return CancelReason.REQUESTED

    async def _send_report(self, task: Task, report: _Report) -> None:
        """Sends the report until the broker acknowledges it (or fences the attempt)."""
        backoff = Backoff(self.config.backoff_initial, self.config.backoff_max)
        worker = self.config.worker_name
        while True:
            try:
                if isinstance(report, _Complete):
                    duplicate = await self.client.complete(complete_request(task, worker, report.output))
                else:
                    duplicate = await self.client.fail(
                        fail_request(task, worker, report.error, report.retryable)
                    )
                log.debug("report of %s/%d acknowledged (duplicate=%s)", task.id, task.attempt, duplicate)
                return
            except BrokerError as exc:
                if exc.fenced:
                    log.info("report of %s/%d refused: attempt fenced: %s", task.id, task.attempt, exc)
                    return
                if exc.status == 413 and isinstance(report, _Complete):
                    log.warning("output of %s/%d too large for the broker", task.id, task.attempt)
                    error = FatalError(
                        error_types.OUTPUT_TOO_LARGE,
                        f"the output of {task.id} is larger than the broker accepts",
                    )
                    report = _Fail(error.to_wire(), False)
                    continue
                if exc.status == 400:
                    # Our request is malformed: repeating it cannot help. The broker releases the attempt
                    # when its heartbeats stop.
                    log.error("report of %s/%d rejected as malformed; giving up: %s", task.id, task.attempt, exc)
                    return
                delay = backoff.next_delay()
                log.warning("report of %s/%d failed; retrying in %.2fs: %s", task.id, task.attempt, delay, exc)
                await asyncio.sleep(delay)
