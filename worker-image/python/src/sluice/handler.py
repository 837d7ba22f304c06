"""Step handlers: a typed Python function (async or sync) made into one JSON-in, JSON-out call the worker loop
can store by name."""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
import typing
from typing import Any, Callable

from . import codec
from .context import StepContext
from .errors import FatalError
from .wire import error_types


class Handler:
    """A registered handler: the function, whether it takes the context, and its input type.

    The function may be ``async def`` or plain ``def`` (run in a thread of its own, so it may block). Its
    parameters are ``(ctx, input)``, ``(input)`` or ``(ctx)`` (a single parameter annotated
    :class:`StepContext`), or none. The input's annotation picks the decoding: a dataclass, a pydantic model
    (when pydantic is installed), ``list[...]``/``dict[...]``/``Optional[...]`` of those, ``int``/``float``/
    ``str``/``bool``; no annotation (or ``Any``/``dict``) hands over the JSON as it is.
    """

    def __init__(self, name: str, function: Callable[..., Any]) -> None:
        if not callable(function):
            raise TypeError(f"handler {name!r} is not callable")
        self.name = name
        self.function = function
        self.is_async = _is_async(function)
        self.takes_context, self.input_type, self.takes_input = _signature(function)

    async def call(self, ctx: StepContext, raw_input: Any) -> Any:
        """Decodes the input, runs the function, encodes the output. Raises the handler's exceptions, and
        :class:`FatalError` for an undecodable input (``InvalidInput``) or output (``InvalidOutput``)."""
        args: list[Any] = []
        if self.takes_context:
            args.append(ctx)
        if self.takes_input:
            try:
                args.append(codec.decode(raw_input, self.input_type))
            except codec.DecodeError as exc:
                raise FatalError(
                    error_types.INVALID_INPUT,
                    f"the input does not match the handler's input type {_type_name(self.input_type)}: {exc}",
                ) from None
        if self.is_async:
            result = await self.function(*args)
        else:
            result = await _in_thread(functools.partial(self.function, *args))
        try:
            return codec.encode(result)
        except (TypeError, ValueError) as exc:
            raise FatalError(
                error_types.INVALID_OUTPUT, f"the output cannot be encoded as JSON: {exc}"
            ) from None


def _is_async(function: Callable[..., Any]) -> bool:
    target = function
    while isinstance(target, functools.partial):
        target = target.func
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)
    )


def _signature(function: Callable[..., Any]) -> tuple[bool, Any, bool]:
    """(takes the context, input type, takes an input)."""
    signature = inspect.signature(function)
    params = [
        p
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        and p.default is inspect.Parameter.empty
    ]
    try:
        target = function.func if isinstance(function, functools.partial) else function
        hints = typing.get_type_hints(target)
    except Exception:
        hints = {}

    def annotation(p: inspect.Parameter) -> Any:
        return hints.get(p.name, Any)

    if len(params) >= 2:
        return True, annotation(params[1]), True
    if len(params) == 1:
        if annotation(params[0]) is StepContext:
            return True, Any, False
        return False, annotation(params[0]), True
    return False, Any, False


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__qualname__", None) or repr(annotation)


async def _in_thread(call: Callable[[], Any]) -> Any:
    """Runs a blocking call in a daemon thread of its own. Unlike an executor's threads, a daemon thread does
    not keep the process alive: a sync handler that ignores its cancellation cannot block a worker's exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def run() -> None:
        try:
            result = call()
        except BaseException as exc:  # delivered to the awaiting task, whatever it is
            outcome: tuple[bool, Any] = (False, exc)
        else:
            outcome = (True, result)
        try:
            loop.call_soon_threadsafe(deliver, *outcome)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    threading.Thread(target=run, name="sluice-handler", daemon=True).start()
    return await future
