#!/usr/bin/env python3
"""Assemble a mixed benchmark directory from public files on this machine, deterministically.

    python benchmarks/mixed_set.py OUT_DIR

Nothing is downloaded and nothing large is committed: the set is rebuilt from files that ship
with Debian and with installed Python packages (the GPL text, the stdlib's ``argparse.py``,
matplotlib's sample data, zlib's shared and static libraries) plus generated data (a seeded
random file, a synthetic WAV, a raw BMP decoded from a sample JPEG) and a tar of several of
them (fixed metadata, so the bytes never change). A source that is missing here is skipped
with a note on stderr; the names and sizes written are printed.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import tarfile
import wave
from pathlib import Path

import numpy as np

DEBIAN_LIB = Path("/usr/lib/x86_64-linux-gnu")
SOURCES = {   # output name -> (where it comes from, at most this many bytes)
    "gpl3.txt": (Path("/usr/share/common-licenses/GPL-3"), None),
    "argparse.py": (Path(argparse.__file__), 60_000),
    "stocks.csv": ("matplotlib:Stocks.csv", None),
    "membrane.f32": ("matplotlib:membrane.dat", None),      # float32 samples
    "eeg.i16": ("matplotlib:eeg.dat", None),                # int16 samples
    "grace_hopper.jpg": ("matplotlib:grace_hopper.jpg", None),
    "libz.so.1": (DEBIAN_LIB / "libz.so.1", None),          # ELF shared object
    "libz.a": (DEBIAN_LIB / "libz.a", None),                # archive of ELF object files
}
TAR_MEMBERS = ["gpl3.txt", "libz.so.1", "random.bin", "stocks.csv"]


def _source(spec: object) -> Path:
    if isinstance(spec, str) and spec.startswith("matplotlib:"):
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data" / spec.split(":", 1)[1]
    assert isinstance(spec, Path)
    return spec


def random_bytes() -> bytes:
    return np.random.default_rng(20261130).bytes(100_000)


def synthetic_wav() -> bytes:
    """3 s of a 16-bit mono chord with a little seeded noise, 22,050 Hz."""
    rate, rng = 22050, np.random.default_rng(7)
    t = np.arange(3 * rate) / rate
    tone = sum(np.sin(2 * math.pi * f * t) / (i + 1) for i, f in enumerate((220.0, 277.2, 329.6)))
    samples = (tone * 8000 + rng.normal(0, 300, t.size)).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def raw_bmp(jpeg: Path) -> bytes:
    """The top-left 256x256 of a sample photo as an uncompressed 24-bit BMP."""
    from PIL import Image

    buf = io.BytesIO()
    Image.open(jpeg).convert("RGB").crop((0, 0, 256, 256)).save(buf, format="BMP")
    return buf.getvalue()


def deterministic_tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 1_700_000_000, 0o644, "u", "g"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def assemble() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for name, (spec, limit) in SOURCES.items():
        path = _source(spec)
        if not path.is_file():
            print(f"mixed_set.py: {path} not found, {name} skipped", file=sys.stderr)
            continue
        files[name] = path.read_bytes()[:limit]
    files["random.bin"] = random_bytes()
    files["chord.wav"] = synthetic_wav()
    if "grace_hopper.jpg" in files:
        files["grace_hopper.bmp"] = raw_bmp(_source(SOURCES["grace_hopper.jpg"][0]))
    files["bundle.tar"] = deterministic_tar({n: files[n] for n in TAR_MEMBERS if n in files})
    return files


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="directory to write (created)")
    out = p.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    for name, data in assemble().items():
        (out / name).write_bytes(data)
        print(f"{len(data):>9}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
