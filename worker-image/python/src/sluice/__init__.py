"""Sluice for Python.

* :class:`Worker` -- an asyncio worker: ``@worker.handler("charge")`` on ``async def`` or ``def`` functions,
  typed input (dataclasses, or pydantic models when pydantic is installed), automatic heartbeats,
  cancellation visible to the handler (:class:`StepContext`), :class:`RetryableError` vs :class:`FatalError`,
  configurable concurrency and a graceful SIGTERM drain -- the broker protocol and semantics of the Rust SDK.
* :mod:`sluice.client` -- start flows from code and await their results: :class:`~sluice.client.Client`,
  :class:`~sluice.client.Start`, :class:`~sluice.client.Run` (start / wait / signal / cancel / status), the
  verbs of the Rust ``sluice-client`` crate, on the official ``kubernetes`` client.
"""

from .config import DEFAULT_SHUTDOWN_GRACE, Config
from .context import CancelReason, StepCancelled, StepContext
from .errors import BrokerError, ConfigError, FatalError, RetryableError, SluiceError, StepError
from .wire import FlowRunRef, Task, error_types
from .worker import Worker

__all__ = [
    "DEFAULT_SHUTDOWN_GRACE",
    "BrokerError",
    "CancelReason",
    "Config",
    "ConfigError",
    "FatalError",
    "FlowRunRef",
    "RetryableError",
    "SluiceError",
    "StepCancelled",
    "StepContext",
    "StepError",
    "Task",
    "Worker",
    "error_types",
]

__version__ = "0.1.0"
