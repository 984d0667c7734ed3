"""The package's layers: a lower layer never imports a higher one, at module level or lazily, so there are no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

# core < suite < models < engine < scoring < variants < training < trainers (recipes) < verdict < runs < cli
LAYERS = {
    "suite": 1,
    "models": 2,
    "engine": 3,
    "scoring": 4,
    "variants": 5,
    "training": 6,
    "verdict": 7,
    "runs": 8,
    "cli": 9,
    "pytest_plugin": 9,
    "__main__": 9,
}
TRAINERS = 6.5


def _layer(module: str) -> float:
    parts = module.split(".")
    if parts[0] == "trainers":
        return TRAINERS
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0  # harness.errors, io, config, env, stats: the core


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("harness", "trainers"):
            out |= {f"harness.{a.name}" for a in node.names} if node.module == "harness" else {node.module}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] in ("harness", "trainers")}
    return out


def test_no_module_imports_a_higher_layer() -> None:
    modules = sorted((REPO / "harness").rglob("*.py")) + sorted((REPO / "trainers").glob("*.py"))
    assert len(modules) > 40
    upward = []
    for path in modules:
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        upward += [f"{name} -> {dep}" for dep in _imports(path) if _layer(dep) > _layer(name)]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_every_subpackage_says_what_it_is_for() -> None:
    for init in (REPO / "harness").glob("*/__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{init} has no docstring"


def test_no_source_file_is_git_ignored() -> None:
    """An ignore rule that matches a module drops it from every clone (a `runs/` rule once hid harness/runs/)."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    sources = [
        str(p.relative_to(REPO))
        for d in ("harness", "trainers", "tests", "golden", "benchmarks")
        for p in (REPO / d).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    out = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin"],
        cwd=REPO,
        input="\n".join(sources),
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert not out, f"ignored by .gitignore, so missing from clones: {out[:10]}"
