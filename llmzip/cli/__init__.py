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
from typing import Any, Callable

import click

from .. import __version__, levels
from ..levels import DEFAULT_LEVEL, MAX_LEVEL, MIN_LEVEL
from . import jobs, listing
from .files import Options, check_output, is_terminal, open_input, open_output, plan_output, refuse_terminal, write_all
from .status import (EXIT_ERROR, EXIT_OK, EXIT_WARNING, STDIO, Refused, SkipWarning, classify,
                     run_each, worse)

__all__ = ["main", "classify", "worse", "Options", "Refused", "SkipWarning", "is_terminal",
           "refuse_terminal", "write_all", "EXIT_OK", "EXIT_ERROR", "EXIT_WARNING", "STDIO"]

EPILOG = """\b
Exit status: 0 success; 1 error (also usage errors and Ctrl-C);
2 warning (a file was skipped). With several files the worst one wins."""


def _rate(archive: int, original: int) -> str:
    return f"{8 * archive / original:.2f} bits/byte" if original else "empty input"


def process(name: str, opts: Options) -> None:
    """Compress, decompress or test one FILE (``-``: stdin), frame by frame; raises on any failure."""
    started = time.monotonic()
    dest = plan_output(name, opts)
    with open_input(name, opts) as src:
        if dest is not None:
            check_output(dest, name, opts)
        removing = dest not in (None, STDIO) and not opts.keep and name != STDIO
        with open_output(dest, None if name == STDIO else name) as out:
            if opts.mode == "compress":
                counts = jobs.compress(src, out, name, opts, verify=removing)
            else:
                counts = jobs.decompress(src, out, name, opts)
    if removing and os.path.isfile(dest):    # never after writing to /dev/null or a pipe
        os.unlink(name)
    if opts.verbosity >= 1:
        archive, original = (counts.written, counts.read) if opts.mode == "compress" else (counts.read, counts.written)
        tail = " OK" if opts.mode == "test" else ""
        click.echo(f"{name}: {counts.read} -> {counts.written} bytes ({_rate(archive, original)}) "
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


class _Size(click.ParamType):
    """A byte count with an optional binary suffix: 65536, 64K, 1M, 1G (1 byte .. 1 GiB)."""

    name = "size"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        text = str(value).strip().upper().removesuffix("B").removesuffix("I")
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        try:
            size = int(text[:-1] if scale > 1 else text) * scale
        except ValueError:
            self.fail(f"{value!r} is not a size (e.g. 65536, 256K, 4M)", param, ctx)
        if not 1 <= size <= 1 << 30:
            self.fail(f"{value!r} is not in 1 byte .. 1G", param, ctx)
        return size


_SIZE = _Size()

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
    "threads": click.option("-T", "--threads", type=click.IntRange(min=1),
                            help="Workers: threads, or processes when decoding on Linux [default: all cores]."),
    "batch_size": click.option("--batch-size", type=click.IntRange(min=1),
                               help="Rows per forward pass (memory/speed only) [default: whole group]."),
    "chunk_tokens": click.option("--chunk-tokens", type=click.IntRange(min=1),
                                 help="Tokens per chunk [default: the level's; 255, at most the model's "
                                      "context - 1]."),
    "frame_size": click.option("--frame-size", type=_SIZE, metavar="SIZE",
                               help="Bytes per frame, e.g. 256K, 4M (compress; never changes what decodes) "
                                    "[default: 1M]."),
    "method": click.option("--method", type=click.Choice(["auto", "lm", "ppmd", "lzma", "bz2", "stored"]),
                           help="Code every frame with this method instead of the smallest one ('lm' at a "
                                "level without a model: the embedded model) [default: auto, the level's coders]."),
    "mix": click.option("--mix/--no-mix", default=None,
                        help="Context mixing with in-file n-gram and match models [default: the level's]."),
    "model": click.option("--model", envvar="LLMZIP_MODEL", metavar="NAME",
                          help="Model: 'embedded', a shipped model's id, a directory or a hub id [default: embedded; "
                               "decompress: the archive's model]. Env: LLMZIP_MODEL."),
    "compress_model": click.option("--model", envvar="LLMZIP_MODEL", metavar="NAME",
                                   help="Model: 'embedded', a shipped model's id, a directory or a hub id; turns "
                                        "the model on at levels without one [default: the level's]. Env: "
                                        "LLMZIP_MODEL (replaces the model of levels that have one)."),
    "allow_download": click.option("--allow-download", is_flag=True, help="Let a hub model be downloaded."),
    "debug": click.option("--debug", is_flag=True, help="Print tracebacks."),
    "progress": click.option("--progress/--no-progress", default=None, hidden=True),
    "json": click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
}
_CODEC_OPTIONS = ("verbose", "quiet", "threads", "batch_size", "model", "allow_download", "debug", "progress")
_COMPRESS_OPTIONS = tuple("compress_model" if name == "model" else name for name in _CODEC_OPTIONS)


