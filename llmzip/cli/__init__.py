"""The ``llmzip`` command line: gzip-like ``compress``, ``decompress``, ``test`` and ``list``.

This package is the only part of llmzip that touches paths, terminals, stdin/stdout and exit
statuses: :mod:`.files` (where results go, what may be overwritten, atomic writes),
:mod:`.status` (typed errors -> exit status and message, in one table) and the commands here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from typing import Any, Callable, Iterator

import click

from .. import __version__
from .files import (Options, check_output, is_terminal, plan_output, read_input, refuse_terminal,
                    show_progress, write_all, write_output)
from .status import (EXIT_ERROR, EXIT_OK, EXIT_WARNING, STDIO, Refused, SkipWarning, classify,
                     run_each, worse)

__all__ = ["main", "classify", "worse", "Options", "Refused", "SkipWarning", "is_terminal",
           "refuse_terminal", "write_all", "EXIT_OK", "EXIT_ERROR", "EXIT_WARNING", "STDIO"]

EPILOG = """\b
Exit status: 0 success; 1 error (also usage errors and Ctrl-C);
2 warning (a file was skipped). With several files the worst one wins."""


@functools.lru_cache(maxsize=4)
def _load(name: str | None, allow_download: bool) -> Any:
    from ..model import load_model

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
    from .. import codec
    from ..container import read_header

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
                          help="Overwrite outputs; write to a terminal; compress files that have the suffix."),
    "force_decode": click.option("-f", "--force", is_flag=True,
                                 help="Overwrite outputs; read an archive from a terminal."),
    "force_read": click.option("-f", "--force", is_flag=True, help="Read an archive from a terminal."),
    "keep": click.option("--keep/--rm", "-k", "keep", default=True, show_default=True,
                         help="Keep the input, or remove it once the output is complete and verified."),
    "suffix": click.option("-S", "--suffix", default=".llz", show_default=True, help="Archive suffix."),
    "verbose": click.option("-v", "--verbose", count=True, help="A line per file on stderr."),
    "quiet": click.option("-q", "--quiet", is_flag=True, help="No warnings, no progress bar."),
    "threads": click.option("-T", "--threads", type=click.IntRange(min=1), help="CPU threads [default: all cores]."),
    "batch_size": click.option("--batch-size", type=click.IntRange(min=1),
                               help="Rows per forward pass (memory/speed only) [default: whole group]."),
    "chunk_tokens": click.option("--chunk-tokens", type=click.IntRange(min=1),
                                 help="Tokens per chunk [default: 255, at most the model's context - 1]."),
    "mix": click.option("--mix/--no-mix", default=True,
                        help="Context mixing with in-file n-gram and match models.  [default: mix]"),
    "model": click.option("--model", envvar="LLMZIP_MODEL", metavar="NAME",
                          help="Model: 'embedded', a shipped model's id, a directory or a hub id [default: embedded; "
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
    from ..runtime import single_openmp_thread, tune_allocator

    tune_allocator()          # this process is ours: keep large temporaries for reuse (see llmzip.runtime)
    single_openmp_thread()    # ...and our worker threads are its parallelism


@main.command(epilog=EPILOG)
@_with("files", "stdout", "output", "force", "keep", "suffix", "chunk_tokens", "mix", *_CODEC_OPTIONS)
def compress(files: tuple[str, ...], **kw: Any) -> int:
    """Compress each FILE to FILE.llz (no FILE, or -: stdin to stdout)."""
    return _run("compress", files, **kw)


@main.command(epilog=EPILOG)
@_with("files", "stdout", "output", "force_decode", "keep", "suffix", *_CODEC_OPTIONS)
def decompress(files: tuple[str, ...], **kw: Any) -> int:
    """Decompress each FILE.llz to FILE (no FILE, or -: stdin to stdout)."""
    return _run("decompress", files, **kw)


@main.command(epilog=EPILOG)
@_with("files", "force_read", *_CODEC_OPTIONS)
def test(files: tuple[str, ...], **kw: Any) -> int:
    """Decode each archive and verify its checksum; write nothing."""
    return _run("test", files, **kw)


def archive_info(name: str, force: bool) -> dict[str, Any]:
    """The fields ``list`` shows for one archive (the payload length is checked too)."""
    from ..container import read_archive
    from ..mixparams import MixParams

    blob = read_input(name, Options(mode="list", force=force))
    header, segments = read_archive(blob)
    original = header.original_size
    return {
        "file": name, "model_id": header.model_id, "fingerprint": header.fingerprint.hex(),
        "format_version": header.format_version, "engine": header.engine, "original_size": original,
        "archive_size": len(blob), "ratio": round(len(blob) / original, 4) if original else None,
        "bits_per_byte": round(8 * len(blob) / original, 4) if original else None,
        "token_count": header.token_count, "chunk_tokens": header.chunk_tokens,
        "group_chunks": header.group_chunks, "segments": len(segments), "checksum": header.checksum.hex(),
        "mixing": MixParams.from_bytes(header.mix_params).describe() if header.mixing else None,
    }


_LIST_HEAD = (f"{'archive':>10} {'original':>10} {'ratio':>6} {'bits/B':>6} {'tokens':>9} {'chunking':>9} "
              f"{'engine':>6} {'mixing':>6}  {'fingerprint':<16}  model  file")


def _mixing(i: dict[str, Any]) -> str:
    """'off', 'p<preset>' or 'custom'."""
    mixing = i["mixing"]
    return "off" if mixing is None else "custom" if mixing["preset"] is None else f"p{mixing['preset']}"


def _list_line(i: dict[str, Any]) -> str:
    ratio, bpb = (f"{i['ratio']:.3f}", f"{i['bits_per_byte']:.2f}") if i["original_size"] else ("-", "-")
    chunking = f"{i['chunk_tokens']}x{i['group_chunks']}"
    return (f"{i['archive_size']:>10} {i['original_size']:>10} {ratio:>6} {bpb:>6} {i['token_count']:>9} "
            f"{chunking:>9} {i['engine']:>6} {_mixing(i):>6}  {i['fingerprint'][:16]:<16}  {i['model_id']}  "
            f"{i['file']}")


@main.command("list", epilog=EPILOG)
@_with("files", "force_read", "json", "debug")
def list_(files: tuple[str, ...], force: bool, as_json: bool, debug: bool) -> int:
    """Show each archive's header: sizes, ratio (archive/original), bits per byte, tokens,
    chunking (tokens per chunk x chunks per group), engine, mixing (off, pN: preset N, or
    custom; --json lists every parameter), model fingerprint and model id."""
    infos: list[dict[str, Any]] = []
    status = run_each(files, lambda name: infos.append(archive_info(name, force)), 0, debug)
    if as_json:
        click.echo(json.dumps(infos, indent=2))
    elif infos:
        click.echo("\n".join([_LIST_HEAD, *map(_list_line, infos)]))
    return status

