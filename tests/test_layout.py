"""The layout's rules, checked: one namespace, every package installed, no private names
imported across files, no generic top-level imports."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
CARD = ("data_specs", "flows", "models", "tasks")
NAMESPACE = "multilora_pipeline"


def _sources(*roots: str):
    for root in roots:
        yield from sorted((REPO / root).rglob("*.py"))


def test_every_package_folder_is_installed_under_the_namespace():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {NAMESPACE: "."}
    folders = {
        ".".join((NAMESPACE, *init.parent.relative_to(REPO).parts))
        for root in CARD
        for init in (REPO / root).rglob("__init__.py")
    }
    assert set(config["packages"]) == folders


def test_code_imports_the_namespace_never_a_generic_top_level_name():
    offenders = []
    for path in _sources(*CARD, "tests", "benchmarks", "docs"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [
                f"{path.relative_to(REPO)}:{node.lineno} {n}"
                for n in names
                if n.split(".")[0] in CARD
            ]
    assert offenders == []


def test_no_private_name_is_imported_from_another_file():
    offenders = []
    for path in _sources(*CARD, "tests", "benchmarks", "docs"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (
                node.level > 0 or (node.module or "").startswith(NAMESPACE)
            ):
                offenders += [
                    f"{path.relative_to(REPO)}:{node.lineno} {a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
    assert offenders == []


def _imported_modules(path: Path):
    """(line, dotted name) of every module `path` imports, `from a import b` giving a.b too
    (b may be a module)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            yield node.lineno, module
            yield from ((node.lineno, f"{module}.{a.name}") for a in node.names)


def test_no_module_imports_a_test_module():
    """What tests share lives in helper modules (tests/specs.py, conftest fixtures): pytest
    imports each test module itself, and a test module imported again by another runs its
    module-level code twice and ties the two files together."""
    offenders = [
        f"{path.relative_to(REPO)}:{line} {name}"
        for path in _sources("tests", "benchmarks")
        for line, name in _imported_modules(path)
        if any(part.startswith("test_") for part in name.split("."))
    ]
    assert offenders == []


def test_benchmarks_import_nothing_from_tests():
    """What both need (the local servers) lives in the package."""
    offenders = [
        f"{path.relative_to(REPO)}:{line} {name}"
        for path in _sources("benchmarks")
        for line, name in _imported_modules(path)
        if name.split(".")[0] == "tests"
    ]
    assert offenders == []


# Which card folder may import which: flows compose tasks, tasks use models and the spec's
# types, and the spec's types may name a model's config (data_specs/schema/training.py).
# Nothing imports upwards, so a task runs without Prefect flows and a model without tasks.
MAY_IMPORT = {
    "flows": {"flows", "tasks", "models", "data_specs"},
    "tasks": {"tasks", "models", "data_specs"},
    "data_specs": {"data_specs", "models"},
    "models": {"models"},
}


def test_imports_go_one_way_flows_then_tasks_then_models_and_data_specs():
    offenders = []
    for room, allowed in MAY_IMPORT.items():
        for path in _sources(room):
            for line, name in _imported_modules(path):
                parts = name.split(".")
                if parts[0] == NAMESPACE and len(parts) > 1 and parts[1] not in allowed:
                    offenders.append(f"{path.relative_to(REPO)}:{line} {name}")
    assert offenders == []
