"""Start Sluice flows from Python code and await their results (the verbs of the Rust ``sluice-client``).

A :class:`Client` creates FlowRuns in one namespace -- from a spec written inline (:meth:`Start.inline`) or
from a FlowTemplate (:meth:`Start.template`) -- and hands back a :class:`Run`: :meth:`Run.wait` for the
output (or a typed failure), :meth:`Run.signal`, :meth:`Run.cancel` and :meth:`Run.status`.

Starting is **idempotent by name**: starting a name that exists returns that run, or refuses if its spec
differs -- the caller chooses with :class:`IfExists`.

Needs the ``kubernetes`` package (``pip install 'sluice[client]'``).
"""

from .client import FIELD_MANAGER, Client
from .errors import (
    AlreadyExists,
    ClientError,
    DecodeError,
    EncodeError,
    FailedStep,
    KubeError,
    NotFound,
    RunCancelled,
    RunFailed,
    RunFailure,
    SpecConflict,
    StepFailure,
    WaitTimeout,
)
from .run import Run
from .spec import spec_differences
from .start import IfExists, Start
from .status import RunStatus, StepSummary

__all__ = [
    "FIELD_MANAGER",
    "AlreadyExists",
    "Client",
    "ClientError",
    "DecodeError",
    "EncodeError",
    "FailedStep",
    "IfExists",
    "KubeError",
    "NotFound",
    "Run",
    "RunCancelled",
    "RunFailed",
    "RunFailure",
    "RunStatus",
    "SpecConflict",
    "Start",
    "StepFailure",
    "StepSummary",
    "WaitTimeout",
    "spec_differences",
]
