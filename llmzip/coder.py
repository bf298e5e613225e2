"""Range coder (arithmetic coding with byte-wise renormalisation) over Python ints.

The stream encodes a number ``V`` in ``[0, 1)`` as the big-endian base-256 digits
of its fraction, with trailing zero bytes dropped: the decoder reads every byte
past the end of the data as zero.

Both sides keep a 64-bit window on the coding interval:

* ``range`` is in ``[2**56, 2**64]`` between symbols (``2**64`` only before any
  byte is shifted out). A symbol ``[cum, cum + freq)`` of a table summing to
  ``total <= 2**MAX_TOTAL_BITS`` maps to ``r = range // total``,
  ``low += r * cum``, ``range = r * freq``. The slack ``range - r * total`` is
  left unused (it never decodes to a symbol), which costs less than ``2**-26``
  of ``range``, i.e. under ``2.2e-8`` bits per symbol.
* Whenever ``range < 2**56`` the top byte of ``low`` is shifted out and
  ``range`` is multiplied by 256, so each symbol shifts out at most 4 bytes.

Carries are handled as in LZMA: the encoder's ``low`` may reach ``2**64`` (bit 64
is a carry into bytes already shifted out). A shifted-out byte is held back in
``cache``, followed by ``pending`` bytes equal to 0xFF, until a byte below 0xFF
(or a carry) shows that no later carry can reach them. A virtual leading zero
byte stands in for ``cache`` at the start; it is never part of the output.

The decoder keeps ``code = V_window - low`` instead of ``low``, so it needs no
carry handling: ``0 <= code < range`` holds for every valid stream.
"""

from __future__ import annotations

from operator import index as _index
from typing import Sequence

import numpy as np

from llmzip.errors import CorruptArchiveError

MAX_TOTAL_BITS: int = 30

_STATE_BITS = 64
_STATE_BYTES = _STATE_BITS // 8
_FULL = 1 << _STATE_BITS  # initial range, and the carry bit of the encoder's low
_MASK = _FULL - 1
_TOP = 1 << (_STATE_BITS - 8)  # renormalise while range < _TOP
_FF_LOW = 0xFF << (_STATE_BITS - 8)  # low >= this (without carry) has top byte 0xFF
_MAX_TOTAL = 1 << MAX_TOTAL_BITS
_MAX_OVERREAD = _STATE_BYTES  # zero bytes a valid stream may make the decoder read


def _check_interval(cum: int, freq: int, total: int) -> None:
    """Raises ValueError unless 0 <= cum, 1 <= freq, cum+freq <= total <= 2**30."""
    if not (0 <= cum and 0 < freq and cum + freq <= total <= _MAX_TOTAL):
        raise ValueError(f"invalid symbol interval cum={cum} freq={freq} total={total}")


def _most_trailing_zeros(lo: int, hi: int) -> int | None:
    """Returns the x in [lo, hi] with the most trailing zero bits (None if empty)."""
    if lo > hi:
        return None
    if lo == 0:
        return 0
    shift = ((lo - 1) ^ hi).bit_length() - 1  # top bit where lo - 1 and hi differ
    return (hi >> shift) << shift


def _int_list(values: np.ndarray | Sequence[int]) -> list[int]:
    """Python ints of a flat integer array or sequence (a float array is refused, as encode() does)."""
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "iu":
            raise TypeError(f"integer array expected, got {values.dtype}")
        return values.ravel().tolist()
    return [_index(v) for v in values]


