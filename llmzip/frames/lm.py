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

from typing import Any, Callable

from .. import codec
from ..container import Header, read_archive, write_archive
from .format import varint
from .methods import DecodeFailed

ModelFor = Callable[[str], Any]     # model id (as the archive names it) -> a loaded model


def encode(data: bytes, model: codec.Model, mixing: codec.MixParams | None, chunk_tokens: int | None,
           settings: codec.Settings) -> bytes:
    """Code ``data`` with the model; the payload of an LM frame."""
    blob = codec.compress(data, model, chunk_tokens=chunk_tokens, settings=settings, mixing=mixing)
    header, segments = read_archive(blob)
    model_id = header.model_id.encode("utf-8")
    fields = [bytes([len(model_id)]), model_id, header.fingerprint, bytes([header.engine]),
              varint(header.vocab_size), varint(header.bos_id), bytes([header.freq_bits]),
              varint(header.chunk_tokens), varint(header.group_chunks), varint(header.token_count),
              varint(len(header.mix_params)), header.mix_params, varint(len(segments)),
              *(varint(len(s)) for s in segments), *(bytes(s) for s in segments)]
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
        value = 0
        for i in range(10):
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise DecodeFailed("a language-model frame field is not minimally encoded")
                return value
        raise DecodeFailed("a language-model frame field is longer than 10 bytes")


def read_header(payload: bytes, size: int, digest: bytes) -> tuple[Header, list[bytes]]:
    """The format-1 header and segments an LM payload stands for (DecodeFailed if malformed)."""
    cur = _Cursor(payload)
    try:
        model_id = cur.take(cur.take(1)[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeFailed("model id is not UTF-8") from None
    fingerprint, engine = cur.take(32), cur.take(1)[0]
    vocab_size, bos_id, freq_bits = cur.varint(), cur.varint(), cur.take(1)[0]
    chunk_tokens, group_chunks, token_count = cur.varint(), cur.varint(), cur.varint()
    mix_params = cur.take(cur.varint())
    try:
        header = Header(model_id=model_id, fingerprint=fingerprint, engine=engine, vocab_size=vocab_size,
                        bos_id=bos_id, freq_bits=freq_bits, chunk_tokens=chunk_tokens,
                        group_chunks=group_chunks, original_size=size, token_count=token_count,
                        checksum=digest, mixing=bool(mix_params), mix_params=mix_params)
    except (ValueError, TypeError) as exc:
        raise DecodeFailed(f"invalid language-model frame field: {exc}") from None
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
