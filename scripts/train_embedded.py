#!/usr/bin/env python3
"""Train llmzip's embedded model: a byte-level BPE tokenizer and a small GPT-2.

Reproducible from a directory of text laid out like ``../shared/train`` (text files of
documents joined by ``\\n\\n`` plus an ``index.tsv`` giving each document's file, offset
and length). Every stage writes into ``--work`` and is skipped when its output exists,
so a killed run resumes where it stopped::

    python scripts/train_embedded.py --data ../shared/train --work /tmp/llmzip-train \\
        --minutes 115 --export /tmp/llmzip-gpt2-small

The defaults are the shape of the shipped default model (3 layers, 192 wide, 4096-token
vocabulary, 256-token context); its model card in ``llmzip/models/`` gives the exact command.

Stages: (1) tokenizer (``tokenizers`` byte-level BPE, bytes kept exactly as they are:
no normaliser, CRLF and all); (2) tokenised train/validation streams (every 40th
document is held out); (3) training with bf16 autocast, AdamW, warmup + cosine decay
over ``--steps``, a checkpoint every ``--ckpt-every`` steps and at the time limit;
(4) export in Hugging Face layout (config.json, model.safetensors, tokenizer.json).
The data sampler draws batch ``k`` from ``numpy.random.default_rng([seed, k])``, so a
resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import argparse
import json
import copy
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

BOS = "<|endoftext|>"
# Sampling weight of each source kind: prose dominates the raw data, so code and
# Markdown are up-weighted to give the model some breadth.
SOURCE_WEIGHTS = {"gutenberg": 0.55, "code": 0.25, "docs": 0.12, "wikitext2": 0.08}
VAL_EVERY = 40  # every 40th document goes to the held-out stream


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "train")
    p.add_argument("--work", type=Path, required=True, help="directory for tokenizer, streams, checkpoints, log")
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--batch", type=int, default=32, help="sequences per step")
    p.add_argument("--steps", type=int, default=8000, help="planned steps (sets the LR schedule)")
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--minutes", type=float, default=115.0, help="stop (with a checkpoint) after this long")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--export", type=Path, help="write the final model here in HF layout")
    p.add_argument("--export-only", action="store_true", help="export the latest checkpoint without training")
    p.add_argument("--export-dtype", choices=("float16", "float32"), default="float16",
                   help="weight precision of the export (float16 halves the package; the engine "
                        "quantises the linear layers to int8 either way)")
    return p.parse_args()


# ----------------------------------------------------------------------------- data


def source_kind(filename: str) -> str:
    for kind in SOURCE_WEIGHTS:
        if filename.startswith(kind) or (kind == "docs" and filename.startswith("docs_")):
            return kind
    raise ValueError(f"unknown source file {filename}")


def read_documents(data: Path) -> list[tuple[str, int, bytes]]:
    """Return (kind, index, raw bytes) of every document listed in index.tsv."""
    docs = []
    lines = (data / "index.tsv").read_text(encoding="utf-8").splitlines()[1:]
    blobs: dict[str, bytes] = {}
    for i, line in enumerate(lines):
        fname, offset, length = line.split("\t")[:3]
        if fname not in blobs:
            blobs[fname] = (data / fname).read_bytes()
        raw = blobs[fname][int(offset) : int(offset) + int(length)]
        docs.append((source_kind(fname), i, raw))
    return docs


def train_tokenizer(docs: list[tuple[str, int, bytes]], vocab: int, out: Path) -> None:
    """Byte-level BPE on a deterministic, source-balanced sample of the documents."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    budget = {"gutenberg": 10_000_000, "code": 6_000_000, "docs": 3_400_000, "wikitext2": 2_400_000}
    sample = []
    for kind, i, raw in docs:
        if i % VAL_EVERY != 0 and budget[kind] > 0:
            budget[kind] -= len(raw)
            sample.append(raw.decode("utf-8", errors="replace"))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=[BOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sample, trainer=trainer)
    tok.save(str(out))


