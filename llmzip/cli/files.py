"""Files, standard streams and terminals for the ``llmzip`` command (gzip's rules).

Where a result goes, when a terminal is refused, what may be overwritten, and writing so that
an interrupted run never leaves a partial file behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

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
    chunk_tokens: int | None = None
    mix: bool = True                 # context mixing (compress)
    model: str | None = None
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


def read_input(name: str, opts: Options) -> bytes:
    """All bytes of the input file, or of stdin for ``-`` (archives never from a terminal)."""
    if name != STDIO:
        with open(name, "rb") as f:
            return f.read()
    if opts.mode != "compress" and refuse_terminal(sys.stdin, opts.force):
        raise Refused("compressed data not read from a terminal; use -f to force")
    return sys.stdin.buffer.read()


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


def _write_atomic(dest: str, data: bytes, like: str | None) -> None:
    """Write a temp file next to ``dest``, fsync it, rename it over ``dest``; never leave a partial file."""
    directory = os.path.dirname(os.path.abspath(dest))
    try:
        tmp = tempfile.NamedTemporaryFile(dir=directory, prefix=f".{os.path.basename(dest)}.",
                                          suffix=".tmp", delete=False)
    except OSError as exc:
        exc.filename = dest         # name the output asked for, not the temp file
        raise
    try:
        with tmp:
            write_all(tmp, data)
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


def write_all(stream: Any, data: bytes) -> None:
    """Write all of ``data`` and flush: a buffered write may report a short count instead of
    raising (seen on Python 3.11 with EPIPE after a partial pipe write), so loop until done."""
    view = memoryview(data)
    while view:
        written = stream.write(view)
        if not written:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        view = view[written:]
    stream.flush()


def write_output(dest: str, data: bytes, like: str | None) -> None:
    """Write ``data`` to stdout, straight to a device or pipe, or atomically to a regular file."""
    if dest == STDIO:
        write_all(sys.stdout.buffer, data)
    elif os.path.exists(dest) and not stat.S_ISREG(os.stat(dest).st_mode):
        with open(dest, "wb") as f:   # no temp-file trick for devices; errors still surface
            write_all(f, data)
    else:
        _write_atomic(dest, data, like)


