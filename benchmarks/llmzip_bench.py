"""Measure llmzip on one (model, file) in a child process of its own.

The parent (:func:`measure_llmzip`) starts ``python benchmarks/run.py --_llmzip-worker SPEC``;
the child (:func:`worker_main`) loads the model and codes a short warm-up text (both timed
apart: ``load_s``, ``warmup_s``), then compresses the file to a format-2 archive (frames: the
model where it wins, the shipped fallbacks elsewhere, as ``llmzip compress`` does) and
decompresses it under a BLAS thread limit, and writes its entry as JSON to the file SPEC names
(with the frames and the method mix).
A process per measurement makes ``peak_rss_mb`` (the child's ``ru_maxrss``) honest: it is the
peak of exactly one model on one file, imports included, and nothing left from earlier runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from compressors import base_entry

RUN_PY = Path(__file__).resolve().parent / "run.py"
WORKER_FLAG = "--_llmzip-worker"
WARMUP = b"llmzip benchmark warm-up: a short round trip before the timed ones.\n"


def model_label(name: str) -> str:
    """A short column name for a model: the name itself, or a directory's base name."""
    path = Path(name).expanduser()
    return f"llmzip:{path.resolve().name if path.is_dir() else name}"


def measure_llmzip(model: str, label: str, path: Path, limit: int | None,
                   threads: int | None, batch_size: int | None, chunk_tokens: int | None = None,
                   runs: int = 1) -> dict[str, Any]:
    """Run one worker (timing ``runs`` round trips, keeping the best time of each direction);
    return its results.json entry. Raises RuntimeError if the worker fails."""
    with tempfile.TemporaryDirectory(prefix="llmzip-bench-") as tmp:
        out = Path(tmp) / "entry.json"
        spec = {"model": model, "label": label, "file": str(path), "limit": limit,
                "threads": threads, "batch_size": batch_size, "chunk_tokens": chunk_tokens, "out": str(out),
                "runs": max(1, runs)}
        proc = subprocess.run([sys.executable, str(RUN_PY), WORKER_FLAG, json.dumps(spec)],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.exists():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
            raise RuntimeError(f"llmzip worker failed (model {model!r}, file {path.name}), "
                               f"exit {proc.returncode}:\n{tail}")
        return json.loads(out.read_text(encoding="utf-8"))


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _code(spec: dict[str, Any], data: bytes) -> dict[str, Any]:
    """Load, compress, decompress; everything the entry needs, timed."""
    from llmzip import codec, frames, read_info

    model, load_s = _load(spec["model"])
    # One-time lazy set-up (lookup tables, first BLAS call) belongs with loading, not coding.
    warm = codec.Settings(batch_size=spec["batch_size"], threads=spec["threads"])
    _, warmup_s = _timed(lambda: codec.decompress(codec.compress(WARMUP, model, settings=warm), model, warm))
    stats = codec.CodingStats()
    options = frames.Options(chunk_tokens=spec.get("chunk_tokens"),
                             settings=codec.Settings(batch_size=spec["batch_size"], threads=spec["threads"], stats=stats))
    blob, c_s = _timed(frames.compress, data, model, options)
    timing = dataclasses.replace(options, settings=warm)
    for _ in range(spec.get("runs", 1) - 1):   # best of several: this machine's timings are noisy
        again, seconds = _timed(frames.compress, data, model, timing)
        if again != blob:
            raise SystemExit("llmzip compressed the same input to two different archives")
        c_s = min(c_s, seconds)
    back, d_s = _best_decompress(blob, model, warm, spec.get("runs", 1))
    return {"model": model, "load_s": load_s, "warmup_s": warmup_s, "stats": stats, "blob": blob,
            "back": back, "c_s": c_s, "d_s": d_s, "info": read_info(blob)}


def _load(name: str | None) -> tuple[Any, float]:
    """The model and its load time, with torch's int8 GEMM set up: these timings are steady-state
    coding, as in a process that codes many files (a CLI call on a small input skips torch
    altogether, see llmzip.linear8.select_backend; its wall times: latency.py)."""
    from llmzip import linear8
    from llmzip.errors import LlmzipError
    from llmzip.model import load_model

    def load() -> Any:
        loaded = load_model(name)
        linear8.select_backend(linear8.INT8_GEMM_MIN_OPS)
        return loaded
    try:
        return _timed(load)
    except LlmzipError as exc:
        raise SystemExit(f"cannot load model {name!r}: {exc}") from None


def _best_decompress(blob: bytes, model: Any, settings: Any, runs: int) -> tuple[bytes, float]:
    """The decoded bytes (empty if any run failed or disagreed) and the best time of ``runs``."""
    from llmzip import frames
    from llmzip.errors import CorruptArchiveError

    def decompress() -> bytes:
        try:
            return frames.decompress(blob, lambda _: model, settings)
        except CorruptArchiveError as exc:  # the codec's own checksum caught a mismatch
            print(f"llmzip round trip failed: {exc}", file=sys.stderr)
            return b""

    back, d_s = _timed(decompress)
    for _ in range(runs - 1):
        again, seconds = _timed(decompress)
        back, d_s = (back, min(d_s, seconds)) if again == back else (b"", d_s)
    return back, d_s


def _default_frame_size() -> int:
    from llmzip.frames import DEFAULT_FRAME_SIZE

    return DEFAULT_FRAME_SIZE


def format1_bytes(blob: bytes) -> int | None:
    """What the archive would weigh in format 1 (one language-model stream per frame, as llmzip
    wrote before frames): each model frame's format-1 archive is rebuilt exactly from its payload.
    None unless every frame is a model frame."""
    import io

    from llmzip import frames
    from llmzip.container import write_archive
    from llmzip.frames import lm

    coded = [frame for _, frame in frames.read_frames(io.BytesIO(blob))]
    if not coded or any(f.method != frames.METHOD_IDS["lm"] for f in coded):
        return None
    return sum(len(write_archive(*lm.read_header(f.payload, f.raw_size, f.checksum))) for f in coded)


def _entry(spec: dict[str, Any], data: bytes, r: dict[str, Any]) -> dict[str, Any]:
    """The results.json entry. ``ideal_bits_per_byte`` and ``overhead_pct`` describe the model's
    frames: the first is over the whole file (None if no frame used the model), the second is
    the archive over the ideal only when every frame is a model frame."""
    info, stats, model = r["info"], r["stats"], r["model"]
    lm_fields = list(info.lm_fields.values())
    params = {"model": spec["model"], "threads": spec["threads"] or "default",
              "batch_size": spec["batch_size"], "chunk_tokens": lm_fields[0].chunk_tokens if lm_fields else None,
              "group_chunks": lm_fields[0].group_chunks if lm_fields else None, "freq_bits": model.freq_bits,
              "frame_size": _default_frame_size()}
    entry = base_entry(Path(spec["file"]).name, spec["label"], params, len(data), len(r["blob"]),
                       r["c_s"], r["d_s"], r["back"] == data)
    archive_bits = 8.0 * len(r["blob"])
    all_lm = bool(info.frames) and len(lm_fields) == len(info.frames)
    entry.update({
        "model": model.model_id, "fingerprint": model.fingerprint.hex(), "tokens": stats.tokens,
        "frames": len(info.frames), "methods": info.method_mix(), "format1_bytes": format1_bytes(r["blob"]),
        "ideal_bits_per_byte": stats.ideal_bits / len(data) if stats.tokens else None,
        "overhead_pct": 100.0 * (archive_bits - stats.ideal_bits) / stats.ideal_bits if all_lm else None,
        "compress_tokens_per_s": stats.tokens / r["c_s"] if r["c_s"] > 0 else None,
        "decompress_tokens_per_s": stats.tokens / r["d_s"] if r["d_s"] > 0 else None,
        "peak_rss_mb": _peak_rss_mb(), "load_s": r["load_s"], "warmup_s": r["warmup_s"],
    })
    return entry


def worker_main(spec_json: str) -> int:
    """Child process entry point (``run.py --_llmzip-worker SPEC``)."""
    from llmzip.runtime import single_openmp_thread, tune_allocator

    tune_allocator()          # as the llmzip CLI does: the benchmark measures what its users get
    single_openmp_thread()
    spec = json.loads(spec_json)
    data = Path(spec["file"]).read_bytes()
    if spec["limit"]:
        data = data[: spec["limit"]]
    result = _code(spec, data)
    entry = _entry(spec, data, result)
    tmp = spec["out"] + ".tmp"
    Path(tmp).write_text(json.dumps(entry), encoding="utf-8")
    os.replace(tmp, spec["out"])
    return 0