def build_streams(docs: list[tuple[str, int, bytes]], tok_path: Path, work: Path) -> None:
    """Tokenise every document; write <kind>.train.npy / val.npy (uint16, BOS before each doc)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    bos = tok.token_to_id(BOS)
    streams: dict[str, list[np.ndarray]] = {}
    texts = [raw.decode("utf-8", errors="replace") for _, _, raw in docs]
    encodings = tok.encode_batch(texts, add_special_tokens=False)
    for (kind, i, _), enc in zip(docs, encodings):
        name = "val" if i % VAL_EVERY == 0 else f"{kind}.train"
        streams.setdefault(name, []).append(np.array([bos, *enc.ids], dtype=np.uint16))
    for name, parts in streams.items():
        np.save(work / f"{name}.npy", np.concatenate(parts))
    n_bytes = sum(len(raw) for _, i, raw in docs if i % VAL_EVERY == 0)
    (work / "val_bytes.json").write_text(json.dumps({"bytes": n_bytes}))


class Sampler:
    """Draws fixed-length windows; batch k is a pure function of (seed, k)."""

    def __init__(self, work: Path, seed: int, ctx: int, bos: int) -> None:
        self.streams = {k: np.load(work / f"{k}.train.npy") for k in SOURCE_WEIGHTS}
        self.kinds = list(SOURCE_WEIGHTS)
        self.weights = np.array([SOURCE_WEIGHTS[k] for k in self.kinds])
        self.seed, self.ctx, self.bos = seed, ctx, bos

    def batch(self, k: int, size: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, k])
        rows = []
        for kind in rng.choice(len(self.kinds), size=size, p=self.weights):
            stream = self.streams[self.kinds[kind]]
            start = int(rng.integers(0, len(stream) - self.ctx))
            # Every row starts with BOS, like every chunk llmzip codes.
            rows.append(np.concatenate([[self.bos], stream[start : start + self.ctx - 1]]))
        return torch.from_numpy(np.stack(rows).astype(np.int64))


# ----------------------------------------------------------------------------- model


def make_model(args: argparse.Namespace, vocab: int, bos: int) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab, n_positions=args.ctx, n_embd=args.width, n_layer=args.layers, n_head=args.heads,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=bos, eos_token_id=bos,
        activation_function="gelu_new", tie_word_embeddings=True,
    )
    torch.manual_seed(args.seed)
    return GPT2LMHeadModel(config)


def loss_bits(model: torch.nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean cross-entropy (nats) of predicting ids[:, 1:] and the count of predictions."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=ids).logits
    targets = ids[:, 1:]
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), targets.reshape(-1))
    return loss, targets.numel()


@torch.no_grad()
def evaluate(model: torch.nn.Module, val: np.ndarray, ctx: int, byte_len: np.ndarray, bos: int) -> float:
    """Bits per byte on up to 48 non-overlapping held-out windows (fixed positions)."""
    model.eval()
    n = min(48, (len(val) - 1) // (ctx - 1))
    starts = np.linspace(0, len(val) - ctx, n).astype(np.int64)
    nats, nbytes = 0.0, 0
    for i in range(0, n, 8):
        rows = [np.concatenate([[bos], val[s : s + ctx - 1]]) for s in starts[i : i + 8]]
        ids = torch.from_numpy(np.stack(rows).astype(np.int64))
        loss, count = loss_bits(model, ids)
        nats += loss.item() * count
        nbytes += int(byte_len[ids[:, 1:].numpy()].sum())
    model.train()
    return nats / math.log(2) / nbytes


def lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def token_byte_lengths(tok_path: Path) -> np.ndarray:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    lengths = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    byte_of = {c: b for b, c in enumerate(_bytes_to_unicode())}
    for piece, idx in tok.get_vocab().items():
        lengths[idx] = 0 if piece == BOS else len(piece)  # one char per byte in ByteLevel
        assert piece == BOS or all(ch in byte_of for ch in piece)
    return lengths


def _bytes_to_unicode() -> list[str]:
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    out, extra = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def train(args: argparse.Namespace, tok_path: Path) -> torch.nn.Module:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_path))
    bos = tok.token_to_id(BOS)
    model = make_model(args, tok.get_vocab_size(), bos)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    ckpt_path, log_path = args.work / "checkpoint.pt", args.work / "log.jsonl"
    step = 0
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resumed at step {step}", flush=True)
    sampler = Sampler(args.work, args.seed, args.ctx, bos)
    val, byte_len = np.load(args.work / "val.npy"), token_byte_lengths(tok_path)
    t0, tokens_done = time.time(), 0

    def save() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
        tmp.replace(ckpt_path)

    model.train()
    while step < args.steps and not args.export_only:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        loss, count = loss_bits(model, sampler.batch(step, args.batch))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens_done += count
        record = {"step": step, "loss": round(loss.item(), 4), "lr": lr_at(step - 1, args),
                  "tok_per_s": round(tokens_done / (time.time() - t0)), "elapsed_s": round(time.time() - t0)}
        if step % args.eval_every == 0 or step == args.steps:
            record["val_bpb"] = round(evaluate(model, val, args.ctx, byte_len, bos), 4)
        if step % 25 == 0 or "val_bpb" in record:
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
        out_of_time = time.time() - t0 > args.minutes * 60
        if step % args.ckpt_every == 0 or out_of_time or step == args.steps:
            save()
        if out_of_time:
            print(f"time limit reached at step {step}; resume with the same command", flush=True)
            break
    return model


def export(model: torch.nn.Module, work: Path, out: Path, dtype: str) -> None:
    """Write ``model`` in HF layout at ``dtype``, with the tokenizer and the training log."""
    from transformers import PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).to(getattr(torch, dtype)).save_pretrained(out, safe_serialization=True)
    shutil.copyfile(work / "log.jsonl", out / "train_log.jsonl")
    tok_path = work / "tokenizer.json"
    (out / "generation_config.json").unlink(missing_ok=True)   # not used by llmzip
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tok_path), bos_token=BOS, eos_token=BOS, unk_token=None)
    fast.model_max_length = model.config.n_positions
    fast.save_pretrained(out)
    for f in out.iterdir():   # safetensors writes 0600: package data must be readable by everyone
        f.chmod(0o644)
    print(f"exported to {out}", flush=True)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.export_only:
        (args.work / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    tok_path = args.work / "tokenizer.json"
    docs = None
    if not tok_path.exists():
        docs = read_documents(args.data)
        t = time.time()
        train_tokenizer(docs, args.vocab, tok_path)
        print(f"tokenizer trained in {time.time() - t:.0f}s", flush=True)
    if not (args.work / "val.npy").exists():
        docs = docs or read_documents(args.data)
        t = time.time()
        build_streams(docs, tok_path, args.work)
        print(f"streams built in {time.time() - t:.0f}s", flush=True)
    model = train(args, tok_path)
    if args.export:
        export(model, args.work, args.export, args.export_dtype)


if __name__ == "__main__":
    main()
