"""`dataflowmm list` shows every operator class the package ships (read from the registry)."""

from __future__ import annotations

import pytest

import dataflow_mm.operators
from dataflow_mm.cli.main import main
from dataflow_mm.core.operator import OperatorABC
from dataflow_mm.operators.registry import operator_classes


def all_subclasses(cls: type) -> set[type]:
    direct = set(cls.__subclasses__())
    return direct.union(*(all_subclasses(sub) for sub in direct))


def test_the_registry_holds_every_operator_class_of_the_package() -> None:
    shipped = {c for c in all_subclasses(OperatorABC) if c.__module__.startswith("dataflow_mm.operators.")}
    registry = operator_classes()
    assert set(registry.values()) >= shipped
    assert set(dataflow_mm.operators.__all__) - {"OperatorABC", "StepResult", "ExistingBBoxDataGenConfig"} <= set(
        registry
    ) | {"parse_region_captions"}
    assert len(registry) >= 12


def test_list_prints_each_operator_with_its_one_line_description(capsys: pytest.CaptureFixture) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    registry = operator_classes()
    assert f"operators ({len(registry)}):" in lines
    for name in registry:
        (line,) = [line for line in lines if line.strip().startswith(name + " ")]
        assert len(line.split()) > 1  # name, then its description
    assert "PromptedVQAGenerator" in out and "ImgDiffDifferenceAreaGenerator" in out and "DataJuicerMetaWriter" in out
