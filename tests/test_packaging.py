"""The wheel holds every package of the source tree (a sub-package missing from pyproject.toml
installs a broken llmzip that only a clean-install CI run would notice)."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "llmzip").rglob("__init__.py")}
    assert listed == found


def test_every_shipped_model_file_is_package_data() -> None:
    """A model file of a new kind (say ``tokenizer.json.xz``) must match a package-data glob, or a
    wheel would install the model without it."""
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["llmzip"]
    files = [p.relative_to(REPO / "llmzip") for p in (REPO / "llmzip" / "models").glob("*/*") if p.is_file()]
    assert files
    assert [f for f in files if not any(f.match(g) for g in globs)] == []
