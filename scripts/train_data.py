"""Training data for llmzip's embedded models: documents, sources, held-out split, tokenizer, streams.

The data directory is laid out like ``../shared/train``: text files of documents joined by
``\\n\\n`` and index files (``index*.tsv``) giving each document's file, byte offset and length.
A document's *source* is its file name without the ``_NNN.txt`` suffix (``code_c``,
``markup_json``, ``gutenberg``...); sources belong to three *groups* (prose, code, markup) that
the held-out report is broken down by. Every ``VAL_EVERY``-th document of each source (and at
least one per source) is held out, so the held-out split covers every kind of data.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BOS = "<|endoftext|>"
VAL_EVERY = 40

# Sampling weight of each group, then of each source inside it. Prose dominates the raw bytes
# (about 60%); code and markup are up-weighted so the model sees the kinds of files people
# compress. Inside a group a source weighs sqrt(bytes): small sources (CSV, TeX) are seen more
# often than their size alone would give, large ones (the C and Python trees) less.
GROUP_WEIGHTS = {"prose": 0.45, "code": 0.30, "markup": 0.25}
SOURCE_GROUP = {
    "gutenberg": "prose", "prose": "prose", "other": "prose", "wikitext2": "prose",
    "docs_nodejs": "markup",
}


def source_of(filename: str) -> str:
    """``code_c_000.txt`` -> ``code_c``."""
    match = re.fullmatch(r"(.+)_\d{3}\.txt", filename)
    if not match:
        raise ValueError(f"unexpected data file name {filename!r}")
    return match.group(1)


def group_of(source: str) -> str:
    if source in SOURCE_GROUP:
        return SOURCE_GROUP[source]
    for prefix in ("code", "markup"):
        if source.startswith(prefix + "_"):
            return prefix
    raise ValueError(f"source {source!r} belongs to no group: add it to SOURCE_GROUP")


@dataclass(frozen=True)
class Document:
    source: str
    ordinal: int      # position among its source's documents (sets the held-out split); -1: held out
    raw: bytes


def read_documents(data: Path) -> list[Document]:
    """Every document of every ``index*.tsv`` in ``data``, in a fixed order."""
    rows: list[tuple[str, int, int]] = []
    for index in sorted(data.glob("index*.tsv")):
        for line in index.read_text(encoding="utf-8").splitlines()[1:]:
            name, offset, length = line.split("\t")[:3]
            rows.append((name, int(offset), int(length)))
    rows.sort()
    blobs: dict[str, bytes] = {}
    counts: dict[str, int] = {}
    docs = []
    for name, offset, length in rows:
        if name not in blobs:
            blobs[name] = (data / name).read_bytes()
        source = source_of(name)
        ordinal = counts.get(source, 0)
        counts[source] = ordinal + 1
        docs.append(Document(source, ordinal, blobs[name][offset : offset + length]))
    return _ensure_held_out(docs)


def _ensure_held_out(docs: list[Document]) -> list[Document]:
    """Sources with fewer than VAL_EVERY/2 documents hold out their last one instead."""
    held = {d.source for d in docs if is_held_out(d)}
    last: dict[str, int] = {}
    for i, d in enumerate(docs):
        last[d.source] = i
    for source, i in last.items():
        if source not in held:
            docs[i] = Document(source, -1, docs[i].raw)
    return docs


def is_held_out(doc: Document) -> bool:
    return doc.ordinal < 0 or doc.ordinal % VAL_EVERY == VAL_EVERY // 2


def source_weights(sizes: dict[str, int], group_weights: dict[str, float] | None = None) -> dict[str, float]:
    """Sampling probability of each source (``group_weights``, by default GROUP_WEIGHTS)."""
    out: dict[str, float] = {}
    for group, gw in (group_weights or GROUP_WEIGHTS).items():
        members = {s: n for s, n in sizes.items() if group_of(s) == group and n > 0}
        total = sum(n ** 0.5 for n in members.values())
        out.update({s: gw * n ** 0.5 / total for s, n in members.items()})
    norm = sum(out.values())
    return {s: w / norm for s, w in sorted(out.items())}


def parse_group_weights(text: str) -> dict[str, float]:
    """``"prose=0.6,code=0.22,markup=0.18"`` -> weights of every group (each group named once)."""
    pairs = [part.partition("=") for part in text.split(",")]
    weights = {name.strip(): float(value) for name, _, value in pairs}
    finite = all(math.isfinite(w) and w >= 0 for w in weights.values())
    named_once = len(weights) == len(pairs) and set(weights) == set(GROUP_WEIGHTS)
    if not named_once or not finite or sum(weights.values()) <= 0:
        raise ValueError(f"group weights must give each of {sorted(GROUP_WEIGHTS)} once: {text!r}")
    return weights


def tokenizer_sample(docs: list[Document], budget_bytes: int) -> list[str]:
    """Training documents for the tokenizer, each source's share following its sampling weight."""
    sizes: dict[str, int] = {}
    for d in docs:
        if not is_held_out(d):
            sizes[d.source] = sizes.get(d.source, 0) + len(d.raw)
    left = {s: int(w * budget_bytes) for s, w in source_weights(sizes).items()}
    sample = []
    for d in docs:
        if not is_held_out(d) and left.get(d.source, 0) > 0:
            piece = d.raw[: left[d.source]]
            left[d.source] -= len(piece)
            sample.append(piece.decode("utf-8", errors="replace"))
    return sample


def train_tokenizer(docs: list[Document], vocab: int, out: Path, budget_bytes: int = 24_000_000) -> None:
    """Byte-level BPE (GPT-2 pre-tokenisation, no normaliser: bytes kept exactly)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[BOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(tokenizer_sample(docs, budget_bytes), trainer=trainer)
    tok.save(str(out))


def build_streams(docs: list[Document], tok_path: Path, work: Path) -> None:
    """Tokenise every document into ``<source>.train.npy`` / ``<source>.val.npy`` (uint16, BOS first).

    ``streams.json`` records each stream's token and byte counts (bits per byte need the bytes).
    """
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    bos = tok.token_to_id(BOS)
    parts: dict[str, list[np.ndarray]] = {}
    nbytes: dict[str, int] = {}
    for start in range(0, len(docs), 256):
        batch = docs[start : start + 256]
        encodings = tok.encode_batch([d.raw.decode("utf-8", errors="replace") for d in batch],
                                     add_special_tokens=False)
        for d, enc in zip(batch, encodings):
            name = f"{d.source}.{'val' if is_held_out(d) else 'train'}"
            parts.setdefault(name, []).append(np.array([bos, *enc.ids], dtype=np.uint16))
            nbytes[name] = nbytes.get(name, 0) + len(d.raw)
    meta = {}
    for name, arrays in sorted(parts.items()):
        stream = np.concatenate(arrays)
        np.save(work / f"{name}.npy", stream)
        meta[name] = {"tokens": int(stream.size), "bytes": nbytes[name]}
    (work / "streams.json").write_text(json.dumps(meta, indent=1))