def _level_options(ignored: bool = False) -> Callable[[Any], Any]:
    """-1 .. -9 (gzip's), --fast (-1), --best (-9) and --level N: one value, the last given wins.

    ``ignored``: decompress and test accept the same options and drop them, as ``gzip -d -9`` and
    ``zstd -d -19`` do, so a script may pass its level to every call; their help shows --level only.
    """
    def decorate(func: Any) -> Any:
        for n in range(MAX_LEVEL, MIN_LEVEL - 1, -1):
            alias = {MIN_LEVEL: ["--fast"], MAX_LEVEL: ["--best"]}.get(n, [])
            func = click.option(f"-{n}", *alias, "level", flag_value=n, hidden=ignored or not alias,
                                expose_value=not ignored, help=f"Level {n}: {levels.get(n).summary}.")(func)
        help_text = (f"Accepted and ignored, as are -{MIN_LEVEL} .. -{MAX_LEVEL}, --fast and --best: "
                     "an archive records all its decoder needs." if ignored else
                     f"Compression level, as -N: -{MIN_LEVEL} .. -{MAX_LEVEL} [default: {DEFAULT_LEVEL}].")
        return click.option("--level", "level", type=click.IntRange(MIN_LEVEL, MAX_LEVEL), metavar="N",
                            expose_value=not ignored, help=help_text)(func)
    return decorate


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


def _compress_help() -> str:
    rows = "\n".join(f"-{row.number}  {row.summary}" for row in levels.LEVELS)
    return ("Compress each FILE to FILE.llz (no FILE, or -: stdin to stdout).\n\n"
            "Levels (-1 fastest .. -9 smallest; --fast is -1, --best -9, --level N is -N) trade speed for "
            "ratio. An archive records all its decoder needs: decompression never needs the level. "
            "Given explicitly, --model, --mix/--no-mix, --method and --chunk-tokens replace that field "
            "of the level; LLMZIP_MODEL replaces the model of the levels that have one.\n\n"
            f"\b\n{rows}")


@main.command(epilog=EPILOG, help=_compress_help())
@_with("files", "stdout", "output", "force", "keep", "suffix", "frame_size")
@_level_options()
@_with("method", "chunk_tokens", "mix", *_COMPRESS_OPTIONS)
def compress(files: tuple[str, ...], **kw: Any) -> int:
    source = click.get_current_context().get_parameter_source("model")
    if source is click.core.ParameterSource.ENVIRONMENT:   # LLMZIP_MODEL: a default, weaker than a level
        kw["env_model"], kw["model"] = kw["model"], None
    return _run("compress", files, **kw)


@main.command(epilog=EPILOG)
@_with("files", "stdout", "output", "force_decode", "keep", "suffix")
@_level_options(ignored=True)
@_with(*_CODEC_OPTIONS)
def decompress(files: tuple[str, ...], **kw: Any) -> int:
    """Decompress each FILE.llz to FILE (no FILE, or -: stdin to stdout)."""
    return _run("decompress", files, **kw)


@main.command(epilog=EPILOG)
@_with("files", "force_read")
@_level_options(ignored=True)
@_with(*_CODEC_OPTIONS)
def test(files: tuple[str, ...], **kw: Any) -> int:
    """Decode each archive and verify its checksum; write nothing."""
    return _run("test", files, **kw)


@main.command("list", epilog=EPILOG)
@_with("files", "force_read", "json", "debug")
def list_(files: tuple[str, ...], force: bool, as_json: bool, debug: bool) -> int:
    """Show what each archive holds, from its index (nothing is decoded): sizes, ratio
    (archive/original), bits per byte, frames, the methods that coded them (share of the
    original bytes) and the model. --json adds every frame (offset, method, sizes; model,
    engine, chunking and mixing parameters of language-model frames)."""
    infos: list[dict[str, Any]] = []
    status = run_each(files, lambda name: infos.append(listing.archive_info(name, force)), 0, debug)
    if as_json:
        click.echo(json.dumps(infos, indent=2))
    elif infos:
        click.echo("\n".join([listing.LIST_HEAD, *map(listing.list_line, infos)]))
    return status


@main.command(epilog=EPILOG)
@click.option("--shipped-only", is_flag=True, help="Leave out the local Hugging Face cache.")
@_with("json")
def models(shipped_only: bool, as_json: bool) -> int:
    """List the models --model can name here: those shipped with llmzip and those in the local
    Hugging Face cache that the exact engine runs (GPT-2, Llama, Mistral, Qwen2)."""
    from ..catalog import available_models, describe

    entries = available_models(include_cache=not shipped_only)
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries], indent=2))
    else:
        click.echo("\n".join(map(describe, entries)))
    return 0


@main.command(epilog=EPILOG)
@click.option("--build", is_flag=True, help="Build them if this machine has no build (a minute or two, once).")
@click.option("--clean", is_flag=True, help="Remove the builds of other llmzip or torch versions from the cache.")
def kernels(build: bool, clean: bool) -> int:
    """Show whether the kernels (compiled C++ and C for the engine's hot loops; the same integers as
    its numpy code; here compression and decompression ran 2.3x as fast) are built on this
    machine; with --build, build them (or replace a build that fails its check). Once built they
    serve every compression and decompression of 16k tokens or more; LLMZIP_FUSED=0 turns them off."""
    from .. import fused

    if clean:
        for directory in fused.remove_old_builds():
            click.echo(f"llmzip: removed {directory}", err=True)
    if build:
        if not fused.built_here():
            click.echo("llmzip: building the fused kernels (a minute or two, once per machine)...", err=True)
        if not fused.available(build=True):
            click.echo(f"llmzip: the fused kernels could not be built: {fused.unavailable_reason()}", err=True)
            return EXIT_ERROR
    click.echo(fused.describe())
    return EXIT_OK
