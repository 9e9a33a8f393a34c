"""The report's layouts read the operators' declarations (``report_view``), not column names of its own."""

from __future__ import annotations

from typing import Any

import pandas as pd

from dataflow_mm.core.operator import OperatorABC
from dataflow_mm.core.report_view import ReportView
from dataflow_mm.operators.registry import operator_classes
from dataflow_mm.report.layout import LAYOUTS, detect_layout, report_views

COLUMNS = ["shot", "reply", "n"]
ROWS = [["a/b.png", "a cat", 1], ["a/c.png", "a dog", 2]]


def test_a_declared_view_names_the_columns_of_its_layout() -> None:
    view = ReportView("region_caption", roles={"image": "shot", "answer": "reply"}, identifies=(("reply",),))
    config = detect_layout(COLUMNS, ROWS, views=[view])
    assert config["kind"] == "region_caption"
    assert config["roles"] == {"image": "shot", "answer": "reply"}
    assert detect_layout(COLUMNS, ROWS, views=[])["kind"] == "generic"  # no declaration, no layout


def test_an_operator_defined_outside_the_package_is_read_too() -> None:
    class Replier(OperatorABC):
        """Writes ``reply`` about ``shot`` (a user's own operator)."""

        report_view = ReportView("region_caption", roles={"image": "shot", "answer": "reply"}, identifies=(("reply",),))

        def process(self, frame: pd.DataFrame, **_: Any) -> pd.DataFrame:
            return frame

    assert any(view is Replier.report_view for view in report_views())
    assert detect_layout(COLUMNS, ROWS)["roles"]["answer"] == "reply"


def test_every_declaration_of_the_package_uses_a_known_layout_and_identifies_it() -> None:
    declared = [getattr(cls, "report_view", None) for cls in operator_classes().values()]
    views = [view for view in declared if view is not None]
    assert len(views) >= 9  # the box, VQA and seven Img-Diff operators
    assert all(view.layout in LAYOUTS and view.identifies and view.roles for view in views)