class ArithmeticEncoder:
    """Encodes symbols given as intervals of integer frequency tables.

    Invariants between calls: ``0 <= low < 2**65``, ``low + range <= 2**65``,
    ``2**56 <= range <= 2**64``; ``out + [cache] + [0xFF] * pending`` are the
    bytes shifted out so far, preceded by the virtual zero byte.
    """

    def __init__(self) -> None:
        self._low = 0
        self._range = _FULL
        self._out = bytearray()  # settled bytes; out[0] is the virtual zero byte
        self._cache = 0  # last unsettled byte (may still receive a carry)
        self._pending = 0  # number of 0xFF bytes after cache

    def encode(self, cum: int, freq: int, total: int) -> None:
        """Codes the symbol occupying ``[cum, cum + freq)`` of a table summing to total.

        Args:
          cum: cumulative frequency of the symbols before this one, >= 0.
          freq: frequency of this symbol, >= 1.
          total: sum of the table, ``cum + freq <= total <= 2**MAX_TOTAL_BITS``.

        Raises:
          ValueError: the interval is invalid.
        """
        cum, freq, total = _index(cum), _index(freq), _index(total)
        if not (0 <= cum and 0 < freq and cum + freq <= total <= _MAX_TOTAL):
            _check_interval(cum, freq, total)
        r = self._range // total
        low = self._low + r * cum
        rng = r * freq
        if rng < _TOP:
            low, rng = self._renormalize(low, rng)
        self._low = low
        self._range = rng

    def encode_all(self, cum: np.ndarray, freq: np.ndarray, total: np.ndarray) -> None:
        """:meth:`encode` of every symbol ``(cum[i], freq[i], total[i])`` in order (integer arrays
        of one shape, or sequences of ints), in one loop: the same stream as one call each.

        Raises:
          ValueError: an interval is invalid (the symbols before it stay encoded).
        """
        low, rng = self._low, self._range
        try:
            for c, f, tot in zip(_int_list(cum), _int_list(freq), _int_list(total)):
                if not (0 <= c and 0 < f and c + f <= tot <= _MAX_TOTAL):
                    _check_interval(c, f, tot)
                r = rng // tot
                low += r * c
                rng = r * f
                if rng < _TOP:
                    low, rng = self._renormalize(low, rng)
        finally:
            self._low, self._range = low, rng

    def _renormalize(self, low: int, rng: int) -> tuple[int, int]:
        """Shifts out top bytes of low until rng >= 2**56; returns (low, rng)."""
        out = self._out
        cache = self._cache
        pending = self._pending
        while rng < _TOP:
            if low < _FF_LOW or low >= _FULL:  # top byte settles cache + pending
                carry = low >> _STATE_BITS
                out.append(cache + carry)
                if pending:
                    out += (b"\x00" if carry else b"\xff") * pending
                    pending = 0
                cache = (low >> (_STATE_BITS - 8)) & 0xFF
            else:  # top byte 0xFF: a later carry could still ripple through it
                pending += 1
            low = (low << 8) & _MASK
            rng <<= 8
        self._cache = cache
        self._pending = pending
        return low, rng

    def _stream(self, x: int) -> bytes:
        """Returns the output if the final value window is x (x in [low, low+range))."""
        carry = x >> _STATE_BITS
        tail = bytes([self._cache + carry]) + (b"\x00" if carry else b"\xff") * self._pending
        whole = self._out + tail + (x & _MASK).to_bytes(_STATE_BYTES, "big")
        return bytes(whole[1:]).rstrip(b"\x00")  # drop the virtual byte, zero padding

    def finish(self) -> bytes:
        """Returns the complete stream; the encoder's state is left unchanged.

        Picks the value in the final interval with the most trailing zero bits, so
        the stream is as short as possible, subject to two rules: it never ends in
        a zero byte, and it is at least as long as the number of bytes shifted out
        (so a decoder reads at most 8 bytes past its end). No symbols gives b"".
        """
        lo, hi = self._low, self._low + self._range - 1
        x = _most_trailing_zeros(lo, hi)
        assert x is not None  # range >= 1
        data = self._stream(x)
        if len(data) < len(self._out) + self._pending:
            # x is a multiple of 2**64 and the shifted-out bytes end in zeros:
            # take the best value whose last 8 bytes are not all zero instead.
            candidates = (_most_trailing_zeros(lo, x - 1), _most_trailing_zeros(x + 1, hi))
            data = min((self._stream(c) for c in candidates if c is not None), key=len)
        return data


