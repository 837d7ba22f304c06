"""Errors: :class:`StepError` and its two flavours (a handler's failure, reported to the broker) and the SDK's
own errors (configuration, talking to the broker)."""

from __future__ import annotations

from typing import Any, Optional

from .wire import MAX_ERROR_MESSAGE_BYTES, error_types, truncate_message


class StepError(Exception):
    """Why a step handler failed; reported to the broker as a ``fail`` with a type and a retryable flag.

    Raise :class:`RetryableError` for a transient problem (the step's retry policy decides whether to try
    again) or :class:`FatalError` for a permanent one (the step fails at once). Any other exception a handler
    raises is reported as a retryable failure of type ``Error`` whose message is ``"ExceptionType: message"``,
    like ``?`` on an error in a Rust handler. The engine has the last word: the step's ``nonRetryableErrors``
    (by type) and ``nonRetryableExitCodes`` apply on top of the flag.
    """

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        retryable: bool,
        exit_code: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.retryable = retryable
        self.exit_code = exit_code

    def to_wire(self) -> dict[str, Any]:
        """The wire form (``TaskError``): message truncated to its last 2048 bytes."""
        body: dict[str, Any] = {
            "type": self.error_type,
            "message": truncate_message(self.message, MAX_ERROR_MESSAGE_BYTES),
        }
        if self.exit_code is not None:
            body["exitCode"] = self.exit_code
        return body

    def __str__(self) -> str:
        text = f"{self.error_type}: {self.message}"
        if self.exit_code is not None:
            text += f" (exit code {self.exit_code})"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(error_type={self.error_type!r}, message={self.message!r}, "
            f"retryable={self.retryable!r})"
        )


class RetryableError(StepError):
    """A transient failure: the step's retry policy decides whether to try again.

    ``RetryableError("upstream timed out")`` has type ``Error``; pass ``error_type`` to name it (retry policies
    match types by exact string).
    """

    def __init__(
        self, message: str, *, error_type: str = error_types.ERROR, exit_code: Optional[int] = None
    ) -> None:
        super().__init__(error_type, message, retryable=True, exit_code=exit_code)


class FatalError(StepError):
    """A permanent failure with a type (e.g. ``FatalError("CardDeclined", "over the limit")``): the step fails
    without another attempt, whatever its retry policy."""

    def __init__(self, error_type: str, message: str, *, exit_code: Optional[int] = None) -> None:
        super().__init__(error_type, message, retryable=False, exit_code=exit_code)


def step_error_from(exc: BaseException) -> StepError:
    """The failure to report for an exception a handler raised."""
    if isinstance(exc, StepError):
        return exc
    text = str(exc)
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    seen = {id(exc)}
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        cause_text = str(cause)
        if cause_text and not message.endswith(cause_text):
            message += f": {cause_text}"
        cause = cause.__cause__ or cause.__context__
    return RetryableError(message)


class SluiceError(Exception):
    """Base class of the SDK's own errors."""


class ConfigError(SluiceError):
    """A required setting is missing, or a setting is out of bounds."""


class BrokerError(SluiceError):
    """The broker answered with a non-200 status (``status``), or could not be reached (``status`` is None)."""

    def __init__(
        self, path: str, message: str, *, status: Optional[int] = None, code: Optional[str] = None
    ) -> None:
        self.path = path
        self.status = status
        self.code = code
        self.message = message
        if status is None:
            text = f"{path}: {message}"
        else:
            text = f"{path}: broker answered {status}" + (f" ({code})" if code else "") + f": {message}"
        super().__init__(text)

    @property
    def fenced(self) -> bool:
        """``True`` for a 409: the attempt is stale or unknown, so retrying is pointless."""
        return self.status == 409
