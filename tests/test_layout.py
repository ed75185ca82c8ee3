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
