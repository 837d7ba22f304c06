"""What a run looks like from outside: a summary of its status, and how a finished run ended."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .errors import FailedStep, RunFailure, StepFailure

TERMINAL_PHASES = ("Succeeded", "Failed", "Cancelled")


@dataclass(frozen=True)
class StepSummary:
    """One step in a :class:`RunStatus`."""

    name: str
    #: Its phase (``Pending`` when the operator recorded nothing for it yet).
    phase: str = "Pending"
    #: Number of its current (or last) attempt; 0 before the first.
    attempts: int = 0
    error: Optional[StepFailure] = None
    #: The signal it waits for (or consumed).
    signal: Optional[str] = None
    message: Optional[str] = None
    #: Its output, once it Succeeded.
    output: Any = None


@dataclass(frozen=True)
class RunStatus:
    """A summary of a run's status, from :meth:`Run.status`."""

    namespace: str
    name: str
    #: ``Pending`` until the operator first wrote a status, then ``Running``, ``Succeeded``, ``Failed``,
    #: ``Cancelled``.
    phase: str
    #: Finished steps out of all steps, e.g. ``3/6``.
    progress: Optional[str] = None
    #: Every step of the spec, in spec order.
    steps: list[StepSummary] = field(default_factory=list)
    #: The flow's output, once it Succeeded.
    output: Any = None
    #: Why the run is in its phase: the message of its ``Ready`` condition, when there is one.
    message: Optional[str] = None

    def step(self, name: str) -> StepSummary:
        """The summary of step ``name`` (``KeyError`` if the spec has none)."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)


def phase(fr: Mapping[str, Any]) -> str:
    return str((fr.get("status") or {}).get("phase") or "Pending")


def has_ended(fr: Mapping[str, Any]) -> bool:
    """Whether the run has ended for good. A Failed run with a retry request the operator has not answered
    yet (``spec.retryRequest`` differs from ``status.retry.request``) is about to run again."""
    current = phase(fr)
    token = (fr.get("spec") or {}).get("retryRequest")
    if current == "Failed" and token:
        answered = ((fr.get("status") or {}).get("retry") or {}).get("request")
        return answered == token
    return current in TERMINAL_PHASES


def _condition(fr: Mapping[str, Any], type_: str) -> Optional[tuple[str, str]]:
    for condition in (fr.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return str(condition.get("reason") or ""), str(condition.get("message") or "")
    return None


def summary(fr: Mapping[str, Any]) -> RunStatus:
    metadata = fr.get("metadata") or {}
    status = fr.get("status") or {}
    recorded = status.get("steps") or {}
    steps = []
    for step in (fr.get("spec") or {}).get("steps") or []:
        s = recorded.get(step.get("name")) or {}
        steps.append(
            StepSummary(
                name=str(step.get("name")),
                phase=str(s.get("phase") or "Pending"),
                attempts=int(s.get("attempts") or 0),
                error=StepFailure.from_json(s.get("error")),
                signal=s.get("signal") or (step.get("waitForSignal") or {}).get("name"),
                message=s.get("message"),
                output=s.get("output"),
            )
        )
    ready = _condition(fr, "Ready")
    return RunStatus(
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        phase=phase(fr),
        progress=status.get("progress"),
        steps=steps,
        output=status.get("output"),
        message=ready[1] if ready and ready[1] else None,
    )


def failure(fr: Mapping[str, Any]) -> RunFailure:
    """How a Failed run failed: its ``Succeeded`` condition and its failed steps, in spec order."""
    reason, message = _condition(fr, "Succeeded") or ("", "")
    recorded = (fr.get("status") or {}).get("steps") or {}
    failed = []
    for step in (fr.get("spec") or {}).get("steps") or []:
        s = recorded.get(step.get("name"))
        if not s or s.get("phase") != "Failed":
            continue
        error = s.get("error")
        if not error:
            # A forEach step's failed instance carries the error when the step has none of its own.
            active = ((s.get("instances") or {}).get("active") or {}).values()
            error = next((i.get("error") for i in active if i.get("phase") == "Failed"), None)
        failed.append(
            FailedStep(
                name=str(step.get("name")),
                attempts=int(s.get("attempts") or 0),
                error=StepFailure.from_json(error),
            )
        )
    metadata = fr.get("metadata") or {}
    return RunFailure(
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        reason=reason,
        message=message,
        failed_steps=failed,
    )


def cancel_message(fr: Mapping[str, Any]) -> str:
    condition = _condition(fr, "Succeeded")
    return condition[1] if condition else ""
