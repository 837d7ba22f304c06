"""The Python client (sluice.client) against the real API server, run by tests/e2e/tests/python.rs: the
scenarios of the Rust client's tests/e2e/tests/client.rs. An operator and a worker serving `double`
(`{"n": n}` -> `{"n": 2n}`, anything else fails fatally with `BadInput`) on pool `pool` run in the test
process; this script gets the namespace in SLUICE_NAMESPACE and the cluster in KUBECONFIG, checks every
verb and prints `ok` last. Any failed check raises (exit code 1) with what was seen.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from sluice.client import (
    AlreadyExists,
    Client,
    IfExists,
    NotFound,
    RunCancelled,
    RunFailed,
    SpecConflict,
    Start,
    WaitTimeout,
)
from sluice.client import kube

WAIT = 90

DOUBLING = {
    "pool": "pool",
    "steps": [{"name": "double", "handler": "double", "input": "${{ input }}"}],
    "output": "${{ steps.double.output }}",
}
WAITING = {
    "steps": [{"name": "gate", "waitForSignal": {"name": "go"}}],
    "output": "${{ steps.gate.output }}",
}


@dataclass
class Doubling:
    n: float


@dataclass
class Doubled:
    n: int


def flowruns(client: Client) -> list[dict]:
    listed = client.run("x")._api.list_namespaced_custom_object(  # noqa: SLF001 - the test peeks
        kube.GROUP, kube.VERSION, client.namespace, kube.PLURAL
    )
    return listed["items"]


def step_waiting(client: Client, name: str, step: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        status = client.run(name).status()
        if status.step(step).phase == "Waiting":
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} of {name} never waited for its signal")


def expect(exc_type: type, call, *args, **kwargs):  # type: ignore[no-untyped-def]
    try:
        value = call(*args, **kwargs)
    except exc_type as exc:
        return exc
    raise AssertionError(f"expected {exc_type.__name__}, got {value!r}")


def main() -> None:
    client = Client.from_default(namespace=os.environ["SLUICE_NAMESPACE"])
    assert client.namespace == os.environ["SLUICE_NAMESPACE"]

    # start + wait: the typed output; status.
    first = Start.inline("order-7", DOUBLING, input=Doubling(21.0)).with_label("app", "shop")
    run = client.start(first)
    assert run.created, "the first start creates the run"
    assert run.wait(WAIT, into=Doubled) == Doubled(42)
    status = run.status()
    assert (status.phase, status.progress, status.output) == ("Succeeded", "1/1", {"n": 42}), status
    assert (status.steps[0].name, status.steps[0].phase, status.steps[0].attempts) == ("double", "Succeeded", 1)
    stored = run.get()
    assert stored["spec"]["input"] == {"n": 21}, "the API server rewrote the float 21.0"
    uid = stored["metadata"]["uid"]

    # The same name again: the same run, no duplicate FlowRun; a different spec is refused.
    again = client.start(first)
    assert not again.created and again.name == "order-7"
    assert again.wait(WAIT) == {"n": 42}
    items = flowruns(client)
    assert [i["metadata"]["uid"] for i in items] == [uid], "one FlowRun, not a duplicate"
    other = Start.inline("order-7", DOUBLING, input={"n": 5})
    conflict = expect(SpecConflict, client.start, other)
    assert conflict.differences == ["spec.input.n"], conflict.differences
    assert "different spec" in str(conflict) and "spec.input.n" in str(conflict), str(conflict)
    expect(AlreadyExists, client.start, first.with_if_exists(IfExists.REJECT))
    assert not client.start(other.with_if_exists(IfExists.RETURN_EXISTING)).created
    expect(SpecConflict, client.start, other.with_if_exists(IfExists.REPLACE_FAILED))
    assert [i["metadata"]["uid"] for i in flowruns(client)] == [uid], "still one FlowRun"

    # A failed run is a typed failure naming its step and error.
    failed = expect(RunFailed, client.start(Start.inline("bad-input", DOUBLING, input={"n": "x"})).wait, WAIT)
    assert failed.failure.reason == "StepFailed", failed.failure
    (step,) = failed.failure.failed_steps
    assert step.name == "double" and step.error is not None and step.error.type == "BadInput", step
    assert "bad-input" in str(failed) and "BadInput" in str(failed), str(failed)

    # signal: a waiting run completes with the payload; other signals are kept.
    gated = client.start(Start.inline("gated", WAITING))
    step_waiting(client, "gated", "gate")
    timeout = expect(WaitTimeout, gated.wait, 2)
    assert timeout.last_phase == "Running" and f"{client.namespace}/gated" in str(timeout), str(timeout)
    gated.signal("unrelated")
    gated.signal("go", {"approved": True, "by": "grace"})
    assert gated.wait(WAIT) == {"approved": True, "by": "grace"}
    signals = gated.get()["status"]["signals"]
    assert sorted(signals) == ["go", "unrelated"] and "payload" not in signals["unrelated"], signals

    # cancel: the run ends Cancelled and wait says so; a cancelled run is still the same run.
    doomed = client.start(Start.inline("to-cancel", WAITING))
    step_waiting(client, "to-cancel", "gate")
    doomed.cancel()
    cancelled = expect(RunCancelled, doomed.wait, WAIT)
    assert cancelled.name == "to-cancel"
    assert doomed.status().phase == "Cancelled"
    assert not client.start(Start.inline("to-cancel", WAITING)).created
    # ReplaceFailed replaces the Cancelled run.
    replaced = client.start(Start.inline("to-cancel", DOUBLING, input={"n": 4}, if_exists=IfExists.REPLACE_FAILED))
    assert replaced.created and replaced.wait(WAIT) == {"n": 8}

    # A FlowTemplate run: awaited, and found again by its template and input (not by the copied flow).
    client.run("x")._api.create_namespaced_custom_object(  # noqa: SLF001
        kube.GROUP,
        kube.VERSION,
        client.namespace,
        "flowtemplates",
        {
            "apiVersion": f"{kube.GROUP}/{kube.VERSION}",
            "kind": "FlowTemplate",
            "metadata": {"name": "doubler"},
            "spec": {
                "pool": "pool",
                "inputs": {"n": {"type": "number", "required": True}},
                "steps": [{"name": "double", "handler": "double", "input": {"n": "${{ input.n }}"}}],
                "output": "${{ steps.double.output }}",
            },
        },
    )
    by_template = Start.template("by-template", "doubler", input=Doubling(21.0))
    templated = client.start(by_template)
    assert templated.created and templated.wait(WAIT, into=Doubled) == Doubled(42)
    assert templated.get()["spec"]["steps"], "the operator copied the template's flow into the run"
    assert not client.start(by_template).created, "the same template and input is the same run"
    conflict = expect(SpecConflict, client.start, Start.template("by-template", "doubler", input={"n": 5}))
    assert conflict.differences == ["spec.templateRef.input.n"], conflict.differences

    # A run that does not exist is NotFound for every verb.
    ghost = client.run("no-such-run")
    expect(NotFound, ghost.signal, "go", 1)
    expect(NotFound, ghost.cancel)
    expect(NotFound, ghost.status)
    expect(NotFound, ghost.wait, WAIT)
    print("ok")


if __name__ == "__main__":
    main()
