#!/usr/bin/env python3
"""How much can in-file models add to the LM? Replays of the mixer over exact LM tables.

    python benchmarks/mix_study.py [--files treasure_island.txt ...] [--groups 128 8 1] [--out FILE]

For every corpus file the exact engine's tables are computed once (the codec's chunks, each
from BOS), then fed step by step, in the codec's lockstep order, to:

* the shipped :class:`~llmzip.mix.Mixer` (default parameters) with groups of ``--groups``
  chunks: 128 is the codec's layout (at step ``t`` the in-file models know ``t`` tokens of
  every chunk of the group); 1 codes chunk after chunk, so they know the whole file before
  the current token: the most an in-file model can see;
* a few parameter variants of the mixer (what the knobs are worth; the default is preset 1);
* a float log-linear mixer (``P ~ P_lm * exp(sum_j w_j g_j)`` over the same sparse candidates,
  weights per model, confidence class and LM-confidence bucket, trained online): a mixer of
  another form, to tell the limits of the linear mixture from the limits of the models;
* a per-token oracle that picks the cheaper of LM and mixed for every token (not decodable).

Reports ideal code lengths (sum of -log2 p) in bits per byte and gains over the LM alone.
Memory: 16 KiB of tables per token (about 1.8 GB for Treasure Island).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llmzip import codec, lockstep, runtime  # noqa: E402
from llmzip.mix import CLASSES, PRESETS, Mixer, MixParams  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus"
VARIANTS = {"preset 0 (lr 8, the default before)": PRESETS[0], "lr 2": MixParams(lr=2), "lr 16": MixParams(lr=16),
            "slot_width 8": MixParams(slot_width=8),
            "count_limit 250": MixParams(count_limit=250), "orders 0-6,8": MixParams(orders=(0, 1, 2, 3, 4, 5, 6, 8)),
            "match_min 3": MixParams(match_min=3)}


def lm_tables(model, tokens: np.ndarray) -> np.ndarray:
    """The exact engine's int32 tables (N, V) of every token, chunked as the codec does."""
    chunk, group = codec.default_chunk(model), codec.default_group(model)
    out = np.empty((len(tokens), model.vocab_size), dtype=np.int32)
    settings, pos = lockstep.Settings(), 0
    for rows in codec._groups(tokens, chunk, group):
        inputs, _ = lockstep.teacher_forcing(rows, model.bos_id)
        with lockstep.open_runner(settings, model, len(rows), lockstep.cpu_threads(settings, model), 32) as runner:
            for t0 in range(0, inputs.shape[1], 32):
                tables = runner.advance_all(inputs[:, t0:t0 + 32])()
                for i, r in enumerate(rows):
                    n = min(len(r), t0 + 32) - t0
                    if n > 0:
                        out[pos + i * chunk + t0: pos + i * chunk + t0 + n] = tables[i, :n]
        pos += sum(len(r) for r in rows)
    return out


