"""The codec: round trips, schedule-independent archives, golden archives, damaged archives."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from llmzip import codec, lockstep, workers
from llmzip.container import read_archive
from llmzip.errors import CorruptArchiveError, LlmzipError, ModelMismatchError
from llmzip.model import load_model
from goldens import DATA, digest, golden_input, pinned_digest, write_golden
from predictors import CountingPredictor

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def _sample(name: str) -> bytes:
    return {
        "empty": b"",
        "one": b"x",
        "prose": b"It was the best of times, it was the worst of times.\r\n" * 20,
        "c": b"#include <stdio.h>\nint main(void) {\n  printf(\"hi\\n\");\n  return 0;\n}\n",
        "binary": bytes(range(256)) * 3 + b"\x00" * 100,
        "random": np.random.default_rng(7).bytes(3000),
        "invalid_utf8": b"caf\xc3 \xff\xfe\xed\xa0\x80 \xe2\x82 end\r",
    }[name]


@pytest.mark.parametrize("name", ["empty", "one", "prose", "c", "binary", "random", "invalid_utf8"])
def test_round_trip(golden, name):
    data = _sample(name)
    blob = codec.compress(data, golden, group_chunks=4)
    assert codec.decompress(blob, golden) == data


def test_archive_does_not_depend_on_batch_size_and_decodes_under_any(golden, monkeypatch):
    monkeypatch.setattr(lockstep, "PARALLEL_MIN_FLOPS", 0)   # worker threads even for the tiny model
    data = _sample("prose") + _sample("random")[:500]
    blobs = {bs: codec.compress(data, golden, settings=codec.Settings(batch_size=bs)) for bs in (1, 3, None)}
    assert len(set(blobs.values())) == 1
    assert codec.compress(data, golden, settings=codec.Settings(threads=2)) == blobs[1]
    for bs in (1, 2, 5):
        assert codec.decompress(blobs[1], golden, codec.Settings(batch_size=bs)) == data
    assert codec.decompress(blobs[1], golden, codec.Settings(batch_size=2, threads=3)) == data


@pytest.mark.parametrize("processes, limit", [(False, "DECODE_ROWS_PER_THREAD"), (True, "DECODE_ROWS_PER_PROCESS")])
@pytest.mark.parametrize("rows_per_worker, started", [(None, 0), (1, 1)])
def test_decoder_runs_groups_of_few_chunks_in_the_calling_thread(golden, monkeypatch, processes, limit,
                                                                 rows_per_worker, started):
    """Handing a step of few rows to workers costs more than it saves (measured: 3 KB of prose
    decodes in 1.3 s on one thread, 2.4 s on two); explicit --threads are obeyed."""
    monkeypatch.setattr(lockstep, "PARALLEL_MIN_FLOPS", 0)   # workers even for the tiny model
    if lockstep.cpu_threads(codec.Settings(), golden) < 2 or (processes and not lockstep.fork_available()):
        pytest.skip("one usable core, or no fork")
    data = _sample("prose")
    blob = codec.compress(data, golden, chunk_tokens=40)
    chunks = read_archive(blob)[0].chunk_count
    monkeypatch.setattr(lockstep, limit, rows_per_worker or chunks + 1)
    made = []
    real = {"ThreadPoolExecutor": workers.ThreadPoolExecutor, "ProcessRunner": lockstep.ProcessRunner}
    for name, cls in real.items():
        monkeypatch.setattr(workers if name == "ThreadPoolExecutor" else lockstep, name,
                            lambda *a, _cls=cls, **k: made.append(_cls) or _cls(*a, **k))
    expected = real["ProcessRunner" if processes else "ThreadPoolExecutor"]
    assert codec.decompress(blob, golden, codec.Settings(processes=processes)) == data
    assert made == [expected] * started
    assert codec.decompress(blob, golden, codec.Settings(threads=2, processes=processes)) == data
    assert made == [expected] * (started + 1)


def test_toy_predictor_round_trip_without_torch():
    """The codec only needs the Predictor protocol (equal-length chunks here)."""
    model = CountingPredictor(vocab_size=260, max_context=40, bos_id=256, weight=64)
    rows = [np.array([1, 2, 3, 1, 2, 3, 1, 2], dtype=np.int64), np.array([9, 9, 9, 9, 9, 9, 9, 9])]
    segment = lockstep.encode_group(model, rows, codec.Settings())
    decoded = lockstep.decode_group(model, segment, [8, 8], codec.Settings())
    assert [r.tolist() for r in decoded] == [r.tolist() for r in rows]


def test_ideal_cost_is_close_to_real_size(golden):
    data = (CORPUS / "node_url.md").read_bytes()[:6000] if CORPUS.exists() else _sample("prose") * 3
    stats = codec.CodingStats()
    blob = codec.compress(data, golden, settings=codec.Settings(stats=stats))
    _, segments = read_archive(blob)
    payload = sum(len(s) for s in segments)
    assert stats.tokens == len(golden.tokenizer.encode(data))
    assert payload * 8 <= stats.ideal_bits * 1.001 + 8 * 2 * len(segments)


GOLDEN_FILES = {1: "golden-tiny.llz", 2: "golden-tiny-e2.llz", 3: "golden-tiny-e3.llz"}   # engine -> archive made with it


@pytest.mark.parametrize("engine", sorted(GOLDEN_FILES))
def test_golden_archive_bytes(golden, engine):
    """Fixed model + fixed input -> exact archive, for every engine this build can write.
    A change here breaks old archives: bump ENGINE_ID / FORMAT_VERSION and keep decoding the old ones."""
    blob = codec.compress(golden_input(), golden.with_engine(engine), group_chunks=3, mixing=None)
    assert digest(blob) == pinned_digest(GOLDEN_FILES[engine])


@pytest.mark.parametrize("engine", sorted(GOLDEN_FILES))
def test_golden_archive_still_decodes(golden, engine):
    """Archives of every engine decode with the model as loaded (which defaults to the newest)."""
    blob = (DATA / GOLDEN_FILES[engine]).read_bytes()
    assert read_archive(blob)[0].engine == engine
    assert codec.decompress(blob, golden) == golden_input()


def test_damaged_payload_is_detected(golden):
    data = _sample("prose")
    blob = bytearray(codec.compress(data, golden))
    header_len = len(blob) - sum(len(s) for s in read_archive(bytes(blob))[1])
    rng = np.random.default_rng(0)
    for pos in rng.integers(header_len, len(blob), size=12):
        bad = bytearray(blob)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(CorruptArchiveError):
            codec.decompress(bytes(bad), golden)


def test_every_truncation_is_detected(golden):
    blob = codec.compress(_sample("c"), golden)
    for cut in range(len(blob)):
        with pytest.raises(LlmzipError):
            codec.decompress(blob[:cut], golden)


def test_other_model_is_refused(golden, tmp_path):
    blob = codec.compress(b"hello", golden)
    other = tmp_path / "other"
    other.mkdir()
    for f in (DATA / "golden-tiny").iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    config = (other / "config.json").read_text().replace('"n_positions": 48', '"n_positions": 40')
    (other / "config.json").write_text(config)
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        codec.decompress(blob, load_model(str(other)))


@pytest.mark.skipif(not os.environ.get("LLMZIP_REGEN_GOLDEN"), reason="regenerates the golden files")
def test_regenerate_golden(golden):  # pragma: no cover - run by hand only, after a format bump
    """Writes the archive of the newest engine only: older goldens are history and never change."""
    write_golden(GOLDEN_FILES[golden.engine_id], codec.compress(golden_input(), golden, group_chunks=3, mixing=None))


def test_groups_needing_too_much_decoder_cache_are_refused(golden, monkeypatch):
    data = _sample("prose") * 3                           # several chunks of the tiny model
    blob = codec.compress(data, golden, group_chunks=8, mixing=None)
    monkeypatch.setattr(codec, "KV_LIMIT", 7 * golden.kv_bytes_per_row)
    with pytest.raises(CorruptArchiveError, match="decoder cache"):
        codec.decompress(blob, golden)                    # refused before any cache is allocated
    with pytest.raises(ValueError, match="decoder cache"):
        codec.compress(data, golden, group_chunks=8, mixing=None)
    assert codec.decompress(codec.compress(data, golden, group_chunks=7, mixing=None), golden) == data


def test_worker_threads_only_for_models_big_enough(golden, monkeypatch):
    assert golden.flops_per_token < lockstep.PARALLEL_MIN_FLOPS
    assert lockstep.cpu_threads(codec.Settings(threads=4), golden) == 1
    monkeypatch.setattr(lockstep, "PARALLEL_MIN_FLOPS", 0)
    assert lockstep.cpu_threads(codec.Settings(threads=4), golden) == 4
    assert lockstep.cpu_threads(codec.Settings(threads=None), golden) >= 1
