"""The client without a cluster: spec comparison, status summaries, starts and their IfExists policies against
a fake CustomObjectsApi. (Against the real API server: tests/e2e/tests/python.rs.)"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import pytest
from kubernetes.client.rest import ApiException

from sluice.client import (
    AlreadyExists,
    Client,
    DecodeError,
    IfExists,
    NotFound,
    RunCancelled,
    RunFailed,
    SpecConflict,
    Start,
    spec_differences,
)
from sluice.client.status import failure, has_ended, summary


def test_equal_specs_and_empty_defaults_do_not_differ() -> None:
    a = {"pool": "p", "steps": [{"name": "a", "handler": "h"}]}
    b = {
        "pool": "p",
        "suspend": False,
        "steps": [{"name": "a", "handler": "h", "dependsOn": [], "continueOnFailure": False}],
    }
    assert spec_differences(a, b) == []


def test_run_controls_are_not_part_of_the_identity() -> None:
    a = {"pool": "p", "steps": [{"name": "a", "handler": "h"}]}
    b = {**a, "cancel": True, "suspend": True, "retryRequest": "t1"}
    assert spec_differences(a, b) == [] and spec_differences(b, a) == []


def test_numbers_compare_by_value_and_booleans_are_not_numbers() -> None:
    a = {"input": {"x": 1.0, "y": 2.5, "z": -3}}
    assert spec_differences(a, {"input": {"x": 1, "y": 2.5, "z": -3.0}}) == []
    assert spec_differences(a, {"input": {"x": 1, "y": 2.25, "z": -3}}) == ["spec.input.y"]
    assert spec_differences({"input": {"x": True}}, {"input": {"x": 1}}) == ["spec.input.x"]
    # Free-form input keeps its false and empty values: they are data.
    assert spec_differences({"input": {"flag": False}}, {"input": {}}) == ["spec.input.flag"]


def test_differences_name_their_paths() -> None:
    a = {
        "pool": "p",
        "input": {"order": "42", "lines": [1, 2]},
        "steps": [{"name": "a", "handler": "h"}, {"name": "b", "handler": "h", "dependsOn": ["a"]}],
    }
    b = {
        "pool": "q",
        "input": {"order": "42", "lines": [1, 2, 3], "extra": True},
        "steps": [{"name": "a", "handler": "h"}, {"name": "b", "handler": "g", "dependsOn": ["a"]}],
    }
    assert spec_differences(a, b) == ["spec.input.extra", "spec.input.lines", "spec.pool", "spec.steps[1].handler"]


def test_a_template_run_is_compared_by_its_template_and_input() -> None:
    sent = {"templateRef": {"name": "t", "input": {"n": 1.0}}}
    resolved = {
        "templateRef": {"name": "t", "input": {"n": 1}},
        "pool": "from-template",
        "defaults": {"timeout": "1m"},
        "activeDeadline": "1h",
        "input": {"n": 1, "currency": "EUR"},
        "steps": [{"name": "a", "handler": "h"}],
        "output": "${{ steps.a.output }}",
    }
    assert spec_differences(sent, resolved) == []
    assert spec_differences({"templateRef": {"name": "t", "input": {"n": 2}}}, resolved) == [
        "spec.templateRef.input.n"
    ]
    assert spec_differences({"templateRef": {"name": "u", "input": {"n": 1}}}, resolved) == ["spec.templateRef.name"]
    own_pool = {"pool": "mine", "templateRef": {"name": "t", "input": {"n": 1}}}
    assert spec_differences(own_pool, resolved) == ["spec.pool"]
    assert spec_differences(sent, {"pool": "p", "steps": [{"name": "a", "handler": "h"}]}) == ["spec.templateRef"]


def test_long_lists_of_differences_are_summarised() -> None:
    d = spec_differences({"input": {}}, {"input": {f"k{i:02}": i for i in range(15)}})
    assert len(d) == 11 and d[-1] == "5 more"


def failed_run() -> dict:
    return {
        "metadata": {"name": "order-42", "namespace": "shop"},
        "spec": {
            "pool": "p",
            "steps": [
                {"name": "charge", "handler": "charge_payment"},
                {"name": "ship", "handler": "ship", "dependsOn": ["charge"]},
                {"name": "fan", "handler": "h", "forEach": [1, 2]},
            ],
        },
        "status": {
            "phase": "Failed",
            "progress": "2/3",
            "steps": {
                "charge": {
                    "phase": "Failed",
                    "attempts": 3,
                    "error": {"type": "card_declined", "message": "over the limit", "attempt": 3},
                },
                "ship": {"phase": "Cancelled"},
                "fan": {
                    "phase": "Failed",
                    "attempts": 1,
                    "instances": {
                        "active": {"1": {"phase": "Failed", "error": {"type": "Timeout", "message": "timed out"}}}
                    },
                },
            },
            "conditions": [
                {"type": "Succeeded", "status": "False", "reason": "StepFailed", "message": 'step "charge" failed'},
                {"type": "Ready", "status": "False", "reason": "StepFailed", "message": "ready message"},
            ],
        },
    }


def test_a_failure_names_the_failed_steps_in_spec_order() -> None:
    f = failure(failed_run())
    assert (f.namespace, f.name, f.reason) == ("shop", "order-42", "StepFailed")
    assert [(s.name, s.attempts) for s in f.failed_steps] == [("charge", 3), ("fan", 1)]
    assert f.failed_steps[0].error.type == "card_declined"  # type: ignore[union-attr]
    assert f.failed_steps[1].error.type == "Timeout"  # type: ignore[union-attr]
    assert str(f) == 'flowrun shop/order-42 failed (StepFailed): step "charge" failed'


def test_the_summary_lists_every_step_and_retry_requests_keep_a_run_alive() -> None:
    s = summary(failed_run())
    assert (s.phase, s.progress, s.message) == ("Failed", "2/3", "ready message")
    assert [(x.name, x.phase) for x in s.steps] == [("charge", "Failed"), ("ship", "Cancelled"), ("fan", "Failed")]
    fresh = {"metadata": {"name": "new"}, "spec": {"steps": [{"name": "wait", "waitForSignal": {"name": "go"}}]}}
    s = summary(fresh)
    assert (s.phase, s.steps[0].phase, s.steps[0].signal, s.message) == ("Pending", "Pending", "go", None)
    fr = failed_run()
    assert has_ended(fr)
    fr["spec"]["retryRequest"] = "t1"
    assert not has_ended(fr)
    fr["status"]["retry"] = {"request": "t1", "outcome": "Retried"}
    assert has_ended(fr)


class FakeApi:
    """The CustomObjectsApi calls the client makes, over a dict of stored FlowRuns; the API server's
    rendering is the identity, except that it stores ``1.0`` as ``1``."""

    def __init__(self) -> None:
        self.store: dict[str, dict] = {}
        self.calls: list[str] = []
        self.uid = 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kwargs):  # type: ignore[no-untyped-def]
        body = json.loads(json.dumps(body).replace(".0,", ",").replace(".0}", "}"))
        dry = kwargs.get("dry_run") == "All"
        self.calls.append("dry-run" if dry else "create")
        name = body["metadata"].get("name")
        if dry:
            return copy.deepcopy(body)
        if name in self.store:
            raise ApiException(status=409, reason="Conflict")
        self.uid += 1
        body["metadata"]["uid"] = f"uid-{self.uid}"
        body["metadata"]["resourceVersion"] = str(self.uid)
        self.store[name] = body
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kwargs):  # type: ignore[no-untyped-def]
        self.calls.append("get")
        if name not in self.store:
            raise ApiException(status=404, reason="Not Found")
        return copy.deepcopy(self.store[name])

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, body=None, **kwargs):  # type: ignore[no-untyped-def]
        self.calls.append("delete")
        assert body.propagation_policy == "Background"
        assert body.preconditions.uid == self.store[name]["metadata"]["uid"]
        del self.store[name]

    def list_namespaced_custom_object(self, group, version, namespace, plural, field_selector=None, **kwargs):  # type: ignore[no-untyped-def]
        name = field_selector.split("=", 1)[1]
        items = [copy.deepcopy(self.store[name])] if name in self.store else []
        return {"metadata": {"resourceVersion": "9"}, "items": items}


def client_with(api: FakeApi) -> Client:
    client = Client.__new__(Client)
    client._api_client = None  # type: ignore[assignment]
    client._api = api  # type: ignore[assignment]
    client._namespace = "shop"
    return client


SPEC = {"pool": "pool", "steps": [{"name": "double", "handler": "double", "input": "${{ input }}"}]}


@dataclass
class Doubling:
    n: float


def test_starting_a_name_twice_returns_the_same_run_and_a_different_spec_is_refused() -> None:
    api = FakeApi()
    client = client_with(api)
    first = Start.inline("order-7", SPEC, input=Doubling(21.0)).with_label("app", "shop")
    run = client.start(first)
    assert run.created and run.name == "order-7"
    assert api.store["order-7"]["spec"]["input"] == {"n": 21}
    assert api.store["order-7"]["metadata"]["labels"] == {"app": "shop"}
    again = client.start(first)
    assert not again.created
    assert len(api.store) == 1

    other = Start.inline("order-7", SPEC, input={"n": 5})
    with pytest.raises(SpecConflict) as conflict:
        client.start(other)
    assert conflict.value.differences == ["spec.input.n"]
    assert "spec.input.n" in str(conflict.value) and "different spec" in str(conflict.value)
    assert "dry-run" in api.calls, "a local difference is checked against the server's rendering"
    with pytest.raises(AlreadyExists):
        client.start(first.with_if_exists(IfExists.REJECT))
    assert not client.start(other.with_if_exists(IfExists.RETURN_EXISTING)).created
    # ReplaceFailed does not replace a run that has not failed.
    with pytest.raises(SpecConflict):
        client.start(other.with_if_exists(IfExists.REPLACE_FAILED))


def test_replace_failed_deletes_a_failed_run_and_starts_anew() -> None:
    api = FakeApi()
    client = client_with(api)
    client.start(Start.inline("r", SPEC, input={"n": 1}))
    api.store["r"]["status"] = {"phase": "Failed"}
    run = client.start(Start.inline("r", SPEC, input={"n": 2}, if_exists=IfExists.REPLACE_FAILED))
    assert run.created
    assert api.store["r"]["spec"]["input"] == {"n": 2}
    assert api.store["r"]["metadata"]["uid"] == "uid-2"
    assert "delete" in api.calls


def test_template_starts_put_the_input_in_the_template_ref() -> None:
    start = Start.template("t-1", "doubler", input={"n": 1})
    assert start.spec_to_send() == {"templateRef": {"name": "doubler", "input": {"n": 1}}}


@dataclass
class Doubled:
    n: int


def test_wait_answers_at_once_for_a_run_that_ended() -> None:
    api = FakeApi()
    client = client_with(api)
    client.start(Start.inline("done", SPEC, input={"n": 1}))
    api.store["done"]["status"] = {"phase": "Succeeded", "output": {"n": 2}}
    assert client.run("done").wait(5) == {"n": 2}
    assert client.run("done").wait(5, into=Doubled) == Doubled(2)
    with pytest.raises(DecodeError):
        client.run("done").wait(5, into=list[str])
    api.store["done"]["status"] = {"phase": "Cancelled", "conditions": [{"type": "Succeeded", "message": "by me"}]}
    with pytest.raises(RunCancelled, match="by me"):
        client.run("done").wait(5)
    api.store["done"] = failed_run()
    with pytest.raises(RunFailed) as failed:
        client.run("done").wait(5)
    assert [s.name for s in failed.value.failure.failed_steps] == ["charge", "fan"]
    with pytest.raises(NotFound):
        client.run("ghost").wait(5)
    with pytest.raises(NotFound):
        client.run("ghost").status()


def test_signal_payloads_must_be_json() -> None:
    from sluice.client import EncodeError

    api = FakeApi()
    run = client_with(api).run("x")
    with pytest.raises(EncodeError, match="signal payload"):
        run.signal("go", object())
    with pytest.raises(Exception, match="input"):
        Start.inline("x", SPEC, input={1: "non-string key"})
