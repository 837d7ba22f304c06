"""A handle to one FlowRun: wait for it, signal it, cancel it, read its status."""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException

from .. import codec
from . import kube
from .errors import (
    DecodeError,
    EncodeError,
    KubeError,
    NotFound,
    RunCancelled,
    RunFailed,
    WaitTimeout,
)
from .status import RunStatus, cancel_message, failure, has_ended, phase, summary

log = logging.getLogger("sluice.client")

_NO_PAYLOAD: Any = object()


class Run:
    """A handle to one FlowRun, by name: from :meth:`Client.start` or :meth:`Client.run`. Holding it costs
    nothing; every verb is a request (or a watch)."""

    def __init__(self, api: k8s.CustomObjectsApi, namespace: str, name: str, *, created: bool) -> None:
        self._api = api
        self._namespace = namespace
        self._name = name
        self._created = created

    @property
    def name(self) -> str:
        return self._name

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def created(self) -> bool:
        """Whether the :meth:`Client.start` that returned this handle created the FlowRun (``False`` when it
        returned an existing run, and for handles from :meth:`Client.run`)."""
        return self._created

    def wait(self, timeout: float, into: Any = Any) -> Any:
        """Waits until the run ends, at most ``timeout`` seconds, following it with a watch (no polling).

        Succeeded: the flow's output (``status.output``, ``None`` when the flow declares none), decoded into
        ``into`` (a dataclass, a pydantic model, ``list[...]``, ...; raw JSON by default) or
        :class:`DecodeError`. Failed: :class:`RunFailed` with the failed steps and their errors. Cancelled:
        :class:`RunCancelled`. Not ended in time: :class:`WaitTimeout` with the phase last seen (the run goes
        on). Deleted, or never created: :class:`NotFound`. A run that has already ended answers at once; a
        Failed run whose retry the operator has not answered yet is waited for. The watch resumes by itself
        after a dropped connection or an API error; such errors only show in the timeout's message."""
        deadline = time.monotonic() + timeout
        last_phase: Optional[str] = None
        last_error: Optional[str] = None
        version: Optional[str] = None
        selector = f"metadata.name={self._name}"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(self._namespace, self._name, timeout, last_phase, last_error)
            if version is None:
                # List the one object, then watch it from that version: a run that already ended answers from
                # the list, and nothing between the list and the watch is missed.
                try:
                    listed = self._api.list_namespaced_custom_object(
                        kube.GROUP,
                        kube.VERSION,
                        self._namespace,
                        kube.PLURAL,
                        field_selector=selector,
                        _request_timeout=max(1.0, min(remaining, 30.0)),
                    )
                except Exception as exc:  # API or transport error: retry until the deadline
                    last_error = kube.describe(exc)
                    log.debug("listing %s/%s failed; retrying: %s", self._namespace, self._name, last_error)
                    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                    continue
                items = listed.get("items") or []
                if not items:
                    raise NotFound(self._namespace, self._name)
                fr = items[0]
                version = str((listed.get("metadata") or {}).get("resourceVersion") or "") or None
                last_phase = self._seen(fr, last_phase)
                if has_ended(fr):
                    return self._ended(fr, into)
                continue
            watcher = k8s_watch.Watch()
            try:
                for event in watcher.stream(
                    self._api.list_namespaced_custom_object,
                    kube.GROUP,
                    kube.VERSION,
                    self._namespace,
                    kube.PLURAL,
                    field_selector=selector,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=max(1, int(remaining + 0.999)),
                    _request_timeout=(10, remaining + 10),
                ):
                    kind = event.get("type")
                    obj = event.get("raw_object") or {}
                    if kind == "ERROR":
                        last_error = str(obj.get("message") or obj)
                        version = None  # expired (410) or broken: list again
                        break
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind == "BOOKMARK":
                        continue
                    if kind == "DELETED":
                        raise NotFound(self._namespace, self._name)
                    last_phase = self._seen(obj, last_phase)
                    if has_ended(obj):
                        return self._ended(obj, into)
                    if time.monotonic() >= deadline:
                        break
            except ApiException as exc:
                last_error = kube.describe(exc)
                if exc.status == 410:
                    version = None
                else:
                    time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            except (NotFound, RunFailed, RunCancelled, DecodeError):
                raise
            except Exception as exc:  # a dropped connection or a read timeout: resume from the last version
                last_error = kube.describe(exc)
                log.debug("watch of %s/%s interrupted; resuming: %s", self._namespace, self._name, last_error)
            finally:
                watcher.stop()

    def signal(self, signal: str, payload: Any = _NO_PAYLOAD) -> None:
        """Delivers signal ``signal`` with ``payload`` (any JSON value, dataclass or pydantic model; none by
        default) by a JSON merge patch of ``status.signals`` through the status subresource -- the patch
        users write with ``kubectl patch --subresource=status``, which keeps every other signal."""
        entry: dict[str, Any] = {}
        if payload is not _NO_PAYLOAD and payload is not None:
            try:
                entry["payload"] = codec.encode(payload)
            except (TypeError, ValueError) as exc:
                raise EncodeError("signal payload", str(exc)) from None
        body = {"status": {"signals": {signal: entry}}}
        self._call(
            self._api.patch_namespaced_custom_object_status,
            kube.GROUP,
            kube.VERSION,
            self._namespace,
            kube.PLURAL,
            self._name,
            body,
            field_manager="sluice-client",
        )
        log.debug("signal %s delivered to %s/%s", signal, self._namespace, self._name)

    def cancel(self) -> None:
        """Cancels the run (``spec.cancel: true``): no new step starts, running handlers are asked to stop,
        and the run ends Cancelled -- its :meth:`wait` raises :class:`RunCancelled`. Cancelling a run that
        already ended changes nothing about how it ended."""
        self._call(
            self._api.patch_namespaced_custom_object,
            kube.GROUP,
            kube.VERSION,
            self._namespace,
            kube.PLURAL,
            self._name,
            {"spec": {"cancel": True}},
            field_manager="sluice-client",
        )
        log.debug("cancel requested for %s/%s", self._namespace, self._name)

    def status(self) -> RunStatus:
        """The run's phase, progress and a summary of every step, read now."""
        return summary(self.get())

    def get(self) -> dict[str, Any]:
        """The whole FlowRun object, read now."""
        return self._call(
            self._api.get_namespaced_custom_object,
            kube.GROUP,
            kube.VERSION,
            self._namespace,
            kube.PLURAL,
            self._name,
        )

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return kube.call(function, *args, **kwargs)
        except KubeError as exc:
            if exc.status == 404:
                raise NotFound(self._namespace, self._name) from None
            raise

    def _seen(self, fr: dict[str, Any], last_phase: Optional[str]) -> Optional[str]:
        return phase(fr) if (fr.get("status") or {}).get("phase") else last_phase

    def _ended(self, fr: dict[str, Any], into: Any) -> Any:
        current = phase(fr)
        if current == "Succeeded":
            output = (fr.get("status") or {}).get("output")
            try:
                return codec.decode(output, into)
            except codec.DecodeError as exc:
                raise DecodeError(self._namespace, self._name, str(exc)) from None
        if current == "Cancelled":
            raise RunCancelled(self._namespace, self._name, cancel_message(fr))
        raise RunFailed(failure(fr))

    def __repr__(self) -> str:
        return f"Run(namespace={self._namespace!r}, name={self._name!r}, created={self._created!r})"
