"""What to start: :class:`Start` (a name, an inline spec or a FlowTemplate, an input, labels) and the
:class:`IfExists` policy of idempotent starts."""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional

from .. import codec
from .errors import EncodeError


class IfExists(enum.Enum):
    """What :meth:`Client.start` does when a FlowRun of the name exists (the name is the run's identity,
    like a Temporal workflow id)."""

    #: Return the existing run when its spec declares the same run (see :func:`spec_differences`), whatever
    #: its phase; otherwise raise :class:`SpecConflict` naming where they differ. The default: retrying a
    #: start is safe.
    RETURN_IF_SAME_SPEC = "ReturnIfSameSpec"
    #: Return the existing run whatever its spec.
    RETURN_EXISTING = "ReturnExisting"
    #: Raise :class:`AlreadyExists`: the caller wants to be the one that created it.
    REJECT = "Reject"
    #: When the existing run ended Failed or Cancelled, delete it (with its child FlowRuns) and start the new
    #: spec in its place; otherwise behave as :attr:`RETURN_IF_SAME_SPEC`.
    REPLACE_FAILED = "ReplaceFailed"


_UNSET: Any = object()


@dataclass(frozen=True)
class Start:
    """A run to start. Build one with :meth:`Start.inline` or :meth:`Start.template` and hand it to
    :meth:`Client.start`::

        start = Start.inline("order-42", spec, input=Charge(order_id="42", amount=99.5))
        start = Start.template("expense-77", "expense-approval", input={"amount": 42.5})
    """

    name: str
    spec: Mapping[str, Any]
    input: Any = _UNSET
    labels: Mapping[str, str] = field(default_factory=dict)
    if_exists: IfExists = IfExists.RETURN_IF_SAME_SPEC

    @classmethod
    def inline(
        cls,
        name: str,
        spec: Mapping[str, Any],
        *,
        input: Any = _UNSET,  # noqa: A002 - the flow's input, as in the Rust client
        labels: Optional[Mapping[str, str]] = None,
        if_exists: IfExists = IfExists.RETURN_IF_SAME_SPEC,
    ) -> "Start":
        """A run named ``name`` of the flow ``spec`` (a FlowRun's ``spec`` as a dict). ``input`` (any JSON
        value, dataclass or pydantic model) replaces ``spec.input``."""
        start = cls(name=name, spec=copy.deepcopy(dict(spec)), labels=dict(labels or {}), if_exists=if_exists)
        return start if input is _UNSET else start.with_input(input)

    @classmethod
    def template(
        cls,
        name: str,
        template: str,
        *,
        input: Any = _UNSET,  # noqa: A002
        labels: Optional[Mapping[str, str]] = None,
        if_exists: IfExists = IfExists.RETURN_IF_SAME_SPEC,
    ) -> "Start":
        """A run named ``name`` of the FlowTemplate ``template`` (``spec.templateRef``); ``input`` goes to
        ``spec.templateRef.input``. A template run is the same run as another start when it names the same
        template with the same input: the steps the operator copied into the stored run are not compared."""
        return cls.inline(name, {"templateRef": {"name": template}}, input=input, labels=labels, if_exists=if_exists)

    def with_input(self, value: Any) -> "Start":
        """A copy with the flow's input set (``spec.input``, or ``spec.templateRef.input``)."""
        try:
            encoded = codec.encode(value)
        except (TypeError, ValueError) as exc:
            raise EncodeError("input", str(exc)) from None
        return replace(self, input=encoded)

    def with_label(self, key: str, value: str) -> "Start":
        """A copy with a label added to the FlowRun's metadata (labels are not compared by idempotent
        starts)."""
        return replace(self, labels={**self.labels, key: value})

    def with_if_exists(self, policy: IfExists) -> "Start":
        """A copy with another :class:`IfExists` policy."""
        return replace(self, if_exists=policy)

    def spec_to_send(self) -> dict[str, Any]:
        """The spec this start asks for: the inline spec with the input set where it belongs."""
        spec = copy.deepcopy(dict(self.spec))
        if self.input is not _UNSET:
            template = spec.get("templateRef")
            if isinstance(template, dict):
                template["input"] = copy.deepcopy(self.input)
            else:
                spec["input"] = copy.deepcopy(self.input)
        return spec
