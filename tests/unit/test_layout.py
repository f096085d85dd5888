"""The package's wings keep their import directions (docs/architecture.md, "The package layout"):
the core, the detectors and the case view know nothing of Faust and Kafka, and the runtime
nothing of the tools. Read from the source with `ast`, so an import inside a function or under
TYPE_CHECKING counts too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"

FAUST_AND_KAFKA = ("faust", "aiokafka", "mode")


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, relative ones made absolute."""
    package = ".".join(path.relative_to(PIPELINE.parent).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from pipeline import runtime` imports the module pipeline.runtime.
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            found.append((node.lineno, module))
    return found


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def offences(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    files = sorted((PIPELINE / folder).rglob("*.py"))
    assert files, f"no modules under pipeline/{folder}"
    return [
        f"{path.relative_to(PIPELINE.parent)}:{line}: imports {module}"
        for path in files
        for line, module in imported(path)
        if within(module, forbidden)
    ]


@pytest.mark.parametrize("folder", ["core", "detectors", "cases"])
def test_core_detectors_and_cases_import_no_faust_kafka_runtime_or_tools(folder: str) -> None:
    assert offences(folder, (*FAUST_AND_KAFKA, "pipeline.runtime", "pipeline.tools")) == []


def test_runtime_imports_no_tool() -> None:
    assert offences("runtime", ("pipeline.tools",)) == []


def test_importing_the_core_loads_no_faust_or_kafka() -> None:
    # The direct imports above do not see an indirect one: the core reads pipeline.config,
    # which reads the Kafka security settings of pipeline.runtime.security.
    code = (
        "import sys, pipeline.core.processor, pipeline.core.schemas, pipeline.detectors.absence, "
        "pipeline.cases.book; "
        f"print(sorted({{m for m in sys.modules if m.split('.')[0] in {FAUST_AND_KAFKA!r}}}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"
