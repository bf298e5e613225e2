"""Exact bytes <-> token ids over a Hugging Face BPE vocabulary of either style:

* byte-level (GPT-2, Llama 3, Qwen2, SmolLM): every piece is bytes spelled in GPT-2's
  byte-to-unicode alphabet;
* SentencePiece with byte fallback (Llama 2, Mistral, TinyLlama): pieces are text with ``▁`` for
  a space, and ``<0x00>`` ... ``<0xFF>`` are single bytes. The "dummy prefix" (a ``▁`` the
  tokenizer puts before the text, i.e. a space that is not in the input) is turned off, the
  ``▁`` substitution is kept, and a literal ``▁`` in the input is coded as bytes.

Invariants (for every :class:`ByteTokenizer` ``t`` and every ``data: bytes``):

* ``t.decode(t.encode(data)) == data`` -- also for invalid UTF-8, NUL, CR, BOMs, binary.
* Every id in ``[0, t.vocab_size)`` maps to a non-empty byte string, and ``encode``
  only returns ids in that range.
* Decoding depends only on the token->bytes table, which ``table_digest`` fingerprints;
  how ``encode`` chooses tokens can change without breaking old archives.

The backend's own ``decode`` is never used (it cleans up spaces).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import tokenizers

from llmzip.errors import TokenizerError

DEFAULT_BLOCK_SIZE = 64 * 1024
_INVALID_RUN = re.compile("([\udc80-\udcff]+)")  # bytes that are not valid UTF-8 (surrogateescape)
SPACE_PIECE = "\u2581"                             # SentencePiece's "▁": a space inside a piece
_SP_BYTE = re.compile("<0x([0-9A-Fa-f]{2})>")      # SentencePiece byte-fallback piece
_SP_RAW_RUN = re.compile("([\udc80-\udcff]+|\u2581+)")   # coded as single bytes under SentencePiece


@lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode()``: byte-level alphabet char -> byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _patch_config(node: Any) -> None:
    """Force ``add_prefix_space=False`` on every ByteLevel pre-tokenizer (in place).

    A prefix space would add a byte that is not in the input, so every run would fail
    verification and fall back to single bytes.
    """
    if isinstance(node, dict):
        if node.get("type") == "ByteLevel" and "add_prefix_space" in node:
            node["add_prefix_space"] = False
        for value in node.values():
            _patch_config(value)
    elif isinstance(node, list):
        for value in node:
            _patch_config(value)


def is_sentencepiece(config: dict[str, Any]) -> bool:
    """Whether a tokenizer.json config is SentencePiece-style, decided by its front end: a ByteLevel
    component means byte-level; a Metaspace, ByteFallback or ``▁`` replacement means SentencePiece;
    with neither, the vocabulary decides (``byte_fallback`` or every ``<0xNN>`` piece).

    Raises:
        TokenizerError: the front end mixes both styles (how pieces spell bytes is ambiguous).
    """
    marks: set[str] = set()
    for part in ("normalizer", "pre_tokenizer", "decoder"):
        _front_end_marks(config.get(part), marks)
    sentencepiece = marks & {"Metaspace", "ByteFallback", SPACE_PIECE}
    if "ByteLevel" in marks and sentencepiece:
        found = ", ".join(sorted(sentencepiece))
        raise TokenizerError(f"tokenizer mixes byte-level (ByteLevel) and SentencePiece ({found}) components: "
                             "cannot tell how its pieces spell bytes, so it cannot be made exact")
    if marks & {"ByteLevel", *sentencepiece}:
        return bool(sentencepiece)
    model = config.get("model") or {}
    vocab = model.get("vocab")
    pieces = vocab if isinstance(vocab, dict) else {}
    return bool(model.get("byte_fallback")) or all(f"<0x{b:02X}>" in pieces for b in range(256))


def _front_end_marks(node: Any, marks: set[str]) -> None:
    """Add to ``marks`` the component types in ``node`` (nested sequences included), and ``▁`` for a
    Replace or Prepend component that writes or reads SentencePiece's space piece."""
    if isinstance(node, dict):
        kind = node.get("type")
        if isinstance(kind, str):
            marks.add(kind)
            if kind in ("Replace", "Prepend") and SPACE_PIECE in json.dumps(node, ensure_ascii=False):
                marks.add(SPACE_PIECE)
        for value in node.values():
            _front_end_marks(value, marks)
    elif isinstance(node, list):
        for value in node:
            _front_end_marks(value, marks)


