"""The language-model frame method: a frame coded by :mod:`llmzip.codec` (model, exact engine,
context mixing), with the format-1 header's fields packed compactly.

Payload::

    model_id_len u8 + model_id | fingerprint[32] | engine u8 | vocab_size varint | bos_id varint
    | freq_bits u8 | chunk_tokens varint | group_chunks varint | token_count varint
    | mix_params_len varint + mix_params (empty: no mixing) | segment_count varint
    | segment_count x length varint | segments

The frame record already holds the original size and its BLAKE2b-128, which are the format-1
header's ``original_size`` and ``checksum``: decoding rebuilds that header around the segments
and hands the result to :func:`llmzip.codec.decompress`, so an LM frame decodes with exactly
the arithmetic, checks and limits of a format-1 archive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .. import codec, varint
from ..container import Header, read_archive, write_archive
from .methods import DecodeFailed

ModelFor = Callable[[str], Any]     # model id (as the archive names it) -> a loaded model


def encode(data: bytes, model: codec.Model, mixing: codec.MixParams | None, chunk_tokens: int | None,
           settings: codec.Settings) -> bytes:
    """Code ``data`` with the model; the payload of an LM frame."""
    blob = codec.compress(data, model, chunk_tokens=chunk_tokens, settings=settings, mixing=mixing)
    return pack(*read_archive(blob))


def pack(header: Header, segments: Sequence[bytes | memoryview]) -> bytes:
    """The LM payload of a format-1 header and its segments (size and checksum go to the frame)."""
    model_id = header.model_id.encode("utf-8")
    v = varint.encode
    fields = [bytes([len(model_id)]), model_id, header.fingerprint, bytes([header.engine]),
              v(header.vocab_size), v(header.bos_id), bytes([header.freq_bits]),
              v(header.chunk_tokens), v(header.group_chunks), v(header.token_count),
              v(len(header.mix_params)), header.mix_params, v(len(segments)),
              *(v(len(s)) for s in segments), *(bytes(s) for s in segments)]
    return b"".join(fields)


class _Cursor:
    def __init__(self, payload: bytes) -> None:
        self.buf, self.pos = payload, 0

    def take(self, size: int) -> bytes:
        if size > len(self.buf) - self.pos:
            raise DecodeFailed("language-model frame header runs past the payload")
        self.pos += size
        return self.buf[self.pos - size:self.pos]

    def varint(self) -> int:
        try:
            return varint.read(lambda: self.take(1)[0])
        except varint.VarintError as exc:
            raise DecodeFailed(f"a language-model frame field {exc}") from None


@dataclass(frozen=True)
class LMFields:
    """The fields an LM payload starts with (what ``llmzip list`` shows of an LM frame)."""

    model_id: str
    fingerprint: bytes
    engine: int
    vocab_size: int
    bos_id: int
    freq_bits: int
    chunk_tokens: int
    group_chunks: int
    token_count: int
    mix_params: bytes


def read_fields(payload: bytes) -> tuple[LMFields, int]:
    """The leading fields of an LM payload (or of its first ~1.4 KB) and where they end."""
    cur = _Cursor(payload)
    try:
        model_id = cur.take(cur.take(1)[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeFailed("model id is not UTF-8") from None
    fingerprint, engine = cur.take(32), cur.take(1)[0]
    vocab_size, bos_id, freq_bits = cur.varint(), cur.varint(), cur.take(1)[0]
    chunk_tokens, group_chunks, token_count = cur.varint(), cur.varint(), cur.varint()
    mix_params = cur.take(cur.varint())
    return LMFields(model_id, fingerprint, engine, vocab_size, bos_id, freq_bits, chunk_tokens, group_chunks,
                    token_count, mix_params), cur.pos


def read_header(payload: bytes, size: int, digest: bytes) -> tuple[Header, list[bytes]]:
    """The format-1 header and segments an LM payload stands for (DecodeFailed if malformed)."""
    fields, pos = read_fields(payload)
    try:
        header = Header(**{**fields.__dict__, "original_size": size, "checksum": digest,
                           "mixing": bool(fields.mix_params)})
    except (ValueError, TypeError) as exc:
        raise DecodeFailed(f"invalid language-model frame field: {exc}") from None
    cur = _Cursor(payload)
    cur.pos = pos
    count = cur.varint()
    if count != header.segment_count:
        raise DecodeFailed(f"{count} segments, expected {header.segment_count}")
    lengths = [cur.varint() for _ in range(count)]
    if sum(lengths) != len(payload) - cur.pos:
        raise DecodeFailed("segment lengths do not match the payload size")
    return header, [cur.take(n) for n in lengths]


def decode(payload: bytes, size: int, digest: bytes, model_for: ModelFor, settings: codec.Settings) -> bytes:
    """Decode an LM payload with the model it names (``model_for(model_id)``)."""
    header, segments = read_header(payload, size, digest)
    model = model_for(header.model_id)
    return codec.decompress(write_archive(header, segments), model, settings)
