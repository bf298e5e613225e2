"""The Markdown and JSON reports of :mod:`roofline` (GEMM peaks, throughput, where the time goes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STAGE_COLUMNS = (("linear_gemm", "GEMM linear"), ("linear_other", "linear other"), ("head_gemm", "GEMM head"),
                 ("head_other", "head other"), ("attention", "attention"), ("norms_activations", "norms, act."),
                 ("engine_other", "engine other"), ("quantiser", "quantiser, tables"), ("mixer", "mixer"),
                 ("coder", "coder"), ("tokenizer", "tokenizer"), ("other", "Python, other"))


def _fused_line(ops: list[str]) -> str:
    if len(ops) == 2:
        return "Compressions and decompressions run the fused kernels (`llmzip.fused`, built before timing)."
    return "Compressions run the fused kernels (`llmzip.fused`, built before timing); decompressions the numpy engine."


def write_reports(result: dict[str, Any], out: Path | None) -> str:
    """The Markdown report (and, with ``out``, roofline.md and roofline.json written there)."""
    m, peaks = result["machine"], result["peaks"]
    lines = [f"# Roofline: `{result['command']}`", "",
             f"{m['date']}, tree {m['tree'] or 'unknown'}, {m['cpu']}, {m['cores']} cores, codec workers: {m['workers']}, Python {m['python']}, "
             f"torch {m['torch']}; first {result['kb']} KB of {', '.join(result['files'])}."
             + (" **Contended**: the machine was busy with other jobs while this ran; compare ratios "
                "within this run, not absolute numbers across runs." if m["contended"] else ""), "",
             *([_fused_line(result["fused_ops"]), ""] if result["fused_ops"] else []),
             "## GEMM peaks", "",
             f"GOPS = 2 x multiply-accumulates per second; one torch thread per worker, {m['workers']} "
             "concurrent workers (as the codec runs its GEMMs) and one alone.", "",
             "| dtype | M x K x N | GOPS, all workers | GOPS, one worker |", "|---|---|---:|---:|"]
    for dtype, p in peaks.items():
        for r in p["shapes"]:
            lines.append(f"| {dtype} | {' x '.join(map(str, r['shape']))} | {r['gops_all']:,.0f} | {r['gops_1']:,.0f} |")
    lines += ["", "Peaks: " + ", ".join(f"{d} {p['peak_gops']:,.0f} GOPS ({p['peak_gops_1']:,.0f} on one worker)"
                                        for d, p in peaks.items()), "", "## Throughput", "",
              "ops/token: 2 x multiply-accumulates of the linear layers and the head (attention excluded). "
              "% peak: achieved GOPS over the int8 peak above. lm: `mixing=None`; mix: the default mixing.", "",
              "| model | MOP/token | mode | op | tokens | tok/s | KB/s | GOPS | % int8 peak |",
              "|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['ops_per_token'] / 1e6:.1f} | {r['mode']} | {r['op']} | {r['tokens']:,} | "
                     f"{r['tok_s']:,.0f} | {r['kb_s']:.1f} | {r['gops']:.1f} | {r['pct_int8_peak']:.2f} |")
    lines += _breakdown_lines(result["rows"])
    text = "\n".join(lines) + "\n"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = {0: "roofline", 1: "roofline_fused", 2: "roofline_fused_all"}[len(result["fused_ops"])]
        (out / f"{stem}.md").write_text(text)
        (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    return text


def _breakdown_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The report's stage table and the stages' descriptions."""
    from stage_timer import DESCRIPTIONS

    lines = ["", "## Where the time goes", "",
             "Share of the process's CPU time (all threads) per stage, from a second, instrumented run "
             "(benchmarks/stage_timer.py: exclusive per-thread CPU timers around the functions of each stage; "
             "its workers are threads, since the timers see one process). "
             "CPU/wall: cores kept busy. GEMM GOPS/core: the GEMMs' own rate per CPU-second, to compare with "
             "the one-worker int8 peak (-: not every GEMM is timed, as inside the fused kernels). Overhead: instrumented CPU time over plain CPU time (worker processes' "
             "CPU time included), so it also shows what threads cost against processes.", "",
             "| model | mode | op | " + " | ".join(c for _, c in STAGE_COLUMNS) + " | CPU/wall | GEMM GOPS/core | overhead |",
             "|---|---|---|" + "---:|" * (len(STAGE_COLUMNS) + 3)]
    for r in rows:
        shares = " | ".join(f"{r['stage_pct'][s]:.1f}" for s, _ in STAGE_COLUMNS)
        gops = f"{r['gemm_gops_per_core']:.0f}" if r["gemm_gops_per_core"] else "-"   # -: GEMMs not all timed
        lines.append(f"| {r['model']} | {r['mode']} | {r['op']} | {shares} | {r['cpu'] / r['wall']:.2f} | "
                     f"{gops} | {r['timer_overhead_pct']:+.0f}% |")
    return lines + ["", "Stages:", ""] + [f"* {c}: {DESCRIPTIONS[s]}" for s, c in STAGE_COLUMNS]
