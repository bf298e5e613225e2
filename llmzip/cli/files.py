"""Files, standard streams and terminals for the ``llmzip`` command (gzip's rules).

Where a result goes, when a terminal is refused, what may be overwritten, and writing so that
an interrupted run never leaves a partial file behind.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

from .status import STDIO, Refused, SkipWarning


@dataclass(frozen=True)
class Options:
    """What one invocation of compress/decompress/test was asked to do."""

    mode: str                        # "compress", "decompress", "test" or "list"
    stdout: bool = False
    output: str | None = None
    force: bool = False
    keep: bool = True
    suffix: str = ".llz"
    verbosity: int = 0               # -1 quiet, 0 normal, >= 1 verbose
    threads: int | None = None
    batch_size: int | None = None
    chunk_tokens: int | None = None  # compress: None: the level's
    frame_size: int | None = None    # compress: bytes per frame (None: the default)
    level: int | None = None         # compress: llmzip.levels (None: its DEFAULT_LEVEL)
    method: str | None = None        # compress: "auto" or a method forced on every frame (None: the level's)
    mix: bool | None = None          # compress: context mixing (None: the level's)
    model: str | None = None
    env_model: str | None = None     # compress: LLMZIP_MODEL, the model of levels that use one
    allow_download: bool = False
    debug: bool = False
    progress: bool | None = None     # None: only when stderr is a terminal


def is_terminal(stream: Any) -> bool:
    """True if ``stream`` is attached to a terminal (False for anything without isatty)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def refuse_terminal(stream: Any, force: bool) -> bool:
    """True if archive data must not go to or come from ``stream``: a terminal, without -f."""
    return not force and is_terminal(stream)


def show_progress(opts: Options) -> bool:
    """--progress/--no-progress if given, else: stderr is a terminal and not -q."""
    if opts.progress is not None:
        return opts.progress
    return opts.verbosity >= 0 and is_terminal(sys.stderr)


def plan_output(name: str, opts: Options) -> str | None:
    """Where the result of ``name`` goes: a path, ``-`` (stdout), or None (``test``)."""
    if opts.mode == "test":
        return None
    if opts.stdout or opts.output == STDIO or (name == STDIO and not opts.output):
        return STDIO
    if opts.output:
        return opts.output
    if opts.mode == "compress":
        if name.endswith(opts.suffix) and not opts.force:
            raise SkipWarning(f"already has {opts.suffix} suffix -- unchanged")
        return name + opts.suffix
    if not name.endswith(opts.suffix) or os.path.basename(name) == opts.suffix:
        raise Refused(f"unknown suffix (not {opts.suffix}); use -o or -c")
    return name[: -len(opts.suffix)]


@contextlib.contextmanager
def open_input(name: str, opts: Options) -> Iterator[BinaryIO]:
    """The input file, or stdin for ``-`` (archives never from a terminal), for reading."""
    if name != STDIO:
        with open(name, "rb") as f:
            yield f
        return
    if opts.mode != "compress" and refuse_terminal(sys.stdin, opts.force):
        raise Refused("compressed data not read from a terminal; use -f to force")
    yield sys.stdin.buffer


def read_input(name: str, opts: Options) -> bytes:
    """All bytes of the input file, or of stdin for ``-`` (archives never from a terminal)."""
    with open_input(name, opts) as f:
        return f.read()


def input_size(stream: BinaryIO) -> int | None:
    """The size of a regular file being read from its start, else None (a pipe, a terminal)."""
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def check_output(dest: str, name: str, opts: Options) -> None:
    """Refuse a destination that is a terminal, the input itself, or exists (without -f)."""
    if dest == STDIO:
        if opts.mode == "compress" and refuse_terminal(sys.stdout, opts.force):
            raise Refused("compressed data not written to a terminal; use -f to force")
        return
    if not os.path.lexists(dest):
        return
    try:
        st = os.stat(dest)
    except FileNotFoundError:   # a dangling symlink: treat like an existing file
        st = os.lstat(dest)
    if name != STDIO and os.path.samestat(st, os.stat(name)):
        raise Refused(f"output {dest} is the input file")
    if stat.S_ISDIR(st.st_mode):
        raise Refused(f"output {dest} is a directory")
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return                  # /dev/null, a pipe: written directly
    if not opts.force:
        raise Refused(f"output {dest} already exists; use -f to overwrite")


def _copy_metadata(fd: int, like: str | None) -> None:
    """Give the new file the input's mode and times (or the default mode when reading stdin)."""
    if like is None:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        return
    st = os.stat(like)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


class FullWriter:
    """A binary stream whose ``write`` writes everything (see :func:`write_all`) and counts it."""

    def __init__(self, stream: Any) -> None:
        self._stream, self.written = stream, 0

    def write(self, data: bytes) -> int:
        write_all(self._stream, data, flush=False)
        self.written += len(data)
        return len(data)

    def flush(self) -> None:
        self._stream.flush()


@contextlib.contextmanager
def _atomic(dest: str, like: str | None) -> Iterator[FullWriter]:
    """A temp file next to ``dest``, fsynced and renamed over ``dest`` once the block succeeds;
    removed if it fails: never a partial file at ``dest``."""
    directory = os.path.dirname(os.path.abspath(dest))
    try:
        tmp = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{os.path.basename(dest)}.",
                                          suffix=".tmp", delete=False)
    except OSError as exc:
        exc.filename = dest         # name the output asked for, not the temp file
        raise
    try:
        with tmp:
            yield FullWriter(tmp)
            tmp.flush()
            _copy_metadata(tmp.fileno(), like)
            os.fsync(tmp.fileno())
        os.replace(tmp.name, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        raise
    with contextlib.suppress(OSError):      # make the rename itself durable
        fd = os.open(directory, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def write_all(stream: Any, data: bytes, flush: bool = True) -> None:
    """Write all of ``data`` (and flush): a buffered write may report a short count instead of
    raising (seen on Python 3.11 with EPIPE after a partial pipe write), so loop until done."""
    view = memoryview(data)
    while view:
        written = stream.write(view)
        if not written:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        view = view[written:]
    if flush:
        stream.flush()


@contextlib.contextmanager
def open_output(dest: str | None, like: str | None) -> Iterator[FullWriter | None]:
    """Where results are written as they come: stdout, straight to a device or pipe, or a temp
    file renamed into place once complete (``like``: whose mode and times it gets); None for
    ``test``, which writes nothing."""
    if dest is None:
        yield None
    elif dest == STDIO:
        out = FullWriter(sys.stdout.buffer)
        yield out
        out.flush()
    elif os.path.exists(dest) and not stat.S_ISREG(os.stat(dest).st_mode):
        with open(dest, "wb") as f:   # no temp-file trick for devices; errors still surface
            out = FullWriter(f)
            yield out
            out.flush()
    else:
        with _atomic(dest, like) as out:
            yield out
