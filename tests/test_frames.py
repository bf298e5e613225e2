"""Format 2: frames, methods, the index, streaming, the format-2 golden archive, damage."""

from __future__ import annotations

import dataclasses
import io
import os
import re
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llmzip
from llmzip import frames
from llmzip.errors import CorruptArchiveError, FrameError, LlmzipError, NotAnArchiveError, UnsupportedFormatError
from llmzip.frames import format as fmt
from llmzip.frames import methods, split
from goldens import DATA, digest, golden_input, pinned_digest, write_golden

GOLDEN_FRAMES = "golden-frames-v2.llz"


def golden_frame_inputs() -> list[tuple[str, bytes]]:
    """The golden format-2 archive's frames: (method, input), one per method (fixed forever)."""
    rng = np.random.default_rng(20261130)
    text = golden_input()
    return [("lm", text), ("lzma", bytes(range(256)) * 6 + text[:300]), ("stored", rng.bytes(700)),
            ("ppmd", text[::-1]), ("bz2", bytes(rng.integers(0, 4, 900, dtype=np.uint8)))]


def golden_frames_archive(model) -> bytes:
    coded = [frames.encode_frame(data, model=lambda: model, options=frames.Options(method=method))
             for method, data in golden_frame_inputs()]
    return frames.join(coded)


def _models(model):
    return lambda model_id: model


def test_golden_frames_archive_decodes_and_re_encodes(golden):
    """Pins format 2: frame records, trailer, the LM payload layout and every method's decoder.
    LM and stored frames must re-encode byte for byte (our code); the other methods' encoders
    belong to their libraries, whose output may drift between versions without breaking decoding."""
    blob = (DATA / GOLDEN_FRAMES).read_bytes()
    assert digest(blob) == pinned_digest(GOLDEN_FRAMES)
    expected = golden_frame_inputs()
    assert frames.decompress(blob, _models(golden)) == b"".join(data for _, data in expected)
    again = golden_frames_archive(golden)
    old = [f for _, f in frames.read_frames(io.BytesIO(blob))]
    new = [f for _, f in frames.read_frames(io.BytesIO(again))]
    assert [frames.METHOD_NAMES[f.method] for f in old] == [m for m, _ in expected]
    for (method, data), a, b in zip(expected, old, new):
        if method in ("lm", "stored"):
            assert a == b
        else:
            assert frames.decode_frame(b) == data and len(b.payload) <= 1.01 * len(a.payload) + 8


@pytest.mark.skipif(not os.environ.get("LLMZIP_REGEN_GOLDEN"), reason="regenerates the golden files")
def test_regenerate_golden_frames(golden):  # pragma: no cover - run by hand only
    write_golden(GOLDEN_FRAMES, golden_frames_archive(golden))


def test_read_index_finds_every_frame_without_decoding(golden):
    data = split_friendly_input()
    blob = frames.compress(data, golden, frames.Options(frame_size=8192, method="bz2"))
    sequential = [info for info, _ in frames.read_frames(io.BytesIO(blob))]
    assert frames.read_index(io.BytesIO(blob), len(blob)) == sequential
    assert len(sequential) >= 4
    for info in sequential:          # each frame decodes alone, from its offset
        reader = fmt.RecordReader(io.BytesIO(blob[info.offset:]), info.offset)
        _, frame = reader.next_frame()
        assert frames.decode_frame(frame, _models(golden)) == data[info.input_offset:info.input_offset + info.raw_size]


def some_text(size: int) -> bytes:
    """Real text: this package's sources, in a fixed order."""
    text = b"".join(p.read_bytes() for p in sorted((DATA.parents[1] / "llmzip").glob("*.py")))
    assert len(text) >= size
    return text[:size]


def split_friendly_input() -> bytes:
    """20 KB of text, 20 KB of random bytes, 20 KB of text: three runs."""
    text = some_text(40_000)
    return text[:20_000] + np.random.default_rng(3).bytes(20_000) + text[20_000:]


def test_content_aware_split_follows_the_content():
    data = split_friendly_input()
    spans = frames.plan(data, 1 << 20)
    assert [s.kind for s in spans] == [frames.TEXT, frames.BINARY, frames.TEXT]
    assert spans[0].offset == 0                          # boundaries found to the 1 KiB block
    assert abs(spans[1].offset - 20_000) < 1024 and abs(spans[2].offset - 40_000) < 1024
    fixed = frames.plan(data, 16384, content_aware=False)
    assert [s.length for s in fixed] == [16384] * 3 + [len(data) - 3 * 16384]
    assert split.runs(b"") == [] and frames.plan(b"", 10) == []


def test_text_test_accepts_utf8_and_refuses_binary():
    assert split.block_kinds("naïve café — ünïcödé ".encode() * 60) == [frames.TEXT] * 2
    assert split.block_kinds(bytes(range(256)) * 4) == [frames.BINARY]
    assert split.block_kinds("é".encode("latin-1") * 2048) == [frames.BINARY] * 2


