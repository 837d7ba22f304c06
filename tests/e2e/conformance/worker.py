"""The Python side of the SDK conformance suite (tests/e2e/tests/conformance.rs): the same handlers, with the
same behaviour, as the Rust side (worker-image/examples/conformance.rs, whose doc comment specifies them).
Keep the two in step.

Configured from the usual worker variables (SLUICE_BROKER_URL, SLUICE_POOL, SLUICE_WORKER_NAME,
SLUICE_CONCURRENCY, SLUICE_SHUTDOWN_GRACE_SECONDS); CONFORMANCE_LOG names a file the handlers append JSON
lines to.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

from sluice import FatalError, RetryableError, StepContext, Worker

worker = Worker.from_env()


def log_event(ctx: StepContext, handler: str, event: str, reason: Optional[str] = None) -> None:
    path = os.environ.get("CONFORMANCE_LOG")
    if not path:
        return
    line = {
        "handler": handler,
        "event": event,
        "run": ctx.flow_run_name,
        "attempt": ctx.attempt,
        "reason": reason,
        "ms": int(time.time() * 1000),
    }
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def reason_of(ctx: StepContext) -> Optional[str]:
    return ctx.cancel_reason.value if ctx.cancel_reason else None


@worker.handler("echo")
async def echo(ctx: StepContext, input: Any) -> dict:
    return {"input": input, "attempt": ctx.attempt, "step": ctx.step, "flowRun": ctx.flow_run_name}


@dataclass
class Order:
    order_id: str
    amount: float


@worker.handler("typed")
def typed(order: Order) -> dict:  # a sync handler: run in a thread by the SDK
    return {"orderId": order.order_id, "doubled": order.amount * 2}


@worker.handler("sleep")
async def sleep(ctx: StepContext, input: dict) -> dict:
    ms = int(input.get("ms", 0))
    log_event(ctx, "sleep", "start")
    try:
        await ctx.sleep(ms / 1000)
    except Exception:
        log_event(ctx, "sleep", "cancelled", reason_of(ctx))
        raise ctx.cancellation_error() from None
    log_event(ctx, "sleep", "end")
    return {"slept": ms}


@worker.handler("flaky")
async def flaky(ctx: StepContext, input: dict) -> dict:
    if ctx.attempt < int(input.get("failUntil", 0)):
        raise RetryableError(f"attempt {ctx.attempt} fails", error_type="Flaky")
    return {"attempt": ctx.attempt}


@worker.handler("fatal")
async def fatal(input: Any) -> None:
    raise FatalError("CardDeclined", "over the limit")


@worker.handler("block")
async def block(ctx: StepContext, input: dict) -> dict:
    if ctx.attempt >= int(input.get("returnFromAttempt", 1 << 62)):
        return {"attempt": ctx.attempt}
    log_event(ctx, "block", "start")
    try:
        await asyncio.wait_for(ctx.cancelled(), 60)
    except asyncio.TimeoutError:
        pass
    log_event(ctx, "block", "cancelled", reason_of(ctx))
    raise ctx.cancellation_error()


if __name__ == "__main__":
    worker.run()
