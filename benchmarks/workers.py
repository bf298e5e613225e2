#!/usr/bin/env python3
"""Compress and decompress speed with each kind of codec worker: one thread, two threads, two
forked processes.

    python benchmarks/workers.py [--model embedded] [--kb 64] [--file FILE] [--repeats 2] [--out FILE]

Codes the first ``--kb`` KB of ``--file`` (default: ``treasure_island.txt`` of the corpus) with
``Settings(threads=1)``, ``Settings(threads=2, processes=False)`` and ``Settings(threads=2,
processes=True)`` in turn, ``--repeats`` rounds, and prints the best wall seconds of each with
the CPU seconds of the process and of its reaped worker processes. Every setting must give the
same archive and decode it (checked): workers change speed only. torch and the model are loaded
and warmed up before timing. ``--out FILE`` also appends the table as Markdown.
"""

from __future__ import annotations

import abtest


def variants() -> dict[str, abtest.Variant]:
    from llmzip import codec

    settings = {"one thread": codec.Settings(threads=1),
                "two threads": codec.Settings(threads=2, processes=False),
                "two processes": codec.Settings(threads=2, processes=True)}
    return {name: abtest.Variant(lambda s=s: s) for name, s in settings.items()}


def report(best: dict[tuple[str, str], abtest.Times], title: str) -> str:
    lines = [title, "", "| workers | op | wall s | CPU s (process) | CPU s (worker processes) |", "|---|---|---:|---:|---:|"]
    for (name, op), (wall, cpu, children) in best.items():
        lines.append(f"| {name} | {op} | {wall:.2f} | {cpu:.2f} | {children:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    abtest.main(__doc__, "workers.py", "settings", variants, report)