class ArithmeticDecoder:
    """Decodes a stream made by ArithmeticEncoder, given the same tables in order.

    Invariants between symbols: ``2**56 <= range <= 2**64``, ``code = V - low``
    over the 64-bit window, ``0 <= code < range`` for a valid stream; ``pos``
    bytes of the (zero-extended) data have been read.
    """

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        head = self._data[:_STATE_BYTES].ljust(_STATE_BYTES, b"\x00")
        self._code = int.from_bytes(head, "big")
        self._range = _FULL
        self._pos = _STATE_BYTES

    def target(self, total: int) -> int:
        """Returns v in [0, total) lying in the next symbol's [cum, cum + freq).

        Raises:
          ValueError: total is not in [1, 2**MAX_TOTAL_BITS].
          CorruptArchiveError: the stream falls in no symbol of the table.
        """
        total = _index(total)
        if not 0 < total <= _MAX_TOTAL:
            raise ValueError(f"invalid table total {total}")
        v = self._code // (self._range // total)
        if v >= total:
            raise CorruptArchiveError("arithmetic-coded stream is corrupt")
        return v

    def consume(self, cum: int, freq: int, total: int) -> None:
        """Advances past the symbol [cum, cum + freq), which must contain target(total).

        Raises:
          ValueError: the interval is invalid or does not contain the target.
        """
        cum, freq, total = _index(cum), _index(freq), _index(total)
        _check_interval(cum, freq, total)
        self._advance(cum, freq, total)

    def _advance(self, cum: int, freq: int, total: int) -> None:
        """consume() for a valid interval given as Python ints."""
        r = self._range // total
        code = self._code - r * cum
        rng = r * freq
        if not 0 <= code < rng:
            raise ValueError(f"symbol [{cum}, {cum + freq}) does not contain the target")
        if rng < _TOP:
            data, pos, size = self._data, self._pos, len(self._data)
            while rng < _TOP:
                code = (code << 8) | (data[pos] if pos < size else 0)
                pos += 1
                rng <<= 8
            self._pos = pos
        self._code = code
        self._range = rng

    def decode(self, cdf: np.ndarray) -> int:
        """Decodes one symbol of a table given as a cumulative frequency array.

        Args:
          cdf: 1-D int64 array, ``cdf[0] == 0``, strictly increasing,
            ``cdf[-1] == total <= 2**MAX_TOTAL_BITS``; symbol s is
            ``[cdf[s], cdf[s + 1])``.

        Returns:
          The symbol s with ``cdf[s] <= target < cdf[s + 1]``.
        """
        total = _index(cdf.item(-1))
        v = self.target(total)
        s = int(cdf.searchsorted(v, "right")) - 1
        cum = _index(cdf.item(s))
        self._advance(cum, _index(cdf.item(s + 1)) - cum, total)
        return s

    def decode_rows(self, cdf: np.ndarray) -> list[int]:
        """:meth:`decode` of one symbol per row of a 2-D cumulative table ``cdf`` (R, n + 1),
        in row order, in one loop (the same symbols and state as R calls)."""
        totals = cdf[:, -1].tolist()
        data, pos, size = self._data, self._pos, len(self._data)
        code, rng = self._code, self._range
        out = []
        try:
            for row, total in zip(cdf, totals):
                if not 0 < total <= _MAX_TOTAL:
                    raise ValueError(f"invalid table total {total}")
                r = rng // total
                v = code // r
                if v >= total:
                    raise CorruptArchiveError("arithmetic-coded stream is corrupt")
                s = int(row.searchsorted(v, "right")) - 1
                cum, end = row.item(s), row.item(s + 1)
                if not 0 <= code - r * cum < r * (end - cum):   # only a malformed cdf fails here
                    raise ValueError(f"symbol [{cum}, {end}) does not contain the target")
                code, rng = code - r * cum, r * (end - cum)
                while rng < _TOP:
                    code = (code << 8) | (data[pos] if pos < size else 0)
                    pos += 1
                    rng <<= 8
                out.append(s)
        finally:
            self._code, self._range, self._pos = code, rng, pos
        return out

    def decode_rows_blocked(self, tables: np.ndarray, block: int) -> list[int]:
        """:meth:`decode_rows` of the tables (R, n) themselves (integer entries >= 1), without a
        cumulative table: a row's symbol is searched among its sums of ``block`` entries, then
        within one block. Same symbols and state; cheaper where n is large (see lockstep)."""
        rows, n = tables.shape
        sums = np.add.reduceat(tables, np.arange(0, n, block), axis=1, dtype=np.int64)
        block_cdf = np.zeros((rows, sums.shape[1] + 1), dtype=np.int64)
        np.cumsum(sums, axis=1, out=block_cdf[:, 1:])
        out = []
        for table, row_cdf in zip(tables, block_cdf):
            total = row_cdf.item(-1)
            v = self.target(total)
            b = int(row_cdf.searchsorted(v, "right")) - 1
            within = np.cumsum(table[b * block : (b + 1) * block])
            j = int(within.searchsorted(v - row_cdf.item(b), "right"))
            end = row_cdf.item(b) + within.item(j)
            freq = table.item(b * block + j)
            self._advance(end - freq, freq, total)
            out.append(b * block + j)
        return out

    def check_overread(self) -> None:
        """Raises CorruptArchiveError as soon as the decoder has read more than 8 bytes
        past the end: no valid stream does that, so a truncated or forged one is caught
        early instead of after the whole segment has been decoded."""
        if self._pos > len(self._data) + _MAX_OVERREAD:
            raise CorruptArchiveError("arithmetic-coded stream is truncated")

    def check_end(self) -> None:
        """Checks that the stream ended where it should, after the last symbol.

        A valid stream of n shifted-out bytes is n to n + 8 bytes long, and the
        decoder has then read n + 8 bytes (zero-extended).

        Raises:
          CorruptArchiveError: the decoder read more than 8 bytes past the end
            (truncated stream), did not read every byte (trailing junk), or the
            data ends in a zero byte (never emitted).
        """
        self.check_overread()
        if self._pos < len(self._data):
            raise CorruptArchiveError("arithmetic-coded stream has trailing bytes")
        if self._data and self._data[-1] == 0:
            raise CorruptArchiveError("arithmetic-coded stream has trailing zero bytes")
