"""Starts a payment flow from Python code and awaits its result: the Python twin of the Rust client's
`charge` example, served by the Python workers (examples/python/workerpool.yaml).

    python examples/python/start_order.py 1001 42.50

Runs against the cluster of your kubeconfig (or the pod's service account), in its namespace or
$SLUICE_NAMESPACE. Run it twice with the same order id: the second start finds the first run and prints its
recorded result instead of charging again. A different amount for the same order is refused (a spec
conflict, exit code 2); a declined card is a failed run (exit code 3).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from sluice.client import Client, RunFailed, SpecConflict, Start

#: The flow: charge the order on the Python workers; the charge's output is the flow's output.
CHARGE_FLOW = {
    "pool": "python",
    "steps": [{"name": "charge", "handler": "charge_payment", "input": "${{ input }}"}],
    "output": "${{ steps.charge.output }}",
}


@dataclass
class Order:
    orderId: str  # noqa: N815 - the flow's input is JSON in camelCase
    amount: float


@dataclass
class Payment:
    payment_id: str
    amount: float
    status: str


def charge(client: Client, order: Order) -> Payment:
    # The run's name is its identity: starting it again returns the same run (and its result).
    run = client.start(Start.inline(f"charge-{order.orderId}", CHARGE_FLOW, input=order))
    return run.wait(timeout=120, into=Payment)


def main() -> int:
    order_id = sys.argv[1] if len(sys.argv) > 1 else "1001"
    amount = float(sys.argv[2]) if len(sys.argv) > 2 else 42.50
    client = Client.from_default(namespace=os.environ.get("SLUICE_NAMESPACE"))
    try:
        payment = charge(client, Order(order_id, amount))
    except SpecConflict as conflict:
        print(conflict, file=sys.stderr)
        return 2
    except RunFailed as failed:
        print(f"the charge failed: {failed.failure}", file=sys.stderr)
        return 3
    print(f"charged {payment.amount:.2f}: {payment.payment_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
