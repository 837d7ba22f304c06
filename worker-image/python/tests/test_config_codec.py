"""Configuration from the environment, typed input and output, the wire helpers."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional

import pydantic
import pytest

from sluice import CancelReason, Config, ConfigError, StepContext, Task, error_types
from sluice import codec
from sluice.handler import Handler
from sluice.wire import FlowRunRef, truncate_message


def test_config_reads_every_variable() -> None:
    config = Config.from_env(
        {
            "SLUICE_BROKER_URL": "http://broker:8081",
            "SLUICE_POOL": "payments",
            "SLUICE_TOKEN_PATH": "/var/run/secrets/sluice/token",
            "SLUICE_WORKER_NAME": "w-1",
            "POD_NAME": "pod-1",
            "POD_NAMESPACE": "shop",
            "SLUICE_CONCURRENCY": "4",
            "SLUICE_SHUTDOWN_GRACE_SECONDS": "7",
        }
    )
    assert (config.broker_url, config.pool, config.worker_name) == ("http://broker:8081", "payments", "w-1")
    assert config.token_path == "/var/run/secrets/sluice/token"
    assert config.namespace == "shop"
    assert (config.concurrency, config.shutdown_grace) == (4, 7.0)


def test_config_defaults_and_worker_name_fallbacks() -> None:
    config = Config.from_env({"SLUICE_BROKER_URL": "http://b", "SLUICE_POOL": "p", "POD_NAME": "pod-1"})
    assert config.worker_name == "pod-1"
    assert (config.concurrency, config.shutdown_grace, config.token_path) == (1, 25.0, None)
    assert (config.wait_seconds, config.cancel_grace, config.report_grace) == (30, 5.0, 4.0)
    config = Config.from_env({"SLUICE_BROKER_URL": "http://b", "SLUICE_POOL": "p", "HOSTNAME": "host-1"})
    assert config.worker_name == "host-1"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SLUICE_POOL": "p"}, "SLUICE_BROKER_URL"),
        ({"SLUICE_BROKER_URL": "http://b"}, "SLUICE_POOL"),
        ({"SLUICE_BROKER_URL": "http://b", "SLUICE_POOL": "p", "SLUICE_CONCURRENCY": "zero"}, "SLUICE_CONCURRENCY"),
        ({"SLUICE_BROKER_URL": "http://b", "SLUICE_POOL": "p", "SLUICE_CONCURRENCY": "0"}, "at least 1"),
        ({"SLUICE_BROKER_URL": "broker:80", "SLUICE_POOL": "p"}, "http://"),
    ],
)
def test_config_refuses_missing_and_invalid_values(environ: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_env(environ)


class Size(enum.Enum):
    SMALL = "s"
    LARGE = "l"


@dataclass
class Line:
    sku: str
    qty: int = 1


@dataclass
class Order:
    order_id: str
    lines: list[Line]
    size: Size
    note: Optional[str] = None
    tags: dict[str, int] = field(default_factory=dict)


class Model(pydantic.BaseModel):
    n: int
    label: str = "x"


def test_dataclasses_decode_nested_with_camel_case_keys() -> None:
    order = codec.decode(
        {"orderId": "7", "lines": [{"sku": "a", "qty": 2}, {"sku": "b"}], "size": "l", "tags": {"x": 1.0}},
        Order,
    )
    assert order == Order("7", [Line("a", 2), Line("b", 1)], Size.LARGE, None, {"x": 1})


@pytest.mark.parametrize(
    ("value", "annotation", "message"),
    [
        ({"lines": [], "size": "s"}, Order, "missing field 'order_id'"),
        ({"orderId": "7", "lines": [{"sku": 1}], "size": "s"}, Order, "input.lines[0].sku: expected str"),
        ({"orderId": "7", "lines": [], "size": "m"}, Order, "is not a Size"),
        ("x", int, "expected an integer"),
        (1.5, int, "expected an integer"),
        (True, float, "expected a number"),
        ({"n": "x"}, Model, "n"),
    ],
)
def test_mismatched_input_is_a_decode_error(value: Any, annotation: Any, message: str) -> None:
    with pytest.raises(codec.DecodeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        codec.decode(value, annotation)


def test_pydantic_models_optional_and_raw_values() -> None:
    assert codec.decode({"n": 3}, Model) == Model(n=3)
    assert codec.decode(None, Optional[Model]) is None
    assert codec.decode([{"n": 1}], list[Model]) == [Model(n=1)]
    assert codec.decode({"anything": [1]}, Any) == {"anything": [1]}
    assert codec.decode({"a": 1}, dict) == {"a": 1}
    assert codec.decode(2, float) == 2.0


def test_outputs_encode_dataclasses_models_and_enums() -> None:
    assert codec.encode(Line("a")) == {"sku": "a", "qty": 1}
    assert codec.encode(Model(n=1)) == {"n": 1, "label": "x"}
    assert codec.encode({"s": Size.SMALL, "t": (1, 2)}) == {"s": "s", "t": [1, 2]}
    with pytest.raises(TypeError):
        codec.encode({1: "non-string key"})
    with pytest.raises(TypeError):
        codec.encode(object())
    with pytest.raises(ValueError):
        codec.encode(float("nan"))


def test_handler_signatures() -> None:
    async def both(ctx: StepContext, order: Order) -> None: ...

    def input_only(n: int) -> None: ...

    def context_only(ctx: StepContext) -> None: ...

    def nothing() -> None: ...

    def untyped(ctx, value):  # type: ignore[no-untyped-def]
        ...

    assert (Handler("a", both).is_async, Handler("a", both).takes_context, Handler("a", both).input_type) == (
        True,
        True,
        Order,
    )
    h = Handler("b", input_only)
    assert (h.is_async, h.takes_context, h.takes_input, h.input_type) == (False, False, True, int)
    h = Handler("c", context_only)
    assert (h.takes_context, h.takes_input) == (True, False)
    h = Handler("d", nothing)
    assert (h.takes_context, h.takes_input) == (False, False)
    h = Handler("e", untyped)
    assert (h.takes_context, h.takes_input, h.input_type) == (True, True, Any)


def test_task_parsing_context_and_cancel_reasons() -> None:
    task = Task.from_json(
        {
            "id": "ns/flow/step/3@u",
            "attempt": 2,
            "handler": "h",
            "input": None,
            "deadline": "2030-01-01T00:00:00Z",
            "heartbeatIntervalSeconds": 10,
            "flowRun": {"namespace": "ns", "name": "flow", "uid": "u"},
            "step": "step",
            "instance": 3,
        }
    )
    assert task.flow_run == FlowRunRef("ns", "flow", "u")
    ctx = StepContext(task, "w")
    assert (ctx.task_id, ctx.attempt, ctx.namespace, ctx.flow_run_name, ctx.step, ctx.instance) == (
        "ns/flow/step/3@u",
        2,
        "ns",
        "flow",
        "step",
        3,
    )
    assert ctx.deadline is not None and ctx.deadline.timestamp() == 1_893_456_000
    assert not ctx.is_cancelled
    ctx.cancel(CancelReason.DEADLINE_EXCEEDED)
    ctx.cancel(CancelReason.SHUTDOWN)
    assert ctx.cancel_reason is CancelReason.DEADLINE_EXCEEDED, "the first reason wins"
    error = ctx.cancellation_error()
    assert (error.error_type, error.retryable) == (error_types.DEADLINE_EXCEEDED, True)
    assert CancelReason.REQUESTED.to_step_error().retryable is False
    assert CancelReason.SHUTDOWN.to_step_error().error_type == error_types.WORKER_SHUTDOWN
    # Fractions of any length parse; garbage is ignored.
    for deadline in ("2030-01-01T00:00:00.123456789Z", "2030-01-01T00:00:00+00:00"):
        t = Task.from_json({**_raw(task), "deadline": deadline})
        assert StepContext(t, "w").deadline is not None
    assert StepContext(Task.from_json({**_raw(task), "deadline": "soon"}), "w").deadline is None


def _raw(task: Task) -> dict:
    return {
        "id": task.id,
        "attempt": task.attempt,
        "handler": task.handler,
        "input": task.input,
        "heartbeatIntervalSeconds": task.heartbeat_interval_seconds,
        "flowRun": {"namespace": "ns", "name": "flow", "uid": "u"},
        "step": task.step,
    }


def test_long_messages_keep_their_end() -> None:
    assert truncate_message("short", 10) == "short"
    cut = truncate_message("a" * 100 + "THE CAUSE", 20)
    assert cut.startswith("…") and cut.endswith("THE CAUSE")
    assert len(cut.encode()) <= 20
    # Never splits a character.
    cut = truncate_message("é" * 50, 11)
    assert len(cut.encode()) <= 11 and cut.strip("…").strip("é") == ""
    from sluice import RetryableError

    assert len(RetryableError("x" * 5000).to_wire()["message"].encode()) <= 2048
