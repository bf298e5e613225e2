"""The context-mixing parameters an archive records (``Header.mix_params``), and their presets.

See :mod:`llmzip.mix` for what they control.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass

from .errors import CorruptArchiveError, UnsupportedFormatError

PARAMS_VERSION = 1


@dataclass(frozen=True)
class MixParams:
    """Everything that shapes the mixed tables; stored in ``Header.mix_params``.

    Invariants (checked on construction, ValueError otherwise): ``orders`` is 1..8 strictly
    increasing context lengths in [0, 16] (order 0: a cache of the file's commonest tokens);
    ``hash_bits`` and ``match_bits`` in [10, 24]; ``slot_width`` in [1, 16]; ``count_limit``
    in [2, 1023]; ``match_min`` in [0, 32] (0 disables the match model); ``lr`` and
    ``init_gap`` in [0, 255] (units of 1/16 nat). Changing the meaning of any field, or the
    mixer's arithmetic, breaks old archives: bump PARAMS_VERSION and keep decoding the old one.
    """

    orders: tuple[int, ...] = (0, 1, 2, 3, 4, 6)
    hash_bits: int = 20        # n-gram table: 2**hash_bits slots shared by all orders
    slot_width: int = 16       # tokens remembered per context
    count_limit: int = 30      # a slot's counts are halved when one exceeds this
    match_min: int = 5         # tokens hashed to find a match (0: no match model)
    match_bits: int = 20       # match table: 2**match_bits positions
    lr: int = 3                # weight step per unit of responsibility, in 1/16 nat
    init_gap: int = 0          # sparse models start this far below the LM, in 1/16 nat

    def __post_init__(self) -> None:
        orders = self.orders
        if not (isinstance(orders, tuple) and 1 <= len(orders) <= 8
                and all(type(o) is int and 0 <= o <= 16 for o in orders)
                and all(a < b for a, b in zip(orders, orders[1:]))):
            raise ValueError(f"orders must be 1..8 increasing ints in [0, 16], got {orders!r}")
        for name, low, high in (("hash_bits", 10, 24), ("match_bits", 10, 24), ("slot_width", 1, 16),
                                ("count_limit", 2, 1023), ("match_min", 0, 32), ("lr", 0, 255),
                                ("init_gap", 0, 255)):
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")

    def to_bytes(self) -> bytes:
        """Serialize: version u8, then either ``0x80 + preset`` (a :data:`PRESETS` key) or
        n u8 | n orders u8 | hash_bits, slot_width, match_min, match_bits, lr, init_gap u8 |
        count_limit u16 (little-endian)."""
        if self.preset is not None:
            return bytes([PARAMS_VERSION, 0x80 + self.preset])
        return (bytes([PARAMS_VERSION, len(self.orders), *self.orders, self.hash_bits, self.slot_width,
                       self.match_min, self.match_bits, self.lr, self.init_gap])
                + struct.pack("<H", self.count_limit))

    @property
    def preset(self) -> int | None:
        """The :data:`PRESETS` key of these parameters, or None."""
        return next((key for key, preset in PRESETS.items() if preset == self), None)

    def describe(self) -> dict[str, object]:
        """The parameters as plain JSON-ready values, with their preset (``llmzip list --json``)."""
        return {"preset": self.preset, **{k: list(v) if isinstance(v, tuple) else v
                                          for k, v in dataclasses.asdict(self).items()}}

    @classmethod
    def from_bytes(cls, raw: bytes) -> MixParams:
        """Parse :meth:`to_bytes` output: UnsupportedFormatError for a newer version or preset,
        CorruptArchiveError for any malformed or out-of-range value."""
        raw = bytes(raw)
        if len(raw) < 2 or raw[0] == 0:
            raise CorruptArchiveError("mixing parameters: truncated or version 0")
        if raw[0] > PARAMS_VERSION:   # the header CRC passed: a newer llmzip wrote this
            raise UnsupportedFormatError(f"mixing parameters version {raw[0]} is newer than this "
                                         f"llmzip's ({PARAMS_VERSION}): upgrade llmzip to decode it")
        n = raw[1]
        if n >= 0x80:
            if len(raw) != 2:
                raise CorruptArchiveError("mixing parameters: bytes after the preset")
            if n - 0x80 not in PRESETS:
                raise UnsupportedFormatError(f"mixing preset {n - 0x80} is newer than this llmzip "
                                             f"(it knows {min(PRESETS)}-{max(PRESETS)}): upgrade llmzip")
            return PRESETS[n - 0x80]
        if len(raw) != 2 + n + 8:
            raise CorruptArchiveError(f"mixing parameters: expected {10 + n} bytes, got {len(raw)}")
        fields = raw[2 + n:]
        try:
            return cls(orders=tuple(raw[2:2 + n]), hash_bits=fields[0], slot_width=fields[1],
                       match_min=fields[2], match_bits=fields[3], lr=fields[4], init_gap=fields[5],
                       count_limit=struct.unpack("<H", fields[6:8])[0])
        except ValueError as exc:
            raise CorruptArchiveError(f"mixing parameters: {exc}") from None


# Parameter sets an archive can name in one byte. Never change an entry: add a new key.
PRESETS = {
    0: MixParams(orders=(0, 1, 2, 3, 4, 6), hash_bits=20, slot_width=16, count_limit=30, match_min=5,
                 match_bits=20, lr=8, init_gap=0),
    # Preset 0 with a smaller weight step: -0.35 % bits over the corpus, every file smaller
    # (python benchmarks/mix_study.py; 2026-11-24). The default since 2026-11-24 (commit a281c5f).
    1: MixParams(orders=(0, 1, 2, 3, 4, 6), hash_bits=20, slot_width=16, count_limit=30, match_min=5,
                 match_bits=20, lr=3, init_gap=0),
}
DEFAULT_MIX = PRESETS[1]
