"""The ``llmzip`` command line: gzip-like ``compress``, ``decompress``, ``test`` and ``list``.

This is the only module that touches paths, terminals, stdin/stdout and exit statuses. The
library raises typed errors (:mod:`llmzip.errors`); :func:`classify` turns any exception into
an exit status and the one line printed on stderr (``llmzip: FILE: reason``).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import stat
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import click

from . import __version__
from .errors import (CorruptArchiveError, LlmzipError, ModelLoadError, ModelMismatchError,
                     NotAnArchiveError, UnsupportedFormatError)

EXIT_OK, EXIT_ERROR, EXIT_WARNING = 0, 1, 2
_SEVERITY = {EXIT_OK: 0, EXIT_WARNING: 1, EXIT_ERROR: 2}   # an error is worse than a warning
STDIO = "-"
EPILOG = """\b
Exit status: 0 success; 1 error (also usage errors and Ctrl-C);
2 warning (a file was skipped). With several files the worst one wins."""


class SkipWarning(Exception):
    """A file was left alone on purpose (gzip's warnings): exit status 2."""


class Refused(Exception):
    """The CLI will not act on a file (existing output, terminal, bad name): exit status 1."""


def _os_reason(exc: OSError, name: str) -> str:
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename and exc.filename != name else reason


def _fixed(text: str) -> Callable[[Any, str], str]:
    return lambda exc, name: text


def _text(exc: BaseException, name: str) -> str:
    return str(exc)


# Exception class -> (exit status, reason(exc, FILE)). The first matching row wins: subclasses first.
ERROR_TABLE: list[tuple[type[BaseException], int, Callable[[Any, str], str]]] = [
    (SkipWarning, EXIT_WARNING, _text),
    (Refused, EXIT_ERROR, _text),
    (NotAnArchiveError, EXIT_ERROR, _fixed("not an llmzip archive")),
    (CorruptArchiveError, EXIT_ERROR, lambda e, n: f"corrupt archive: {e}"),
    (UnsupportedFormatError, EXIT_ERROR, _text),
    (ModelMismatchError, EXIT_ERROR, _text),
    (ModelLoadError, EXIT_ERROR, _text),        # TokenizerError included
    (LlmzipError, EXIT_ERROR, _text),
    (OSError, EXIT_ERROR, _os_reason),          # strerror; names the path if it is not FILE
    (KeyboardInterrupt, EXIT_ERROR, _fixed("interrupted")),
    (MemoryError, EXIT_ERROR, _fixed("out of memory")),
    (Exception, EXIT_ERROR, lambda e, n: f"internal error: {type(e).__name__}: {e}"),
]


def classify(exc: BaseException, name: str = "") -> tuple[int, str]:
    """Map an exception met while handling FILE ``name`` to ``(exit status, reason)``."""
    for kind, code, reason in ERROR_TABLE:
        if isinstance(exc, kind):
            return code, reason(exc, name)
    return EXIT_ERROR, f"internal error: {type(exc).__name__}"


def worse(a: int, b: int) -> int:
    """The worse of two exit statuses (1 error > 2 warning > 0 success)."""
    return a if _SEVERITY[a] >= _SEVERITY[b] else b


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


@functools.lru_cache(maxsize=4)
def _load(name: str | None, allow_download: bool) -> Any:
    from .model import load_model

    return load_model(name, allow_download=allow_download)


@contextlib.contextmanager
def _progress(opts: Options, total: int | None, label: str) -> Iterator[Callable[[int], Any] | None]:
    if not show_progress(opts):
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="tok", desc=label, file=sys.stderr, leave=False, dynamic_ncols=True) as bar:
        yield bar.update


def transform(data: bytes, label: str, opts: Options, verify: bool) -> bytes:
    """Run the codec on ``data``; with ``verify``, check that a new archive decodes to ``data``."""
    from . import codec
    from .container import read_header

    if opts.mode == "compress":
        model = _load(opts.model, opts.allow_download)
        if opts.chunk_tokens is not None and opts.chunk_tokens > model.max_context - 1:
            raise Refused(f"--chunk-tokens must be at most {model.max_context - 1} for this model")
        total = len(model.tokenizer.encode(data)) * (2 if verify else 1) if show_progress(opts) else None
    else:
        header = read_header(data)[0]
        model = _load(opts.model or header.model_id, opts.allow_download)
        total = header.token_count
    with _progress(opts, total, label) as tick:
        settings = codec.Settings(batch_size=opts.batch_size, threads=opts.threads, progress=tick)
        if opts.mode != "compress":
            return codec.decompress(data, model, settings)
        blob = codec.compress(data, model, chunk_tokens=opts.chunk_tokens, settings=settings,
                              mixing=codec.DEFAULT_MIX if opts.mix else None)
        if verify and codec.decompress(blob, model, settings) != data:
            raise Refused("verification failed: the archive does not decode to the input (input kept)")
        return blob


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


