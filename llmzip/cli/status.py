"""Exit statuses of the ``llmzip`` command and the one line it prints for each failure.

The library raises typed errors (:mod:`llmzip.errors`); :func:`classify` is the one place
that turns any exception into an exit status and the reason printed on stderr
(``llmzip: FILE: reason``).
"""

from __future__ import annotations

import sys
import traceback
from typing import Any, Callable, Sequence

import click

from ..errors import (CorruptArchiveError, LlmzipError, ModelLoadError, ModelMismatchError,
                      NotAnArchiveError, UnsupportedFormatError)

EXIT_OK, EXIT_ERROR, EXIT_WARNING = 0, 1, 2
_SEVERITY = {EXIT_OK: 0, EXIT_WARNING: 1, EXIT_ERROR: 2}   # an error is worse than a warning
STDIO = "-"


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