def _sentencepiece_config(config: dict[str, Any]) -> None:
    """Keep only the space -> ``▁`` substitution of a SentencePiece tokenizer's front end (in place):
    no dummy prefix (Prepend normalizer, Metaspace ``prepend_scheme``), no other normalisation."""
    pre = config.get("pre_tokenizer")
    if isinstance(pre, dict) and pre.get("type") == "Metaspace":
        if pre.get("replacement", SPACE_PIECE) != SPACE_PIECE:
            raise TokenizerError(f"SentencePiece-style tokenizer whose Metaspace replacement is "
                                 f"{pre['replacement']!r}, not {SPACE_PIECE!r}: llmzip reads only {SPACE_PIECE!r} "
                                 "as a space in its pieces, so it cannot be made exact")
        pre["prepend_scheme"] = "never"
        if "add_prefix_space" in pre:   # tokenizers < 0.19 spelled it this way
            pre["add_prefix_space"] = False
        config["normalizer"] = None
    elif pre is None:
        config["normalizer"] = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE_PIECE}
    else:
        raise TokenizerError(f"SentencePiece-style tokenizer with a {pre.get('type')!r} pre-tokenizer: "
                             "cannot tell how it marks spaces, so it cannot be made exact")


def _private_backend(backend: tokenizers.Tokenizer) -> tuple[tokenizers.Tokenizer, list[dict[str, Any]], bool]:
    """Copy ``backend`` without normalizer (SentencePiece: only its space substitution), post-processor,
    truncation and padding.

    Returns:
        The copy (special tokens are encoded as plain text, so the special ids never
        appear in encoded data), the list of added-token records from its config, and whether
        it is SentencePiece-style.
    """
    config = json.loads(backend.to_str())
    sentencepiece = is_sentencepiece(config)
    config.update(normalizer=None, post_processor=None, truncation=None, padding=None)
    if sentencepiece:
        _sentencepiece_config(config)
    else:
        _patch_config(config.get("pre_tokenizer"))
    copy = tokenizers.Tokenizer.from_str(json.dumps(config))
    copy.encode_special_tokens = True
    return copy, list(config.get("added_tokens") or []), sentencepiece


def _piece_bytes_bytelevel(piece: str, idx: int) -> bytes:
    to_byte = _unicode_to_byte()
    try:
        return bytes(to_byte[c] for c in piece)
    except KeyError:
        raise TokenizerError(
            f"token {idx} ({piece!r}) has a character outside the byte-level alphabet: "
            "not a byte-level BPE tokenizer (GPT-2 / Llama-3 / Qwen2 style)"
        ) from None


def _piece_bytes_sentencepiece(piece: str, idx: int) -> bytes:
    byte = _SP_BYTE.fullmatch(piece)
    return bytes([int(byte.group(1), 16)]) if byte else piece.replace(SPACE_PIECE, " ").encode("utf-8")


def _added_bytes(token: dict[str, Any], sentencepiece: bool) -> bytes:
    """An added token's bytes: its text; under SentencePiece a non-special token's ``▁`` is a space
    (it matches the text after the space substitution, as the model's own pieces do)."""
    content = str(token["content"])
    if sentencepiece and not token.get("special"):
        content = content.replace(SPACE_PIECE, " ")
    return content.encode("utf-8")