def _rate(archive: int, original: int) -> str:
    return f"{8 * archive / original:.2f} bits/byte" if original else "empty input"


def process(name: str, opts: Options) -> None:
    """Compress, decompress or test one FILE (``-``: stdin); raises on any failure."""
    started = time.monotonic()
    dest = plan_output(name, opts)
    data = read_input(name, opts)
    if dest is not None:
        check_output(dest, name, opts)
    removing = dest not in (None, STDIO) and not opts.keep and name != STDIO
    result = transform(data, name, opts, verify=removing)
    if dest is not None:
        write_output(dest, result, None if name == STDIO else name)
        if removing and os.path.isfile(dest):    # never after writing to /dev/null or a pipe
            os.unlink(name)
    if opts.verbosity >= 1:
        archive, original = (len(result), len(data)) if opts.mode == "compress" else (len(data), len(result))
        tail = " OK" if opts.mode == "test" else ""
        click.echo(f"{name}: {len(data)} -> {len(result)} bytes ({_rate(archive, original)}) "
                   f"in {time.monotonic() - started:.1f} s{tail}", err=True)


def report_error(name: str, exc: BaseException, verbosity: int, debug: bool) -> int:
    """Print the one-line message for ``exc`` (and a traceback with --debug); return its status."""
    code, reason = classify(exc, name)
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    if code != EXIT_WARNING or verbosity >= 0:
        click.echo(f"llmzip: {name}: {reason}", err=True)
    return code