@pytest.mark.parametrize("data", [b"", b"x", bytes(300_000), np.random.default_rng(1).bytes(70_000)])
def test_round_trips_and_never_expands_beyond_the_framing(golden, data):
    blob = frames.compress(data, golden, frames.Options(frame_size=32768))
    assert frames.decompress(blob, _models(golden)) == data
    nframes = len(frames.read_index(io.BytesIO(blob), len(blob)))
    assert len(blob) <= len(data) + 5 + nframes * 40 + 36 + 6 * nframes


@pytest.mark.parametrize("margin", [1.0, 100.0])
def test_the_model_codes_a_frame_only_if_it_wins_its_sample(golden, monkeypatch, margin):
    """With a margin nothing can meet, only the sample is coded; with any, the whole frame is,
    and the frame is never larger than the best fallback either way."""
    monkeypatch.setattr(frames.coding, "LM_SAMPLE_MARGIN", margin)
    coded = []
    real = frames.lm.encode
    monkeypatch.setattr(frames.lm, "encode", lambda data, *a: coded.append(len(data)) or real(data, *a))
    text = some_text(30_000)
    frame = frames.encode_frame(text, frames.TEXT, model=lambda: golden)
    sample = frames.coding.sample_size(len(text))
    assert coded == ([sample] if margin == 1.0 else [sample, len(text)])
    assert len(frame.payload) <= len(methods.best_fallback(text)[1])
    assert frames.encode_frame(text, frames.BINARY, model=_no_model) == frames.Frame(
        *methods.best_fallback(text)[:1], len(text), frames.coding.checksum(text), methods.best_fallback(text)[1])


def _no_model():
    raise AssertionError("the model must not be loaded")


def test_binary_frames_never_load_the_model():
    data = np.random.default_rng(2).bytes(50_000) + bytes(range(256)) * 100
    out = io.BytesIO()
    frames.compress_stream(io.BytesIO(data), out, _no_model)
    assert frames.decompress(out.getvalue(), _no_model) == data


def test_streaming_holds_a_frame_not_the_input():
    """A reader that refuses reads larger than a frame plus the planner's look-ahead."""
    class Bounded(io.BytesIO):
        def read(self, size=-1):
            assert 0 < size <= 8192 + split.MIN_RUN
            return super().read(size)

    data = np.random.default_rng(4).bytes(100_000)
    out = io.BytesIO()
    frames.compress_stream(Bounded(data), out, _no_model, frames.Options(frame_size=8192))
    assert frames.decompress(out.getvalue()) == data


def test_unknown_method_asks_to_upgrade():
    frame = frames.encode_frame(b"hello hello hello", options=frames.Options(method="stored"))
    blob = frames.join([dataclasses.replace(frame, method=77)])
    with pytest.raises(UnsupportedFormatError, match=r"^frame 0 at offset 5: unknown frame method 77: .*upgrade llmzip"):
        frames.decompress(blob)
    with pytest.raises(UnsupportedFormatError, match="unsupported format version 9"):
        frames.decompress(b"LLMZ\x09" + blob[5:])
    with pytest.raises(CorruptArchiveError, match="invalid format version 0"):
        frames.decompress(b"LLMZ\x00" + blob[5:])


def test_frames_moved_or_lost_are_detected():
    a, b = (frames.encode_frame(x, options=frames.Options(method="stored")) for x in (b"first", b"second"))
    swapped = bytearray(frames.join([a, b]))
    body = frames.join([b, a])
    swapped[5:5 + a.record_size + b.record_size] = body[5:5 + a.record_size + b.record_size]
    with pytest.raises(CorruptArchiveError, match="trailer .* does not match the frames"):
        frames.decompress(bytes(swapped))
    with pytest.raises(CorruptArchiveError, match="trailing data"):
        frames.decompress(frames.join([a]) + b"\0")


def _record_starts(blob: bytes) -> list[int]:
    """Offsets of every frame record and of the trailer."""
    infos = frames.read_index(io.BytesIO(blob), len(blob))
    return [i.offset for i in infos] + [len(blob) - 4 - int.from_bytes(blob[-4:], "little")]


def _expect_named(exc: Exception, pos: int, starts: list[int]) -> None:
    """The error names the frame (or trailer) whose record holds byte ``pos``."""
    if pos < 4:
        assert isinstance(exc, NotAnArchiveError)
        return
    if pos == 4:
        assert isinstance(exc, (UnsupportedFormatError, CorruptArchiveError))
        return
    start = max(s for s in starts if s <= pos)
    assert isinstance(exc, CorruptArchiveError), exc
    index = starts.index(start)
    # a damaged method byte may read as the end-of-frames marker: then the trailer at that offset is wrong
    assert re.match(rf"^(frame {index}|trailer) at offset {start}: ", str(exc)), (pos, str(exc))


