"""The client: an API client and a namespace, and idempotent starts."""

from __future__ import annotations

import logging
from typing import Any, Optional

from kubernetes import client as k8s

from . import kube
from .errors import AlreadyExists, KubeError, SpecConflict
from .run import Run
from .spec import spec_differences
from .start import IfExists, Start
from .status import phase

log = logging.getLogger("sluice.client")

#: Field manager of every write the client makes, so ``managedFields`` show who wrote what.
FIELD_MANAGER = "sluice-client"

#: How many times a start goes round "create, find it taken, look" before giving up.
START_ROUNDS = 4


class Client:
    """Starts Sluice flows in one namespace and hands out :class:`Run` handles.

    Everything goes through the Kubernetes API with the caller's credentials, exactly as ``kubectl`` would:
    the client creates FlowRuns, writes ``spec.cancel`` and ``status.signals`` (through the status
    subresource), deletes a finished run only when a start asks to replace it
    (:attr:`IfExists.REPLACE_FAILED`), and writes nothing else. Its calls block (the ``kubernetes`` client is
    synchronous); from asyncio code, run them with ``await asyncio.to_thread(run.wait, 60)``.

    .. code-block:: python

        from sluice.client import Client, Start

        client = Client.from_default()  # kubeconfig or in-cluster config, its namespace
        run = client.start(Start.inline("double-21", spec, input={"n": 21}))
        print(run.wait(timeout=60))     # the flow's output, or RunFailed / RunCancelled / WaitTimeout
    """

    def __init__(self, api_client: k8s.ApiClient, namespace: str = "default") -> None:
        self._api_client = api_client
        self._api = k8s.CustomObjectsApi(api_client)
        self._namespace = namespace

    @classmethod
    def from_default(cls, *, namespace: Optional[str] = None, context: Optional[str] = None) -> "Client":
        """A client from the environment, as ``kubectl`` finds it: ``KUBECONFIG`` or ``~/.kube/config`` (its
        current context and namespace), else the in-cluster service account. ``namespace`` overrides the
        default namespace."""
        api_client, default_namespace = kube.load(context)
        return cls(api_client, namespace or default_namespace)

    def namespaced(self, namespace: str) -> "Client":
        """The same client in namespace ``namespace``."""
        return Client(self._api_client, namespace)

    @property
    def namespace(self) -> str:
        """The namespace the client starts and finds runs in."""
        return self._namespace

    @property
    def api_client(self) -> k8s.ApiClient:
        """The underlying Kubernetes API client, for anything this package does not cover."""
        return self._api_client

    def run(self, name: str) -> Run:
        """A handle to the run named ``name``, without a request: its verbs raise :class:`NotFound` when
        there is no such run."""
        return Run(self._api, self._namespace, name, created=False)

    def start(self, start: Start) -> Run:
        """Starts a run: creates the FlowRun ``start`` describes, or -- when a FlowRun of that name exists --
        does what its :class:`IfExists` policy says (by default: returns the existing run if its spec is the
        same, raises :class:`SpecConflict` if not). :attr:`Run.created` tells which happened.

        Specs are compared as the API server stores them (:func:`spec_differences`); when that finds a
        difference, the sent spec is rendered by the API server itself (a dry-run create under a generated
        name, so schema defaults and admission mutations apply to it too) and compared again."""
        spec = start.spec_to_send()
        metadata: dict[str, Any] = {"name": start.name, "namespace": self._namespace}
        if start.labels:
            metadata["labels"] = dict(start.labels)
        body = {"apiVersion": f"{kube.GROUP}/{kube.VERSION}", "kind": kube.KIND, "metadata": metadata, "spec": spec}
        for _ in range(START_ROUNDS):
            try:
                self._create(body)
                log.debug("flowrun %s/%s created", self._namespace, start.name)
                return Run(self._api, self._namespace, start.name, created=True)
            except KubeError as exc:
                if exc.status != 409:
                    raise
            existing = self._get_opt(start.name)
            if existing is None:
                continue  # deleted since the create was refused: create again
            if self._existing(start, spec, existing) == "return":
                log.debug("flowrun %s/%s exists (%s): returning it", self._namespace, start.name, phase(existing))
                return Run(self._api, self._namespace, start.name, created=False)
            log.info("replacing the finished flowrun %s/%s (%s)", self._namespace, start.name, phase(existing))
            self._delete_exact(existing)
        raise KubeError(
            f"flowrun {self._namespace}/{start.name} kept changing (created, deleted or replaced) during "
            f"{START_ROUNDS} attempts to start it",
            409,
        )

    def _existing(self, start: Start, spec: dict[str, Any], existing: dict[str, Any]) -> str:
        policy = start.if_exists
        if policy is IfExists.RETURN_EXISTING:
            return "return"
        if policy is IfExists.REJECT:
            raise AlreadyExists(self._namespace, start.name)
        if policy is IfExists.REPLACE_FAILED and phase(existing) in ("Failed", "Cancelled"):
            return "replace"
        differences = self._differences(start, spec, existing)
        if differences:
            raise SpecConflict(self._namespace, start.name, differences)
        return "return"

    def _differences(self, start: Start, spec: dict[str, Any], existing: dict[str, Any]) -> list[str]:
        stored = existing.get("spec") or {}
        local = spec_differences(spec, stored)
        if not local:
            return local
        probe = {
            "apiVersion": f"{kube.GROUP}/{kube.VERSION}",
            "kind": kube.KIND,
            "metadata": {"generateName": f"{start.name[:200]}-", "namespace": self._namespace},
            "spec": spec,
        }
        try:
            rendered = self._create(probe, dry_run=True)
        except KubeError as exc:
            if exc.status == 422:
                # The sent spec is not even valid: it cannot be the stored run's.
                return local
            raise
        return spec_differences(rendered.get("spec") or {}, stored)

    def _create(self, body: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"field_manager": FIELD_MANAGER}
        if dry_run:
            kwargs["dry_run"] = "All"
        return kube.call(
            self._api.create_namespaced_custom_object,
            kube.GROUP,
            kube.VERSION,
            self._namespace,
            kube.PLURAL,
            body,
            **kwargs,
        )

    def _get_opt(self, name: str) -> Optional[dict[str, Any]]:
        try:
            return kube.call(
                self._api.get_namespaced_custom_object, kube.GROUP, kube.VERSION, self._namespace, kube.PLURAL, name
            )
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def _delete_exact(self, existing: dict[str, Any]) -> None:
        """Deletes this very version of the run (a run retried or re-created since is judged again); the
        name is free at once, the garbage collector removes its children."""
        metadata = existing.get("metadata") or {}
        options = k8s.V1DeleteOptions(
            preconditions=k8s.V1Preconditions(uid=metadata.get("uid"), resource_version=metadata.get("resourceVersion")),
            propagation_policy="Background",
        )
        try:
            kube.call(
                self._api.delete_namespaced_custom_object,
                kube.GROUP,
                kube.VERSION,
                self._namespace,
                kube.PLURAL,
                str(metadata.get("name")),
                body=options,
            )
        except KubeError as exc:
            if exc.status not in (404, 409):
                raise

    def __repr__(self) -> str:
        return f"Client(namespace={self._namespace!r})"
