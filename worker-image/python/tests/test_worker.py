"""The worker loop against a scripted broker: claims, heartbeats, reports, cancellation, fencing, backoff and
the graceful shutdown, with the semantics of the Rust SDK."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

import pytest

from fakebroker import FakeBroker, config, task
from sluice import CancelReason, FatalError, RetryableError, StepContext, Worker, error_types


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def serving(
    broker: FakeBroker, worker: Worker, body: Callable[[], Awaitable[Any]], *, drain: bool = True
) -> Any:
    """Runs ``worker`` against ``broker`` while ``body`` runs, then shuts it down and waits for the drain."""
    serve = asyncio.ensure_future(worker.serve(handle_signals=False))
    try:
        result = await body()
    finally:
        worker.shutdown()
        if drain:
            await asyncio.wait_for(serve, 10)
        else:
            serve.cancel()
    return result


def make(broker: FakeBroker, **changes: Any) -> Worker:
    return Worker(config(**changes), transport=broker.transport())


@dataclass
class Order:
    order_id: str
    amount: float


def test_a_typed_async_handler_completes_with_its_output() -> None:
    async def main() -> None:
        broker = FakeBroker()
        worker = make(broker)
        seen: list[Any] = []

        @worker.handler("charge")
        async def charge(ctx: StepContext, order: Order) -> dict:
            seen.append((order, ctx.attempt, ctx.flow_run_name, ctx.step, ctx.worker))
            return {"paymentId": f"pay-{order.order_id}", "amount": order.amount}

        t = task("charge", {"orderId": "42", "amount": 10}, attempt=2)
        broker.enqueue(t)

        async def body() -> None:
            (report,) = await broker.wait_reports(1)
            assert report.path == "/v1/tasks/complete"
            assert report.body == {
                "id": t["id"],
                "attempt": 2,
                "worker": "w-1",
                "output": {"paymentId": "pay-42", "amount": 10.0},
            }

        await serving(broker, worker, body)
        assert seen == [(Order("42", 10.0), 2, t["flowRun"]["name"], "step", "w-1")]
        claim = broker.of("/v1/claim")[0].body
        assert claim == {"pool": "ns/pool", "worker": "w-1", "handlers": ["charge"], "capacity": 1, "waitSeconds": 1}

    run(main())


def test_a_sync_handler_runs_in_a_thread_and_its_dataclass_output_is_encoded() -> None:
    @dataclass
    class Receipt:
        total: int

    async def main() -> None:
        broker = FakeBroker()
        worker = make(broker)
        threads: list[str] = []

        @worker.handler("sum")
        def add(numbers: list[int]) -> Receipt:
            threads.append(threading.current_thread().name)
            time.sleep(0.05)  # blocking is fine here
            return Receipt(total=sum(numbers))

        broker.enqueue(task("sum", [1, 2, 3]))

        async def body() -> None:
            (report,) = await broker.wait_reports(1)
            assert report.body["output"] == {"total": 6}

        await serving(broker, worker, body)
        assert threads and threads[0] != threading.main_thread().name

    run(main())


@pytest.mark.parametrize(
    ("raise_", "expected"),
    [
        (RetryableError("upstream timed out", error_type="Upstream"), ("Upstream", "upstream timed out", True)),
        (FatalError("CardDeclined", "over the limit"), ("CardDeclined", "over the limit", False)),
        (ValueError("bad value"), ("Error", "ValueError: bad value", True)),
    ],
)
def test_handler_failures_are_reported_with_type_and_retryability(raise_: Exception, expected: tuple) -> None:
    async def main() -> None:
        broker = FakeBroker()
        worker = make(broker)

        @worker.handler("h")
        async def handler(ctx: StepContext, value: Any) -> None:
            raise raise_

        broker.enqueue(task("h", 1))

        async def body() -> None:
            (report,) = await broker.wait_reports(1)
            assert report.path == "/v1/tasks/fail"
            error = report.body["error"]
            assert (error["type"], error["message"], report.body["retryable"]) == expected

        await serving(broker, worker, body)

    run(main())


def test_undecodable_input_and_unknown_handlers_fail_fatally() -> None:
    async def main() -> None:
        broker = FakeBroker()
        worker = make(broker, concurrency=2)

        @worker.handler("charge")
        async def charge(order: Order) -> None:
            raise AssertionError("never called")

        bad = task("charge", {"orderId": "1"})
        unknown = task("nope", {})
        broker.enqueue(bad, unknown)

        async def body() -> None:
            reports = await broker.wait_reports(2)
            by_id = {r.body["id"]: r.body for r in reports}
            assert by_id[bad["id"]]["error"]["type"] == error_types.INVALID_INPUT
            assert "missing field 'amount'" in by_id[bad["id"]]["error"]["message"]
            assert by_id[bad["id"]]["retryable"] is False
            assert by_id[unknown["id"]]["error"]["type"] == error_types.UNKNOWN_HANDLER
            assert by_id[unknown["id"]]["retryable"] is False

        await serving(broker, worker, body)

    run(main())


def test_an_unencodable_output_fails_as_invalid_output() -> None:
    async def main() -> None:
        broker = FakeBroker()
        worker = make(broker)

        @worker.handler("h")
        async def handler() -> Any:
            return {"when": object()}

        broker.enqueue(task("h"))

        async def body() -> None:
            (report,) = await broker.wait_reports(1)
            assert report.body["error"]["type"] == error_types.INVALID_OUTPUT
            assert report.body["retryable"] is False

        await serving(broker, worker, body)

    run(main())


def test_held_heartbeats_go_out_while_the_handler_runs() -> None:
    async def main() -> None:
        broker = FakeBroker()
        worker = make(broker)

        @worker.handler("slow")
        async def slow(ctx: StepContext) -> str:
            await asyncio.sleep(2.3)
            return "done"

        t = task("slow", interval=1)
        broker.enqueue(t)

        async def body() -> None:
            await broker.wait_reports(1)

        await serving(broker, worker, body)
        beats = broker.of("/v1/tasks/heartbeat")
        assert beats[0].body == {"id": t["id"], "attempt": 1, "worker": "w-1", "waitSeconds": 1}
        # The first one 0.2 s after the start; then one per interval (each held for that interval).
        assert 2 <= len(beats) <= 4, [b.at for b in beats]
        claim_at = broker.of("/v1/claim")[0].at
        assert beats[0].at - claim_at < 0.6

    run(main())


def test_a_cancel_reaches_the_handler_at_once_and_is_reported_as_cancelled() -> None:
    async def main() -> None:
        broker = FakeBroker()
        worker = make(broker)
        observed: list[Any] = []
        started = asyncio.Event()

        @worker.handler("long")
        async def long(ctx: StepContext) -> None:
            started.set()
            reason = await ctx.cancelled()
            observed.append((reason, time.monotonic()))
            raise ctx.cancellation_error()

        t = task("long", interval=5)
        broker.enqueue(t)

        async def body() -> None:
            await asyncio.wait_for(started.wait(), 5)
            await asyncio.sleep(0.5)  # the heartbeat is being held now
            cancelled_at = time.monotonic()
            broker.cancel(t["id"])
            (report,) = await broker.wait_reports(1)
            assert report.body["error"]["type"] == error_types.CANCELLED
            assert report.body["retryable"] is False
            assert observed[0][0] is CancelReason.REQUESTED
            # A held heartbeat: within a round trip, not an interval (5 s).
            assert observed[0][1] - cancelled_at < 0.5

        await serving(broker, worker, body)

    run(main())


def test_a_handler_that_ignores_the_cancel_is_dropped_after_the_cancel_grace() -> None:
    async def main() -> None:
        broker = FakeBroker()
        worker = make(broker, cancel_grace=0.3)
        finished: list[bool] = []

        @worker.handler("stubborn")
        async def stubborn() -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                finished.append(True)
                raise

        t = task("stubborn")
        broker.enqueue(t)
        broker.cancel(t["id"])

        async def body() -> None:
            (report,) = await broker.wait_reports(1)
            assert report.body["error"]["type"] == error_types.CANCELLED
            assert report.body["retryable"] is False

        await serving(broker, worker, body)
        assert finished == [True], "the async handler's task was cancelled"

    run(main())


def test_a_fenced_attempt_is_cancelled_and_never_reported() -> None:
    async def main() -> None:
        broker = FakeBroker()
        worker = make(broker)
        reasons: list[CancelReason] = []

        @worker.handler("h")
        async def handler(ctx: StepContext) -> str:
            reasons.append(await ctx.cancelled())
            return "late result"

        t = task("h")
        broker.fenced.add(t["id"])
        broker.enqueue(t)

        async def body() -> None:
            while not reasons:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)

        await serving(broker, worker, body)
        assert reasons == [CancelReason.FENCED]
        assert broker.reports == [], "a fenced attempt reports nothing"
        assert len(broker.of("/v1/tasks/heartbeat")) == 1, "and stops heartbeating"

    run(main())


def test_a_409_on_a_report_stops_its_retries_and_5xx_is_retried() -> None:
    async def main() -> None:
        broker = FakeBroker(statuses={"/v1/tasks/complete": [409, 503, 500, 200]})
        worker = make(broker, concurrency=1)

        @worker.handler("h")
        async def handler(n: int) -> int:
            return n

        broker.enqueue(task("h", 1))

        async def body() -> None:
            while len(broker.of("/v1/tasks/complete")) < 1:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert len(broker.of("/v1/tasks/complete")) == 1, "409: no retry"
            broker.enqueue(task("h", 2))
            (report,) = await broker.wait_reports(1)
            assert report.body["output"] == 2
            assert len(broker.of("/v1/tasks/complete")) == 4, "503 and 500 were retried"

        await serving(broker, worker, body)

    run(main())


def test_a_413_turns_the_completion_into_an_output_too_large_failure() -> None:
    async def main() -> None:
        broker = FakeBroker(statuses={"/v1/tasks/complete": [413]})
        worker = make(broker)

        @worker.handler("h")
        async def handler() -> str:
            return "x" * 100

        broker.enqueue(task("h"))

        async def body() -> None:
            (report,) = await broker.wait_reports(1)
            assert report.path == "/v1/tasks/fail"
            assert report.body["error"]["type"] == error_types.OUTPUT_TOO_LARGE
            assert report.body["retryable"] is False

        await serving(broker, worker, body)

    run(main())


def test_claims_back_off_on_401_403_503_and_reread_the_token_each_time(tmp_path: Any) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")

    async def main() -> None:
        broker = FakeBroker(statuses={"/v1/claim": [401, 403, 503]})
        worker = make(broker, token_path=str(token))

        @worker.handler("h")
        async def handler() -> str:
            return "ok"

        async def body() -> None:
            while len(broker.of("/v1/claim")) < 3:
                await asyncio.sleep(0.01)
            token.write_text("second")
            broker.enqueue(task("h"))
            await broker.wait_reports(1)

        await serving(broker, worker, body)
        claims = broker.of("/v1/claim")
        assert len(claims) >= 4
        assert claims[0].authorization == "Bearer first"
        assert broker.reports[0].authorization == "Bearer second"
        gaps = [b.at - a.at for a, b in zip(claims, claims[1:4])]
        assert all(g >= 0.004 for g in gaps), f"backed off between refused claims: {gaps}"

    run(main())


def test_concurrency_claims_every_free_slot_and_runs_tasks_at_once() -> None:
    async def main() -> None:
        broker = FakeBroker()
        worker = make(broker, concurrency=3)
        running = 0
        peak = 0

        @worker.handler("h")
        async def handler() -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.3)
            running -= 1

        async def body() -> None:
            while not broker.of("/v1/claim"):
                await asyncio.sleep(0.01)
            broker.enqueue(task("h"), task("h"), task("h"))
            await broker.wait_reports(3)

        await serving(broker, worker, body)
        assert broker.of("/v1/claim")[0].body["capacity"] == 3
        assert peak == 3

    run(main())


def test_shutdown_lets_in_flight_steps_finish_and_takes_nothing_more() -> None:
    async def main() -> None:
        broker = FakeBroker()
        worker = make(broker, concurrency=2, shutdown_grace=5.0)
        started = asyncio.Event()

        @worker.handler("h")
        async def handler(ms: int) -> int:
            started.set()
            await asyncio.sleep(ms / 1000)
            return ms

        broker.enqueue(task("h", 800))
        serve = asyncio.ensure_future(worker.serve(handle_signals=False))
        await asyncio.wait_for(started.wait(), 5)
        worker.shutdown()
        await asyncio.sleep(0.05)
        claims_at_shutdown = len(broker.of("/v1/claim"))
        broker.enqueue(task("h", 1))  # queued after the shutdown: must stay unclaimed
        await asyncio.wait_for(serve, 10)
        assert [r.body["output"] for r in broker.reports] == [800]
        assert len(broker.of("/v1/claim")) == claims_at_shutdown
        assert len(broker.queued) == 1

    run(main())


def test_steps_still_running_when_the_grace_ends_fail_as_worker_shutdown() -> None:
    async def main() -> None:
        broker = FakeBroker()
        worker = make(broker, shutdown_grace=0.3)
        started = asyncio.Event()
        reasons: list[Optional[CancelReason]] = []

        @worker.handler("h")
        async def handler(ctx: StepContext) -> None:
            started.set()
            try:
                await asyncio.sleep(30)
            finally:
                reasons.append(ctx.cancel_reason)

        broker.enqueue(task("h"))
        serve = asyncio.ensure_future(worker.serve(handle_signals=False))
        await asyncio.wait_for(started.wait(), 5)
        worker.shutdown()
        await asyncio.wait_for(serve, 10)
        (report,) = broker.reports
        assert report.body["error"]["type"] == error_types.WORKER_SHUTDOWN
        assert report.body["retryable"] is True
        assert reasons == [CancelReason.SHUTDOWN]

    run(main())


def test_sigterm_drains_the_worker() -> None:
    async def main() -> None:
        broker = FakeBroker()
        worker = make(broker)
        started = asyncio.Event()

        @worker.handler("h")
        async def handler() -> str:
            started.set()
            await asyncio.sleep(0.5)
            return "finished"

        broker.enqueue(task("h"))
        serve = asyncio.ensure_future(worker.serve())
        await asyncio.wait_for(started.wait(), 5)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(serve, 10)
        assert [r.body["output"] for r in broker.reports] == ["finished"]

    run(main())


def test_a_deadline_cancels_the_context_and_fails_retryably() -> None:
    async def main() -> None:
        broker = FakeBroker()
        worker = make(broker)
        reasons: list[CancelReason] = []

        @worker.handler("h")
        async def handler(ctx: StepContext) -> None:
            reasons.append(await ctx.cancelled())
            raise ctx.cancellation_error()

        deadline = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 1)) + ".5Z"
        broker.enqueue(task("h", deadline=deadline, interval=10))

        async def body() -> None:
            (report,) = await broker.wait_reports(1)
            assert report.body["error"]["type"] == error_types.DEADLINE_EXCEEDED
            assert report.body["retryable"] is True

        await serving(broker, worker, body)
        assert reasons == [CancelReason.DEADLINE_EXCEEDED]

    run(main())


def test_a_sync_handler_sees_the_cancellation_and_ctx_sleep_raises() -> None:
    async def main() -> None:
        broker = FakeBroker()
        worker = make(broker, concurrency=2)

        @worker.handler("sync")
        def blocking(ctx: StepContext) -> str:
            assert ctx.wait_cancelled(10), "cancelled within the wait"
            return f"stopped: {ctx.cancel_reason.value}"  # type: ignore[union-attr]

        @worker.handler("sleepy")
        async def sleepy(ctx: StepContext) -> None:
            await ctx.sleep(30)

        a, b = task("sync"), task("sleepy")
        broker.enqueue(a, b)

        async def body() -> None:
            await asyncio.sleep(0.4)
            broker.cancel(a["id"])
            broker.cancel(b["id"])
            reports = {r.body["id"]: r.body for r in await broker.wait_reports(2)}
            assert reports[a["id"]]["output"] == "stopped: Requested"
            assert reports[b["id"]]["error"]["type"] == error_types.CANCELLED

        await serving(broker, worker, body)

    run(main())


def test_registration_mistakes_are_refused() -> None:
    worker = Worker(config())
    worker.register("a", lambda: None)
    with pytest.raises(ValueError, match="registered twice"):
        worker.register("a", lambda: None)
    assert worker.handler_names == ["a"]
    from sluice import ConfigError

    with pytest.raises(ConfigError, match="no handler"):
        asyncio.run(Worker(config()).serve(handle_signals=False))
