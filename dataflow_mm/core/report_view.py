"""What the HTML report shows of an operator's output, declared by the operator (``report_view``).

The report owns its page layouts (``region_caption``, ``imgdiff``, else generic); each operator
says which layout its output belongs to, which of its columns plays which role there, and which
columns alone identify that layout. The report reads these declarations from the operator registry,
so it names no column itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ReportView:
    """One operator's part of a report layout.

    ``roles``: role -> column name, or candidate names (the first present wins).
    ``identifies``: column sets; a table holding every column of one set gets this layout.
    """

    layout: str
    roles: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)
    identifies: tuple[tuple[str, ...], ...] = ()

    def candidates(self, role: str) -> tuple[str, ...]:
        value = self.roles.get(role, ())
        return (value,) if isinstance(value, str) else tuple(value)
