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
    """Write archive ``name`` and its digest (by hand only, after a format or engine bump).

    A golden archive is history: an existing one is never changed. Writing the same bytes again
    is a no-op; different bytes mean the format changed without a version bump, and fail.
    """
    path = DATA / name
    if path.exists():
        if path.read_bytes() != blob:
            raise AssertionError(f"{name} exists with other bytes: a golden archive never changes "
                                 "(bump the format, engine or preset and add a new file instead)")
        return
    path.write_bytes(blob)
    (DATA / f"{name}.sha256").write_text(f"{digest(blob)}  {name}\n")
