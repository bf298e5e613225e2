"""One file's compress, decompress or test, frame by frame from an input stream to an output.

Format-2 archives are read and written a frame at a time, so memory stays bounded by the
frame size and the model whatever the input's size; a format-1 archive is one language-model
stream and is decoded whole, as before.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator

import click

from .. import levels
from .files import Options, input_size, show_progress
from .status import Refused


@functools.lru_cache(maxsize=4)
def load(name: str | None, allow_download: bool) -> Any:
    from ..model import load_model

    return load_model(name, allow_download=allow_download)


@dataclass
class Counts:
    """Bytes read and written by one job."""

    read: int = 0
    written: int = 0


class CountingReader:
    """Counts what is read through it; ``prefix`` is served first (bytes already read)."""

    def __init__(self, stream: BinaryIO, prefix: bytes = b"") -> None:
        self._stream, self._prefix, self.count = stream, prefix, len(prefix)

    def read(self, size: int = -1) -> bytes:
        head = b""
        if self._prefix:
            cut = len(self._prefix) if size < 0 else min(size, len(self._prefix))
            head, self._prefix = self._prefix[:cut], self._prefix[cut:]
            if 0 <= size == len(head):
                return head
            size = -1 if size < 0 else size - len(head)
        rest = self._stream.read(size)
        self.count += len(rest)
        return head + rest


@contextlib.contextmanager
def _progress(opts: Options, total: int | None, label: str) -> Iterator[Callable[[int], Any] | None]:
    if not show_progress(opts):
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, desc=label, file=sys.stderr, leave=False,
              dynamic_ncols=True) as bar:
        yield bar.update


def _settings(opts: Options) -> Any:
    from .. import codec

    return codec.Settings(batch_size=opts.batch_size, threads=opts.threads)


def choice(opts: Options) -> levels.Choice:
    """What compression does: the level's row with the explicit options applied (llmzip.levels)."""
    return levels.resolve(levels.DEFAULT_LEVEL if opts.level is None else opts.level, model=opts.model,
                          mixing=opts.mix, method=opts.method, chunk_tokens=opts.chunk_tokens,
                          default_model=opts.env_model)


def compress(src: BinaryIO, out: Any, label: str, opts: Options, verify: bool) -> Counts:
    """Write the archive of ``src`` to ``out``; with ``verify`` every frame is decoded and compared.
    The model is loaded only if a frame needs it, never at a level without one."""
    from .. import frames

    chosen = choice(opts)

    def model() -> Any:
        loaded = load(chosen.model, opts.allow_download)
        limit = loaded.max_context - 1
        if chosen.chunk_tokens is not None and chosen.chunk_tokens > limit:
            if chosen.chunk_from_level:
                raise Refused(f"level {chosen.level} codes chunks of {chosen.chunk_tokens} tokens, this model "
                              f"at most {limit}: give --chunk-tokens")
            raise Refused(f"--chunk-tokens must be at most {limit} for this model")
        return loaded

    options = levels.frame_options(chosen, frame_size=opts.frame_size or frames.DEFAULT_FRAME_SIZE,
                                   settings=_settings(opts), verify=verify)
    reader = CountingReader(src)
    with _progress(opts, input_size(src), label) as tick:
        on_frame = None if tick is None else (lambda info: tick(info.raw_size))
        size = frames.compress_stream(reader, out, model, options, on_frame)
    return Counts(reader.count, size)


def decompress(src: BinaryIO, out: Any, label: str, opts: Options) -> Counts:
    """Decode the archive ``src`` (either format) to ``out`` (None: check it only)."""
    from .. import frames

    prefix = src.read(5)
    reader = CountingReader(src, prefix)
    if frames.format_version(prefix) == 1:
        return _decompress_v1(reader, out, label, opts)
    listing = opts.mode == "test" and opts.verbosity >= 1
    with _progress(opts, input_size(src), label) as tick:
        def on_frame(info: frames.FrameInfo) -> None:
            if tick is not None:
                tick(info.payload_size)
            if listing:
                click.echo(frame_line(info), err=True)

        def model_for(model_id: str) -> Any:
            return load(opts.model or model_id, opts.allow_download)

        total = frames.decompress_stream(reader, out, model_for, _settings(opts), on_frame)
    return Counts(reader.count, total)


def frame_line(info: Any) -> str:
    """``llmzip test -v``: one line per frame."""
    from ..frames import METHOD_NAMES

    method = METHOD_NAMES.get(info.method, str(info.method))
    return (f"  frame {info.index} at offset {info.offset}: {method}, {info.raw_size} -> {info.payload_size} "
            f"bytes ({8 * info.payload_size / info.raw_size:.2f} bits/byte)")


def _decompress_v1(reader: CountingReader, out: Any, label: str, opts: Options) -> Counts:
    from .. import codec
    from ..container import read_header

    blob = reader.read()
    header = read_header(blob)[0]
    model = load(opts.model or header.model_id, opts.allow_download)
    with _progress(opts, len(blob), label) as tick:
        data = codec.decompress(blob, model, _settings(opts))
        if tick is not None:
            tick(len(blob))
    if out is not None:
        out.write(data)
    return Counts(len(blob), len(data))
