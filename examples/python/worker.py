"""The Python example worker: the handlers of the Python examples, on the `sluice` package.

    examples/python/workerpool.yaml   the WorkerPool `python` whose pods run this file
    examples/python/job-pool.yaml     a batch of jobs: transient failures, a poisoned job
    examples/python/order-flow.yaml   an order workflow with Python tasks and a manager's approval
    examples/python/start_order.py    a client program that starts a flow here and awaits its result

Every handler is a plain function of the step's context and its typed input (a dataclass), deterministic
in its input and attempt number, so tests can predict every output and failure. Run it against a broker
with SLUICE_BROKER_URL and SLUICE_POOL (a WorkerPool's pods get those, and the token, from the operator).
With SLUICE_EXAMPLE_SIDE_EFFECTS=<file>, handlers append one JSON line per event to that file (for tests).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from sluice import FatalError, RetryableError, StepContext, Worker

worker = Worker.from_env()


def record(ctx: StepContext, event: str, **extra: Any) -> None:
    """Appends what a handler did to $SLUICE_EXAMPLE_SIDE_EFFECTS (tests read it), if set."""
    path = os.environ.get("SLUICE_EXAMPLE_SIDE_EFFECTS")
    if not path:
        return
    line = {
        "flowrun": ctx.flow_run_name,
        "step": ctx.step,
        "instance": ctx.instance,
        "attempt": ctx.attempt,
        "handler": ctx.handler,
        "worker": ctx.worker,
        "event": event,
        "ms": int(time.time() * 1000),
        **extra,
    }
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def transient(ctx: StepContext, fail_first_attempts: int, what: str) -> None:
    """Fails with a retryable error while the attempt is one of the first `fail_first_attempts`."""
    if ctx.attempt <= fail_first_attempts:
        raise RetryableError(
            f"{what}: transient failure on attempt {ctx.attempt} (fails the first {fail_first_attempts})",
            error_type="Unavailable",
        )


# -- the job pool (examples/python/job-pool.yaml) -------------------------------------------------------


@dataclass
class Resize:
    image: str
    width: int


@worker.handler("resize_image")
def resize_image(ctx: StepContext, job: Resize) -> dict:  # sync handlers run in a thread of their own
    record(ctx, "run")
    stem = job.image.rsplit(".", 1)[0]
    return {"image": job.image, "thumbnail": f"thumbs/{stem}-{job.width}.png", "width": job.width}


@dataclass
class Newsletter:
    list: str
    subject: str


@worker.handler("send_newsletter")
async def send_newsletter(ctx: StepContext, job: Newsletter) -> dict:
    record(ctx, "run")
    return {"list": job.list, "subject": job.subject, "sent": True}


@dataclass
class Export:
    format: str
    fail_first_attempts: int = 0


@worker.handler("export_report")
async def export_report(ctx: StepContext, job: Export) -> dict:
    record(ctx, "run")
    transient(ctx, job.fail_first_attempts, "report storage")
    return {"file": f"report.{job.format}", "attempt": ctx.attempt}


@dataclass
class Import:
    file: str
    poison: bool = False


@worker.handler("import_records")
async def import_records(ctx: StepContext, job: Import) -> dict:
    record(ctx, "run")
    if job.poison:
        # A corrupt file fails every attempt (retryably): the job is poisoned after its max attempts.
        raise RetryableError(
            f"{job.file}: line 17: unterminated quoted field (attempt {ctx.attempt})", error_type="CorruptInput"
        )
    return {"file": job.file, "imported": True}


# -- the order workflow (examples/python/order-flow.yaml) -----------------------------------------------


@dataclass
class Charge:
    order_id: str
    amount: Union[float, str]  # an expression inside a longer string yields a string
    decline: bool = False
    fail_first_attempts: int = 0


@worker.handler("charge_payment")
async def charge_payment(ctx: StepContext, charge: Charge) -> dict:
    record(ctx, "run")
    try:
        amount = float(charge.amount)
    except ValueError:
        raise FatalError("InvalidInput", f"amount must be a number, got {charge.amount!r}") from None
    if charge.decline or amount <= 0:
        # Not retryable: the step fails at once, whatever its retry policy.
        raise FatalError("card_declined", f"the card was declined for order {charge.order_id} ({amount:.2f})")
    transient(ctx, charge.fail_first_attempts, "payment gateway")
    # The payment id is derived from the order: charging twice is idempotent.
    return {"paymentId": f"pay-{charge.order_id}", "amount": amount, "status": "charged"}


@dataclass
class Reserve:
    order_id: str
    sku: str
    line: Any = None


@worker.handler("reserve_inventory")
async def reserve_inventory(ctx: StepContext, item: Reserve) -> dict:
    record(ctx, "run")
    return {"sku": item.sku, "line": item.line, "reservationId": f"res-{item.order_id}-{item.line}-{item.sku}"}


@dataclass
class Ship:
    order_id: str
    address: dict
    reservations: list = field(default_factory=list)


@worker.handler("ship_order")
async def ship_order(ctx: StepContext, order: Ship) -> dict:
    record(ctx, "run")
    if not order.reservations:
        raise FatalError("NothingToShip", f"order {order.order_id} has no reserved items")
    return {
        "tracking": f"TRK-{order.order_id}",
        "carrier": "sluice-post",
        "items": len(order.reservations),
        "to": order.address.get("name", ""),
    }


# -- demos and tests --------------------------------------------------------------------------------------


@dataclass
class Slow:
    ms: int
    slow_attempts: Optional[int] = None


@worker.handler("slow_task")
async def slow_task(ctx: StepContext, task: Slow) -> dict:
    """Works for `ms` milliseconds, stopping early when cancelled: a step to cancel, or to SIGTERM a worker in
    the middle of."""
    slow = task.slow_attempts is None or ctx.attempt <= task.slow_attempts
    ms = task.ms if slow else 0
    record(ctx, "start")
    try:
        await ctx.sleep(ms / 1000)
    except Exception:
        record(ctx, "cancelled", reason=ctx.cancel_reason.value if ctx.cancel_reason else None)
        raise
    record(ctx, "end")
    return {"sleptMs": ms, "attempt": ctx.attempt, "worker": ctx.worker}


if __name__ == "__main__":
    worker.run()  # claims, heartbeats, reports; drains on SIGTERM