def steps(n: int, chunk: int, group: int):
    """File positions (R,) coded at each step, in the codec's lockstep order."""
    for g0 in range(0, n, chunk * group):
        size = min(chunk * group, n - g0)
        rows = -(-size // chunk)
        for t in range(chunk):
            idx = g0 + np.arange(rows) * chunk + t
            idx = idx[idx < g0 + size]
            if len(idx):
                yield rows, t, idx


def replay(tables: np.ndarray, tokens: np.ndarray, chunk: int, group: int, params: MixParams) -> np.ndarray:
    """Bits of every token under the shipped mixer."""
    mixer, bits = Mixer(tables.shape[1], params, chunk, len(tokens)), np.zeros(len(tokens))
    for rows, t, idx in steps(len(tokens), chunk, group):
        if t == 0:
            mixer.begin_group(rows)
        _, freq, total = mixer.coding_terms(tables[idx], tokens[idx])
        bits[idx] = np.log2(total / freq)
        mixer.update(tokens[idx])
    return bits


def loglinear(tables: np.ndarray, tokens: np.ndarray, chunk: int, group: int, eta: float = 0.01,
              buckets: int = 4) -> np.ndarray:
    """Bits of every token under a float log-linear mix of the LM and the mixer's sparse models.

    Candidate ``j`` (a token seen after an n-gram context, or the match's next token) with
    in-model probability ``q_j`` adds ``w_j * log(1 + q_j / P_lm(token_j))`` to its token's
    log-probability (with every ``w = 1`` this is the linear mixture of LM and models); ``w``
    is looked up by (model, class, LM top-probability bucket) and follows the log-loss gradient.
    """
    mixer, bits = Mixer(tables.shape[1], MixParams(), chunk, len(tokens)), np.zeros(len(tokens))
    em = mixer.entry_model
    w = np.full((mixer.model_count, CLASSES, buckets), 0.5)
    for rows, t, idx in steps(len(tokens), chunk, group):
        if t == 0:
            mixer.begin_group(rows)
        r, x = len(idx), tokens[idx]
        p_lm = tables[idx].astype(np.float64)
        p_lm /= p_lm.sum(1, keepdims=True)
        conf = np.minimum((p_lm.max(1) * buckets).astype(int), buckets - 1)[:, None]
        mixer.prepare(r)
        tok, cnt, cls, totals = (getattr(mixer.prediction, k) for k in ("tok", "cnt", "cls", "totals"))
        valid = cnt > 0
        p_c = p_lm[np.arange(r)[:, None], tok]
        g = np.where(valid, np.log1p(cnt / np.maximum(totals[:, em], 1) / p_c), 0.0)
        ccls = np.maximum(cls[:, em], 0)
        same = (tok[:, :, None] == tok[:, None, :]) & valid[:, :, None] & valid[:, None, :]
        boost = (same * (w[em, ccls, conf] * g)[:, None, :]).sum(-1)     # of each column's token
        first = valid & ~np.triu(same, 1).any(1)                          # a token's first column
        z = 1 - (p_c * first).sum(1) + (p_c * np.exp(boost) * first).sum(1)
        hit = (tok == x[:, None]) & valid
        bx = np.where(hit.any(1), np.take_along_axis(boost, hit.argmax(1)[:, None], 1)[:, 0], 0.0)
        bits[idx] = -np.log2(p_lm[np.arange(r), x] * np.exp(bx) / z)
        grad = g * (hit - p_c * np.exp(boost) / z[:, None]) * valid
        np.add.at(w, (np.broadcast_to(em, grad.shape), ccls, np.broadcast_to(conf, grad.shape)), eta * grad)
        mixer.learn(x, np.ones(r, dtype=np.int64))     # the in-file statistics follow the file
    return bits


def study(model, path: Path, groups: list[int]) -> list[tuple[str, float]]:
    """(label, bits) rows for one file."""
    tokens = np.asarray(model.tokenizer.encode(path.read_bytes()), dtype=np.int64)
    tables = lm_tables(model, tokens)
    chunk, group = codec.default_chunk(model), codec.default_group(model)
    lm = np.log2(tables.sum(1, dtype=np.int64) / tables[np.arange(len(tokens)), tokens])
    mixed = replay(tables, tokens, chunk, group, MixParams())
    rows = [("LM alone", lm.sum()), (f"mixed, groups of {group} (the codec)", mixed.sum())]
    rows += [(f"mixed, groups of {g}", replay(tables, tokens, chunk, g, MixParams()).sum())
             for g in groups if g != group]
    rows += [(f"mixed, {name}", replay(tables, tokens, chunk, group, p).sum()) for name, p in VARIANTS.items()]
    rows.append(("float log-linear mixer", loglinear(tables, tokens, chunk, group).sum()))
    rows.append(("oracle: cheaper of LM and mixed per token", np.minimum(lm, mixed).sum()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", nargs="*", default=None, help="corpus file names [default: all]")
    parser.add_argument("--groups", nargs="*", type=int, default=[128, 8, 1])
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = parser.parse_args()
    runtime.single_openmp_thread()
    from llmzip.model import load_model

    model = load_model(args.model)
    names = args.files or sorted(p.name for p in CORPUS.iterdir() if p.name != "README.md")
    lines = [f"`python benchmarks/mix_study.py {' '.join(sys.argv[1:])}` ({time.strftime('%Y-%m-%d')}), model "
             f"{model.model_id}: ideal bits per byte (sum of -log2 p) and the gain over the LM alone.", ""]
    for name in names:
        size = (CORPUS / name).stat().st_size
        rows = study(model, CORPUS / name, args.groups)
        lines += [f"### {name} ({size:,} bytes)", "", "| | bits/byte | vs LM |", "|---|---:|---:|"]
        lines += [f"| {label} | {bits / size:.4f} | {bits / rows[0][1] - 1:+.2%} |" for label, bits in rows]
        lines.append("")
        print("\n".join(lines[-len(rows) - 4:]), flush=True)
    if args.out:
        args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
