"""The client's errors: one base class, :class:`ClientError`, and a subclass per way a verb can end, to catch
and inspect (the variants of the Rust crate's ``sluice_client::Error``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class StepFailure:
    """A step's recorded error (``status.steps.NAME.error``)."""

    type: str
    message: str
    attempt: Optional[int] = None
    exit_code: Optional[int] = None

    @classmethod
    def from_json(cls, value: Optional[dict[str, Any]]) -> Optional["StepFailure"]:
        if not value:
            return None
        return cls(
            type=str(value.get("type", "")),
            message=str(value.get("message", "")),
            attempt=value.get("attempt"),
            exit_code=value.get("exitCode"),
        )


@dataclass(frozen=True)
class FailedStep:
    """A step that failed for good."""

    name: str
    #: Number of its last attempt.
    attempts: int
    #: Its last error, if recorded.
    error: Optional[StepFailure]


@dataclass(frozen=True)
class RunFailure:
    """How a run failed: what :class:`RunFailed` carries."""

    namespace: str
    name: str
    #: The reason on the run's ``Succeeded`` condition: ``StepFailed``, ``Invalid``, ``InvalidInput``, ...
    reason: str
    #: The operator's message on that condition.
    message: str
    #: The steps that failed for good, in the order of ``spec.steps``.
    failed_steps: list[FailedStep] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"flowrun {self.namespace}/{self.name} failed"
        if self.reason:
            text += f" ({self.reason})"
        if self.message:
            text += f": {self.message}"
        elif self.failed_steps:
            step = self.failed_steps[0]
            text += f": step {step.name!r} failed"
            if step.error is not None:
                text += f": {step.error.type}: {step.error.message}"
        return text


class ClientError(Exception):
    """Base class of everything the client raises."""


class NotFound(ClientError):
    """The FlowRun does not exist (or was deleted while being waited for)."""

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f"flowrun {namespace}/{name} not found")
        self.namespace, self.name = namespace, name


class AlreadyExists(ClientError):
    """A run of that name exists and the start's policy is :attr:`IfExists.REJECT`."""

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f"flowrun {namespace}/{name} already exists")
        self.namespace, self.name = namespace, name


class SpecConflict(ClientError):
    """A run of that name exists with a different spec than the one asked for."""

    def __init__(self, namespace: str, name: str, differences: list[str]) -> None:
        super().__init__(
            f"flowrun {namespace}/{name} already exists with a different spec (differs at "
            f"{', '.join(differences)}): start it under another name, or choose another IfExists policy"
        )
        self.namespace, self.name = namespace, name
        #: Where the specs differ, as JSON paths such as ``spec.input.amount`` or ``spec.steps[1].handler``.
        self.differences = differences


class RunFailed(ClientError):
    """The run ended Failed; :attr:`failure` names the failed steps and their errors."""

    def __init__(self, failure: RunFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure

    @property
    def namespace(self) -> str:
        return self.failure.namespace

    @property
    def name(self) -> str:
        return self.failure.name


class RunCancelled(ClientError):
    """The run ended Cancelled (through ``spec.cancel``: :meth:`Run.cancel` or anyone else)."""

    def __init__(self, namespace: str, name: str, message: str = "") -> None:
        super().__init__(f"flowrun {namespace}/{name} was cancelled" + (f": {message}" if message else ""))
        self.namespace, self.name, self.message = namespace, name, message


class WaitTimeout(ClientError):
    """The run did not end within the time given to :meth:`Run.wait`. The run goes on."""

    def __init__(
        self,
        namespace: str,
        name: str,
        waited: float,
        last_phase: Optional[str],
        last_watch_error: Optional[str] = None,
    ) -> None:
        seen = last_phase if last_phase is not None else "never (no status seen)"
        text = f"flowrun {namespace}/{name} did not finish within {waited:g}s: last seen {seen}"
        if last_watch_error:
            text += f" (last watch error: {last_watch_error})"
        super().__init__(text)
        self.namespace, self.name = namespace, name
        self.waited = waited
        #: The phase the run was last seen in; None when no status was seen.
        self.last_phase = last_phase
        self.last_watch_error = last_watch_error


class KubeError(ClientError):
    """The API server refused or failed a request (``status`` is its HTTP status, when it answered)."""

    def __init__(self, message: str, status: Optional[int] = None) -> None:
        super().__init__(f"Kubernetes API: {message}")
        self.status = status


class DecodeError(ClientError):
    """The run's output does not decode into the type the caller asked for."""

    def __init__(self, namespace: str, name: str, detail: str) -> None:
        super().__init__(
            f"flowrun {namespace}/{name}: the output does not decode into the requested type: {detail}"
        )
        self.namespace, self.name = namespace, name


class EncodeError(ClientError):
    """An input or signal payload could not be turned into JSON."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what} is not representable as JSON: {detail}")
        self.what = what
