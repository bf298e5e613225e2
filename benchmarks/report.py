"""results.md and the PNG plots, from the list of results.json entries."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

Entry = dict[str, Any]
TOTAL = "all files"


def ordered(entries: list[Entry], key: str) -> list[str]:
    """Distinct values of ``key`` in first-seen order."""
    return list(dict.fromkeys(e[key] for e in entries))


def compressors(entries: list[Entry]) -> list[str]:
    """Compressor names, classic ones first (in run order), then llmzip ones."""
    names = ordered(entries, "compressor")
    llm = {e["compressor"] for e in entries if "fingerprint" in e}
    return [n for n in names if n not in llm] + [n for n in names if n in llm]


def with_totals(entries: list[Entry]) -> list[Entry]:
    """``entries`` plus one pseudo-entry per compressor summed over all files."""
    totals = []
    for comp in compressors(entries):
        rows = [e for e in entries if e["compressor"] == comp]
        orig = sum(e["original_bytes"] for e in rows)
        c_s, d_s = sum(e["compress_s"] for e in rows), sum(e["decompress_s"] for e in rows)
        total = {"file": TOTAL, "compressor": comp, "original_bytes": orig,
                 "bits_per_byte": 8.0 * sum(e["compressed_bytes"] for e in rows) / orig,
                 "compress_kbps": orig / 1000 / c_s if c_s else None,
                 "decompress_kbps": orig / 1000 / d_s if d_s else None}
        if all("tokens" in e for e in rows):
            toks = sum(e["tokens"] for e in rows)
            total.update(tokens=toks, compress_tokens_per_s=toks / c_s if c_s else None,
                         decompress_tokens_per_s=toks / d_s if d_s else None)
        totals.append(total)
    return entries + totals


def matrix(entries: list[Entry], key: str, fmt: str, best: Callable[[list[float]], float]) -> list[str]:
    """A Markdown table of ``key``: files as rows, compressors as columns, the best of a row in bold."""
    comps, cells = compressors(entries), {(e["file"], e["compressor"]): e.get(key) for e in entries}
    lines = ["| file | " + " | ".join(comps) + " |", "|---|" + "---:|" * len(comps)]
    for file in ordered(entries, "file"):
        row = [cells.get((file, c)) for c in comps]
        known = [v for v in row if v is not None]
        top = best(known) if known else None
        text = ["–" if v is None else (f"**{v:{fmt}}**" if v == top else f"{v:{fmt}}") for v in row]
        name = f"*{file}*" if file == TOTAL else file
        lines.append(f"| {name} | " + " | ".join(text) + " |")
    return lines


def _num(value: Any, fmt: str) -> str:
    return "–" if value is None else f"{value:{fmt}}"


def llmzip_table(entries: list[Entry]) -> list[str]:
    """Per (model, file): tokens, ideal vs real bits/byte, speed in tokens/s, memory, load time."""
    rows = [e for e in entries if "fingerprint" in e]
    head = ("| model | file | tokens | ideal bpb | archive bpb | overhead % | compress tok/s "
            "| decompress tok/s | peak RSS MB | load s | warm-up s |")
    lines = [head, "|---|---|" + "---:|" * 9]
    for e in rows:
        lines.append(
            f"| {e['compressor']} | {e['file']} | {e['tokens']} | {_num(e['ideal_bits_per_byte'], '.3f')} "
            f"| {e['bits_per_byte']:.3f} | {_num(e['overhead_pct'], '.2f')} "
            f"| {_num(e['compress_tokens_per_s'], '.0f')} | {_num(e['decompress_tokens_per_s'], '.0f')} "
            f"| {e['peak_rss_mb']:.0f} | {e['load_s']:.2f} | {e['warmup_s']:.2f} |")
    return lines if rows else []


# The classic rows that are the same coders as the fallbacks llmzip ships (stored aside): an
# llmzip archive must be no larger than the best of them, plus its framing.
SHIPPED_FALLBACKS = ("bzip2 -9", "xz -9e", "ppmd -o6", "ppmd -o10")


def methods_text(e: Entry) -> str:
    total = e["original_bytes"]
    return ", ".join(f"{m} {100 * v['original'] / total:.0f}%" for m, v in e.get("methods", {}).items())


def frames_table(entries: list[Entry]) -> list[str]:
    """Per (llmzip model, file): methods used, size against the best shipped fallback, seconds."""
    classic = {(e["file"], e["compressor"]): e for e in entries if "fingerprint" not in e}
    lines = ["| model | file | frames | methods (share of input) | llmzip bytes | best shipped fallback "
             "| bytes | llmzip − best | compress s | decompress s | format 1 bytes | vs format 1 |",
             "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    rows = [e for e in entries if "methods" in e]
    for e in rows:
        fallbacks = [classic[(e["file"], c)] for c in SHIPPED_FALLBACKS if (e["file"], c) in classic]
        best = min(fallbacks, key=lambda f: f["compressed_bytes"]) if fallbacks else None
        name, size = (best["compressor"], best["compressed_bytes"]) if best else ("–", None)
        diff = "–" if size is None else f"{e['compressed_bytes'] - size:+d}"
        v1 = e.get("format1_bytes")
        versus = "–" if not v1 else f"{100 * (e['compressed_bytes'] - v1) / v1:+.2f} %"
        lines.append(f"| {e['compressor']} | {e['file']} | {e['frames']} | {methods_text(e)} | {e['compressed_bytes']} "
                     f"| {name} | {_num(size, 'd')} | {diff} | {e['compress_s']:.2f} | {e['decompress_s']:.2f} "
                     f"| {_num(v1, 'd')} | {versus} |")
    return lines if rows else []


def speed_ratio(entries: list[Entry]) -> list[str]:
    """Compress speed per byte on files the model coded no frame of, against the file it coded
    slowest per byte entirely (prose, code): how much faster non-winning data goes."""
    rows = [e for e in entries if "methods" in e]
    without = [e for e in rows if "lm" not in e["methods"]]
    with_lm = [e for e in rows if set(e["methods"]) == {"lm"}]
    if not without or not with_lm:
        return []
    fast = sum(e["original_bytes"] for e in without) / sum(e["compress_s"] for e in without) / 1000
    lines = [f"Files coded without the model ({len(without)}): {fast:.0f} kB/s compress over all of them."]
    for e in sorted(with_lm, key=lambda e: e["compress_kbps"]):
        lines.append(f"{e['file']} (model only): {e['compress_kbps']:.1f} kB/s, so {fast / e['compress_kbps']:.0f}x "
                     "faster per byte without the model.")
    return lines


def header_lines(machine: dict[str, Any]) -> list[str]:
    quick = (f" — **quick run: only the first {machine['quick_bytes']} bytes of each file** (classic"
             " compressors' speeds are then mostly per-call set-up, e.g. xz's and PPMd's tables)"
             if machine["quick"] else "")
    return [
        "# llmzip benchmark", "",
        (f"{machine['date']} · {machine['cpu']} ({machine['cores']} cores) · Python {machine['python']} "
         f"· numpy {machine['numpy']} · torch {machine['torch'] or 'not installed'}{quick}"), "",
        f"Command: `{machine['command']}`", "",
    ]


NOTES = """Notes: bits per byte = 8 × compressed size / original size (lower is better).
Throughputs are kB (1000 bytes) of *original* data per second of wall clock: best of {repeats}
runs for the classic compressors, best of {llmzip_runs} for llmzip (in a child process; model load and
a short warm-up round trip are excluded and reported apart). *all files* sums sizes and times
over the files. The llmzip "ideal" is the cross-entropy of the model's quantised integer
tables (what a perfect arithmetic coder would pay); the overhead is the real archive (header
and coder included) over it."""


def write_markdown(out: Path, entries: list[Entry], machine: dict[str, Any]) -> Path:
    allrows = with_totals(entries)
    lines = header_lines(machine)
    lines += ["## Bits per byte (lower is better)", ""] + matrix(allrows, "bits_per_byte", ".3f", min)
    lines += ["", "## Compress throughput, kB/s (higher is better)", ""]
    lines += matrix(allrows, "compress_kbps", ".1f", max)
    lines += ["", "## Decompress throughput, kB/s (higher is better)", ""]
    lines += matrix(allrows, "decompress_kbps", ".1f", max)
    detail = llmzip_table(entries)
    if detail:
        lines += ["", "## llmzip details", ""] + detail
    table = frames_table(entries)
    if table:
        lines += ["", "## llmzip frames: methods and the best shipped fallback", ""] + table
    ratio = speed_ratio(entries)
    if ratio:
        lines += ["", "## Speed without the model", ""] + [f"* {line}" for line in ratio]
    lines += ["", NOTES.format(repeats=machine["repeats"]["classic"],
                                   llmzip_runs=machine["repeats"].get("llmzip", 1)), ""]
    path = out / "results.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(comps: list[str]) -> dict[str, Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if len(comps) <= 10 else "tab20")
    return {c: cmap(i % cmap.N) for i, c in enumerate(comps)}


def plot_bpb_by_file(out: Path, entries: list[Entry]) -> Path:
    """Grouped bars: one group per file (and all files), one bar per compressor."""
    plt, allrows = _pyplot(), with_totals(entries)
    files, comps = ordered(allrows, "file"), compressors(allrows)
    colors, cells = _colors(comps), {(e["file"], e["compressor"]): e["bits_per_byte"] for e in allrows}
    width = 0.84 / len(comps)
    fig, ax = plt.subplots(figsize=(max(9.0, 1.5 * len(files) * max(1, len(comps) / 6)), 5.5))
    for j, comp in enumerate(comps):
        xs = [i - 0.42 + (j + 0.5) * width for i in range(len(files))]
        ax.bar(xs, [cells.get((f, comp), 0.0) for f in files], width, label=comp, color=colors[comp])
    ax.set_xticks(range(len(files)), files, rotation=15, ha="right")
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title("Compressed size per file")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    return _save(fig, out / "bpb_by_file.png")


def plot_bpb_vs_speed(out: Path, entries: list[Entry]) -> Path:
    """Bits/byte vs compress throughput: a labelled point per compressor over all files,
    small faint points per file in the same colour."""
    plt, comps = _pyplot(), compressors(entries)
    colors, totals = _colors(comps), [e for e in with_totals(entries) if e["file"] == TOTAL]
    fig, ax = plt.subplots(figsize=(10, 6.5))
    star = {e["compressor"] for e in entries if "fingerprint" in e}  # llmzip: stars, the rest dots
    for e in entries:
        small = e["compressor"] in star
        ax.scatter(e["compress_kbps"], e["bits_per_byte"], s=30 if small else 14, alpha=0.35,
                   color=colors[e["compressor"]], marker="*" if small else "o")
    for t in totals:
        big = t["compressor"] in star
        ax.scatter(t["compress_kbps"], t["bits_per_byte"], s=160 if big else 70, color=colors[t["compressor"]],
                   marker="*" if big else "o", edgecolors="black", zorder=3, label=t["compressor"])
    ax.set_xscale("log")
    ax.set_xlabel("compress throughput, kB/s of original data (log scale)")
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title("Size vs speed (big markers: all files together; small ones: single files)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    fig.tight_layout()  # fix the axes' final size before measuring where labels fall
    _place_labels(fig, ax, [(t["compressor"], t["compress_kbps"], t["bits_per_byte"]) for t in totals])
    return _save(fig, out / "bpb_vs_speed.png")


def _place_labels(fig: Any, ax: Any, points: list[tuple[str, float, float]]) -> None:
    """Label each point, nudging a label up or down (with a leader line) until it overlaps no dot
    and no label placed before it: nearby compressors (zstd -19/-22, PPMd o6/o10) stay legible."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    ax.autoscale_view()
    renderer, marker = fig.canvas.get_renderer(), 6 * fig.dpi / 72  # big dots: s=70 is ~8.4 pt wide
    centres = [ax.transData.transform((x, y)) for _, x, y in points]
    placed = [Bbox.from_extents(cx - marker, cy - marker, cx + marker, cy + marker) for cx, cy in centres]
    for text, x, y in sorted(points, key=lambda p: (p[2], p[1])):
        for dy in [4] + [sign * 12 * k for k in range(1, 12) for sign in (-1, 1)]:
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(8, dy), fontsize=9,
                                va="center", arrowprops=None if dy == 4 else {"arrowstyle": "-", "lw": 0.5})
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer).expanded(1.05, 1.3)  # the text, not its leader line
            if not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            label.remove()
        else:
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(8, 4), fontsize=9)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def write_all(out: Path, entries: list[Entry], machine: dict[str, Any]) -> list[Path]:
    return [write_markdown(out, entries, machine), plot_bpb_by_file(out, entries),
            plot_bpb_vs_speed(out, entries)]
