"""An operator's keys, declared once: which ``run`` arguments name columns it reads and writes.

An operator sets ``key_spec = KeySpec(defaults={...}, reads=(...), writes=(...))`` and the base
class builds from it ``run(storage, **keys)`` (with a real signature, so ``help()`` shows the keys),
``input_columns``, ``output_columns`` and ``explicit_input_columns``::

    class Upper(OperatorABC):
        key_spec = KeySpec(defaults={"input_key": "text", "output_key": "upper"},
                           reads=("input_key",), writes=("output_key",))

        def process(self, frame, input_key="text", output_key="upper", **_):
            out = frame.copy()
            out[output_key] = out[input_key].str.upper()
            return out
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dataflow_mm.common.errors import UnsupportedArgumentError


@dataclass(frozen=True)
class KeySpec:
    """``run``'s keys: name -> default column; ``reads`` must exist, ``optional`` are read when present
    (and, named explicitly by the caller, must exist in some row); ``writes`` are added.

    ``unsupported``: keys a compatible ``run`` accepts (in their place among the positional arguments)
    for a feature this project lacks, each with why; any value but None is an ``UnsupportedArgumentError``,
    and they are never passed on to ``process``."""

    defaults: dict[str, str | None]
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    optional: tuple[str, ...] = field(default=())
    unsupported: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        named = (*self.reads, *self.writes, *self.optional, *self.unsupported)
        unknown = [k for k in named if k not in self.defaults]
        if unknown:
            raise TypeError(f"KeySpec names keys without a default: {unknown}")

    def resolve(self, operator: str, args: tuple[Any, ...], keys: dict[str, Any]) -> dict[str, Any]:
        """Every key's value: the caller's (by keyword, or by position in ``defaults`` order), else the default."""
        names = list(self.defaults)
        if len(args) > len(names):
            raise TypeError(f"{operator}.run() takes at most {len(names)} keys after storage, got {len(args)}")
        given = dict(zip(names, args, strict=False))
        for name, value in keys.items():
            if name not in self.defaults:
                raise TypeError(f"{operator}.run() got an unexpected key '{name}'; its keys: {', '.join(names)}")
            if name in given:
                raise TypeError(f"{operator}.run() got '{name}' twice")
            given[name] = value
        for name, why in self.unsupported.items():
            if given.get(name) is not None:
                raise UnsupportedArgumentError(
                    f"{operator}.run({name}={given[name]!r}): {why}. Remove {name} (or pass None)."
                )
        return {
            name: given.get(name, default) for name, default in self.defaults.items() if name not in self.unsupported
        }

    def fill(self, keys: Mapping[str, Any]) -> dict[str, Any]:
        """Every key's value: ``keys``' where given, else the default (what ``process`` reads its columns from)."""
        return {name: keys.get(name, default) for name, default in self.defaults.items()}

    def columns(self, names: tuple[str, ...], keys: dict[str, Any]) -> list[str]:
        values = [keys.get(name, self.defaults[name]) for name in names]
        return list(dict.fromkeys(v for v in values if isinstance(v, str) and v))

    def explicit(self, keys: dict[str, Any]) -> list[str]:
        """Optional columns the caller named (a value other than the default)."""
        return [
            keys[name]
            for name in self.optional
            if isinstance(keys.get(name), str) and keys[name] and keys[name] != self.defaults[name]
        ]

    def signature(self) -> inspect.Signature:
        """``run(self, storage, <key>=<default>, ...)``, for ``help()`` and IDEs."""
        params = [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("storage", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ]
        params += [
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
            for name, default in self.defaults.items()
        ]
        return inspect.Signature(params, return_annotation=None)


def spec_run(spec: KeySpec) -> Callable[..., Any]:
    """The ``run`` an operator with ``spec`` gets: resolve the keys, then execute the step."""

    def run(self: Any, storage: Any, *args: Any, **keys: Any) -> Any:
        return self.execute(storage, **spec.resolve(self.name, args, keys))

    run.__signature__ = spec.signature()  # type: ignore[attr-defined]
    run.__doc__ = f"Run on ``storage``'s next step; keys (column names): {', '.join(spec.defaults)}."
    return run
