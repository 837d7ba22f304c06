"""Worker configuration, from the environment or built in code (the same variables and defaults as the Rust
SDK's ``Config``)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Optional

from .errors import ConfigError
from .wire import MAX_WAIT_SECONDS, env

#: Default shutdown grace period in seconds (Kubernetes' default termination grace period is 30 s).
DEFAULT_SHUTDOWN_GRACE = 25.0


@dataclass(frozen=True)
class Config:
    """How a worker connects to the broker and runs its tasks.

    Durations are in seconds. Build one with :meth:`Config.from_env` (what a worker pod uses) or directly.
    """

    #: Base URL of the broker (``SLUICE_BROKER_URL``).
    broker_url: str
    #: The WorkerPool served (``SLUICE_POOL``).
    pool: str
    #: This worker's name (``SLUICE_WORKER_NAME``, else ``POD_NAME``, else the host name).
    worker_name: str
    #: Namespace of the pool (``POD_NAMESPACE``).
    namespace: Optional[str] = None
    #: File with the bearer token, re-read for every request (``SLUICE_TOKEN_PATH``); None: no auth header.
    token_path: Optional[str] = None
    #: Tasks run at once (``SLUICE_CONCURRENCY``, >= 1).
    concurrency: int = 1
    #: After SIGTERM: how long in-flight handlers may take before they are failed as retryable.
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    #: After the grace period: how long the final failure reports may take.
    report_grace: float = 4.0
    #: After a cancel (heartbeat answer or deadline): how long the handler may take to return on its own.
    cancel_grace: float = 5.0
    #: Long-poll duration of a claim (<= 30).
    wait_seconds: int = MAX_WAIT_SECONDS
    #: Timeout of heartbeats and reports (a claim or held heartbeat gets its wait on top).
    request_timeout: float = 10.0
    #: First delay after a broker error; doubles up to ``backoff_max``.
    backoff_initial: float = 0.2
    #: Largest delay between retries after broker errors.
    backoff_max: float = 10.0

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "Config":
        """Reads the configuration from the environment (or ``environ``)."""
        source = os.environ if environ is None else environ

        def lookup(name: str) -> Optional[str]:
            value = source.get(name)
            return value if value else None

        return cls.from_lookup(lookup)

    @classmethod
    def from_lookup(cls, lookup: Callable[[str], Optional[str]]) -> "Config":
        broker_url = lookup(env.BROKER_URL)
        if broker_url is None:
            raise ConfigError(f"environment variable {env.BROKER_URL} is not set")
        pool = lookup(env.POOL)
        if pool is None:
            raise ConfigError(f"environment variable {env.POOL} is not set")
        worker_name = lookup(env.WORKER_NAME) or _default_worker_name(lookup)
        config = cls(
            broker_url=broker_url,
            pool=pool,
            worker_name=worker_name,
            namespace=lookup(env.POD_NAMESPACE),
            token_path=lookup(env.TOKEN_PATH),
        )
        concurrency = lookup(env.CONCURRENCY)
        if concurrency is not None:
            config = replace(config, concurrency=_parse_int(env.CONCURRENCY, concurrency))
        grace = lookup(env.SHUTDOWN_GRACE_SECONDS)
        if grace is not None:
            config = replace(config, shutdown_grace=float(_parse_int(env.SHUTDOWN_GRACE_SECONDS, grace)))
        config.validate()
        return config

    def with_(self, **changes: object) -> "Config":
        """A copy with some fields changed (``config.with_(concurrency=4)``)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def validate(self) -> None:
        """Checks the bounds of every setting; raises :class:`ConfigError`."""
        if not (self.broker_url.startswith("http://") or self.broker_url.startswith("https://")):
            raise ConfigError(f"invalid configuration {env.BROKER_URL}: must be an http:// or https:// URL")
        if not self.pool:
            raise ConfigError(f"invalid configuration {env.POOL}: must not be empty")
        if not self.worker_name:
            raise ConfigError(f"invalid configuration {env.WORKER_NAME}: must not be empty")
        if self.concurrency < 1:
            raise ConfigError(f"invalid configuration {env.CONCURRENCY}: must be at least 1")
        if not 0 <= self.wait_seconds <= MAX_WAIT_SECONDS:
            raise ConfigError(f"invalid configuration wait_seconds: must be at most {MAX_WAIT_SECONDS}")
        if self.backoff_initial <= 0 or self.backoff_max < self.backoff_initial:
            raise ConfigError("invalid configuration backoff: needs 0 < backoff_initial <= backoff_max")
        if self.shutdown_grace < 0:
            raise ConfigError(f"invalid configuration {env.SHUTDOWN_GRACE_SECONDS}: must not be negative")


def _parse_int(name: str, value: str) -> int:
    try:
        return int(value.strip())
    except ValueError as exc:
        raise ConfigError(f"invalid configuration {name}: {value!r}: {exc}") from None


def _default_worker_name(lookup: Callable[[str], Optional[str]]) -> str:
    name = lookup(env.POD_NAME) or lookup("HOSTNAME")
    if name:
        return name
    try:
        host = socket.gethostname()
    except OSError:
        host = ""
    return host or f"sluice-worker-{os.getpid()}"
