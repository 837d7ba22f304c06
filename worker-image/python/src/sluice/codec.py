"""Typed step input and output: JSON <-> dataclasses, pydantic models (when pydantic is installed) and plain
JSON values, chosen by a handler's type annotations."""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from typing import Any, Union

try:  # pydantic is optional
    import pydantic as _pydantic
except ImportError:  # pragma: no cover - exercised when pydantic is absent
    _pydantic = None  # type: ignore[assignment]


class DecodeError(ValueError):
    """The step input does not match the handler's input type."""


def has_pydantic() -> bool:
    return _pydantic is not None


def decode(value: Any, annotation: Any) -> Any:
    """``value`` (decoded JSON) as an instance of ``annotation``; raises :class:`DecodeError`."""
    if annotation is Any or annotation is None or annotation is object:
        return value
    if _pydantic is not None and _is_pydantic_model(annotation):
        try:
            return annotation.model_validate(value)
        except _pydantic.ValidationError as exc:
            raise DecodeError(str(exc)) from None
    return _decode(value, annotation, "input")


def _is_pydantic_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, _pydantic.BaseModel)  # type: ignore[union-attr]


def _decode(value: Any, annotation: Any, path: str) -> Any:
    if annotation is Any or annotation is object:
        return value
    if _pydantic is not None and _is_pydantic_model(annotation):
        try:
            return annotation.model_validate(value)
        except _pydantic.ValidationError as exc:
            raise DecodeError(f"{path}: {exc}") from None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Union or (hasattr(types, "UnionType") and origin is getattr(types, "UnionType")):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode(value, arg, path)
            except DecodeError as exc:
                errors.append(str(exc))
        raise DecodeError("; ".join(errors) or f"{path}: no member of {annotation} matches")
    if origin is typing.Literal:
        if value in args:
            return value
        raise DecodeError(f"{path}: expected one of {list(args)}, got {value!r}")
    if origin in (list, typing.List, tuple, set, frozenset) or annotation in (list, tuple, set, frozenset):
        if not isinstance(value, list):
            raise DecodeError(f"{path}: expected a list, got {_kind(value)}")
        container = origin or annotation
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise DecodeError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_decode(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_decode(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if container in (list, typing.List) else container(items)
    if origin in (dict, typing.Dict) or annotation is dict:
        if not isinstance(value, dict):
            raise DecodeError(f"{path}: expected an object, got {_kind(value)}")
        item = args[1] if len(args) == 2 else Any
        return {k: _decode(v, item, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        return _decode_dataclass(value, annotation, path)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except ValueError:
            raise DecodeError(f"{path}: {value!r} is not a {annotation.__name__}") from None
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise DecodeError(f"{path}: expected a number, got {_kind(value)}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise DecodeError(f"{path}: expected an integer, got {_kind(value)}")
    if annotation in (str, bool):
        if isinstance(value, annotation):
            return value
        raise DecodeError(f"{path}: expected {annotation.__name__}, got {_kind(value)}")
    if annotation is type(None):
        if value is None:
            return None
        raise DecodeError(f"{path}: expected null, got {_kind(value)}")
    # Anything else (a TypedDict, a NewType, ...): passed through unchanged.
    return value


def _decode_dataclass(value: Any, cls: type, path: str) -> Any:
    if not isinstance(value, dict):
        raise DecodeError(f"{path}: expected an object for {cls.__name__}, got {_kind(value)}")
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # unresolvable forward references: take the values as they are
        hints = {}
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        key = field.name if field.name in value else _camel(field.name)
        if key not in value:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise DecodeError(f"{path}: missing field {field.name!r} of {cls.__name__}")
            continue
        kwargs[field.name] = _decode(value[key], hints.get(field.name, Any), f"{path}.{field.name}")
    return cls(**kwargs)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def encode(value: Any) -> Any:
    """A handler's output as JSON-ready data: dataclasses and pydantic models become objects, enums their
    values, tuples and sets lists. Raises ``TypeError`` for what has no JSON form."""
    value = _to_jsonable(value)
    json.dumps(value, allow_nan=False)  # raises TypeError/ValueError for what JSON cannot hold
    return value


def _to_jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if _pydantic is not None and isinstance(value, _pydantic.BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return _to_jsonable(value.value)
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"object keys must be strings, not {type(k).__name__}")
            out[k] = _to_jsonable(v)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_to_jsonable(v) for v in value]
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