def run_each(files: Sequence[str], job: Callable[[str], None], verbosity: int, debug: bool) -> int:
    """Run ``job`` on every file (stdin if none); one failure does not stop the others."""
    status = EXIT_OK
    for name in files or (STDIO,):
        try:
            job(name)
        except (BrokenPipeError, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # noqa: B036 - KeyboardInterrupt is reported, then stops the run
            status = worse(status, report_error(name, exc, verbosity, debug))
            if isinstance(exc, KeyboardInterrupt):
                break
    return status


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush stays quiet."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


class _Group(click.Group):
    """A click group whose standalone mode exits like gzip: usage errors and Ctrl-C are 1."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        run = functools.partial(super().main, args, prog_name or "llmzip", complete_var,
                                standalone_mode=False, **extra)
        if not standalone_mode:
            return run()
        try:
            status = run()
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.format_message(), err=True)
            status = EXIT_ERROR
        except click.ClickException as exc:     # UsageError (bad option, -o with 2 files) included
            ctx = getattr(exc, "ctx", None)
            hint = f" (try '{ctx.command_path} --help')" if ctx else ""
            click.echo(f"llmzip: {exc.format_message()}{hint}", err=True)
            status = EXIT_ERROR
        except (click.Abort, KeyboardInterrupt):
            click.echo("llmzip: interrupted", err=True)
            status = EXIT_ERROR
        except BrokenPipeError:
            _silence_stdout()
            status = EXIT_ERROR
        sys.exit(status if isinstance(status, int) else EXIT_OK)


_OPTIONS: dict[str, Callable[[Any], Any]] = {
    "files": click.argument("files", nargs=-1, metavar="[FILE]..."),
    "stdout": click.option("-c", "--stdout", is_flag=True, help="Write to standard output."),
    "output": click.option("-o", "--output", metavar="PATH", help="Output path (a single input only)."),
    "force": click.option("-f", "--force", is_flag=True,
                          help="Overwrite outputs; allow terminals; compress files that have the suffix."),
    "keep": click.option("--keep/--rm", "-k", "keep", default=True, show_default=True,
                         help="Keep the input, or remove it once the output is complete and verified."),
    "suffix": click.option("-S", "--suffix", default=".llz", show_default=True, help="Archive suffix."),
    "verbose": click.option("-v", "--verbose", count=True, help="A line per file on stderr."),
    "quiet": click.option("-q", "--quiet", is_flag=True, help="No warnings, no progress bar."),
    "threads": click.option("-T", "--threads", type=click.IntRange(min=1), help="CPU threads [default: all cores]."),
    "batch_size": click.option("--batch-size", type=click.IntRange(min=1),
                               help="Rows per forward pass (memory/speed only) [default: whole group]."),
    "chunk_tokens": click.option("--chunk-tokens", type=click.IntRange(min=1),
                                 help="Tokens per chunk [default: the model's context - 1]."),
    "mix": click.option("--mix/--no-mix", default=True,
                        help="Context mixing with in-file n-gram and match models.  [default: mix]"),
    "model": click.option("--model", envvar="LLMZIP_MODEL", metavar="NAME",
                          help="Model: 'embedded', a directory or a hub id [default: embedded; "
                               "decompress: the archive's model]. Env: LLMZIP_MODEL."),
    "allow_download": click.option("--allow-download", is_flag=True, help="Let a hub model be downloaded."),
    "debug": click.option("--debug", is_flag=True, help="Print tracebacks."),
    "progress": click.option("--progress/--no-progress", default=None, hidden=True),
    "json": click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
}
_CODEC_OPTIONS = ("verbose", "quiet", "threads", "batch_size", "model", "allow_download", "debug", "progress")


def _with(*names: str) -> Callable[[Any], Any]:
    def decorate(func: Any) -> Any:
        for name in reversed(names):
            func = _OPTIONS[name](func)
        return func
    return decorate


def _run(mode: str, files: tuple[str, ...], quiet: bool, verbose: int, **kw: Any) -> int:
    if kw.get("output") is not None and len(files) > 1:
        raise click.UsageError("-o/--output takes a single input file")
    if kw.get("output") is not None and kw.get("stdout"):
        raise click.UsageError("-o/--output and -c/--stdout are mutually exclusive")
    if not kw.get("suffix", ".llz"):
        raise click.UsageError("the suffix must not be empty")
    opts = Options(mode=mode, verbosity=-1 if quiet else verbose, **kw)
    return run_each(files, lambda name: process(name, opts), opts.verbosity, opts.debug)


@click.group("llmzip", cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="llmzip", message="%(prog)s %(version)s")
def main() -> None:
    """Lossless compression driven by a causal language model."""
    from .runtime import tune_allocator

    tune_allocator()   # this process is ours: keep large temporaries for reuse (see llmzip.runtime)


@main.command(epilog=EPILOG)
@_with("files", "stdout", "output", "force", "keep", "suffix", "chunk_tokens", "mix", *_CODEC_OPTIONS)
def compress(files: tuple[str, ...], **kw: Any) -> int:
    """Compress each FILE to FILE.llz (no FILE, or -: stdin to stdout)."""
    return _run("compress", files, **kw)


@main.command(epilog=EPILOG)
@_with("files", "stdout", "output", "force", "keep", "suffix", *_CODEC_OPTIONS)
def decompress(files: tuple[str, ...], **kw: Any) -> int:
    """Decompress each FILE.llz to FILE (no FILE, or -: stdin to stdout)."""
    return _run("decompress", files, **kw)


@main.command(epilog=EPILOG)
@_with("files", "force", *_CODEC_OPTIONS)
def test(files: tuple[str, ...], **kw: Any) -> int:
    """Decode each archive and verify its checksum; write nothing."""
    return _run("test", files, **kw)


def archive_info(name: str, force: bool) -> dict[str, Any]:
    """The fields ``list`` shows for one archive (the payload length is checked too)."""
    from .container import read_archive

    blob = read_input(name, Options(mode="list", force=force))
    header, segments = read_archive(blob)
    original = header.original_size
    return {
        "file": name, "model_id": header.model_id, "fingerprint": header.fingerprint.hex(),
        "format_version": header.format_version, "original_size": original, "archive_size": len(blob),
        "ratio": round(len(blob) / original, 4) if original else None,
        "bits_per_byte": round(8 * len(blob) / original, 4) if original else None,
        "token_count": header.token_count, "chunk_tokens": header.chunk_tokens,
        "group_chunks": header.group_chunks, "segments": len(segments),
    }


_LIST_HEAD = (f"{'archive':>10} {'original':>10} {'ratio':>6} {'bits/B':>6} {'tokens':>9} {'chunking':>9}  "
              f"{'fingerprint':<16}  model  file")


def _list_line(i: dict[str, Any]) -> str:
    ratio, bpb = (f"{i['ratio']:.3f}", f"{i['bits_per_byte']:.2f}") if i["original_size"] else ("-", "-")
    chunking = f"{i['chunk_tokens']}x{i['group_chunks']}"
    return (f"{i['archive_size']:>10} {i['original_size']:>10} {ratio:>6} {bpb:>6} {i['token_count']:>9} "
            f"{chunking:>9}  {i['fingerprint'][:16]:<16}  {i['model_id']}  {i['file']}")


@main.command("list", epilog=EPILOG)
@_with("files", "force", "json", "debug")
def list_(files: tuple[str, ...], force: bool, as_json: bool, debug: bool) -> int:
    """Show each archive's header: sizes, ratio (archive/original), bits per byte, tokens,
    chunking (tokens per chunk x chunks per group), model fingerprint and model id."""
    infos: list[dict[str, Any]] = []
    status = run_each(files, lambda name: infos.append(archive_info(name, force)), 0, debug)
    if as_json:
        click.echo(json.dumps(infos, indent=2))
    elif infos:
        click.echo("\n".join([_LIST_HEAD, *map(_list_line, infos)]))
    return status


if __name__ == "__main__":
    main()
