"""An operator's parameters, derived from its constructor: part of the resume fingerprint and the manifest.

When an operator is built, the base class keeps the arguments its ``__init__`` was called with
(defaults applied). ``params()`` is then one entry per constructor argument:

* the value is the operator's attribute of the same name when it holds plain data (so a value the
  constructor normalised, ``float(min_score)`` or a default config, is the one recorded), else the
  argument as given;
* a dataclass is recorded as its fields, an object with ``params()`` (a response schema, a
  sub-operator) by its ``params()``, a list of sub-operators as ``{name: params()}``;
* a serving or scorer (anything with ``describe()``) is not a parameter: the base class's
  ``provenance()`` records its ``describe()`` (model, backend, sampling);
* any other object by its qualified type name (give it ``params()`` to record its settings).

Where an operator's parameters legitimately differ from its constructor, it says so once, in
``param_spec = ParamSpec(...)``: arguments that do not change the output (devices, batch sizes,
worker counts) or that only pick a model its provenance records are ``exclude``d (``"arg.key"``
drops one key of a dict or dataclass argument); ``omit_none`` arguments are recorded only when set;
``extra`` names attributes computed by the constructor that are parameters too. For example::

    class Filter(OperatorABC):
        param_spec = ParamSpec(exclude=("device", "batch_size"))

        def __init__(self, min_score=0.1, device="auto", batch_size=32): ...
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any


@dataclass(frozen=True)
class ParamSpec:
    """How an operator's parameters differ from its constructor's arguments (see the module docstring)."""

    exclude: tuple[str, ...] = ()
    omit_none: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()

    def check(self, owner: type) -> None:
        """Raise TypeError naming an ``exclude``/``omit_none`` entry that is not an argument of ``owner.__init__``."""
        names = set(inspect.signature(owner.__init__).parameters)  # type: ignore[misc]
        unknown = [n for n in (*self.exclude, *self.omit_none) if n.split(".")[0] not in names]
        if unknown:
            raise TypeError(f"{owner.__name__}.param_spec names no argument of __init__: {', '.join(unknown)}")


def bound_arguments(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``cls(*args, **kwargs)``'s constructor arguments by name, defaults applied (``**options`` as one dict)."""
    try:
        signature = inspect.signature(cls.__init__)  # type: ignore[misc]
        bound = signature.bind(None, *args, **kwargs)
    except (TypeError, ValueError):  # no readable signature: nothing to derive
        return {}
    bound.apply_defaults()
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {
        name: value
        for index, (name, value) in enumerate(bound.arguments.items())
        if index > 0 and (value or signature.parameters[name].kind not in variadic)  # self and empty *args out
    }


def describes(value: Any) -> bool:
    """A serving or scorer: recorded by provenance (its ``describe()``), not as a parameter."""
    return callable(getattr(value, "describe", None)) and not isinstance(value, type)


_UNKNOWN = object()


def plain(value: Any) -> Any:
    """``value`` as JSON data, or ``_UNKNOWN`` for an object with no data form."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        items = {str(k): plain(v) for k, v in value.items()}
        return _UNKNOWN if any(v is _UNKNOWN for v in items.values()) else items
    if isinstance(value, (list, tuple)):
        if value and all(_is_part(v) for v in value):
            return {v.name: plain(v.params()) for v in value}  # sub-operators, by name
        items_list = [plain(v) for v in value]
        return _UNKNOWN if any(v is _UNKNOWN for v in items_list) else items_list
    if callable(getattr(value, "params", None)) and not isinstance(value, type):
        return plain(value.params())
    item = getattr(value, "item", None)  # a numpy scalar
    if callable(item) and getattr(value, "ndim", None) == 0:
        return plain(item())
    return _UNKNOWN


def _is_part(value: Any) -> bool:
    """A sub-operator (or any named part with ``params()``)."""
    return callable(getattr(value, "params", None)) and isinstance(getattr(value, "name", None), str)


def type_name(value: Any) -> str:
    """``module.Qualname`` of a function or class, else of the value's type: a stable stand-in for an object."""
    target = value if callable(value) and hasattr(value, "__qualname__") else type(value)
    module, name = getattr(target, "__module__", None), getattr(target, "__qualname__", type(target).__qualname__)
    return f"{module}.{name}" if module else name


def derive_params(operator: Any, arguments: Mapping[str, Any], spec: ParamSpec, base: type) -> dict[str, Any]:
    """The parameters of ``operator`` built with constructor ``arguments`` under ``spec`` (``base``: the
    operator base class, whose own attributes such as ``name`` never stand for an argument)."""
    skip = {n for n in spec.exclude if "." not in n}
    params: dict[str, Any] = {}
    for name in [*arguments, *spec.extra]:
        if name in skip:
            continue
        own = name in spec.extra or _own_attribute(operator, name, base)
        candidates = [getattr(operator, name)] if own else []
        if name in arguments:
            candidates.append(arguments[name])
        if any(describes(c) for c in candidates):
            continue  # a model: recorded by provenance()
        values = [v for v in map(plain, candidates) if v is not _UNKNOWN]
        value = values[0] if values else type_name(candidates[-1])
        if value is None and name in spec.omit_none:
            continue
        params[name] = value
    for path in (n for n in spec.exclude if "." in n):
        _drop(params, path.split("."))
    return params


def derive_provenance(operator: Any, arguments: Mapping[str, Any], base: type) -> dict[str, Any]:
    """``{argument: describe()}`` of the servings and scorers the operator was built with (or built from them)."""
    found: dict[str, Any] = {}
    for name, given in arguments.items():
        value = getattr(operator, name) if _own_attribute(operator, name, base) else given
        if describes(value):
            found[name] = value.describe()
    return found


def _own_attribute(operator: Any, name: str, base: type) -> bool:
    """The operator holds ``name`` itself (set by its constructor, or defined by its class, not by ``base``)."""
    return name in vars(operator) or (hasattr(operator, name) and not hasattr(base, name))


def _drop(params: dict[str, Any], path: list[str]) -> None:
    head, *rest = path
    if not rest:
        params.pop(head, None)
    elif isinstance(params.get(head), dict):
        _drop(params[head], rest)