def _build_table(backend: tokenizers.Tokenizer, added: list[dict[str, Any]], sentencepiece: bool) -> list[bytes]:
    """Token id -> bytes for every id in ``[0, max id]``; raises TokenizerError if unusable."""
    piece_bytes = _piece_bytes_sentencepiece if sentencepiece else _piece_bytes_bytelevel
    entries = {int(t["id"]): _added_bytes(t, sentencepiece) for t in added
               if not (sentencepiece and _SP_BYTE.fullmatch(str(t["content"])))}
    for piece, idx in backend.get_vocab(with_added_tokens=False).items():
        if idx not in entries:   # added tokens take precedence over the model's own piece
            entries[idx] = piece_bytes(piece, idx)
    if not entries:
        raise TokenizerError("tokenizer has an empty vocabulary")
    table = [entries.get(i, b"") for i in range(max(entries) + 1)]
    empty = [i for i, b in enumerate(table) if not b]
    if empty:
        raise TokenizerError(f"{len(empty)} token ids map to no bytes (first: {empty[0]}); ids must be dense")
    return table


def _byte_tokens(backend: tokenizers.Tokenizer, table: list[bytes], sentencepiece: bool) -> np.ndarray:
    """Id of the single-byte token of each byte value; raises TokenizerError if one is missing."""
    vocab = backend.get_vocab(with_added_tokens=sentencepiece)   # <0xNN> may be added tokens
    singles = {b[0]: i for i, b in reversed(list(enumerate(table))) if len(b) == 1}
    out = np.empty(256, dtype=np.int64)
    names = ((f"<0x{v:02X}>", v) for v in range(256)) if sentencepiece else _unicode_to_byte().items()
    for piece, value in names:
        idx = vocab.get(piece)
        if idx is None or table[idx] != bytes([value]):
            idx = singles.get(value)
        if idx is None and sentencepiece:
            raise TokenizerError(f"SentencePiece tokenizer without byte fallback: no <0xNN> piece or single-byte "
                                 f"token for byte 0x{value:02x}, so some inputs could not be coded exactly")
        if idx is None:
            raise TokenizerError(f"no single-byte token for byte 0x{value:02x} (not a byte-level BPE vocabulary): "
                                 "some inputs could not be coded exactly")
        out[value] = idx
    return out


