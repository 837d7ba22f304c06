"""The thin layer over the official ``kubernetes`` client: the FlowRun resource, API errors as
:class:`KubeError`, and loading kubeconfig or in-cluster credentials."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional, TypeVar

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

from .errors import KubeError

GROUP = "sluice.dev"
VERSION = "v1alpha1"
PLURAL = "flowruns"
KIND = "FlowRun"

#: The service account's namespace file of a pod.
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

T = TypeVar("T")


def load(context: Optional[str] = None) -> tuple[k8s.ApiClient, str]:
    """An API client and its default namespace, found as ``kubectl`` finds them: ``KUBECONFIG`` (or
    ``~/.kube/config``) with its current context's namespace, else the in-cluster service account."""
    configuration = k8s.Configuration()
    config_file = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        k8s_config.load_kube_config(
            config_file=config_file, context=context, client_configuration=configuration
        )
    except (k8s_config.ConfigException, OSError) as kubeconfig_error:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except k8s_config.ConfigException as incluster_error:
            raise KubeError(
                f"no Kubernetes credentials: kubeconfig {config_file}: {kubeconfig_error}; "
                f"in-cluster: {incluster_error}"
            ) from None
        return k8s.ApiClient(configuration), _incluster_namespace()
    return k8s.ApiClient(configuration), _kubeconfig_namespace(config_file, context)


def _kubeconfig_namespace(config_file: str, context: Optional[str]) -> str:
    try:
        contexts, active = k8s_config.list_kube_config_contexts(config_file=config_file)
    except (k8s_config.ConfigException, OSError):
        return "default"
    chosen = active
    if context is not None:
        chosen = next((c for c in contexts if c.get("name") == context), active)
    return str(((chosen or {}).get("context") or {}).get("namespace") or "default")


def _incluster_namespace() -> str:
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def status_of(error: BaseException) -> Optional[int]:
    return error.status if isinstance(error, ApiException) else None


def describe(error: BaseException) -> str:
    """An API error as ``STATUS Reason: message``."""
    if isinstance(error, ApiException):
        message = ""
        try:
            body = json.loads(error.body) if error.body else {}
            message = str(body.get("message") or "")
        except (ValueError, TypeError, AttributeError):
            message = str(error.body or "")
        return f"{error.status} {error.reason}" + (f": {message}" if message else "")
    return f"{type(error).__name__}: {error}"


def call(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Calls the API; every failure becomes :class:`KubeError` (``status`` set when the server answered)."""
    try:
        return function(*args, **kwargs)
    except ApiException as exc:
        raise KubeError(describe(exc), exc.status) from exc
    except Exception as exc:  # transport errors (urllib3, ssl, ...)
        raise KubeError(describe(exc)) from exc
