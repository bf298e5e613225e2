"""The classic compressors llmzip is compared with, and how one of them is measured.

Every compressor is a row of :data:`CLASSIC`: (name, params, compress_fn, decompress_fn).
All of them come from Python packages (stdlib, ``zstandard``, ``brotli``, ``pyppmd``), so the
suite runs anywhere ``pip`` does. Adding a compressor is adding one row.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Codec = Callable[[bytes], bytes]
KB = 1000  # throughputs are in kB/s = 1000 bytes of ORIGINAL data per second


@dataclass(frozen=True)
class Compressor:
    name: str
    params: dict[str, Any]
    compress: Codec
    decompress: Codec


def _zstd(level: int) -> tuple[Codec, Codec]:
    import zstandard

    # compress() records the content size in the frame, so decompress() needs no hint.
    return (zstandard.ZstdCompressor(level=level).compress, zstandard.ZstdDecompressor().decompress)


def _brotli(quality: int, lgwin: int) -> tuple[Codec, Codec]:
    import brotli

    return (lambda d: brotli.compress(d, quality=quality, lgwin=lgwin), brotli.decompress)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _read_varint(blob: bytes) -> tuple[int, int]:
    n = shift = pos = 0
    while True:
        byte = blob[pos]
        n |= (byte & 0x7F) << shift
        shift, pos = shift + 7, pos + 1
        if not byte & 0x80:
            return n, pos


def _ppmd7(order: int, mem_mb: int) -> tuple[Codec, Codec]:
    """PPMd variant H (PPMd7, as in 7-Zip). The raw stream has no length, so, like 7-Zip's
    container, we store the original size first (a LEB128 varint, counted in the size)."""
    import pyppmd

    mem = mem_mb << 20

    def compress(data: bytes) -> bytes:
        # 8 KiB at a time: pyppmd 1.3's encoder can lose the last byte of a stream written in
        # one call (libz.a, order 6: the decoder then fails); in pieces its streams decode.
        enc = pyppmd.Ppmd7Encoder(order, mem)
        pieces = [enc.encode(data[i:i + 8192]) for i in range(0, len(data), 8192)]
        return _varint(len(data)) + b"".join(pieces) + enc.flush()

    def decompress(blob: bytes) -> bytes:
        size, pos = _read_varint(blob)
        return pyppmd.Ppmd7Decoder(order, mem).decode(blob[pos:], size)

    return compress, decompress


def _row(name: str, params: dict[str, Any], codecs: tuple[Codec, Codec]) -> Compressor:
    return Compressor(name, params, *codecs)


def classic_compressors() -> list[Compressor]:
    """The table. Built on call so that a missing optional package fails with a clear import error."""
    xz = 9 | lzma.PRESET_EXTREME
    return [
        _row("gzip -9", {"module": "gzip", "compresslevel": 9, "mtime": 0},
             (lambda d: gzip.compress(d, 9, mtime=0), gzip.decompress)),
        _row("bzip2 -9", {"module": "bz2", "compresslevel": 9}, (lambda d: bz2.compress(d, 9), bz2.decompress)),
        _row("xz -9e", {"module": "lzma", "preset": "9 | PRESET_EXTREME", "format": "xz", "check": "crc64"},
             (lambda d: lzma.compress(d, preset=xz), lzma.decompress)),
        _row("zstd -19", {"module": "zstandard", "level": 19}, _zstd(19)),
        _row("zstd --ultra -22", {"module": "zstandard", "level": 22}, _zstd(22)),
        _row("brotli -11", {"module": "brotli", "quality": 11, "lgwin": 24}, _brotli(11, 24)),
        _row("ppmd -o6", {"module": "pyppmd", "variant": "H (PPMd7)", "max_order": 6, "mem_mb": 16,
                          "framing": "LEB128 original size + raw PPMd7 stream"}, _ppmd7(6, 16)),
        _row("ppmd -o10", {"module": "pyppmd", "variant": "H (PPMd7)", "max_order": 10, "mem_mb": 256,
                           "framing": "LEB128 original size + raw PPMd7 stream"}, _ppmd7(10, 256)),
    ]


def best_time(fn: Codec, data: bytes, repeats: int) -> tuple[bytes, float]:
    """Run ``fn(data)`` ``repeats`` times; return the last output and the fastest wall time."""
    best, out = float("inf"), b""
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn(data)
        best = min(best, time.perf_counter() - t0)
    return out, best


def kbps(nbytes: int, seconds: float) -> float:
    return nbytes / KB / seconds if seconds > 0 else float("inf")


def base_entry(file: str, compressor: str, params: dict[str, Any], original: int, compressed: int,
               compress_s: float, decompress_s: float, verified: bool) -> dict[str, Any]:
    """The fields every results.json entry has."""
    return {
        "file": file, "compressor": compressor, "params": params,
        "original_bytes": original, "compressed_bytes": compressed,
        "bits_per_byte": 8.0 * compressed / original,
        "compress_s": compress_s, "decompress_s": decompress_s,
        "compress_kbps": kbps(original, compress_s), "decompress_kbps": kbps(original, decompress_s),
        "verified": verified,
    }


def measure_classic(comp: Compressor, file: str, data: bytes, repeats: int) -> dict[str, Any]:
    """Compress and decompress ``data`` (best of ``repeats`` each); check the round trip."""
    blob, c_s = best_time(comp.compress, data, repeats)
    back, d_s = best_time(comp.decompress, blob, repeats)
    return base_entry(file, comp.name, comp.params, len(data), len(blob), c_s, d_s, back == data)


def files_of(paths: list[Path]) -> list[Path]:
    """The given files, and the files of the given directories (sorted; README* describe, not data)."""
    out: list[Path] = []
    for p in paths:
        out += sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("README")) if p.is_dir() else [p]
    return out