def test_every_flip_and_truncation_is_a_clean_error_naming_the_frame(golden):
    """Exhaustive on a small archive of four frames (PPMd, stored, LZMA, LM; the LM frame last,
    so that most damaged archives fail before the slowest decoder runs)."""
    parts = [("ppmd", b"abcabcabd" * 30), ("stored", b"\x00\x01" * 40), ("lzma", bytes(range(200))),
             ("lm", golden_input()[:24])]
    blob = frames.join(frames.encode_frame(d, model=lambda: golden, options=frames.Options(method=m, mixing=None))
                       for m, d in parts)
    original = b"".join(d for _, d in parts)
    assert frames.decompress(blob, _models(golden)) == original
    starts = _record_starts(blob)
    for pos in range(len(blob)):
        bad = bytearray(blob)
        bad[pos] ^= 1 << (pos % 8)
        with pytest.raises(LlmzipError) as caught:
            frames.decompress(bytes(bad), _models(golden))
        _expect_named(caught.value, pos, starts)
    for cut in range(len(blob)):
        with pytest.raises(LlmzipError) as caught:
            frames.decompress(blob[:cut], _models(golden))
        if cut > 5:
            _expect_named(caught.value, cut, starts + [len(blob)])


def test_frame_error_carries_index_and_offset():
    blob = bytearray(frames.join([frames.encode_frame(b"x" * 50, options=frames.Options(method="stored"))] * 3))
    second = frames.read_index(io.BytesIO(bytes(blob)), len(blob))[1]
    blob[second.offset + 30] ^= 1
    with pytest.raises(FrameError) as caught:
        frames.decompress(bytes(blob))
    assert (caught.value.index, caught.value.offset) == (1, second.offset)


def test_top_level_api_writes_format_2_and_reads_both(golden):
    blob = llmzip.compress(b"Hello, hello, hello world!\n", golden)
    assert blob[:5] == b"LLMZ\x02" and llmzip.read_info(blob).original_size == 27
    assert llmzip.decompress(blob, golden) == b"Hello, hello, hello world!\n"
    v1 = (DATA / "golden-tiny-e3.llz").read_bytes()
    assert llmzip.read_info(v1).format_version == 1
    assert llmzip.decompress(v1, golden) == golden_input()
    with pytest.raises(NotAnArchiveError):
        llmzip.decompress(b"LLM")


def test_payload_crc_guards_the_decoders():
    frame = frames.encode_frame(b"some text " * 50, options=frames.Options(method="ppmd"))
    bad = bytearray(frame.record())
    bad[-3] ^= 4
    reader = fmt.RecordReader(io.BytesIO(bytes(bad) + fmt.trailer([])))
    with pytest.raises(FrameError, match="payload checksum mismatch"):
        reader.next_frame()
    assert zlib.crc32(frame.payload) == int.from_bytes(frame.record()[-len(frame.payload) - 8:][:4], "little")


def test_decompression_reads_a_frame_at_a_time():
    data = np.random.default_rng(5).bytes(60_000) + bytes(40_000)
    blob = frames.compress(data, options=frames.Options(frame_size=8192, method="bz2"))
    largest = max(f.payload_size for f in frames.read_index(io.BytesIO(blob), len(blob)))
    reads = []

    class Recording(io.BytesIO):
        def read(self, size=-1):
            reads.append(size)
            return super().read(size)

    written = []

    class Sink:
        def write(self, chunk):
            assert len(chunk) <= 8192
            written.append(len(chunk))

    assert frames.decompress_stream(Recording(blob), Sink()) == len(data) == sum(written)
    assert 0 < max(reads) <= largest


def test_a_fallback_payload_that_does_not_decode_is_never_written(monkeypatch):
    """As pyppmd's one-call encoder did on some files: a payload one byte short."""
    text = some_text(20_000)
    real = methods.FALLBACKS[methods.PPMD]
    assert methods.best_fallback(text)[0] == methods.PPMD
    broken = dataclasses.replace(real, encode=lambda data: real.encode(data)[:-1])
    monkeypatch.setitem(methods.FALLBACKS, methods.PPMD, broken)
    method, payload = methods.best_fallback(text)
    assert method != methods.PPMD and methods.decode_fallback(method, payload, len(text)) == text


def test_incompressible_frames_are_stored_without_trying_the_fallbacks(monkeypatch):
    tried = []
    monkeypatch.setattr(methods, "best_fallback", lambda *a: tried.append(1))
    noise = np.random.default_rng(6).bytes(100_000)
    assert frames.coding.incompressible(noise) and not frames.coding.incompressible(noise[:50_000] + bytes(50_000))
    frame = frames.encode_frame(noise, frames.BINARY, model=_no_model)
    assert (frame.method, frame.payload, tried) == (methods.STORED, noise, [])


@settings(max_examples=25, deadline=None)
@given(pieces=st.lists(st.one_of(st.binary(max_size=3000), st.sampled_from([b"ab" * 700, bytes(2000)])), max_size=6),
       frame_size=st.integers(1, 5000), method=st.sampled_from(["lzma", "bz2", "ppmd", "stored"]))
def test_any_input_any_frame_size_round_trips(pieces, frame_size, method):
    data = b"".join(pieces)
    blob = frames.compress(data, options=frames.Options(frame_size=frame_size, method=method))
    assert frames.decompress(blob, _no_model) == data
    index = frames.read_index(io.BytesIO(blob), len(blob))
    assert [f.raw_size for f in index] == [s.length for s in frames.plan(data, frame_size)]
