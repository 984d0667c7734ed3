"""requirements.lock is what both README commands install: it must cover pyproject.toml, and the environment
running the tests must be the one it describes (a drifted library is how patched internals break silently)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO


def _locked() -> dict[str, Version]:
    text = (REPO / "requirements.lock").read_text(encoding="utf-8")
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", text, flags=re.M)
    assert pins, "requirements.lock pins nothing"
    assert text.count("--hash=sha256:") >= len(pins), "every pin carries its hashes"
    return {canonicalize_name(n): Version(v) for n, v in pins}


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_the_lock_pins_every_declared_dependency_within_its_range() -> None:
    locked = _locked()
    problems = []
    for req in _declared():
        got = locked.get(canonicalize_name(req.name))
        if got is None:
            problems.append(f"{req.name} is not in requirements.lock")
        elif not req.specifier.contains(got, prereleases=True):
            problems.append(f"{req.name}=={got} in requirements.lock is outside pyproject.toml's {req.specifier}")
    assert not problems, "; ".join(problems) + " (fix: make lock)"


def test_the_running_environment_is_the_locked_one() -> None:
    locked = _locked()
    drift = []
    for req in _declared():
        name = canonicalize_name(req.name)
        try:
            have = Version(metadata.version(req.name))
        except metadata.PackageNotFoundError:
            drift.append(f"{req.name} is not installed")
            continue
        if have != locked[name]:
            drift.append(f"{req.name} {have} is installed, requirements.lock pins {locked[name]}")
    assert not drift, "; ".join(drift) + " (fix: rm -rf .venv && make setup)"