def _blocks(data: bytes, size: int) -> Iterator[bytes]:
    """Cut ``data`` into consecutive blocks of at most ``size`` bytes.

    A block ends just after the last newline of its final quarter when there is one,
    otherwise (if possible) not inside a UTF-8 sequence. Concatenation gives ``data``.
    """
    start, n = 0, len(data)
    while start < n:
        end = start + size
        if end < n:
            nl = data.rfind(b"\n", end - size // 4, end)
            if nl >= 0:
                end = nl + 1
            else:
                for _ in range(3):
                    if not 0x80 <= data[end] <= 0xBF:
                        break
                    end -= 1
        end = min(end, n)
        yield data[start:end]
        start = end


class IncrementalDecoder:
    """Streaming decoder: ``push(id)`` returns that token's bytes (tokens are whole bytes)."""

    def __init__(self, table: list[bytes]) -> None:
        self._table = table

    def push(self, token_id: int) -> bytes:
        """Bytes of ``token_id``; raises ValueError if it is out of range."""
        if not 0 <= token_id < len(self._table):
            raise ValueError(f"token id {token_id} out of range [0, {len(self._table)})")
        return self._table[token_id]


class ByteTokenizer:
    """Exact bytes <-> token ids over a byte-level or SentencePiece-style BPE vocabulary.

    Attributes:
        vocab_size: Length of the token->bytes table (max id + 1, added tokens included).
        byte_token: int64[256]; ``token_bytes(byte_token[b]) == bytes([b])`` for every b.
        sentencepiece: Whether the vocabulary is SentencePiece-style (``▁``, ``<0xNN>``).
    """

    def __init__(self, backend: tokenizers.Tokenizer, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        """Build the table from ``backend`` (never modified); raise TokenizerError if unusable."""
        if not isinstance(backend, tokenizers.Tokenizer):
            raise TokenizerError(f"expected a tokenizers.Tokenizer, got {type(backend).__name__}")
        if block_size < 16:
            raise ValueError("block_size must be at least 16 bytes")
        self._backend, added, self.sentencepiece = _private_backend(backend)
        self._table = _build_table(self._backend, added, self.sentencepiece)
        self.vocab_size: int = len(self._table)
        self.byte_token: np.ndarray = _byte_tokens(self._backend, self._table, self.sentencepiece)
        self._raw_runs = _SP_RAW_RUN if self.sentencepiece else _INVALID_RUN
        self._byte_ids: list[int] = self.byte_token.tolist()
        self._block_size = block_size
        # encode_batch_fast (tokenizers >= 0.21) skips offset tracking: same ids, ~25% faster.
        self._encode_batch = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)
        self._digest: bytes | None = None

    @classmethod
    def from_hf(cls, tokenizer: Any) -> ByteTokenizer:
        """Wrap a transformers fast tokenizer (its ``backend_tokenizer``)."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if not isinstance(backend, tokenizers.Tokenizer):
            raise TokenizerError(f"{type(tokenizer).__name__} is not a fast (Rust-backed) tokenizer")
        return cls(backend)

    def token_bytes(self, token_id: int) -> bytes:
        """Bytes of one token id; raises ValueError if out of range."""
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} out of range [0, {self.vocab_size})")
        return self._table[token_id]

    def _encode_block(self, block: bytes) -> list[int]:
        """Token ids of one block; exact: their bytes concatenate to ``block``."""
        parts = self._raw_runs.split(block.decode("utf-8", "surrogateescape"))
        valid = [p for p in parts[0::2] if p]
        encodings = iter(self._encode_batch(valid, add_special_tokens=False)) if valid else iter(())
        table, ids = self._table, []
        for k, part in enumerate(parts):
            if k % 2:  # invalid bytes (and SentencePiece's literal ▁): one single-byte token each
                ids.extend(self._byte_ids[b] for b in part.encode("utf-8", "surrogateescape"))
            elif part:
                run_ids, raw = next(encodings).ids, part.encode("utf-8")
                if b"".join(map(table.__getitem__, run_ids)) != raw:
                    run_ids = [self._byte_ids[b] for b in raw]  # tokenizer quirk: exact fallback
                ids.extend(run_ids)
        return ids

    def encode(self, data: bytes) -> np.ndarray:
        """Token ids (int32, 1-D) of ``data``; ``decode(encode(data)) == data`` always."""
        parts = []
        for block in _blocks(bytes(data), self._block_size):
            ids = self._encode_block(block)
            if b"".join(map(self._table.__getitem__, ids)) != block:   # unreachable; guards exactness
                raise TokenizerError("internal error: encoded tokens do not reproduce the input")
            parts.append(np.array(ids, dtype=np.int32))   # block by block: 4 bytes per token at rest
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def decode(self, ids: np.ndarray | Sequence[int]) -> bytes:
        """Concatenated bytes of ``ids``; raises ValueError on an out-of-range id."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= self.vocab_size):
            raise ValueError(f"token id out of range [0, {self.vocab_size})")
        return b"".join(map(self._table.__getitem__, arr.tolist()))

    def decoder(self) -> IncrementalDecoder:
        """A fresh streaming decoder over this table."""
        return IncrementalDecoder(self._table)

    def table_digest(self) -> bytes:
        """SHA-256 of the table: u32be count, then per id in order u32be length + bytes."""
        if self._digest is None:
            h = hashlib.sha256(struct.pack(">I", self.vocab_size))
            for entry in self._table:
                h.update(struct.pack(">I", len(entry)))
                h.update(entry)
            self._digest = h.digest()
        return self._digest
