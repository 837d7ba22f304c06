"""When two FlowRun specs are "the same run": the comparison behind idempotent starts (the same rules as the
Rust client's ``spec_differences``)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

#: Fields that steer a run after it started; not part of what the run *is*.
RUN_CONTROLS = ("cancel", "suspend", "retryRequest")
#: Fields the operator copies from the template into a run of a FlowTemplate: not compared.
FROM_TEMPLATE = ("steps", "onExit", "output", "input")
#: Fields copied from the template only where the run sets none: compared when the starter set them.
TEMPLATE_FALLBACKS = ("pool", "defaults", "activeDeadline")
#: Free-form JSON members of the spec (user data): kept verbatim, where ``false`` or ``[]`` mean something.
FREE_FORM = ("input", "output", "forEach", "spec")
#: Most differences listed; more are summarised.
MAX_LISTED = 10


def spec_differences(sent: Optional[Mapping[str, Any]], stored: Optional[Mapping[str, Any]]) -> list[str]:
    """Where ``stored`` differs from ``sent``, as JSON paths (``spec.input.amount``,
    ``spec.steps[1].handler``); empty when they declare the same run.

    Numbers compare by value (the API server writes ``1.0`` back as ``1``), a field set to its empty default
    (``suspend: false``, an empty ``dependsOn``) equals a field left out, ``null`` equals absent, and the run
    controls ``cancel``, ``suspend`` and ``retryRequest`` are ignored. For a run of a FlowTemplate
    (``templateRef`` sent), what the operator copies from the template is not compared: the steps, exit
    steps, output and input always, the pool, defaults and deadline unless ``sent`` sets them.

    >>> spec_differences({"pool": "p", "input": {"n": 1.0}}, {"pool": "p", "input": {"n": 1}, "cancel": True})
    []
    >>> spec_differences({"input": {"n": 1}}, {"input": {"n": 2}})
    ['spec.input.n']
    """
    sent_json = _identity(sent)
    stored_json = _identity(stored)
    if sent_json.get("templateRef") is not None:
        for key in FROM_TEMPLATE:
            sent_json.pop(key, None)
            stored_json.pop(key, None)
        for key in TEMPLATE_FALLBACKS:
            if key not in sent_json:
                stored_json.pop(key, None)
    out: list[str] = []
    _diff("spec", sent_json, stored_json, out)
    if len(out) > MAX_LISTED:
        more = len(out) - MAX_LISTED
        out = out[:MAX_LISTED] + [f"{more} more"]
    return out


def _identity(spec: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    value = _normalize(dict(spec or {}))
    for key in RUN_CONTROLS:
        value.pop(key, None)
    return value


def _normalize(value: Any) -> Any:
    """The spec as the Rust types serialize it: members that are null, ``false`` or an empty list dropped
    (their defaults), free-form members kept as they are."""
    if isinstance(value, dict):
        out = {}
        for key, member in value.items():
            if member is None:
                continue
            if key in FREE_FORM:
                out[key] = member
                continue
            if member is False or member == []:
                continue
            out[key] = _normalize(member)
        return out
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    return value


def _diff(path: str, a: Any, b: Any, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            _diff(f"{path}.{key}", a.get(key), b.get(key), out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(f"{path}[{i}]", x, y, out)
    elif _is_number(a) and _is_number(b):
        if a != b:
            out.append(path)
    elif type(a) is not type(b) or a != b:
        out.append(path)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
