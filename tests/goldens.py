"""Golden archives in tests/data: the fixed input, the pinned digests, and how they are rewritten."""

from __future__ import annotations

import hashlib
from pathlib import Path

DATA = Path(__file__).parent / "data"


def golden_input() -> bytes:
    """The fixed input every tiny-model golden archive encodes (committed once, never changed)."""
    return (DATA / "golden-input.bin").read_bytes()


def digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def pinned_digest(name: str) -> str:
    """The SHA-256 recorded for archive ``name`` in ``name.sha256``."""
    return (DATA / f"{name}.sha256").read_text().split()[0]


def write_golden(name: str, blob: bytes) -> None:
    """Rewrite archive ``name`` and its digest (by hand only, after a format or engine bump)."""
    (DATA / name).write_bytes(blob)
    (DATA / f"{name}.sha256").write_text(f"{digest(blob)}  {name}\n")
